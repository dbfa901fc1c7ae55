"""The default IPAM: Docker's local address pools, kept in cnm's store.

State lives only in the :class:`~cnm.store.Store`, so every controller sharing
a state_dir sees the same allocations:

* kind ``"ipam.pool"``, key = pool id = the subnet (``"172.28.0.0/16"``),
  value ``{"subnet", "ip_range", "owner", "next", "free"}``;
* kind ``"ipam.address"``, key ``"<pool id>/<address>"``, value ``{"owner"}``;
* kind ``"ipam.ula"``, key ``"base"``, value ``{"subnet"}``: the unique local
  /48 that default IPv6 subnets are cut from, drawn once per store (see below).

IPv4 and IPv6 pools and addresses are kept alike: the same records, the same
transactions, the same first-free walk (an IPv6 pool's first address is
``::1``, the gateway as Docker has it). When no IPv6 default pool is
configured, IPv6 networks get /64s of one unique local /48 (RFC 4193), as
Docker 27+ does: derived from ``ula_seed`` with Docker's hash when one is
given, else with a random global ID drawn at the first IPv6 default request
and kept in the store, so every IPAM on the store uses the same /48.

Every read-modify-write runs in one store transaction (serialised between
threads and processes), and the store's unique keys are the last guard: two
requests for the same subnet or address can never both insert it. On a store
whose transactions are optimistic (etcd, shared by several hosts) each public
call is a body :func:`cnm.store.atomic` runs again when another writer won.

Dynamic allocation is first-free, and stays cheap in a big, busy pool thanks to
two hints in the pool record, both offsets into the dynamic range: ``next``, a
frontier, and ``free``, the sorted offsets released below it. Every address of
the range below ``next`` is allocated, reserved or listed in ``free``, so the
lowest free address is ``free[0]`` or else the first free one from ``next`` on.
"""

from __future__ import annotations

import bisect
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Concatenate, ParamSpec, TypeVar

from cnm.errors import AddressInUse, Exhausted, InvalidConfig, NotFound, PoolOverlap
from cnm.ipam.pools import (
    DEFAULT_POOLS,
    IPV6_SUBNET_SIZE,
    DefaultPool,
    first_free_subnet,
    overlapping,
    overlaps,
    parse_default_pools,
    random_ula_base,
    reserved_addresses,
    ula_base,
)
from cnm.store import KeyTaken, Record, Store, Transaction, atomic
from cnm.types import IPAddress, IPNetwork, Pool, parse_address, parse_network

__all__ = ["DEFAULT_POOLS", "LocalIpam"]

logger = logging.getLogger(__name__)

_POOL = "ipam.pool"
_ADDRESS = "ipam.address"
_ULA = "ipam.ula"
# Addresses probed one point lookup at a time before reading the pool's whole
# allocation set instead; sequential allocation almost never gets past the first.
_PROBES = 16
# Released offsets remembered below the frontier; past this the frontier moves back instead,
# which keeps the pool record small at the cost of one longer walk.
_MAX_FREE = 1024
# How many clashing networks an Exhausted message names before summarising.
_SHOWN = 8


def _address_key(pool_id: str, address: IPAddress) -> str:
    return f"{pool_id}/{address}"


def _address_of(network: IPNetwork, offset: int) -> IPAddress:
    # The class, not ip_address(): a small integer would be taken for IPv4.
    return type(network.network_address)(offset)


