"""paygate's running service: HTTP, CLI, worker and settings. No business rules live here."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("paygate")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
