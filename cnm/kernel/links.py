"""Network interfaces: bridges, veth pairs, VXLAN links; up/down, MTU, master.

Every helper takes an open :class:`~cnm.kernel.netns.Netlink` (which names
its namespace). ``ensure_*`` helpers accept what already exists when it is
what was asked for; ``delete_*`` helpers succeed when the link is gone.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import struct
from typing import Any

import attrs

from cnm.errors import InvalidConfig, KernelError
from cnm.kernel.errors import map_netlink_errors
from cnm.kernel.netns import Netlink, NetNS

__all__ = [
    "IFNAMSIZ",
    "MACVLAN_MODES",
    "Link",
    "add_macvlan",
    "add_veth",
    "check_ifname",
    "delete_link",
    "ensure_bridge",
    "get_link",
    "is_up",
    "link_index",
    "list_links",
    "move_link",
    "random_mac",
    "require_index",
    "set_alias",
    "set_down_if_exists",
    "set_hairpin",
    "set_link",
]

log = logging.getLogger(__name__)

IFNAMSIZ = 15
"""The longest interface name the kernel takes, in bytes."""


def check_ifname(name: str, what: str = "interface name") -> str:
    """Refuse a name the kernel would refuse; return it unchanged."""
    encoded = name.encode()
    if not encoded or len(encoded) > IFNAMSIZ or "/" in name or any(c.isspace() for c in name) or name in (".", ".."):
        raise InvalidConfig(
            f"{what} {name!r} is not a valid interface name: at most {IFNAMSIZ} bytes, no '/' or spaces"
        )
    return name


@attrs.frozen(kw_only=True)
class Link:
    """An interface as the kernel reports it."""

    index: int
    name: str
    kind: str | None
    mtu: int
    mac: str | None
    up: bool
    master: int | None
    alias: str | None = None
    """The link's alias (IFLA_IFALIAS); cnm marks its links with their owner there."""


def _link_from_msg(msg: Any) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return Link(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME"),
        kind=kind,
        mtu=msg.get_attr("IFLA_MTU"),
        mac=msg.get_attr("IFLA_ADDRESS"),
        up=bool(msg["flags"] & 1),
        master=msg.get_attr("IFLA_MASTER"),
        alias=msg.get_attr("IFLA_IFALIAS") or None,
    )


def get_link(nl: Netlink, name: str) -> Link | None:
    """The link called ``name``, or None."""
    msgs: list[Any] = []
    with map_netlink_errors(f"look up link {name} in {nl.netns.name}", ok=(errno.ENODEV,)):
        # RTM_GETLINK by name is answered by the kernel in constant time;
        # pyroute2's get_links(ifname=) dumps every link and filters in Python.
        msgs = nl.ipr.link("get", ifname=name)
    return _link_from_msg(msgs[0]) if msgs else None


def list_links(nl: Netlink) -> list[Link]:
    """Every link in the namespace."""
    with map_netlink_errors(f"list links in {nl.netns.name}"):
        msgs = nl.ipr.get_links()
    return [_link_from_msg(msg) for msg in msgs]


_SIOCGIFINDEX = 0x8933
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1


def _ifreq(nl: Netlink, name: str, request: int, what: str) -> bytes | None:
    """Ask ``nl``'s namespace about link ``name`` with an interface ioctl; None if there is no such link.

    Interface ioctls on the netlink socket answer in microseconds, in that socket's
    namespace; a netlink RTM_GETLINK answer takes pyroute2 about 0.3 ms to parse.
    """
    check_ifname(name)
    with map_netlink_errors(f"{what} of link {name} in {nl.netns.name}", ok=(errno.ENODEV,)):
        # struct ifreq: the name, then a 24-byte union the kernel answers in.
        return fcntl.ioctl(nl.fd, request, struct.pack("16s24x", name.encode()))
    return None  # ENODEV: there is no such link


def link_index(nl: Netlink, name: str) -> int | None:
    """The index of link ``name``, or None if there is no such link (SIOCGIFINDEX)."""
    reply = _ifreq(nl, name, _SIOCGIFINDEX, "read the index")
    return None if reply is None else int(struct.unpack_from("i", reply, 16)[0])


