"""`paygate` command line. Each module registers its commands on the one group, `main`."""

from gateway.cli import agencies, banks, kiosk, pos, service, settlement, states
from gateway.cli.base import main

del agencies, banks, kiosk, pos, service, settlement, states

__all__ = ["main"]
