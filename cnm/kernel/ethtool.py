"""Interface offloads through the ethtool ioctl (``ethtool -K DEV tx off``), with no ethtool binary.

The ioctl acts on the namespace of the socket it is issued on, so the socket
is opened inside the interface's namespace.
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct

from cnm.errors import KernelError
from cnm.kernel.links import check_ifname
from cnm.kernel.netns import NetNS

__all__ = ["get_tx_checksum", "set_tx_checksum"]

_SIOCETHTOOL = 0x8946
_ETHTOOL_GTXCSUM = 0x16
_ETHTOOL_STXCSUM = 0x17
_IFREQ_SIZE = 40  # struct ifreq on 64-bit Linux: 16-byte name + a 24-byte union


def _ethtool_value(netns: NetNS, ifname: str, cmd: int, data: int, what: str) -> int:
    check_ifname(ifname)
    value = ctypes.create_string_buffer(struct.pack("II", cmd, data))
    request = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(_IFREQ_SIZE, b"\0")
    try:
        sock = netns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as exc:
        raise KernelError(f"{what} failed: cannot open a socket in {netns.name}: {exc.strerror}", exc.errno) from exc
    with sock:
        try:
            fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, request)
        except OSError as exc:
            raise KernelError(f"{what} in {netns.name} failed: {exc.strerror}", exc.errno) from exc
    return int(struct.unpack("II", value.raw[:8])[1])


def get_tx_checksum(netns: NetNS, ifname: str) -> bool:
    """Whether ``ifname`` leaves transmit checksums to the device (checksum offload on)."""
    return bool(_ethtool_value(netns, ifname, _ETHTOOL_GTXCSUM, 0, f"read tx checksum offload of {ifname}"))


def set_tx_checksum(netns: NetNS, ifname: str, on: bool) -> None:
    """Turn transmit checksum offload of ``ifname`` on or off (off also turns TSO off).

    Off makes the kernel finish every checksum before the packet leaves, which
    a receiver that never computes it (a userspace switch reading a veth with
    AF_PACKET) needs.
    """
    _ethtool_value(
        netns, ifname, _ETHTOOL_STXCSUM, int(on), f"set tx checksum offload of {ifname} {'on' if on else 'off'}"
    )
