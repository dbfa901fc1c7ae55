"""The IPAM contract: what an address manager must implement for cnm.

An IPAM hands out *pools* (one subnet per network, optionally with an
``ip_range`` that dynamic addresses come from) and *addresses* inside them.
It is shaped after libnetwork's ``ipamapi.Ipam`` without the address spaces,
option maps and built-in flag: cnm has one local address space, and what a
caller may ask for is spelled out as keyword arguments.

An IPAM is a class registered under the entry-point group ``cnm.ipams``, as
the built-in one is (``default``: :class:`cnm.ipam.LocalIpam`), constructed as
``Ipam(store)`` with the controller's store (:class:`IpamFactory`);
:func:`open_ipam` does that by name. A third-party IPAM installs like a driver::

    [project.entry-points."cnm.ipams"]
    mine = "my_package:MyIpam"
The controller takes one as ``Controller(ipam=...)``: an :class:`Ipam`, or an installed one's name.

Atomicity with the caller's records: the controller calls the IPAM *inside*
its own store transaction (a network's pool is reserved in the same
transaction that stores the network record, an endpoint's address in the one
that stores the endpoint), and rolls that transaction back if a later step of
it fails. An IPAM must therefore keep its state in the controller's
:class:`cnm.store.Store` (the one given as ``Controller(store=...)``) and do
every read and write in ``store.transaction()``, which joins the caller's
open transaction on the same thread; that is what ``LocalIpam(store)`` does.
An IPAM with state elsewhere (a remote service) would not be rolled back with
the records, and is not supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cnm.errors import InvalidConfig
from cnm.types import IPAddress, IPNetwork, Pool

if TYPE_CHECKING:
    from cnm.store import Store

__all__ = [
    "DEFAULT",
    "ENTRY_POINT_GROUP",
    "Ipam",
    "IpamFactory",
    "Pool",  # Pool lives in cnm.types; re-exported for IPAM authors
    "ipam_names",
    "load_ipam",
    "open_ipam",
]

#: The entry-point group IPAMs register under, the built-in one included.
ENTRY_POINT_GROUP = "cnm.ipams"
#: The name of the built-in IPAM (:class:`cnm.ipam.LocalIpam`), Docker's ``default``.
DEFAULT = "default"


@runtime_checkable
class Ipam(Protocol):
    """An address manager: allocates subnets to networks and addresses to endpoints.

    Implementations must be safe to call from several threads, and from
    several processes sharing the same state, and every method must leave the
    state unchanged when it raises. They keep their state in the controller's
    store and join the caller's transaction (see the module's documentation).
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


@runtime_checkable
class IpamFactory(Protocol):
    """What an entry point of ``cnm.ipams`` names: usually the IPAM class itself."""

    def __call__(self, store: Store) -> Ipam:
        """The IPAM keeping its pools and addresses in ``store`` (the controller's)."""
        ...


def ipam_names() -> list[str]:
    """The installed IPAMs' names (the entry points of ``cnm.ipams``), sorted."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def load_ipam(name: str) -> IpamFactory:
    """The factory (usually the class) of the installed IPAM called ``name``.

    Raises:
        InvalidConfig: no IPAM of that name is installed, or it cannot be loaded.
    """
    found = list(entry_points(group=ENTRY_POINT_GROUP, name=name))
    if not found:
        raise InvalidConfig(
            f"no IPAM named {name!r}; installed IPAMs: {', '.join(ipam_names()) or 'none'}. "
            f"Install one that registers under the {ENTRY_POINT_GROUP!r} entry point"
            + ("" if ipam_names() else " (none at all: reinstall cnm-net, e.g. ./run setup)")
        )
    try:
        factory: IpamFactory = found[0].load()
    except ImportError as exc:
        raise InvalidConfig(
            f"the IPAM {name!r} ({found[0].value}) cannot be loaded: {exc}; install what it needs"
        ) from exc
    return factory


def open_ipam(name: str, store: Store) -> Ipam:
    """The installed IPAM called ``name`` (``"default"``: :class:`cnm.ipam.LocalIpam`), over ``store``.

    Raises:
        InvalidConfig: an unknown name, an IPAM that cannot be loaded, or an object that is no :class:`Ipam`.
    """
    ipam = load_ipam(name)(store)
    if not isinstance(ipam, Ipam):
        raise InvalidConfig(
            f"the IPAM {name!r} made {ipam!r}, which does not implement cnm.ipamapi.Ipam; fix its class"
        )
    return ipam
