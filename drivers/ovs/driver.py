"""The OVS driver: an Open vSwitch bridge per network (or a VLAN on a shared one), tunnels between hosts.

Every endpoint is a veth whose inner end is born in the sandbox and whose
outer end is a port of the OVS bridge (never an OVS internal port moved into
the sandbox: those vanish when ovs-vswitchd restarts). The gateway address
sits on an internal port in the host namespace: the bridge's LOCAL port, or a
VLAN-tagged internal port of each network on a shared bridge. NAT, published
ports and isolation between networks go through the same firewall backend as
the bridge driver, with that port as the network's interface.

Every OVS row the driver makes carries ``external_ids`` naming its network
(``cnm-network``) and endpoint (``cnm-endpoint``), so deletion and cleanup
find exactly cnm's rows. All OVSDB work goes through :mod:`cnm.ovsdb`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import ClassVar

from cnm.driverapi import (
    Capabilities,
    Driver,
    DriverContext,
    EndpointInfo,
    JoinResult,
    NetworkInfo,
    NetworkRequest,
    PortPublisher,
    SandboxInfo,
)
from cnm.errors import AlreadyExists, InvalidConfig, KernelError
from cnm.firewall import FirewallNetwork, PortMapping
from cnm.kernel import addresses, ethtool, links, sysctl
from cnm.kernel.netns import NetNS
from cnm.ovsdb import Ovsdb, PortSpec

from . import tunnels
from .config import SHARED_BRIDGE, OvsOptions

__all__ = ["OvsDriver", "gateway_interface", "host_veth_name"]

log = logging.getLogger(__name__)

NETWORK_ID = "cnm-network"
ENDPOINT_ID = "cnm-endpoint"
SHARED = "cnm-shared-bridge"


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


class OvsDriver:
    """Networks on Open vSwitch bridges, optionally joined across hosts by VXLAN or GRE tunnels."""

    name: ClassVar[str] = "ovs"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, context: DriverContext) -> None:
        self._host = context.host_netns
        self._firewall = context.firewall

    # --- helpers -----------------------------------------------------------------
    @staticmethod
    def options(network: NetworkInfo) -> OvsOptions:
        """The network's parsed options."""
        return OvsOptions.parse(network.options)

    @staticmethod
    def _db(options: OvsOptions) -> Ovsdb:
        return Ovsdb(options.ovsdb, timeout=options.timeout)

    @staticmethod
    def _mtu(options: OvsOptions) -> int:
        return options.mtu or 1500

    def firewall_network(self, network: NetworkInfo) -> FirewallNetwork:
        """How the firewall sees a network: its gateway interface and subnet."""
        options = self.options(network)
        pool = network.ipv4[0].pool if network.ipv4 else None
        if not isinstance(pool, ipaddress.IPv4Network):
            raise InvalidConfig(f"network {network.name!r} has no IPv4 subnet; the ovs driver needs one")
        return FirewallNetwork(
            id=network.id,
            interface=gateway_interface(network, options),
            subnet=pool,
            # Traffic between endpoints never leaves OVS, so iptables could not filter it: icc is always on.
            icc=True,
            masquerade=options.masquerade,
            internal=network.internal,
        )

    # --- verbs -------------------------------------------------------------------
    def validate_network(self, network: NetworkRequest) -> dict[str, object]:
        """Parse the options, resolve the datapath and MTU, and check the underlay; see :class:`OvsOptions`."""
        options = OvsOptions.parse(network.options)
        datapath = options.datapath_type
        mtu = options.mtu
        if options.peers:
            underlays = tunnels.underlay_for(self._host, self._db(options), options, datapath)
            room = min(u.mtu for u in underlays) - options.tunnel_overhead
            if mtu is None:
                mtu = room
            elif mtu > room:
                raise InvalidConfig(
                    f"ovs option mtu={mtu} leaves no room for the {options.tunnel} header "
                    f"({options.tunnel_overhead} bytes) on the underlay; use mtu <= {room}"
                )
        resolved = OvsOptions.parse({**options.to_json(), "datapath": datapath, "mtu": mtu or 1500})
        return resolved.to_json()

    def create_network(self, network: NetworkInfo) -> None:
        """Bridge (or VLAN on the shared bridge), gateway port and address, firewall rules, tunnels."""
        if not network.ipv4:
            raise InvalidConfig(f"network {network.name!r} has no address pool; the ovs driver needs one")
        options = self.options(network)
        db = self._db(options)
        bridge = bridge_name(network, options)
        gateway_if = gateway_interface(network, options)
        ids = {NETWORK_ID: network.id}
        with _Rollback(f"create ovs network {network.name}") as undo:
            if options.vlan is None:
                db.add_bridge(bridge, datapath_type=options.datapath, mtu=self._mtu(options), external_ids=ids)
                undo.done("create bridge", lambda: db.delete_bridge(bridge))
            else:
                if _ensure_shared_bridge(db, bridge, options.datapath):
                    undo.done("create shared bridge", lambda: db.delete_bridge(bridge))
                _check_vlan_free(db, bridge, options.vlan, network)
                db.add_port(
                    bridge,
                    PortSpec(
                        name=gateway_if, type="internal", tag=options.vlan, mtu=self._mtu(options), external_ids=ids
                    ),
                )
                undo.done("add gateway port", lambda: db.delete_port(gateway_if))
            _configure_gateway(self._host, gateway_if, network.ipv4[0].gateway)
            fw_network = self.firewall_network(network)
            self._firewall.setup_network(fw_network)
            undo.done("firewall rules", lambda: self._firewall.teardown_network(fw_network))
            if options.peers:
                db.add_ports(bridge, tunnels.tunnel_ports(network.id, options, ids))
                undo.done("add tunnels", lambda: _delete_ports(db, network.id, keep=(bridge,)))
                if options.datapath == "netdev":
                    tunnels.seed_neighbours(self._host, tunnels.underlay_for(self._host, db, options, options.datapath))
        log.info("ovs network %s ready on bridge %s (gateway port %s)", network.name, bridge, gateway_if)

    def delete_network(self, network: NetworkInfo) -> None:
        """Remove the rules, every OVS row of the network, and its bridge; succeed if they are gone."""
        options = self.options(network)
        db = self._db(options)
        bridge = bridge_name(network, options)
        self._firewall.teardown_network(self.firewall_network(network))
        _delete_ports(db, network.id, keep=(bridge,))
        found = db.bridge(bridge)
        if found is None:
            return
        if found.external_ids.get(NETWORK_ID) == network.id:
            db.delete_bridge(bridge)
        elif found.external_ids.get(SHARED) == "true" and len(found.ports) <= 1:
            # Only its LOCAL port is left: the last network on the shared bridge is gone.
            db.delete_bridge(bridge)

    def create_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Check the endpoint has an address; its veth and port are made at join."""
        if endpoint.address is None:
            raise InvalidConfig(f"endpoint {endpoint.name!r} has no address; the ovs driver needs one")

    def delete_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Remove a port and veth left by an interrupted leave."""
        self._unplug(network, endpoint)

    def join(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo, ifname: str) -> JoinResult:
        """A veth born in the sandbox as ``ifname``, its host end a port of the bridge (tagged on a shared one)."""
        options = self.options(network)
        db = self._db(options)
        host_name = host_veth_name(endpoint.id)
        with _Rollback(f"join endpoint {endpoint.name} to ovs network {network.name}") as undo:
            with self._host.netlink() as nl:
                links.add_veth(nl, host_name, ifname, sandbox.netns, peer_mac=endpoint.mac, mtu=self._mtu(options))
            undo.done("create veth", lambda: _delete_link(self._host, host_name))
            _silence_host_end(self._host, host_name)
            if options.datapath == "netdev":
                # The userspace datapath forwards the partial checksums of offloaded packets
                # as they are, and the receiver drops them: ping works, TCP does not.
                ethtool.set_tx_checksum(sandbox.netns, ifname, on=False)
            db.add_port(
                bridge_name(network, options),
                PortSpec(
                    name=host_name,
                    tag=options.vlan,
                    external_ids={NETWORK_ID: network.id, ENDPOINT_ID: endpoint.id},
                ),
            )
        gateway = network.ipv4[0].gateway if network.ipv4 else None
        return JoinResult(
            interface=ifname,
            gateway=None if network.internal or gateway is None else ipaddress.IPv4Address(gateway.ip),
        )

    def leave(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo) -> None:
        """Remove the port and the veth (both ends go); succeed if they are gone."""
        self._unplug(network, endpoint)

    def _unplug(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        host_name = host_veth_name(endpoint.id)
        _delete_link(self._host, host_name)
        try:
            self._db(self.options(network)).delete_port(host_name)
        except KernelError as exc:
            # The veth is gone, so the endpoint is cut off; a port row left behind is
            # tagged with the network and endpoint, and delete_network removes it.
            log.warning("endpoint %s: its OVS port %s stays in OVSDB for now: %s", endpoint.name, host_name, exc)

    # --- published ports -----------------------------------------------------------
    @staticmethod
    def _mappings(endpoint: EndpointInfo) -> list[PortMapping]:
        if endpoint.address is None:
            return []
        mappings = []
        for port in endpoint.ports:
            if port.host_port is None:
                raise InvalidConfig(f"port {port} of endpoint {endpoint.name!r} has no host port resolved")
            host_ip = port.host_ip if isinstance(port.host_ip, ipaddress.IPv4Address) else None
            if host_ip is not None and host_ip.is_unspecified:
                host_ip = None
            mappings.append(
                PortMapping(
                    protocol=port.protocol,
                    host_port=port.host_port,
                    host_ip=host_ip,
                    container_ip=endpoint.address.ip,
                    container_port=port.container_port,
                )
            )
        return mappings

    def publish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """DNAT the endpoint's host ports to it."""
        self._firewall.add_ports(self.firewall_network(network), self._mappings(endpoint))

    def unpublish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Withdraw the endpoint's DNAT rules."""
        self._firewall.remove_ports(self.firewall_network(network), self._mappings(endpoint))


# --- steps ---------------------------------------------------------------------------
def _ensure_shared_bridge(db: Ovsdb, bridge: str, datapath: str) -> bool:
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


def _check_vlan_free(db: Ovsdb, bridge: str, vlan: int, network: NetworkInfo) -> None:
    found = db.bridge(bridge)
    members = set(found.ports) if found is not None else set()
    for port in db.ports():
        owner = port.external_ids.get(NETWORK_ID)
        if port.uuid in members and port.tag == vlan and owner not in (None, network.id):
            raise AlreadyExists(
                f"VLAN {vlan} on OVS bridge {bridge} belongs to network {owner[:12]}; pick another vlan"
            )


def _configure_gateway(
    host: NetNS, ifname: str, gateway: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None
) -> None:
    """The gateway address on the internal port, the port up, routing and DNAT from 127.0.0.1 on."""
    with host.netlink() as nl:
        if gateway is not None:
            addresses.add_address(nl, ifname, gateway)
        links.set_link(nl, ifname, up=True)
    sysctl.set_sysctl(host, "net.ipv4.ip_forward", "1")
    # route_localnet lets host->127.0.0.1:published be DNATed onto the network.
    sysctl.set_sysctl(host, f"net/ipv4/conf/{ifname}/route_localnet", "1")


def _silence_host_end(host: NetNS, ifname: str) -> None:
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


def _delete_ports(db: Ovsdb, network_id: str, *, keep: tuple[str, ...]) -> None:
    """Delete every port tagged with the network (endpoints' leftovers, tunnels, the gateway port)."""
    for port in db.ports():
        if port.external_ids.get(NETWORK_ID) == network_id and port.name not in keep:
            db.delete_port(port.name)


def _delete_link(host: NetNS, name: str) -> None:
    with host.netlink() as nl:
        links.delete_link(nl, name)


class _Rollback:
    """Undo the finished steps of a failed operation, newest first (cnm's own Rollback is not public API)."""

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self._undo: list[tuple[str, Callable[[], object]]] = []

    def done(self, step: str, undo: Callable[[], object]) -> None:
        """Record that ``step`` finished and how to undo it."""
        self._undo.append((step, undo))

    def __enter__(self) -> _Rollback:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            return
        log.warning("%s failed (%s); undoing %d step(s)", self.operation, exc, len(self._undo))
        for step, undo in reversed(self._undo):
            try:
                undo()
            except Exception as undo_exc:  # noqa: BLE001 - keep undoing; the first error is what matters
                log.error("%s: undoing %r failed: %s", self.operation, step, undo_exc)
                exc.add_note(f"while undoing {step!r} of {self.operation}: {undo_exc!r}")


_: type[Driver] = OvsDriver
_publisher: type[PortPublisher] = OvsDriver