def is_up(nl: Netlink, name: str) -> bool | None:
    """Whether link ``name`` is administratively up; None if there is no such link (SIOCGIFFLAGS)."""
    reply = _ifreq(nl, name, _SIOCGIFFLAGS, "read the flags")
    return None if reply is None else bool(struct.unpack_from("H", reply, 16)[0] & _IFF_UP)


def require_index(nl: Netlink, name: str) -> int:
    """The index of link ``name``; KernelError (ENODEV) if there is none."""
    index = link_index(nl, name)
    if index is None:
        raise KernelError(f"link {name} does not exist in {nl.netns.name}", errno.ENODEV)
    return index


def random_mac() -> str:
    """A random locally administered unicast MAC address (the first octet's low bits are 1 0)."""
    octets = bytearray(secrets.token_bytes(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def ensure_bridge(nl: Netlink, name: str, *, mtu: int | None = None, up: bool = True) -> Link:
    """Create bridge ``name`` unless it exists; refuse a non-bridge of that name."""
    check_ifname(name, "bridge name")
    existing = get_link(nl, name)
    if existing is None:
        # An address of its own, as Docker's bridge driver gives docker0: left to the kernel, a bridge
        # takes the lowest of its ports' addresses and changes it when that port goes, and every
        # sandbox's neighbour entry for the gateway then points at an address nobody answers to
        # (lookups to a resolver on the gateway time out for as long as the entry stays reachable).
        spec: dict[str, Any] = {"ifname": name, "kind": "bridge", "address": random_mac()}
        if mtu is not None:
            spec["mtu"] = mtu
        # EEXIST: another caller created it in between; checked below like any existing link.
        with map_netlink_errors(f"create bridge {name} in {nl.netns.name}", ok=(errno.EEXIST,)):
            nl.ipr.link("add", **spec)
        existing = get_link(nl, name)
        if existing is None:
            raise KernelError(f"bridge {name} vanished right after creation in {nl.netns.name}", errno.ENODEV)
        log.debug("created bridge %s in %s", name, nl.netns.name)
    if existing.kind != "bridge":
        raise KernelError(
            f"{name} already exists in {nl.netns.name} but is a {existing.kind or 'plain'} link, not a bridge; "
            "pick another bridge_name",
            errno.EEXIST,
        )
    if mtu is not None and existing.mtu != mtu:
        set_link(nl, name, mtu=mtu)
    if up and not existing.up:
        set_link(nl, name, up=True)
    return get_link(nl, name) or existing


def _add_born_in(nl: Netlink, spec: dict[str, Any], born: dict[str, Any], netns: NetNS, what: str) -> None:
    """Send link ``spec`` with ``born`` (``spec`` itself, or its peer's) created in ``netns``; ``what`` names it."""
    fd = None
    if netns != nl.netns:
        fd = os.open(netns.path, os.O_RDONLY | os.O_CLOEXEC)
        born["net_ns_fd"] = fd
    try:
        with map_netlink_errors(what):
            nl.ipr.link("add", **spec)
    finally:
        if fd is not None:
            os.close(fd)


def add_veth(
    nl: Netlink,
    name: str,
    peer: str,
    peer_netns: NetNS,
    *,
    peer_mac: str | None = None,
    mtu: int | None = None,
    master: str | None = None,
) -> None:
    """Create a veth pair whose peer is born inside ``peer_netns``.

    Creating the peer directly in its namespace avoids the RCU grace period a
    move would cost (about 20 ms). The host end is enslaved to ``master`` and
    set up in the same request.
    """
    check_ifname(name)
    check_ifname(peer)
    peer_spec: dict[str, Any] = {"ifname": peer}
    if peer_mac is not None:
        peer_spec["address"] = peer_mac
    if mtu is not None:
        peer_spec["mtu"] = mtu
    spec: dict[str, Any] = {"ifname": name, "kind": "veth", "state": "up", "peer": peer_spec}
    if mtu is not None:
        spec["mtu"] = mtu
    if master is not None:
        spec["master"] = require_index(nl, master)
    _add_born_in(
        nl, spec, peer_spec, peer_netns, f"create veth {name} (peer {peer} in {peer_netns.name}) in {nl.netns.name}"
    )
    log.debug("created veth %s in %s with peer %s in %s", name, nl.netns.name, peer, peer_netns.name)


MACVLAN_MODES = ("private", "vepa", "bridge", "passthru")
"""The macvlan modes the kernel knows, as ``ip link`` spells them."""


def add_macvlan(
    nl: Netlink,
    name: str,
    parent: str,
    netns: NetNS,
    *,
    mode: str = "bridge",
    mac: str | None = None,
    mtu: int | None = None,
) -> None:
    """Create a macvlan link on ``parent`` (a link in ``nl``'s namespace), born inside ``netns``.

    As with :func:`add_veth`, creating the link directly in its namespace
    spares a move; it is left down.
    """
    check_ifname(name)
    if mode not in MACVLAN_MODES:
        raise InvalidConfig(f"unknown macvlan mode {mode!r}; use one of {', '.join(MACVLAN_MODES)}")
    spec: dict[str, Any] = {"ifname": name, "kind": "macvlan", "link": require_index(nl, parent), "macvlan_mode": mode}
    if mac is not None:
        spec["address"] = mac
    if mtu is not None:
        spec["mtu"] = mtu
    _add_born_in(nl, spec, spec, netns, f"create macvlan {name} on {parent} of {nl.netns.name} in {netns.name}")
    log.debug("created macvlan %s on %s in %s", name, parent, netns.name)


def set_link(
    nl: Netlink, name: str, *, up: bool | None = None, mtu: int | None = None, master: str | None = None
) -> None:
    """Change a link's state, MTU or master."""
    spec: dict[str, Any] = {"index": require_index(nl, name)}
    if up is not None:
        spec["state"] = "up" if up else "down"
    if mtu is not None:
        spec["mtu"] = mtu
    if master is not None:
        spec["master"] = require_index(nl, master)
    with map_netlink_errors(f"set link {name} in {nl.netns.name}"):
        nl.ipr.link("set", **spec)


def move_link(nl: Netlink, name: str, netns: NetNS, *, new_name: str | None = None, mac: str | None = None) -> None:
    """Move link ``name`` into ``netns`` (renamed ``new_name``, with MAC ``mac``), down, as dockerd moves a plugin's.

    The link is taken down first: a link can be renamed only while down, and
    the caller brings it up once it is configured in its new namespace.
    """
    target = new_name or name
    check_ifname(target)
    spec: dict[str, Any] = {"index": require_index(nl, name), "state": "down"}
    with map_netlink_errors(f"set link {name} down in {nl.netns.name}"):
        nl.ipr.link("set", **spec)
    spec = {"index": spec["index"], "ifname": target}
    if mac is not None:
        spec["address"] = mac
    fd = os.open(netns.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        spec["net_ns_fd"] = fd
        with map_netlink_errors(f"move link {name} to {netns.name} as {target}"):
            nl.ipr.link("set", **spec)
    finally:
        os.close(fd)
    log.debug("moved link %s from %s to %s as %s", name, nl.netns.name, netns.name, target)


def set_alias(nl: Netlink, name: str, alias: str) -> None:
    """Set link ``name``'s alias (IFLA_IFALIAS), e.g. the mark of the controller that owns it."""
    with map_netlink_errors(f"set the alias of link {name} in {nl.netns.name}"):
        nl.ipr.link("set", index=require_index(nl, name), ifalias=alias)


def set_down_if_exists(nl: Netlink, name: str) -> bool:
    """Set link ``name`` down; succeed if it is gone. True if it was there."""
    index = link_index(nl, name)
    if index is None:
        return False
    with map_netlink_errors(f"set link {name} down in {nl.netns.name}", ok=(errno.ENODEV,)) as gone:
        nl.ipr.link("set", index=index, state="down")
    return not gone


def set_hairpin(nl: Netlink, name: str, on: bool = True) -> None:
    """Let a bridge port send frames back out the port they came in on."""
    with map_netlink_errors(f"set hairpin on bridge port {name} in {nl.netns.name}"):
        nl.ipr.brport("set", index=require_index(nl, name), mode=int(on))  # IFLA_BRPORT_MODE: hairpin


def delete_link(nl: Netlink, name: str) -> bool:
    """Delete link ``name``; succeed if it is already gone. True if deleted."""
    index = link_index(nl, name)
    if index is None:
        return False
    with map_netlink_errors(f"delete link {name} in {nl.netns.name}", ok=(errno.ENODEV,)) as gone:
        nl.ipr.link("del", index=index)
    if gone:
        return False
    log.debug("deleted link %s in %s", name, nl.netns.name)
    return True
