"""Wrappers the kit puts around the driver under test and the firewall, to watch and to fail on demand."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from typing import Any, ClassVar, cast

import attrs

from cnm.driverapi import (
    Capabilities,
    Driver,
    EndpointInfo,
    JoinResult,
    NetworkInfo,
    NetworkRequest,
    PortPublisher,
    SandboxInfo,
    StaticRoute,
)
from cnm.firewallapi import Firewall, FirewallNetwork, LinkRule, NetworkRules, PortMapping
from cnm.testing.conformance.rules import InjectedFailure

__all__ = ["Call", "CheckedFirewall", "DriverSpy", "PublishingSpy"]

_UNREACHABLE_ROUTE = StaticRoute(
    destination=ipaddress.IPv4Network("198.51.100.0/24"), next_hop=ipaddress.IPv4Address("203.0.113.254")
)
"""A route whose next hop is on no link of a fresh sandbox: installing it fails (ENETUNREACH)."""


# --- the wrapped driver ---------------------------------------------------------------------------


@attrs.frozen
class Call:
    """One verb the driver was called with: its arguments and what it returned."""

    verb: str
    args: tuple[Any, ...]
    result: object = None


class DriverSpy:
    """Wraps the driver under test: records each verb, and can sabotage the step after a join.

    With ``sabotage_join`` set, the next join's result gains a route the
    controller cannot install (its next hop is on no link), so the
    controller's own step after the driver's join fails and it must undo the
    join through the driver's leave.

    Every verb of :class:`~cnm.driverapi.Driver` delegates to ``inner`` and
    then records the call, so ``calls`` holds only the verbs that succeeded.
    """

    name: ClassVar[str] = "conformance-subject"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, inner: Driver) -> None:
        self.inner = inner
        self.calls: list[Call] = []
        self.sabotage_join = False

    def _called(self, verb: str, args: tuple[Any, ...], result: object = None) -> None:
        self.calls.append(Call(verb, args, result))

    def last(self, verb: str) -> Call:
        """The most recent call of ``verb``."""
        for call in reversed(self.calls):
            if call.verb == verb:
                return call
        raise LookupError(f"the driver's {verb} was never called")

    def count(self, verb: str) -> int:
        """How often ``verb`` was called."""
        return sum(1 for call in self.calls if call.verb == verb)

    def validate_network(self, network: NetworkRequest) -> dict[str, object]:
        result = self.inner.validate_network(network)
        self._called("validate_network", (network,), result)
        return result

    def create_network(self, network: NetworkInfo) -> None:
        self.inner.create_network(network)
        self._called("create_network", (network,))

    def delete_network(self, network: NetworkInfo) -> None:
        self.inner.delete_network(network)
        self._called("delete_network", (network,))

    def create_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        self.inner.create_endpoint(network, endpoint)
        self._called("create_endpoint", (network, endpoint))

    def delete_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        self.inner.delete_endpoint(network, endpoint)
        self._called("delete_endpoint", (network, endpoint))

    def join(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo, ifname: str) -> JoinResult:
        result = self.inner.join(network, endpoint, sandbox, ifname)
        self._called("join", (network, endpoint, sandbox, ifname), result)
        if self.sabotage_join and result.interface is not None:
            self.sabotage_join = False
            return attrs.evolve(result, routes=(*result.routes, _UNREACHABLE_ROUTE))
        return result

    def leave(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo) -> None:
        self.inner.leave(network, endpoint, sandbox)
        self._called("leave", (network, endpoint, sandbox))


class PublishingSpy(DriverSpy):
    """The wrapper for drivers that publish ports, so ``isinstance(_, PortPublisher)`` stays true."""

    def publish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        cast(PortPublisher, self.inner).publish_ports(network, endpoint)
        self._called("publish_ports", (network, endpoint))

    def unpublish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        cast(PortPublisher, self.inner).unpublish_ports(network, endpoint)
        self._called("unpublish_ports", (network, endpoint))


# --- the wrapped firewall -------------------------------------------------------------------------


class CheckedFirewall:
    """Delegates to a real firewall, keeps what is in force, and fails on demand (``fail_on``)."""

    def __init__(self, inner: Firewall) -> None:
        self.inner = inner
        self.name = inner.name
        self.fail_on: set[str] = set()
        self.methods: list[str] = []
        self.networks: dict[str, FirewallNetwork] = {}
        self.ports: dict[str, set[PortMapping]] = {}
        self.links: dict[str, set[LinkRule]] = {}

    def _enter(self, method: str) -> None:
        self.methods.append(method)
        if method in self.fail_on:
            raise InjectedFailure(f"firewall.{method} failed (injected by the conformance kit)")

    def setup_network(self, network: FirewallNetwork) -> None:
        self._enter("setup_network")
        self.inner.setup_network(network)
        self.networks[network.id] = network

    def teardown_network(self, network: FirewallNetwork) -> None:
        self._enter("teardown_network")
        self.inner.teardown_network(network)
        self.networks.pop(network.id, None)
        self.ports.pop(network.id, None)
        self.links.pop(network.id, None)

    def add_ports(self, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
        self._enter("add_ports")
        self.inner.add_ports(network, ports)
        self.ports.setdefault(network.id, set()).update(ports)

    def remove_ports(self, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
        self._enter("remove_ports")
        self.inner.remove_ports(network, ports)
        self.ports.get(network.id, set()).difference_update(ports)

    def add_link(self, network: FirewallNetwork, link: LinkRule) -> None:
        self._enter("add_link")
        self.inner.add_link(network, link)
        self.links.setdefault(network.id, set()).add(link)

    def remove_link(self, network: FirewallNetwork, link: LinkRule) -> None:
        self._enter("remove_link")
        self.inner.remove_link(network, link)
        self.links.get(network.id, set()).discard(link)

    def reapply(self, networks: Sequence[NetworkRules]) -> None:
        self._enter("reapply")
        self.inner.reapply(networks)
        self.networks = {item.network.id: item.network for item in networks}
        self.ports = {item.network.id: set(item.ports) for item in networks}
        self.links = {item.network.id: set(item.links) for item in networks}

    def cleanup(self, keep: Collection[str] = ()) -> int:
        self._enter("cleanup")
        removed = self.inner.cleanup(keep)
        kept = {network_id[:12] for network_id in keep}
        for network_id in [n for n in self.networks if n[:12] not in kept]:
            self.networks.pop(network_id, None)
            self.ports.pop(network_id, None)
            self.links.pop(network_id, None)
        return removed

    def in_force(self) -> list[str]:
        """What the driver asked for and has not withdrawn, one description each."""
        found = [f"the rules of network {n.id[:12]} on {n.interface}" for n in self.networks.values()]
        found += [f"{len(p)} published port(s) of network {nid[:12]}" for nid, p in self.ports.items() if p]
        found += [f"{len(lk)} link rule(s) of network {nid[:12]}" for nid, lk in self.links.items() if lk]
        return found


_: type[Firewall] = CheckedFirewall
_spy: type[Driver] = DriverSpy
_publisher: type[PortPublisher] = PublishingSpy
