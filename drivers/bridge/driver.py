"""The bridge driver: a Linux bridge per network, a veth per endpoint, NAT through the firewall."""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Sequence
from typing import ClassVar

from cnm.driverapi import (
    Capabilities,
    Driver,
    DriverContext,
    EndpointInfo,
    JoinResult,
    Linker,
    LinkInfo,
    NetworkInfo,
    NetworkRequest,
    PortPublisher,
    PortPublishing,
    Reconciler,
    SandboxInfo,
    owner_mark,
)
from cnm.errors import InvalidConfig
from cnm.firewallapi import FirewallNetwork, LinkRule, NetworkRules
from cnm.kernel import links
from cnm.steps import Steps

from . import steps
from .config import BridgeOptions

__all__ = ["BridgeDriver"]

log = logging.getLogger(__name__)


# Names this driver generates; only links named so are ever garbage-collected.
_OWN_BRIDGE = re.compile(r"^cnm-[0-9a-f]{11}$")
_OWN_VETH = re.compile(r"^cnm[0-9a-f]{12}$")


def host_veth_name(endpoint_id: str) -> str:
    """The host end of an endpoint's veth: ``cnm`` and 12 digits of its id (15 bytes)."""
    return "cnm" + endpoint_id[:12]


class BridgeDriver:
    """Docker's bridge driver: endpoints on one bridge talk directly; NAT and published ports to the outside."""

    name: ClassVar[str] = "bridge"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, context: DriverContext) -> None:
        self._host = context.host_netns
        self._firewall = context.firewall
        self._ports = PortPublishing(context, self.firewall_network)
        self._mark = owner_mark(context.owner)
        self._observer = context.observer
        self._warned_unmarked: set[str] = set()

    # --- helpers ---------------------------------------------------------------
    @staticmethod
    def options(network: NetworkInfo) -> BridgeOptions:
        """The network's parsed options."""
        return BridgeOptions.parse(network.options)

    @classmethod
    def bridge_name(cls, network: NetworkInfo) -> str:
        """The bridge device of a network."""
        return cls.options(network).bridge_name or "cnm-" + network.id[:11]

    def firewall_network(self, network: NetworkInfo) -> FirewallNetwork:
        """How the firewall sees a network."""
        opts = self.options(network)
        pool = network.ipv4[0].pool
        if not isinstance(pool, ipaddress.IPv4Network):
            raise InvalidConfig(f"network {network.name!r} has no IPv4 subnet; the bridge driver needs one")
        return FirewallNetwork(
            id=network.id,
            interface=self.bridge_name(network),
            subnet=pool,
            icc=opts.icc,
            # routed: the sandboxes' addresses are routed, not hidden behind the host's.
            masquerade=opts.masquerade and opts.gateway_mode != "routed",
            internal=network.internal,
            gateway_mode=opts.gateway_mode,
            trusted_interfaces=opts.trusted_host_interfaces,
        )

    # --- verbs -------------------------------------------------------------------
    def validate_network(self, network: NetworkRequest) -> dict[str, object]:
        """Parse and check the options; see :class:`BridgeOptions`."""
        return BridgeOptions.parse(network.options).to_json()

    def create_network(self, network: NetworkInfo) -> None:
        """Create the bridge with the gateway address, set the sysctls, install the firewall rules."""
        if not network.ipv4:
            raise InvalidConfig(f"network {network.name!r} has no address pool; the bridge driver needs one")
        steps.create_network(
            self._host,
            self._firewall,
            bridge=self.bridge_name(network),
            mtu=self.options(network).mtu,
            gateway=network.ipv4[0].gateway,
            fw_network=self.firewall_network(network),
            mark=self._mark,
            observer=self._observer,
        )
        log.info("bridge network %s ready on %s", network.name, self.bridge_name(network))

    def delete_network(self, network: NetworkInfo) -> None:
        """Remove the rules and the bridge; succeed if they are gone."""
        fw_network, bridge = self.firewall_network(network), self.bridge_name(network)
        with Steps(f"delete bridge network {network.name}", self._observer) as op:
            op.run("firewall rules", lambda: self._firewall.teardown_network(fw_network))
            with self._host.netlink() as nl:
                op.run("delete bridge", lambda: links.delete_link(nl, bridge))

    def create_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Check the endpoint has an address; its veth is made at join."""
        if endpoint.address is None:
            raise InvalidConfig(f"endpoint {endpoint.name!r} has no address; the bridge driver needs one")

    def delete_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Remove a veth left up by an interrupted join or leave.

        A veth that is down was cut off by the leave of a closing sandbox and
        goes with that sandbox's namespace; deleting it here would wait for
        the RCU grace periods the closing leave avoided.
        """
        with self._host.netlink() as nl:
            if links.is_up(nl, host_veth_name(endpoint.id)):
                links.delete_link(nl, host_veth_name(endpoint.id))

    def join(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo, ifname: str) -> JoinResult:
        """Make a veth whose inner end is born in the sandbox as ``ifname``, its outer end on the bridge."""
        steps.attach_veth(
            self._host,
            sandbox.netns,
            host_name=host_veth_name(endpoint.id),
            ifname=ifname,
            bridge=self.bridge_name(network),
            mac=endpoint.mac,
            mtu=self.options(network).mtu,
            mark=self._mark,
            observer=self._observer,
        )
        gateway = network.ipv4[0].gateway
        return JoinResult(
            interface=ifname,
            gateway=None if network.internal or gateway is None else ipaddress.IPv4Address(gateway.ip),
        )

    def leave(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo) -> None:
        """Delete the veth (both ends go); succeed if it is gone.

        When the sandbox is closing, only set the host end down: that takes
        the port off the bridge at once (its forwarding entries are flushed
        and the inner end loses carrier), and the kernel deletes the pair
        with the namespace. Should something keep the namespace alive, the
        pair stays cut off until reconcile removes it, so the address can be
        handed out again at once.
        """
        with self._host.netlink() as nl:
            if sandbox.closing:
                links.set_down_if_exists(nl, host_veth_name(endpoint.id))
            else:
                links.delete_link(nl, host_veth_name(endpoint.id))

    # --- published ports (the kit's PortPublishing) ------------------------------------
    def publish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """DNAT the endpoint's host ports to it; see :class:`~cnm.driverapi.PortPublishing`."""
        self._ports.publish(network, endpoint)

    def unpublish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Withdraw the endpoint's DNAT rules and forget its UDP flows."""
        self._ports.unpublish(network, endpoint)

    # --- legacy links -------------------------------------------------------------------
    def link_rules(self, network: NetworkInfo, links: Sequence[LinkInfo]) -> tuple[LinkRule, ...]:
        """One rule per link: the source may reach the target on its exposed ports.

        The firewall turns a rule into ACCEPT pairs only on an icc=false network;
        with icc on nothing is dropped, so there is nothing to allow.
        """
        return tuple(LinkRule(source_ip=lk.source_ip, target_ip=lk.target_ip, ports=lk.ports) for lk in links)

    def add_link(self, network: NetworkInfo, link: LinkInfo) -> None:
        """Append the link's ACCEPT pairs to the network's rules (icc=false networks only)."""
        for rule in self.link_rules(network, [link]):
            self._firewall.add_link(self.firewall_network(network), rule)

    def remove_link(self, network: NetworkInfo, link: LinkInfo) -> None:
        """Withdraw the link's ACCEPT pairs; succeed if they are gone."""
        for rule in self.link_rules(network, [link]):
            self._firewall.remove_link(self.firewall_network(network), rule)

    # --- reconciliation ---------------------------------------------------------------
    def restore_network(self, network: NetworkInfo) -> bool:
        """Re-create the bridge, its address and sysctls if the bridge is gone (e.g. after a reboot)."""
        bridge = self.bridge_name(network)
        with self._host.netlink() as nl:
            if links.get_link(nl, bridge) is not None:
                return False
        steps.restore_bridge(
            self._host, bridge=bridge, mtu=self.options(network).mtu, gateway=network.ipv4[0].gateway, mark=self._mark
        )
        log.info("re-created bridge %s of network %s", bridge, network.name)
        return True

    def firewall_rules(self, network: NetworkInfo, endpoints: Sequence[EndpointInfo]) -> NetworkRules | None:
        """The network's rules and the published ports of its joined endpoints."""
        return self._ports.rules(network, endpoints)

    def endpoint_intact(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo) -> bool:
        """True if the endpoint's veth is still on its bridge."""
        with self._host.netlink() as nl:
            veth = links.get_link(nl, host_veth_name(endpoint.id))
            bridge = links.get_link(nl, self.bridge_name(network))
        return veth is not None and bridge is not None and veth.master == bridge.index

    def collect_garbage(self, networks: Sequence[NetworkInfo], joined: Sequence[EndpointInfo]) -> list[str]:
        """Delete bridges and veths this controller made (their alias is its mark) that no known object owns.

        Links of other controllers on the same host namespace carry another
        mark and are left alone; so are links named as this driver names them
        but without a mark (made by an older cnm): their owner is unknown.
        """
        keep = {self.bridge_name(n) for n in networks} | {host_veth_name(e.id) for e in joined}
        removed = []
        with self._host.netlink() as nl:
            for link in links.list_links(nl):
                if link.name in keep:
                    continue
                named = (link.kind == "bridge" and _OWN_BRIDGE.match(link.name)) or (
                    link.kind == "veth" and _OWN_VETH.match(link.name)
                )
                if not named:
                    continue  # other drivers of this controller carry the same mark
                if link.alias == self._mark:
                    if links.delete_link(nl, link.name):
                        removed.append(f"deleted orphaned {link.kind} {link.name}")
                elif link.alias is None and link.name not in self._warned_unmarked:
                    self._warned_unmarked.add(link.name)
                    log.info("left %s %s alone: it carries no owner mark (an older cnm made it)", link.kind, link.name)
        return removed


_: type[Driver] = BridgeDriver
_publisher: type[PortPublisher] = BridgeDriver
_reconciler: type[Reconciler] = BridgeDriver
_linker: type[Linker] = BridgeDriver
