"""Default address pools and the overlap arithmetic behind pool selection.

The defaults are Docker's local ones (``ipamutils.localScopeDefaultNetworks``):
each entry is a base network and the prefix length of the subnets it is cut
into, tried in order.

IPv6 has no fixed default: as Docker 27+ does, a host (here, a store) gets
one unique local /48 (RFC 4193: ``fd`` and a 40-bit global ID) cut into /64s,
see :func:`ula_base` and docs/ipv6.md.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Iterable, Sequence
from typing import TypeAlias

from cnm.errors import InvalidConfig
from cnm.types import IPNetwork, parse_network

__all__ = [
    "DEFAULT_POOLS",
    "IPV6_SUBNET_SIZE",
    "ULA_PREFIX",
    "DefaultPool",
    "first_free_subnet",
    "overlapping",
    "overlaps",
    "parse_default_pools",
    "random_ula_base",
    "reserved_addresses",
    "ula_base",
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

ULA_PREFIX = ipaddress.IPv6Network("fd00::/8")
"""Unique local addresses with the L bit set (RFC 4193 section 3.1): ``fc00::/7`` locally assigned."""

IPV6_SUBNET_SIZE = 64
"""The prefix length of a default IPv6 subnet: one /64 per network, as Docker and netavark."""

_GLOBAL_ID_BITS = 40


def _ula_of(global_id: int) -> ipaddress.IPv6Network:
    # fd (8 bits), the global ID (40 bits), then 16 bits of subnet ID and 64 of interface ID: a /48.
    return ipaddress.IPv6Network((int(ULA_PREFIX.network_address) | global_id << 80, 48))


def ula_base(seed: str) -> ipaddress.IPv6Network:
    """The unique local /48 Docker derives from a host id (``ipamutils.DeriveULABaseNetwork``).

    The global ID is the low 40 bits of the first 8 bytes of SHA-256 of
    ``seed``, so one seed always gives the same /48: ``ula_base("")`` is
    ``fd42:98fc:1c14::/48``, as in Docker's own test.
    """
    digest = hashlib.sha256(seed.encode()).digest()
    return _ula_of(int.from_bytes(digest[:8], "big") & ((1 << _GLOBAL_ID_BITS) - 1))


def random_ula_base() -> ipaddress.IPv6Network:
    """A unique local /48 with a random 40-bit global ID (RFC 4193 section 3.2)."""
    return _ula_of(secrets.randbits(_GLOBAL_ID_BITS))


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
