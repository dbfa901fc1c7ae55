"""IP addresses on interfaces (idempotent add and delete).

IPv6 addresses can be added with ``nodad=True`` (``IFA_F_NODAD``, as Docker
adds them): the kernel then skips duplicate address detection and the address
is usable at once, instead of "tentative" for a second or more, during which
it cannot be bound or used as a source. cnm's addresses come from its IPAM,
which never hands one out twice, so the detection has nothing to find.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from cnm.kernel.errors import map_netlink_errors
from cnm.kernel.links import link_index, require_index
from cnm.kernel.netns import Netlink

__all__ = ["IPInterface", "add_address", "delete_address", "list_addresses", "tentative_addresses"]

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# <linux/if_addr.h>
_IFA_F_NODAD = 0x02
_IFA_F_DADFAILED = 0x08
_IFA_F_TENTATIVE = 0x40


def _family(addr: IPInterface) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def add_address(nl: Netlink, ifname: str, address: IPInterface, *, nodad: bool = False) -> None:
    """Put ``address`` (with its prefix length) on ``ifname``; fine if it is there.

    Args:
        nodad: for an IPv6 address, skip duplicate address detection so the
            address is usable at once; IPv4 has none, and ignores it. An
            address already there keeps the flags it was added with.
    """
    index = require_index(nl, ifname)
    spec: dict[str, object] = {
        "index": index,
        "address": str(address.ip),
        "prefixlen": address.network.prefixlen,
        "family": _family(address),
    }
    if nodad and address.version == 6:
        spec["flags"] = _IFA_F_NODAD
    with map_netlink_errors(f"add address {address} to {ifname} in {nl.netns.name}", ok=(errno.EEXIST,)):
        nl.ipr.addr("add", **spec)


def delete_address(nl: Netlink, ifname: str, address: IPInterface) -> bool:
    """Remove ``address`` from ``ifname``; succeed if it is gone. True if removed."""
    index = link_index(nl, ifname)
    if index is None:
        return False
    with map_netlink_errors(
        f"delete address {address} from {ifname} in {nl.netns.name}",
        ok=(errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT),
    ) as gone:
        nl.ipr.addr(
            "del",
            index=index,
            address=str(address.ip),
            prefixlen=address.network.prefixlen,
            family=_family(address),
        )
    return not gone


def list_addresses(nl: Netlink, ifname: str | None = None) -> list[IPInterface]:
    """Every address in the namespace, or on one interface."""
    with map_netlink_errors(f"list addresses in {nl.netns.name}"):
        if ifname is not None:
            index = link_index(nl, ifname)
            if index is None:
                return []
            msgs = nl.ipr.get_addr(index=index)
        else:
            msgs = nl.ipr.get_addr()
    return [ipaddress.ip_interface(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}") for m in msgs]


def tentative_addresses(nl: Netlink, ifname: str | None = None) -> list[IPInterface]:
    """The IPv6 addresses not usable yet: still in duplicate address detection, or failed it.

    An address added with ``nodad=True`` never shows here; nor does one of a
    namespace or interface with ``accept_dad=0`` (see :mod:`cnm.kernel.sysctl`).
    """
    with map_netlink_errors(f"list IPv6 addresses in {nl.netns.name}"):
        if ifname is not None:
            index = link_index(nl, ifname)
            if index is None:
                return []
            msgs = nl.ipr.get_addr(index=index, family=socket.AF_INET6)
        else:
            msgs = nl.ipr.get_addr(family=socket.AF_INET6)
    found: list[IPInterface] = []
    for m in msgs:
        # IFA_FLAGS carries all 32 bits of the flags; the header field only the low 8 (both hold these).
        flags = m.get_attr("IFA_FLAGS")
        if (m["flags"] if flags is None else flags) & (_IFA_F_TENTATIVE | _IFA_F_DADFAILED):
            found.append(ipaddress.ip_interface(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}"))
    return found
