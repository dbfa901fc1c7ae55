"""The built-in bridge driver (Docker's ``bridge``)."""

from .config import BridgeOptions
from .driver import BridgeDriver

__all__ = ["BridgeDriver", "BridgeOptions"]
