"""Connection tracking: forget the UDP flows of a published port (pyroute2's ctnetlink client).

A UDP "connection" has no end the kernel could see, so its conntrack entry
lives as long as datagrams keep coming: a client that keeps sending to a host
port goes on being translated to whatever address the entry was made for,
even after that mapping is gone and another endpoint published the port
(moby/moby#8795, containernetworking/plugins#123). Deleting the entries whose
original destination is the host port makes the next datagram take the
current rules.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Collection

from pyroute2 import Conntrack
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from cnm.kernel.errors import map_netlink_errors
from cnm.kernel.netns import NetNS

__all__ = ["UdpFlowKey", "flush_udp_flows"]

log = logging.getLogger(__name__)

UdpFlowKey = tuple[ipaddress.IPv4Address | None, int]
"""A host address (None: any) and a host port whose UDP flows are to be forgotten."""


def flush_udp_flows(netns: NetNS, keys: Collection[UdpFlowKey]) -> int:
    """Delete ``netns``'s UDP conntrack entries whose original destination is one of ``keys``; return how many.

    One dump of the namespace's UDP entries, then one delete per match, so a
    range of ports costs one dump, not one per port. An entry that vanished
    meanwhile (timed out) is not an error.
    """
    if not keys:
        return 0
    ports = {port for _, port in keys}
    wanted = set(keys)

    def matches(daddr: str, dport: int) -> bool:
        return (None, dport) in wanted or (ipaddress.IPv4Address(daddr), dport) in wanted

    def flush() -> int:
        deleted = 0
        with map_netlink_errors(f"flush UDP conntrack entries in {netns.name}"), Conntrack() as ct:
            entries = [
                e.tuple_orig
                for e in ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=socket.IPPROTO_UDP))
                if e.tuple_orig.dport in ports and matches(e.tuple_orig.daddr, e.tuple_orig.dport)
            ]
            for orig in entries:
                # ENOENT: the entry timed out between the dump and the delete.
                with map_netlink_errors(f"delete a UDP conntrack entry in {netns.name}", ok=(errno.ENOENT,)) as gone:
                    ct.delete(orig)
                deleted += not gone
        return deleted

    deleted = netns.in_thread(flush)
    if deleted:
        log.debug("flushed %d UDP conntrack entries in %s", deleted, netns.name)
    return deleted
