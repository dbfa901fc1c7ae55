"""Tunnels between hosts: one VXLAN or GRE port per peer, and what the userspace datapath needs of the underlay.

OVS's userspace datapath encapsulates in ovs-vswitchd itself, so it routes
tunnel packets only out of its own bridges: the underlay address must sit on
an OVS bridge's LOCAL port, which :func:`underlay_for` checks (a kernel route
through any other interface makes OVS drop the traffic silently). It also
learns the underlay neighbours only by snooping ARP while a tunnel port
exists, and drops the packets that find no neighbour; :func:`seed_neighbours`
asks each peer once right after the tunnel ports appear.

The peers come from the network's ``peers`` option, or change while the
network lives (hosts joining and leaving a global network's membership):
:func:`sync_tunnels` makes the tunnel ports exactly one per peer.
"""

from __future__ import annotations

import ipaddress
import logging

import attrs

from cnm.errors import InvalidConfig, KernelError
from cnm.kernel import arp, links, routes
from cnm.kernel.netns import NetNS
from cnm.ovsdb import Ovsdb, PortSpec

from .config import OvsOptions

__all__ = [
    "Underlay",
    "current_peers",
    "seed_neighbours",
    "sync_tunnels",
    "tunnel_port_name",
    "tunnel_ports",
    "underlay_for",
]

PEER = "cnm-peer"
"""The external_ids key of a tunnel port naming its peer's underlay address."""

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class Underlay:
    """How the host reaches one peer.

    Attributes:
        peer: the peer's underlay address.
        interface: the host interface its route goes out of.
        mtu: that interface's MTU.
    """

    peer: ipaddress.IPv4Address
    interface: str
    mtu: int


def tunnel_port_name(network_id: str, peer: str) -> str:
    """``cnt``, 4 digits of the network id and the peer address in hex: 15 bytes, unique per network and peer."""
    return "cnt" + network_id[:4] + ipaddress.IPv4Address(peer).packed.hex()


def tunnel_ports(network_id: str, options: OvsOptions, external_ids: dict[str, str]) -> list[PortSpec]:
    """One tunnel port per peer, tagged with the network's VLAN on a shared bridge."""
    ports = []
    for peer in options.peers:
        settings = {"remote_ip": peer, "key": str(options.tunnel_key)}
        if options.local_ip is not None:
            settings["local_ip"] = options.local_ip
        ports.append(
            PortSpec(
                name=tunnel_port_name(network_id, peer),
                type=options.tunnel,
                options=settings,
                tag=options.vlan,
                external_ids={**external_ids, PEER: peer},
                # Split horizon: what comes in from one peer never goes out to another. Every host
                # tunnels to every other one, so a flood relayed between tunnels would loop forever.
                protected=True,
            )
        )
    return ports


def _route_interface(routes_: list[routes.Route], peer: ipaddress.IPv4Address) -> str | None:
    best: routes.Route | None = None
    for route in routes_:
        if peer in route.destination and (best is None or route.destination.prefixlen > best.destination.prefixlen):
            best = route
    return None if best is None else best.ifname


def underlay_for(host: NetNS, db: Ovsdb, options: OvsOptions, datapath_type: str) -> list[Underlay]:
    """Find how the host reaches each peer, and refuse an underlay the datapath cannot use.

    Raises:
        InvalidConfig: a peer has no route, or (userspace datapath) its route does
            not leave through an OVS bridge's own port.
    """
    if not options.peers:
        return []
    with host.netlink() as nl:
        table = routes.list_routes(nl)
        found = []
        for text in options.peers:
            peer = ipaddress.IPv4Address(text)
            ifname = _route_interface(table, peer)
            link = None if ifname is None else links.get_link(nl, ifname)
            if ifname is None or link is None:
                raise InvalidConfig(
                    f"peer {peer} has no route in the host namespace {host.name}; "
                    "give the host an underlay address on the peers' network first"
                )
            found.append(Underlay(peer=peer, interface=ifname, mtu=link.mtu))
    if datapath_type == "netdev":
        internal = {i.name for i in db.interfaces() if i.type == "internal"}
        for underlay in found:
            if underlay.interface not in internal:
                raise InvalidConfig(
                    f"peer {underlay.peer} is reached through {underlay.interface}, which is not an OVS bridge's "
                    "own port: the userspace datapath routes tunnels only through OVS bridges. Add "
                    f"{underlay.interface}'s uplink to an OVS bridge and move the underlay address onto that bridge"
                )
    return found


def seed_neighbours(host: NetNS, underlays: list[Underlay]) -> None:
    """Ask each peer for its MAC so ovs-vswitchd's tunnel neighbour table learns it now.

    Without this, the first packets through a tunnel are dropped while OVS
    resolves the peer itself. A peer that does not answer yet (its host is
    not set up) is learnt when it later asks for ours.
    """
    for underlay in underlays:
        try:
            arp.send_arp_request(host, underlay.interface, underlay.peer)
        except KernelError as exc:
            log.warning("could not ask peer %s for its MAC: %s", underlay.peer, exc)


def current_peers(db: Ovsdb, network_id: str, network_key: str) -> dict[str, str]:
    """The network's tunnel ports now: peer address -> port name.

    ``network_key`` is the external_ids key that holds the network id.
    """
    return {
        port.external_ids[PEER]: port.name
        for port in db.ports()
        if port.external_ids.get(network_key) == network_id and PEER in port.external_ids
    }


def sync_tunnels(
    host: NetNS,
    db: Ovsdb,
    *,
    bridge: str,
    network_id: str,
    network_key: str,
    options: OvsOptions,
    peers: tuple[str, ...],
    external_ids: dict[str, str],
) -> tuple[list[str], list[str]]:
    """Make the network's tunnel ports exactly one per address in ``peers``; (added, removed) peers.

    Every new peer's underlay is checked first (:func:`underlay_for`), so a peer
    the host cannot reach changes nothing. New ports are added in one OVSDB
    transaction, then the ports of peers that left are deleted.

    Raises:
        InvalidConfig: the network has no tunnel_key, or a new peer cannot be reached.
    """
    if options.tunnel_key is None:
        raise InvalidConfig("this ovs network has no tunnel_key; create it with one to give it peers")
    wanted = tuple(dict.fromkeys(p for p in peers if p != options.local_ip))
    have = current_peers(db, network_id, network_key)
    new = attrs.evolve(options, peers=tuple(p for p in wanted if p not in have))
    underlays = underlay_for(host, db, new, options.datapath)
    if new.peers:
        db.add_ports(bridge, tunnel_ports(network_id, new, external_ids))
    gone = [peer for peer in have if peer not in wanted]
    for peer in gone:
        db.delete_port(have[peer])
    if underlays and options.datapath == "netdev":
        seed_neighbours(host, underlays)
    if new.peers or gone:
        log.info("tunnels of network %s: added %s, removed %s", network_id[:12], list(new.peers), gone)
    return list(new.peers), gone
