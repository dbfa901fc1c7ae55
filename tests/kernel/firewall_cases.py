"""The networks and port mappings both firewall backends' tests describe, so they test the same cases."""

from __future__ import annotations

import ipaddress

from cnm.firewallapi import FirewallNetwork, PortMapping
from cnm.types import PortRange

NET_A = FirewallNetwork(id="a1" * 32, interface="br-a1a1a1a1a1a1", subnet=ipaddress.IPv4Network("172.28.0.0/16"))
NET_B = FirewallNetwork(id="b2" * 32, interface="br-b2b2b2b2b2b2", subnet=ipaddress.IPv4Network("172.29.0.0/16"))
NET_NOICC = FirewallNetwork(
    id="c3" * 32, interface="br-c3c3c3c3c3c3", subnet=ipaddress.IPv4Network("172.30.0.0/16"), icc=False
)
NET_INTERNAL = FirewallNetwork(
    id="d4" * 32,
    interface="br-d4d4d4d4d4d4",
    subnet=ipaddress.IPv4Network("172.31.0.0/16"),
    internal=True,
    masquerade=False,
)


def port(proto: str, host: str, ip: str, container: str, host_ip: str | None = None) -> PortMapping:
    """A resolved mapping of host port(s) ``host`` to ``ip``:``container``, written as the tests read best."""
    return PortMapping(
        protocol=proto,  # type: ignore[arg-type]
        host_port=PortRange.parse(host),
        container_ip=ipaddress.IPv4Address(ip),
        container_port=PortRange.parse(container),
        host_ip=None if host_ip is None else ipaddress.IPv4Address(host_ip),
    )
