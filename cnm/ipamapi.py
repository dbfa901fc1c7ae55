"""The IPAM contract: what an address manager must implement for cnm.

An IPAM hands out *pools* (one subnet per network, optionally with an
``ip_range`` that dynamic addresses come from) and *addresses* inside them.
It is shaped after libnetwork's ``ipamapi.Ipam`` without the address spaces,
option maps and built-in flag: cnm has one local address space, and what a
caller may ask for is spelled out as keyword arguments.

The default implementation is :class:`cnm.ipam.LocalIpam`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from cnm.types import IPAddress, IPNetwork, Pool

__all__ = ["Ipam", "Pool"]  # Pool lives in cnm.types; re-exported for IPAM authors


@runtime_checkable
class Ipam(Protocol):
    """An address manager: allocates subnets to networks and addresses to endpoints.

    Implementations must be safe to call from several threads, and from
    several processes sharing the same state, and every method must leave the
    state unchanged when it raises.
    """

    def request_pool(
        self,
        *,
        subnet: IPNetwork | None = None,
        ip_range: IPNetwork | None = None,
        exclude: Sequence[IPNetwork] = (),
        owner: str = "",
        v6: bool = False,
    ) -> Pool:
        """Reserve a subnet for a network.

        Args:
            subnet: the subnet wanted; ``None`` picks the first default pool of
                the family chosen by ``v6`` that overlaps neither another pool
                of this IPAM nor anything in ``exclude``.
            ip_range: a CIDR inside ``subnet`` that dynamic addresses come from;
                needs an explicit ``subnet``.
            exclude: networks a default pool must not overlap (the host's
                addresses and routes). An explicit ``subnet`` may overlap them,
                as Docker allows.
            owner: who holds the pool (a network name or id), for messages.
            v6: pick an IPv6 default pool instead of an IPv4 one.

        Raises:
            cnm.errors.InvalidConfig: ``ip_range`` is outside ``subnet`` or given without it.
            cnm.errors.PoolOverlap: ``subnet`` overlaps a pool already handed out.
            cnm.errors.Exhausted: every default pool overlaps something.
        """
        ...

    def release_pool(self, pool_id: str) -> None:
        """Give a pool back, with every address still allocated in it; releasing twice is fine."""
        ...

    def get_pool(self, pool_id: str) -> Pool:
        """The pool with this id.

        Raises:
            cnm.errors.NotFound: no such pool.
        """
        ...

    def request_address(self, pool_id: str, address: IPAddress | None = None, *, owner: str = "") -> IPAddress:
        """Allocate an address of the pool.

        Args:
            pool_id: the pool's id.
            address: the address wanted (anywhere in the subnet, not only in
                ``ip_range``); ``None`` takes the first free address of
                ``ip_range`` (or of the subnet).
            owner: who holds the address (an endpoint name or id), for messages.

        Raises:
            cnm.errors.NotFound: no such pool.
            cnm.errors.InvalidConfig: ``address`` is outside the subnet, or is its
                network, broadcast or subnet-router anycast address.
            cnm.errors.AddressInUse: ``address`` is already allocated.
            cnm.errors.Exhausted: no free address is left.
        """
        ...

    def release_address(self, pool_id: str, address: IPAddress) -> None:
        """Give an address back; releasing one that is not allocated is fine."""
        ...

    def allocated(self, pool_id: str) -> dict[IPAddress, str]:
        """Every allocated address of the pool, mapped to its owner.

        Raises:
            cnm.errors.NotFound: no such pool.
        """
        ...

    def pools(self) -> list[Pool]:
        """Every pool currently handed out (for reconciliation)."""
        ...
