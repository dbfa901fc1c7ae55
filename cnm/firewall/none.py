"""The ``none`` firewall backend: no rules at all, for hosts whose firewall someone else manages.

Like netavark's ``none`` driver: cnm still allocates and records published
ports, but forwarding, NAT and port publishing then work only as far as the
host's own rules allow. ``cnm inspect`` output says so (docs/firewall.md).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from cnm.firewallapi import FirewallNetwork, LinkRule, NetworkRules, PortMapping

if TYPE_CHECKING:
    from cnm.kernel.netns import NetNS

__all__ = ["NoFirewall"]

log = logging.getLogger(__name__)


class NoFirewall:
    """The ``none`` backend: every call succeeds and writes nothing.

    Args:
        host_netns: accepted for the :class:`~cnm.firewallapi.FirewallFactory`
            shape; nothing is written there.
        owner: likewise.
    """

    name = "none"

    def __init__(self, host_netns: NetNS | None = None, *, owner: str = "") -> None:
        self._owner = owner

    def setup_network(self, network: FirewallNetwork) -> None:
        """Write nothing."""
        log.debug("firewall none: no rules for network %s", network.id[:12])

    def teardown_network(self, network: FirewallNetwork) -> None:
        """Remove nothing."""

    def add_ports(self, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
        """Write nothing: the port is recorded, not forwarded."""

    def remove_ports(self, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
        """Remove nothing."""

    def add_link(self, network: FirewallNetwork, link: LinkRule) -> None:
        """Write nothing."""

    def remove_link(self, network: FirewallNetwork, link: LinkRule) -> None:
        """Remove nothing."""

    def reapply(self, networks: Sequence[NetworkRules]) -> None:
        """Write nothing."""

    def cleanup(self, keep: Collection[str] = ()) -> int:
        """Remove nothing; return 0."""
        return 0

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return "NoFirewall()"
