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

After a crash, a reboot or a wiped database the driver repairs itself as a
:class:`~cnm.driverapi.Reconciler`: it re-creates what is missing of a
network (:func:`.steps.restore_network`) and removes rows and veths nobody
owns, in every OVSDB server it has ever used (:mod:`.recovery`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Sequence
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
    PortPublishing,
    Reconciler,
    SandboxInfo,
    owner_mark,
)
from cnm.errors import InvalidConfig, KernelError
from cnm.firewallapi import FirewallNetwork, NetworkRules
from cnm.kernel import ethtool, links
from cnm.ovsdb import Ovsdb, PortSpec
from cnm.steps import Steps

from . import recovery, steps, tunnels
from .config import OvsOptions
from .steps import ENDPOINT_ID, NETWORK_ID, OWNER, SHARED, bridge_name, gateway_interface, host_veth_name

__all__ = ["OvsDriver", "gateway_interface", "host_veth_name"]

log = logging.getLogger(__name__)

REMOTES_FILE = "ovsdb-remotes.json"
"""The file in the driver's state directory listing the OVSDB servers it has made rows in."""


class OvsDriver:
    """Networks on Open vSwitch bridges, optionally joined across hosts by VXLAN or GRE tunnels."""

    name: ClassVar[str] = "ovs"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, context: DriverContext) -> None:
        self._host = context.host_netns
        self._firewall = context.firewall
        self._ports = PortPublishing(context, self.firewall_network)
        self._owner = context.owner
        self._observer = context.observer
        self._remotes = recovery.RemoteBook(os.path.join(context.state_dir, REMOTES_FILE))

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
        elif mtu is None and options.tunnel_overhead:
            # Peers come later (set_peers): leave room for their tunnel header on a 1500-byte underlay.
            mtu = 1500 - options.tunnel_overhead
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
        ids = {NETWORK_ID: network.id, OWNER: self._owner}
        # Written down first, so that garbage collection finds this server even if we crash now.
        self._remotes.add(options.ovsdb)
        mtu = self._mtu(options)
        # Every change is a named step, seen by the controller's observer (the crash tests kill between them).
        with Steps(f"create ovs network {network.name}", self._observer) as op:
            if options.vlan is None:
                op.run(
                    "create bridge",
                    lambda: db.add_bridge(bridge, datapath_type=options.datapath, mtu=mtu, external_ids=ids),
                    undo=lambda: db.delete_bridge(bridge),
                )
            else:
                vlan = options.vlan
                if op.run("shared bridge", lambda: steps.ensure_shared_bridge(db, bridge, options.datapath)):
                    op.done("create shared bridge", lambda: db.delete_bridge(bridge))
                steps.check_vlan_free(db, bridge, vlan, network)
                spec = PortSpec(name=gateway_if, type="internal", tag=vlan, mtu=mtu, external_ids=ids)
                op.run("add gateway port", lambda: db.add_port(bridge, spec), undo=lambda: db.delete_port(gateway_if))
            gateway = network.ipv4[0].gateway
            op.run("gateway address", lambda: steps.ensure_gateway(self._host, gateway_if, gateway))
            fw_network = self.firewall_network(network)
            op.run(
                "firewall rules",
                lambda: self._firewall.setup_network(fw_network),
                undo=lambda: self._firewall.teardown_network(fw_network),
            )
            if options.peers:
                op.run(
                    "add tunnels",
                    lambda: db.add_ports(bridge, tunnels.tunnel_ports(network.id, options, ids)),
                    undo=lambda: steps.delete_ports(db, network.id, keep=(bridge,)),
                )
                if options.datapath == "netdev":
                    underlay = tunnels.underlay_for(self._host, db, options, options.datapath)
                    op.run("seed neighbours", lambda: tunnels.seed_neighbours(self._host, underlay))
        log.info("ovs network %s ready on bridge %s (gateway port %s)", network.name, bridge, gateway_if)

    def set_peers(self, network: NetworkInfo, peers: Sequence[str]) -> tuple[list[str], list[str]]:
        """Make the network's tunnels one per peer in ``peers`` now; the (added, removed) peers.

        For networks whose hosts come and go (a global network's membership): the
        network needs a ``tunnel_key``; its own ``local_ip`` in ``peers`` is skipped.
        A peer the host has no usable route to changes nothing and raises InvalidConfig.
        """
        options = self.options(network)
        return tunnels.sync_tunnels(
            self._host,
            self._db(options),
            bridge=bridge_name(network, options),
            network_id=network.id,
            network_key=NETWORK_ID,
            options=options,
            peers=tuple(str(ipaddress.IPv4Address(p)) for p in peers),
            external_ids={NETWORK_ID: network.id, OWNER: self._owner},
        )

    def delete_network(self, network: NetworkInfo) -> None:
        """Remove the rules, every OVS row of the network, and its bridge; succeed if they are gone."""
        options = self.options(network)
        db = self._db(options)
        bridge = bridge_name(network, options)
        fw_network = self.firewall_network(network)
        with Steps(f"delete ovs network {network.name}", self._observer) as op:
            op.run("firewall rules", lambda: self._firewall.teardown_network(fw_network))
            op.run("delete ports", lambda: steps.delete_ports(db, network.id, keep=(bridge,)))
            found = db.bridge(bridge)
            if found is None:
                return
            if found.external_ids.get(NETWORK_ID) == network.id or (
                # Only its LOCAL port is left: the last network on the shared bridge is gone.
                found.external_ids.get(SHARED) == "true" and len(found.ports) <= 1
            ):
                op.run("delete bridge", lambda: db.delete_bridge(bridge))

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
        mtu = self._mtu(options)
        spec = PortSpec(
            name=host_name,
            tag=options.vlan,
            external_ids={NETWORK_ID: network.id, ENDPOINT_ID: endpoint.id, OWNER: self._owner},
        )
        with Steps(f"join endpoint {endpoint.name} to ovs network {network.name}", self._observer) as op:
            with self._host.netlink() as nl:
                op.run(
                    "create veth",
                    lambda: links.add_veth(nl, host_name, ifname, sandbox.netns, peer_mac=endpoint.mac, mtu=mtu),
                    undo=lambda: steps.delete_link(self._host, host_name),
                )
                op.run("mark veth", lambda: links.set_alias(nl, host_name, owner_mark(self._owner)))
            op.run("silence host end", lambda: steps.silence_host_end(self._host, host_name))
            if options.datapath == "netdev":
                # The userspace datapath forwards the partial checksums of offloaded packets
                # as they are, and the receiver drops them: ping works, TCP does not.
                op.run("tx checksum off", lambda: ethtool.set_tx_checksum(sandbox.netns, ifname, on=False))
            op.run("add port", lambda: db.add_port(bridge_name(network, options), spec))
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
        with Steps(f"unplug endpoint {endpoint.name} from ovs network {network.name}", self._observer) as op:
            op.run("delete veth", lambda: steps.delete_link(self._host, host_name))
            try:
                db = self._db(self.options(network))
                op.run("delete port", lambda: db.delete_port(host_name))
            except KernelError as exc:
                # The veth is gone, so the endpoint is cut off; a port row left behind is
                # tagged with the network and endpoint, and delete_network removes it.
                log.warning("endpoint %s: its OVS port %s stays in OVSDB for now: %s", endpoint.name, host_name, exc)

    # --- published ports (the kit's PortPublishing) ------------------------------------
    def publish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """DNAT the endpoint's host ports to it; see :class:`~cnm.driverapi.PortPublishing`."""
        self._ports.publish(network, endpoint)

    def unpublish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Withdraw the endpoint's DNAT rules and forget its UDP flows."""
        self._ports.unpublish(network, endpoint)

    # --- reconciliation ---------------------------------------------------------------
    def restore_network(self, network: NetworkInfo) -> bool:
        """Re-create what is missing: bridge or gateway port, gateway address and sysctls, tunnels.

        OVSDB keeps its rows across a reboot, but the gateway address and the
        sysctls do not; a wiped database loses the rows too. Either way the
        endpoints' ports come back when the controller joins them again.
        """
        options = self.options(network)
        self._remotes.add(options.ovsdb)  # networks made before the list existed
        done = steps.restore_network(
            self._host, self._db(options), network, options, mtu=self._mtu(options), owner=self._owner
        )
        if done:
            log.info("network %s: re-created %s", network.name, "; ".join(done))
        return bool(done)

    def firewall_rules(self, network: NetworkInfo, endpoints: Sequence[EndpointInfo]) -> NetworkRules | None:
        """The network's rules and the published ports of its joined endpoints."""
        return self._ports.rules(network, endpoints)

    def endpoint_intact(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo) -> bool:
        """True if the endpoint's veth exists and is its port, with its tag, on the network's bridge."""
        host_name = host_veth_name(endpoint.id)
        with self._host.netlink() as nl:
            if links.get_link(nl, host_name) is None:
                return False
        options = self.options(network)
        db = self._db(options)
        port = db.port(host_name)
        if port is None or port.external_ids.get(ENDPOINT_ID) != endpoint.id or port.tag != options.vlan:
            return False
        bridge = db.bridge(bridge_name(network, options))
        return bridge is not None and port.uuid in bridge.ports

    def collect_garbage(self, networks: Sequence[NetworkInfo], joined: Sequence[EndpointInfo]) -> list[str]:
        """Remove OVS rows naming unknown networks or unjoined endpoints, and veths no joined endpoint owns.

        Looks in every OVSDB server a network uses or the driver has ever
        used; see :mod:`.recovery`.
        """
        in_use: dict[str, float] = {}
        bridges = set()
        for network in networks:
            options = self.options(network)
            in_use[options.ovsdb] = min(options.timeout, in_use.get(options.ovsdb, options.timeout))
            bridges.add(bridge_name(network, options))
        return recovery.collect_garbage(
            self._host,
            self._remotes,
            owner=self._owner,
            in_use=in_use,
            networks={n.id for n in networks},
            endpoints={e.id for e in joined},
            bridges=bridges,
            keep_veths={host_veth_name(e.id) for e in joined},
        )


_: type[Driver] = OvsDriver
_publisher: type[PortPublisher] = OvsDriver
_reconciler: type[Reconciler] = OvsDriver
