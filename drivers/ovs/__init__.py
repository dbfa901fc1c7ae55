"""The built-in Open vSwitch driver: OVS bridges through OVSDB, VLANs, VXLAN and GRE tunnels between hosts."""

from .config import OvsOptions
from .driver import OvsDriver

__all__ = ["OvsDriver", "OvsOptions"]
