"""Default address pools and the overlap arithmetic behind pool selection.

The defaults are Docker's local ones (``ipamutils.localScopeDefaultNetworks``):
each entry is a base network and the prefix length of the subnets it is cut
into, tried in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeAlias

from cnm.errors import InvalidConfig
from cnm.types import IPNetwork, parse_network

__all__ = [
    "DEFAULT_POOLS",
    "DefaultPool",
    "first_free_subnet",
    "overlapping",
    "overlaps",
    "parse_default_pools",
    "reserved_addresses",
]

DefaultPool: TypeAlias = tuple[IPNetwork, int]
"""A base network and the prefix length of the subnets cut from it."""

DEFAULT_POOLS: tuple[tuple[str, int], ...] = (
    ("172.17.0.0/16", 16),
    ("172.18.0.0/16", 16),
    ("172.19.0.0/16", 16),
    ("172.20.0.0/14", 16),
    ("172.24.0.0/14", 16),
    ("172.28.0.0/14", 16),
    ("192.168.0.0/16", 20),
)
"""Docker's local default pools, as ``(base CIDR, subnet prefix length)`` pairs."""


def parse_default_pools(pools: Iterable[tuple[str | IPNetwork, int]]) -> tuple[DefaultPool, ...]:
    """Validate ``(base CIDR, size)`` pairs, raising :class:`InvalidConfig` on a bad one."""
    parsed: list[DefaultPool] = []
    for base, size in pools:
        network = parse_network(base, "default pool")
        if not network.prefixlen <= size <= network.max_prefixlen:
            raise InvalidConfig(
                f"default pool {network} cannot be cut into /{size} subnets; "
                f"give a size between {network.prefixlen} and {network.max_prefixlen}"
            )
        parsed.append((network, size))
    return tuple(parsed)


def _bounds(network: IPNetwork) -> tuple[int, int]:
    return int(network.network_address), int(network.broadcast_address)


def overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    """True if the two networks share an address (networks of different families never do)."""
    if a.version != b.version:
        return False
    a_first, a_last = _bounds(a)
    b_first, b_last = _bounds(b)
    return a_first <= b_last and b_first <= a_last


def overlapping(network: IPNetwork, others: Iterable[IPNetwork]) -> list[IPNetwork]:
    """The members of ``others`` that overlap ``network``, in their order."""
    return [other for other in others if overlaps(network, other)]


def first_free_subnet(base: IPNetwork, size: int, taken: Sequence[IPNetwork]) -> IPNetwork | None:
    """The first /``size`` subnet of ``base`` that overlaps nothing in ``taken``, or None.

    A large base cut into small subnets (10.0.0.0/8 into /24s) has too many
    candidates to test one by one, so on a clash the walk jumps past the end of
    the network it clashed with: it makes at most ``len(taken) + 1`` steps.
    """
    step = 1 << (base.max_prefixlen - size)
    first, last = _bounds(base)
    relevant = [_bounds(t) for t in taken if t.version == base.version]
    candidate = first
    while candidate + step - 1 <= last:
        end = candidate + step - 1
        clash = next(((lo, hi) for lo, hi in relevant if lo <= end and candidate <= hi), None)
        if clash is None:
            # The class, not ip_network(): a small integer would be taken for IPv4.
            return type(base)((candidate, size))
        # Next subnet boundary strictly after the clashing network's last address.
        candidate = max(candidate + step, (clash[1] - first) // step * step + first + step)
    return None


def reserved_addresses(subnet: IPNetwork) -> frozenset[int]:
    """The addresses of ``subnet`` that are never handed out, as integers.

    IPv4 reserves the network and broadcast addresses, except in /31 and /32
    (RFC 3021) where every address is a host. IPv6 has no broadcast; it
    reserves the subnet-router anycast address (the all-zero host part),
    except in /127 and /128 (RFC 6164).
    """
    first, last = _bounds(subnet)
    if subnet.prefixlen >= subnet.max_prefixlen - 1:
        return frozenset()
    if subnet.version == 4:
        return frozenset((first, last))
    return frozenset((first,))