def _describe(pool_id: str, owner: str) -> str:
    return f"pool {pool_id} of {owner!r}" if owner else f"pool {pool_id}"


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _atomic(method: Callable[Concatenate[LocalIpam, _P], _R]) -> Callable[Concatenate[LocalIpam, _P], _R]:
    # The whole call is one transaction body, so an optimistic store can run it again on conflict;
    # the method's own transactions join the one atomic() opens.
    @functools.wraps(method)
    def call(self: LocalIpam, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return atomic(self._store, lambda _txn: method(self, *args, **kwargs))

    return call


def _pool_of(pool_id: str, record: Record) -> Pool:
    ip_range = record.get("ip_range")
    return Pool(
        id=pool_id,
        subnet=parse_network(record["subnet"]),
        ip_range=None if ip_range is None else parse_network(ip_range, "ip_range"),
    )


class LocalIpam:
    """Allocates subnets from default pools and addresses first-free, persisting in a store.

    Args:
        store: where pools and addresses are recorded; share it (or its file)
            between controllers that must not hand out the same addresses.
        default_pools: ``(base CIDR, prefix length)`` pairs tried in order when
            a network asks for no particular subnet; Docker's by default. If
            none of them is IPv6, IPv6 networks get /64s of a unique local /48.
        ula_seed: derive that /48 from this string as Docker derives it from
            its host id; ``None`` draws a random one, once per store.

    Raises:
        cnm.errors.InvalidConfig: a default pool is malformed.
    """

    def __init__(
        self,
        store: Store,
        default_pools: Iterable[tuple[str | IPNetwork, int]] = DEFAULT_POOLS,
        *,
        ula_seed: str | None = None,
    ) -> None:
        self._store = store
        self._defaults = parse_default_pools(default_pools)
        self._ula_seed = ula_seed

    @_atomic
    def default_pools(self) -> tuple[DefaultPool, ...]:
        """The default pools tried in order, the unique local /48 of IPv6 networks included."""
        with self._store.transaction() as txn:
            return self._default_pools(txn)

    def _default_pools(self, txn: Transaction) -> tuple[DefaultPool, ...]:
        if any(base.version == 6 for base, _ in self._defaults):
            return self._defaults
        return (*self._defaults, (self._ula_base(txn), IPV6_SUBNET_SIZE))

    def _ula_base(self, txn: Transaction) -> IPNetwork:
        if self._ula_seed is not None:
            return ula_base(self._ula_seed)
        found = txn.get(_ULA, "base")
        if found is None:
            found = {"subnet": str(random_ula_base())}
            try:
                # The transaction serialises this with every other IPAM on the store: one /48 for all of them.
                txn.insert(_ULA, "base", found)
            except KeyTaken:
                found = txn.get(_ULA, "base") or found
            logger.info("default IPv6 subnets come from %s", found["subnet"])
        return parse_network(found["subnet"], "unique local base")

    @_atomic
    def request_pool(
        self,
        *,
        subnet: IPNetwork | None = None,
        ip_range: IPNetwork | None = None,
        exclude: Sequence[IPNetwork] = (),
        owner: str = "",
        v6: bool = False,
    ) -> Pool:
        """Reserve a subnet for a network; see :meth:`cnm.ipamapi.Ipam.request_pool`."""
        if subnet is not None:
            subnet = parse_network(subnet)
        if ip_range is not None:
            ip_range = parse_network(ip_range, "ip_range")
            if subnet is None:
                raise InvalidConfig(f"ip_range {ip_range} needs an explicit subnet; add subnet=...")
            if not overlaps(ip_range, subnet) or ip_range.prefixlen < subnet.prefixlen:
                raise InvalidConfig(f"ip_range {ip_range} is not inside subnet {subnet}; pick a range in it")
        with self._store.transaction() as txn:
            pools = [
                (key, parse_network(record["subnet"]), str(record.get("owner", ""))) for key, record in txn.list(_POOL)
            ]
            if subnet is None:
                chosen = self._pick_default(txn, pools, exclude, v6)
            else:
                clashes = [(key, pool_owner) for key, net, pool_owner in pools if overlaps(subnet, net)]
                if clashes:
                    key, pool_owner = clashes[0]
                    raise PoolOverlap(
                        f"subnet {subnet} overlaps {_describe(key, pool_owner)}; pick a subnet that does not "
                        f"overlap it, or delete {pool_owner or 'that network'} first"
                    )
                chosen = subnet
            pool = Pool(id=str(chosen), subnet=chosen, ip_range=ip_range)
            record: Record = {
                "subnet": str(chosen),
                "ip_range": None if ip_range is None else str(ip_range),
                "owner": owner,
                "next": 0,
                "free": [],
            }
            try:
                txn.insert(_POOL, pool.id, record)
            except KeyTaken as exc:
                # Only reachable with a store that does not serialise transactions.
                raise PoolOverlap(f"subnet {chosen} was taken by another request meanwhile; try again") from exc
        logger.info("allocated %s for %r (ip_range %s)", pool.id, owner, ip_range)
        return pool

    def _pick_default(
        self, txn: Transaction, pools: list[tuple[str, IPNetwork, str]], exclude: Sequence[IPNetwork], v6: bool
    ) -> IPNetwork:
        version = 6 if v6 else 4
        defaults = self._default_pools(txn) if v6 else self._defaults
        bases = [(base, size) for base, size in defaults if base.version == version]
        if not bases:
            raise Exhausted(f"no default IPv{version} address pool is configured; give the network an explicit subnet")
        # A default route (or any /0) would rule out every pool; Docker only excludes on-link networks.
        excluded = [net for net in exclude if net.prefixlen > 0]
        taken = [net for _, net, _ in pools] + excluded
        for base, size in bases:
            found = first_free_subnet(base, size, taken)
            if found is not None:
                return found
        names = {str(net): _describe(key, owner) for key, net, owner in pools}
        blockers: list[str] = []
        for base, _ in bases:
            for net in overlapping(base, taken):
                text = names.get(str(net), f"host network {net}")
                if text not in blockers:
                    blockers.append(text)
        shown = ", ".join(blockers[:_SHOWN]) + (f" and {len(blockers) - _SHOWN} more" if len(blockers) > _SHOWN else "")
        raise Exhausted(
            f"every default IPv{version} address pool overlaps an existing network ({shown}); "
            "give the network an explicit subnet, or configure more default pools"
        )

    @_atomic
    def release_pool(self, pool_id: str) -> None:
        """Give a pool and all its addresses back; a pool already gone is fine."""
        with self._store.transaction() as txn:
            for key, _ in txn.list(_ADDRESS, f"{pool_id}/"):
                txn.delete(_ADDRESS, key)
            existed = txn.delete(_POOL, pool_id)
        if existed:
            logger.info("released %s", pool_id)

    def pools(self) -> list[Pool]:
        """Every pool currently handed out."""
        with self._store.transaction() as txn:
            return [_pool_of(pool_id, record) for pool_id, record in txn.list(_POOL)]

    def get_pool(self, pool_id: str) -> Pool:
        """The pool with this id; :class:`~cnm.errors.NotFound` if there is none."""
        with self._store.transaction() as txn:
            return _pool_of(pool_id, self._load(txn, pool_id))

    @staticmethod
    def _load(txn: Transaction, pool_id: str) -> Record:
        record = txn.get(_POOL, pool_id)
        if record is None:
            raise NotFound(f"IPAM pool {pool_id!r} not found; it was never requested or has been released")
        return record

    @_atomic
    def request_address(self, pool_id: str, address: IPAddress | None = None, *, owner: str = "") -> IPAddress:
        """Allocate an address; see :meth:`cnm.ipamapi.Ipam.request_address`."""
        with self._store.transaction() as txn:
            record = self._load(txn, pool_id)
            pool = _pool_of(pool_id, record)
            if address is None:
                found = self._allocate_next(txn, pool, record, owner)
            else:
                found = self._allocate_exact(txn, pool, record, parse_address(address), owner)
        logger.debug("allocated %s in %s for %r", found, pool_id, owner)
        return found

    @staticmethod
    def _allocate_exact(txn: Transaction, pool: Pool, record: Record, address: IPAddress, owner: str) -> IPAddress:
        subnet = pool.subnet
        if address.version != subnet.version or address not in subnet:
            raise InvalidConfig(f"address {address} is outside subnet {subnet} of pool {pool.id}; pick one inside it")
        if int(address) in reserved_addresses(subnet):
            what = "network" if address == subnet.network_address else "broadcast"
            raise InvalidConfig(f"address {address} is the {what} address of {subnet}; pick a host address")
        key = _address_key(pool.id, address)
        try:
            txn.insert(_ADDRESS, key, {"owner": owner})
        except KeyTaken as exc:
            holder = (txn.get(_ADDRESS, key) or {}).get("owner", "")
            by = f" to {holder!r}" if holder else ""
            raise AddressInUse(
                f"address {address} of pool {pool.id} is already allocated{by}; release it first or pick another"
            ) from exc
        span = pool.ip_range or subnet
        first = int(span.network_address)
        frontier = int(record.get("next", 0))
        reserved = reserved_addresses(subnet)
        while first + frontier in reserved:
            frontier += 1
        if address in span and int(address) - first == frontier:
            # Addresses requested in order right at the frontier would otherwise pile up ahead of it and
            # make the next dynamic request walk over all of them.
            record["next"] = frontier + 1
            txn.put(_POOL, pool.id, record)
        return address

    @staticmethod
    def _allocate_next(txn: Transaction, pool: Pool, record: Record, owner: str) -> IPAddress:
        span = pool.ip_range or pool.subnet
        first, last = int(span.network_address), int(span.broadcast_address)
        reserved = reserved_addresses(pool.subnet)
        released: list[int] = list(record.get("free", []))
        while released:
            address = _address_of(span, first + released.pop(0))
            try:
                txn.insert(_ADDRESS, _address_key(pool.id, address), {"owner": owner})
            except KeyTaken:
                # Requested explicitly since it was released; the next one may be free.
                continue
            record["free"] = released
            txn.put(_POOL, pool.id, record)
            return address
        record["free"] = []
        probes = 0
        taken: set[str] | None = None
        for candidate in range(first + int(record.get("next", 0)), last + 1):
            if candidate in reserved:
                continue
            address = _address_of(span, candidate)
            key = _address_key(pool.id, address)
            if taken is None and probes < _PROBES:
                # Point lookups: the common case, where the address after the last one handed out is free.
                probes += 1
                is_free = txn.get(_ADDRESS, key) is None
            else:
                # A long allocated run (addresses requested explicitly, say): read the pool's set once so
                # the rest of the walk is a set lookup per address, bounded by the size of the set.
                if taken is None:
                    taken = {k for k, _ in txn.list(_ADDRESS, f"{pool.id}/")}
                is_free = key not in taken
            if not is_free:
                continue
            try:
                txn.insert(_ADDRESS, key, {"owner": owner})
            except KeyTaken:
                # Only with a store that does not serialise transactions: another request won it.
                continue
            record["next"] = candidate - first + 1
            txn.put(_POOL, pool.id, record)
            return address
        where = f"ip_range {pool.ip_range} of pool {pool.id}" if pool.ip_range is not None else f"pool {pool.id}"
        raise Exhausted(
            f"no free address left in {where}; release some, or use a bigger subnet or ip_range for the network"
        )

    @_atomic
    def release_address(self, pool_id: str, address: IPAddress) -> None:
        """Give an address back; one not allocated (or a pool already gone) is fine."""
        address = parse_address(address)
        with self._store.transaction() as txn:
            record = txn.get(_POOL, pool_id)
            if record is None or not txn.delete(_ADDRESS, _address_key(pool_id, address)):
                return
            pool = _pool_of(pool_id, record)
            span = pool.ip_range or pool.subnet
            offset = int(address) - int(span.network_address)
            frontier = int(record.get("next", 0))
            if address.version == span.version and 0 <= offset < frontier:
                # Below the frontier the hints must account for every free address (see the module docstring).
                free: list[int] = list(record.get("free", []))
                if offset not in free:
                    bisect.insort(free, offset)
                while free and free[-1] == frontier - 1:
                    frontier = free.pop()
                if len(free) > _MAX_FREE:
                    frontier, free = free[0], []
                record["next"], record["free"] = frontier, free
                txn.put(_POOL, pool_id, record)
        logger.debug("released %s in %s", address, pool_id)

    def allocated(self, pool_id: str) -> dict[IPAddress, str]:
        """Every allocated address of the pool, mapped to its owner."""
        prefix = f"{pool_id}/"
        with self._store.transaction() as txn:
            self._load(txn, pool_id)
            return {
                parse_address(key[len(prefix) :]): str(value.get("owner", ""))
                for key, value in txn.list(_ADDRESS, prefix)
            }
