"""Sending an ARP request by hand, from a given interface.

Some switches learn the underlay's neighbours only by watching ARP go by
(Open vSwitch's userspace tunnels do); an explicit request makes the peer
answer now, whatever the kernel's neighbour cache holds.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from cnm.errors import KernelError
from cnm.kernel import addresses, links
from cnm.kernel.netns import NetNS

__all__ = ["send_arp_request"]

_ETH_P_ARP = 0x0806


def send_arp_request(netns: NetNS, ifname: str, target: ipaddress.IPv4Address) -> None:
    """Broadcast "who has ``target``" out of ``ifname``, from its MAC and first IPv4 address.

    Raises:
        KernelError: the interface is missing, has no IPv4 address, or the send fails.
    """
    with netns.netlink() as nl:
        link = links.get_link(nl, ifname)
        sources = [a for a in addresses.list_addresses(nl, ifname) if a.version == 4]
    if link is None or link.mac is None:
        raise KernelError(f"send ARP for {target} from {ifname} in {netns.name} failed: no such interface")
    if not sources:
        raise KernelError(f"send ARP for {target} from {ifname} in {netns.name} failed: it has no IPv4 address")
    mac = bytes.fromhex(link.mac.replace(":", ""))
    source = sources[0].ip
    frame = (
        b"\xff" * 6
        + mac
        + struct.pack("!H", _ETH_P_ARP)
        + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)  # Ethernet, IPv4, request
        + mac
        + source.packed
        + b"\0" * 6
        + target.packed
    )
    try:
        sock = netns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ARP))
        with sock:
            sock.bind((ifname, _ETH_P_ARP))
            sock.send(frame)
    except OSError as exc:
        raise KernelError(
            f"send ARP for {target} from {ifname} in {netns.name} failed: {exc.strerror}", exc.errno
        ) from exc
