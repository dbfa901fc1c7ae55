"""Routes: the default route of a sandbox, static routes, and listing."""

from __future__ import annotations

import errno
import ipaddress
import socket

import attrs

from cnm.kernel.errors import map_netlink_errors
from cnm.kernel.links import require_index
from cnm.kernel.netns import Netlink

__all__ = ["Route", "add_route", "default_route", "delete_route", "list_routes", "replace_default_route"]

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen(kw_only=True)
class Route:
    """A route of the main table."""

    destination: _IPNetwork
    gateway: _IPAddress | None
    ifname: str | None


def list_routes(nl: Netlink, family: int = socket.AF_INET) -> list[Route]:
    """The main table's routes of one address family."""
    with map_netlink_errors(f"list routes in {nl.netns.name}"):
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in nl.ipr.get_links()}
        msgs = nl.ipr.get_routes(family=family, table=254)
    routes = []
    for m in msgs:
        dst = m.get_attr("RTA_DST")
        if dst is None:
            dst = "0.0.0.0" if family == socket.AF_INET else "::"
        gateway = m.get_attr("RTA_GATEWAY")
        routes.append(
            Route(
                destination=ipaddress.ip_network(f"{dst}/{m['dst_len']}", strict=False),
                gateway=ipaddress.ip_address(gateway) if gateway else None,
                ifname=names.get(m.get_attr("RTA_OIF")),
            )
        )
    return routes


def add_route(nl: Netlink, destination: _IPNetwork, *, gateway: _IPAddress | None = None, ifname: str) -> None:
    """Add a route; fine if the same route exists."""
    spec: dict[str, object] = {"dst": str(destination), "oif": require_index(nl, ifname)}
    if gateway is not None:
        spec["gateway"] = str(gateway)
    with map_netlink_errors(
        f"add route {destination} via {gateway} dev {ifname} in {nl.netns.name}", ok=(errno.EEXIST,)
    ):
        nl.ipr.route("add", **spec)


def replace_default_route(nl: Netlink, gateway: _IPAddress, ifname: str) -> None:
    """Make ``gateway`` on ``ifname`` the default route of its family, replacing any other.

    An IPv4 gateway sets ``0.0.0.0/0``, an IPv6 one ``::/0``; the other
    family's default route is left alone, so a dual-stack sandbox calls this
    once per family. Delete one with ``delete_route(nl, ip_network("::/0"))``.
    """
    default = "0.0.0.0/0" if gateway.version == 4 else "::/0"
    with map_netlink_errors(f"set default route via {gateway} dev {ifname} in {nl.netns.name}"):
        nl.ipr.route("replace", dst=default, gateway=str(gateway), oif=require_index(nl, ifname))


def delete_route(nl: Netlink, destination: _IPNetwork) -> bool:
    """Delete the main-table route to ``destination``; True if one was deleted."""
    with map_netlink_errors(
        f"delete route {destination} in {nl.netns.name}", ok=(errno.ESRCH, errno.ENOENT, errno.ENODEV)
    ) as gone:
        nl.ipr.route("del", dst=str(destination))
    return not gone


def default_route(nl: Netlink, version: int = 4) -> Route | None:
    """The main table's default route of one family (4 or 6), or None."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    return next((r for r in list_routes(nl, family) if r.destination.prefixlen == 0), None)
