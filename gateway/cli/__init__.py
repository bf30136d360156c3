"""`paygate` command line. Each module registers its commands on the one group, `main`."""

from gateway.cli import agencies, service, settlement
from gateway.cli.base import main

del agencies, service, settlement

__all__ = ["main"]
