"""IP addresses on interfaces (idempotent add and delete)."""

from __future__ import annotations

import errno
import ipaddress
import socket

from cnm.kernel.errors import map_netlink_errors
from cnm.kernel.links import link_index, require_index
from cnm.kernel.netns import Netlink

__all__ = ["IPInterface", "add_address", "delete_address", "list_addresses"]

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def _family(addr: IPInterface) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def add_address(nl: Netlink, ifname: str, address: IPInterface) -> None:
    """Put ``address`` (with its prefix length) on ``ifname``; fine if it is there."""
    index = require_index(nl, ifname)
    with map_netlink_errors(f"add address {address} to {ifname} in {nl.netns.name}", ok=(errno.EEXIST,)):
        nl.ipr.addr(
            "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen, family=_family(address)
        )


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
