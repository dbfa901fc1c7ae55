"""A firewall that only remembers what it was asked: for unit tests and driver authors.

:class:`RecordingFirewall` satisfies :class:`~cnm.firewallapi.Firewall` without a
kernel (moby's ``StubFirewaller``: it "just tracks what it's been asked for").
Tests check the calls a driver made, in order, and the state those calls leave.
It never stands in for the kernel in a test that claims connectivity.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

import attrs

from cnm.firewallapi import ClosableFirewall, FirewallNetwork, LinkRule, NetworkRules, PortMapping

if TYPE_CHECKING:
    from cnm.kernel.netns import NetNS

__all__ = ["Call", "RecordingFirewall"]

log = logging.getLogger(__name__)


@attrs.frozen
class Call:
    """One recorded call: the method name and its arguments (sequences frozen into tuples)."""

    method: str
    args: tuple[object, ...]


class RecordingFirewall:
    """Records every call and keeps the set of networks, ports and links they leave.

    Behaves like a real backend where that matters to callers: adding twice
    keeps one copy, removing what is gone succeeds, tearing a network down
    drops its ports and links, and :meth:`cleanup` returns how many rules a
    backend would have removed (one per network, port and link here).

    Attributes:
        calls: every call so far, in order.
        networks: the networks set up, by id.
        ports: the published ports, by network id.
        links: the link rules, by network id.
        fail_on: method names that raise :attr:`error` instead of acting, to
            test a caller's rollback.
    """

    name = "recording"

    def __init__(self, host_netns: NetNS | None = None, *, owner: str = "") -> None:
        # host_netns and owner: the FirewallFactory shape (``firewall="recording"``); nothing goes there.
        self.owner = owner
        self.calls: list[Call] = []
        self.networks: dict[str, FirewallNetwork] = {}
        self.ports: dict[str, set[PortMapping]] = {}
        self.links: dict[str, set[LinkRule]] = {}
        self.fail_on: set[str] = set()
        self.error: Exception = RuntimeError("injected firewall failure")

    def _record(self, method: str, *args: object) -> None:
        frozen = tuple(tuple(a) if isinstance(a, list | tuple | set | frozenset) else a for a in args)
        self.calls.append(Call(method, frozen))
        log.debug("firewall call %s%r", method, frozen)
        if method in self.fail_on:
            raise self.error

    @property
    def methods(self) -> list[str]:
        """The names of the calls so far, in order (handy for asserting an order of steps)."""
        return [call.method for call in self.calls]

    def setup_network(self, network: FirewallNetwork) -> None:
        """Remember the network."""
        self._record("setup_network", network)
        self.networks[network.id] = network
        self.ports.setdefault(network.id, set())
        self.links.setdefault(network.id, set())

    def teardown_network(self, network: FirewallNetwork) -> None:
        """Forget the network with its ports and links."""
        self._record("teardown_network", network)
        self._forget(network.id)

    def add_ports(self, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
        """Remember published ports."""
        self._record("add_ports", network, ports)
        self.ports.setdefault(network.id, set()).update(ports)

    def remove_ports(self, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
        """Forget published ports."""
        self._record("remove_ports", network, ports)
        self.ports.get(network.id, set()).difference_update(ports)

    def add_link(self, network: FirewallNetwork, link: LinkRule) -> None:
        """Remember a link rule."""
        self._record("add_link", network, link)
        self.links.setdefault(network.id, set()).add(link)

    def remove_link(self, network: FirewallNetwork, link: LinkRule) -> None:
        """Forget a link rule."""
        self._record("remove_link", network, link)
        self.links.get(network.id, set()).discard(link)

    def reapply(self, networks: Sequence[NetworkRules]) -> None:
        """Replace everything with this description."""
        self._record("reapply", networks)
        self.networks = {item.network.id: item.network for item in networks}
        self.ports = {item.network.id: set(item.ports) for item in networks}
        self.links = {item.network.id: set(item.links) for item in networks}

    def cleanup(self, keep: Collection[str] = ()) -> int:
        """Forget every network not in ``keep``; return how many networks, ports and links went."""
        self._record("cleanup", tuple(keep))
        kept = {network_id[:12] for network_id in keep}  # the kernel backends know networks by id[:12]
        removed = 0
        for network_id in [n for n in self.networks if n[:12] not in kept]:
            removed += 1 + len(self.ports.get(network_id, ())) + len(self.links.get(network_id, ()))
            self._forget(network_id)
        return removed

    def close(self) -> None:
        """Nothing to release."""

    def _forget(self, network_id: str) -> None:
        self.networks.pop(network_id, None)
        self.ports.pop(network_id, None)
        self.links.pop(network_id, None)


_: type[ClosableFirewall] = RecordingFirewall
