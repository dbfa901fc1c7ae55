"""The OVS driver's names and steps, each idempotent: bridges, gateway ports, veth ends, restoration.

Every OVS row the driver makes carries ``external_ids`` naming its network
(:data:`NETWORK_ID`) and, for an endpoint's port, its endpoint
(:data:`ENDPOINT_ID`); the shared VLAN bridge carries :data:`SHARED`. Those
keys, and the link names below, are what cleanup and garbage collection go by.
"""

from __future__ import annotations

import ipaddress
import logging

from cnm.driverapi import NetworkInfo
from cnm.errors import AlreadyExists, InvalidConfig
from cnm.kernel import addresses, links, sysctl
from cnm.kernel.netns import NetNS
from cnm.ovsdb import Ovsdb, PortSpec

from . import tunnels
from .config import SHARED_BRIDGE, OvsOptions

__all__ = [
    "ENDPOINT_ID",
    "NETWORK_ID",
    "SHARED",
    "bridge_name",
    "check_vlan_free",
    "delete_link",
    "delete_ports",
    "ensure_gateway",
    "ensure_shared_bridge",
    "gateway_interface",
    "host_veth_name",
    "restore_network",
    "silence_host_end",
]

log = logging.getLogger(__name__)

NETWORK_ID = "cnm-network"
"""external_ids key naming the network a bridge, port or interface belongs to."""
ENDPOINT_ID = "cnm-endpoint"
"""external_ids key naming the endpoint an endpoint's port belongs to."""
OWNER = "cnm-owner"
"""external_ids key naming the controller (its owner id) that made a row; garbage collection keeps to its own."""
SHARED = "cnm-shared-bridge"
"""external_ids key (value ``true``) of the bridge that VLAN networks share."""

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def host_veth_name(endpoint_id: str) -> str:
    """The host end of an endpoint's veth (its OVS port): ``cno`` and 12 digits of its id."""
    return "cno" + endpoint_id[:12]


def bridge_name(network: NetworkInfo, options: OvsOptions) -> str:
    """The OVS bridge of a network."""
    if options.bridge_name is not None:
        return options.bridge_name
    return SHARED_BRIDGE if options.vlan is not None else "cno-" + network.id[:11]


def gateway_interface(network: NetworkInfo, options: OvsOptions) -> str:
    """The host interface with the gateway address: the bridge's LOCAL port, or a tagged internal port."""
    return bridge_name(network, options) if options.vlan is None else "cng" + network.id[:12]


def ensure_shared_bridge(db: Ovsdb, bridge: str, datapath: str) -> bool:
    """Create the shared bridge unless it is there; True if this call created it."""
    found = db.bridge(bridge)
    if found is None:
        try:
            db.add_bridge(bridge, datapath_type=datapath, external_ids={SHARED: "true"})
        except AlreadyExists:
            found = db.bridge(bridge)  # another controller made it just now
        else:
            return True
    if found is None or found.external_ids.get(SHARED) != "true":
        raise AlreadyExists(f"OVS bridge {bridge} exists and is not a cnm shared bridge; pick another bridge_name")
    if (found.datapath_type or "system") != datapath:
        raise InvalidConfig(
            f"shared OVS bridge {bridge} uses the {found.datapath_type or 'system'} datapath, not {datapath}; "
            "use the same datapath option for every network on it"
        )
    return False


def check_vlan_free(db: Ovsdb, bridge: str, vlan: int, network: NetworkInfo) -> None:
    """Refuse a VLAN that another network already uses on the shared bridge."""
    found = db.bridge(bridge)
    members = set(found.ports) if found is not None else set()
    for port in db.ports():
        owner = port.external_ids.get(NETWORK_ID)
        if port.uuid in members and port.tag == vlan and owner not in (None, network.id):
            raise AlreadyExists(
                f"VLAN {vlan} on OVS bridge {bridge} belongs to network {owner[:12]}; pick another vlan"
            )


def ensure_gateway(host: NetNS, ifname: str, gateway: IPInterface | None) -> bool:
    """The gateway address on the internal port, the port up, routing and DNAT from 127.0.0.1 on.

    Returns:
        True if anything had to change (always, the first time; after a reboot,
        when the address and sysctls were lost though the OVS rows survived).
    """
    changed = False
    with host.netlink() as nl:
        if gateway is not None and gateway not in addresses.list_addresses(nl, ifname):
            addresses.add_address(nl, ifname, gateway)
            changed = True
        link = links.get_link(nl, ifname)
        if link is None or not link.up:
            links.set_link(nl, ifname, up=True)
            changed = True
    changed |= sysctl.set_sysctl(host, "net.ipv4.ip_forward", "1")
    # route_localnet lets host->127.0.0.1:published be DNATed onto the network.
    changed |= sysctl.set_sysctl(host, f"net/ipv4/conf/{ifname}/route_localnet", "1")
    return changed


def silence_host_end(host: NetNS, ifname: str) -> None:
    """Keep the host's own IP stack off an OVS port's veth end.

    The userspace datapath reads the port with a packet socket, so the host
    kernel receives every frame too. Left alone it answers the sandbox's ARP
    for the gateway with the veth's own MAC, and then routes the sandbox's
    traffic in from the veth, past the firewall rules that name the gateway
    port (isolation between networks silently fails).
    """
    sysctl.set_sysctl(host, f"net/ipv4/conf/{ifname}/arp_ignore", "8")  # never answer ARP on it
    sysctl.set_sysctl(host, f"net/ipv4/conf/{ifname}/forwarding", "0")  # never route what comes in on it
    sysctl.set_sysctl(host, f"net/ipv6/conf/{ifname}/disable_ipv6", "1")


def delete_ports(db: Ovsdb, network_id: str, *, keep: tuple[str, ...]) -> None:
    """Delete every port tagged with the network (endpoints' leftovers, tunnels, the gateway port)."""
    for port in db.ports():
        if port.external_ids.get(NETWORK_ID) == network_id and port.name not in keep:
            db.delete_port(port.name)


def delete_link(host: NetNS, name: str) -> None:
    """Delete link ``name`` in ``host``; succeed if it is gone."""
    with host.netlink() as nl:
        links.delete_link(nl, name)


def restore_network(
    host: NetNS, db: Ovsdb, network: NetworkInfo, options: OvsOptions, *, mtu: int, owner: str
) -> list[str]:
    """Re-create what is missing of a network: bridge, gateway port, gateway address and sysctls, tunnels.

    Rows and settings that are there are left as they are, so this may run
    any number of times. Endpoint ports are not restored here: the
    controller joins each endpoint again, which makes its veth and port.

    Returns:
        What had to be re-created, one phrase each.

    Raises:
        AlreadyExists: the network's bridge name is taken by a bridge that is not its own.
    """
    done: list[str] = []
    bridge = bridge_name(network, options)
    gateway_if = gateway_interface(network, options)
    ids = {NETWORK_ID: network.id, OWNER: owner}
    if options.vlan is None:
        found = db.bridge(bridge)
        if found is None:
            db.add_bridge(bridge, datapath_type=options.datapath, mtu=mtu, external_ids=ids)
            done.append(f"OVS bridge {bridge}")
        elif found.external_ids.get(NETWORK_ID) != network.id:
            raise AlreadyExists(
                f"OVS bridge {bridge} of network {network.name!r} belongs to something else now; "
                "delete that bridge or the network"
            )
    else:
        if ensure_shared_bridge(db, bridge, options.datapath):
            done.append(f"shared OVS bridge {bridge}")
        if db.port(gateway_if) is None:
            db.add_port(bridge, PortSpec(name=gateway_if, type="internal", tag=options.vlan, mtu=mtu, external_ids=ids))
            done.append(f"gateway port {gateway_if}")
    if ensure_gateway(host, gateway_if, network.ipv4[0].gateway if network.ipv4 else None):
        done.append(f"gateway address and settings of {gateway_if}")
    missing = [p for p in tunnels.tunnel_ports(network.id, options, ids) if db.port(p.name) is None]
    if missing:
        db.add_ports(bridge, missing)
        done.append("tunnel port(s) " + ", ".join(p.name for p in missing))
        if options.datapath == "netdev":
            tunnels.seed_neighbours(host, tunnels.underlay_for(host, db, options, options.datapath))
    return done
