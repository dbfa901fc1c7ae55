"""Unit tests of the default IPAM against both stores; no privileges needed."""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnm.errors import AddressInUse, Exhausted, InvalidConfig, NotFound, PoolOverlap
from cnm.ipam import DEFAULT_POOLS, LocalIpam
from cnm.ipam.pools import (
    ULA_PREFIX,
    first_free_subnet,
    parse_default_pools,
    random_ula_base,
    reserved_addresses,
    ula_base,
)
from cnm.ipamapi import Ipam, Pool
from cnm.store import MemoryStore, SqliteStore, Store
from cnm.types import IPAddress, IPNetwork

net = ipaddress.ip_network
addr = ipaddress.ip_address


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each test runs against the in-memory store and a SQLite file."""
    s: Store = MemoryStore() if request.param == "memory" else SqliteStore(str(tmp_path / "state.db"))
    yield s
    s.close()


@pytest.fixture
def ipam(store: Store) -> LocalIpam:
    """A LocalIpam with Docker's default pools."""
    return LocalIpam(store)


def test_satisfies_the_contract(ipam: LocalIpam) -> None:
    assert isinstance(ipam, Ipam)


# Pools ------------------------------------------------------------------------------------------


def test_default_pools_are_handed_out_in_docker_order(ipam: LocalIpam) -> None:
    got = [str(ipam.request_pool(owner=f"n{i}").subnet) for i in range(14)]
    assert got == [
        "172.17.0.0/16",
        "172.18.0.0/16",
        "172.19.0.0/16",
        "172.20.0.0/16",
        "172.21.0.0/16",
        "172.22.0.0/16",
        "172.23.0.0/16",
        "172.24.0.0/16",
        "172.25.0.0/16",
        "172.26.0.0/16",
        "172.27.0.0/16",
        "172.28.0.0/16",
        "172.29.0.0/16",
        "172.30.0.0/16",
    ]
    assert str(ipam.request_pool().subnet) == "172.31.0.0/16"
    assert str(ipam.request_pool().subnet) == "192.168.0.0/20"
    assert str(ipam.request_pool().subnet) == "192.168.16.0/20"


def test_pool_id_is_the_subnet_and_get_pool_returns_it(ipam: LocalIpam) -> None:
    pool = ipam.request_pool(subnet=net("10.1.0.0/16"), ip_range=net("10.1.5.0/24"), owner="n1")
    assert pool == Pool(id="10.1.0.0/16", subnet=net("10.1.0.0/16"), ip_range=net("10.1.5.0/24"))
    assert ipam.get_pool(pool.id) == pool


def test_default_selection_skips_excluded_host_networks(ipam: LocalIpam) -> None:
    pool = ipam.request_pool(exclude=[net("172.17.0.0/16"), net("172.18.5.0/24")])
    assert pool.subnet == net("172.19.0.0/16")


def test_default_selection_ignores_a_default_route_in_exclude(ipam: LocalIpam) -> None:
    assert ipam.request_pool(exclude=[net("0.0.0.0/0")]).subnet == net("172.17.0.0/16")


def test_default_selection_skips_pools_overlapping_explicit_ones(ipam: LocalIpam) -> None:
    ipam.request_pool(subnet=net("172.17.128.0/24"), owner="custom")
    ipam.request_pool(subnet=net("172.18.0.0/15"), owner="wide")
    assert ipam.request_pool().subnet == net("172.20.0.0/16")


def test_explicit_subnet_may_overlap_host_routes(ipam: LocalIpam) -> None:
    pool = ipam.request_pool(subnet=net("172.17.0.0/16"), exclude=[net("172.17.0.0/16")])
    assert pool.subnet == net("172.17.0.0/16")


def test_explicit_subnet_overlapping_a_pool_is_refused(ipam: LocalIpam) -> None:
    ipam.request_pool(subnet=net("172.28.0.0/16"), owner="net1")
    with pytest.raises(PoolOverlap, match=r"172\.28\.0\.0/16.*'net1'"):
        ipam.request_pool(subnet=net("172.28.5.0/24"), owner="net2")
    with pytest.raises(PoolOverlap, match="net1"):
        ipam.request_pool(subnet=net("172.28.0.0/16"), owner="net3")
    with pytest.raises(PoolOverlap):
        ipam.request_pool(subnet=net("172.0.0.0/8"))


def test_ip_range_must_be_inside_an_explicit_subnet(ipam: LocalIpam) -> None:
    with pytest.raises(InvalidConfig, match="explicit subnet"):
        ipam.request_pool(ip_range=net("172.28.5.0/24"))
    with pytest.raises(InvalidConfig, match="not inside"):
        ipam.request_pool(subnet=net("172.28.0.0/16"), ip_range=net("172.29.0.0/24"))
    with pytest.raises(InvalidConfig, match="not inside"):
        ipam.request_pool(subnet=net("172.28.0.0/16"), ip_range=net("172.0.0.0/8"))


def test_no_free_default_pool_is_exhausted_and_names_the_clashes(store: Store) -> None:
    ipam = LocalIpam(store, default_pools=[("10.0.0.0/23", 24)])
    ipam.request_pool(owner="a")
    ipam.request_pool(owner="b")
    with pytest.raises(Exhausted, match=r"10\.0\.0\.0/24 of 'a'.*10\.0\.1\.0/24 of 'b'.*explicit subnet"):
        ipam.request_pool()
    with pytest.raises(Exhausted, match=r"host network 10\.0\.0\.0/16"):
        LocalIpam(MemoryStore(), default_pools=[("10.0.0.0/23", 24)]).request_pool(exclude=[net("10.0.0.0/16")])


def test_no_default_ipv4_pool_asks_for_a_subnet(store: Store) -> None:
    with pytest.raises(Exhausted, match=r"no default IPv4 address pool.*explicit subnet"):
        LocalIpam(store, default_pools=[("fd00:c0ff::/48", 64)]).request_pool()


def test_configured_ipv6_default_pools(store: Store) -> None:
    ipam = LocalIpam(store, default_pools=[*DEFAULT_POOLS, ("fd00:c0ff::/48", 64)])
    assert ipam.request_pool(v6=True).subnet == net("fd00:c0ff::/64")
    assert ipam.request_pool(v6=True).subnet == net("fd00:c0ff:0:1::/64")
    assert ipam.request_pool().subnet == net("172.17.0.0/16")


def test_bad_default_pools_are_refused(store: Store) -> None:
    with pytest.raises(InvalidConfig):
        LocalIpam(store, default_pools=[("10.0.0.0/16", 8)])
    with pytest.raises(InvalidConfig):
        LocalIpam(store, default_pools=[("10.0.0.1/16", 24)])


def test_release_pool_is_idempotent_and_frees_the_subnet_and_addresses(ipam: LocalIpam) -> None:
    pool = ipam.request_pool()
    ipam.request_address(pool.id, owner="ep1")
    ipam.release_pool(pool.id)
    ipam.release_pool(pool.id)
    with pytest.raises(NotFound):
        ipam.get_pool(pool.id)
    with pytest.raises(NotFound):
        ipam.allocated(pool.id)
    again = ipam.request_pool()
    assert again.subnet == pool.subnet
    assert ipam.allocated(again.id) == {}


def test_unknown_pool_is_not_found(ipam: LocalIpam) -> None:
    with pytest.raises(NotFound, match=r"10\.9\.0\.0/16"):
        ipam.request_address("10.9.0.0/16")


# Addresses --------------------------------------------------------------------------------------


def test_addresses_are_handed_out_first_free(ipam: LocalIpam) -> None:
    pool = ipam.request_pool(subnet=net("172.28.0.0/16"))
    got = [ipam.request_address(pool.id, owner=f"ep{i}") for i in range(3)]
    assert got == [addr("172.28.0.1"), addr("172.28.0.2"), addr("172.28.0.3")]
    assert ipam.allocated(pool.id) == {got[0]: "ep0", got[1]: "ep1", got[2]: "ep2"}


def test_a_slash_30_has_two_addresses_then_is_exhausted(ipam: LocalIpam) -> None:
    pool = ipam.request_pool(subnet=net("10.0.0.0/30"))
    assert ipam.request_address(pool.id) == addr("10.0.0.1")
    assert ipam.request_address(pool.id) == addr("10.0.0.2")
    with pytest.raises(Exhausted, match=r"pool 10\.0\.0\.0/30.*bigger subnet"):
        ipam.request_address(pool.id)
    assert set(ipam.allocated(pool.id)) == {addr("10.0.0.1"), addr("10.0.0.2")}


def test_network_and_broadcast_are_never_handed_out(ipam: LocalIpam) -> None:
    pool = ipam.request_pool(subnet=net("10.0.0.0/29"))
    got = {ipam.request_address(pool.id) for _ in range(6)}
    with pytest.raises(Exhausted):
        ipam.request_address(pool.id)
    assert got == {addr(f"10.0.0.{i}") for i in range(1, 7)}
    for reserved in ("10.0.0.0", "10.0.0.7"):
        with pytest.raises(InvalidConfig, match=r"network|broadcast"):
            ipam.request_address(pool.id, addr(reserved))


def test_slash_31_and_32_use_every_address(ipam: LocalIpam) -> None:
    p31 = ipam.request_pool(subnet=net("10.0.0.0/31"))
    assert [ipam.request_address(p31.id), ipam.request_address(p31.id)] == [addr("10.0.0.0"), addr("10.0.0.1")]
    p32 = ipam.request_pool(subnet=net("10.0.1.7/32"))
    assert ipam.request_address(p32.id) == addr("10.0.1.7")


def test_ip_range_is_respected_for_dynamic_addresses(ipam: LocalIpam) -> None:
    pool = ipam.request_pool(subnet=net("172.28.0.0/16"), ip_range=net("172.28.5.0/30"))
    # An explicit address (the gateway) may lie outside the range.
    assert ipam.request_address(pool.id, addr("172.28.0.1"), owner="gateway") == addr("172.28.0.1")
    got = [ipam.request_address(pool.id) for _ in range(4)]
    assert got == [addr(f"172.28.5.{i}") for i in range(4)]
    with pytest.raises(Exhausted, match=r"ip_range 172\.28\.5\.0/30"):
        ipam.request_address(pool.id)


def test_requested_address_taken_names_its_owner(ipam: LocalIpam) -> None:
    pool = ipam.request_pool(subnet=net("172.28.0.0/16"))
    ipam.request_address(pool.id, addr("172.28.0.9"), owner="web")
    with pytest.raises(AddressInUse, match=r"172\.28\.0\.9.*'web'"):
        ipam.request_address(pool.id, addr("172.28.0.9"), owner="db")
    assert ipam.allocated(pool.id) == {addr("172.28.0.9"): "web"}


def test_requested_address_outside_the_subnet_is_invalid(ipam: LocalIpam) -> None:
    pool = ipam.request_pool(subnet=net("172.28.0.0/16"))
    with pytest.raises(InvalidConfig, match="outside subnet"):
        ipam.request_address(pool.id, addr("172.29.0.1"))
    with pytest.raises(InvalidConfig, match="outside subnet"):
        ipam.request_address(pool.id, addr("fd00::1"))


@pytest.mark.parametrize("order", [1, -1], ids=["ascending", "descending"])
def test_dynamic_allocation_skips_explicit_addresses(ipam: LocalIpam, order: int) -> None:
    # Descending, the explicit run sits ahead of the frontier and is longer than the point probes.
    pool = ipam.request_pool(subnet=net("10.0.0.0/24"))
    for i in range(1, 40)[::order]:
        ipam.request_address(pool.id, addr(f"10.0.0.{i}"))
    assert ipam.request_address(pool.id) == addr("10.0.0.40")
    assert ipam.request_address(pool.id) == addr("10.0.0.41")


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("max_free", [1024, 3])
def test_random_operations_match_a_first_free_model(
    store: Store, monkeypatch: pytest.MonkeyPatch, max_free: int, family: int
) -> None:
    # The pool record's hints (frontier, released list) must never change what first-free means.
    monkeypatch.setattr("cnm.ipam._MAX_FREE", max_free)
    ipam = LocalIpam(store)
    if family == 4:
        subnet, ip_range = net("10.0.0.0/26"), net("10.0.0.0/27")
    else:
        # 64 addresses as in IPv4; with no broadcast, only the subnet-router anycast ::0 is reserved.
        subnet, ip_range = net("fd00:7::/122"), net("fd00:7::/123")
    pool = ipam.request_pool(subnet=subnet, ip_range=ip_range)
    hosts: list[IPAddress] = [h for h in subnet if int(h) not in reserved_addresses(subnet)]
    assert len(hosts) == (62 if family == 4 else 63)
    dynamic = [h for h in hosts if h in ip_range]
    model: set[IPAddress] = set()
    rng = random.Random(7)
    for _ in range(600):
        op = rng.random()
        if op < 0.4:
            expected = next((h for h in dynamic if h not in model), None)
            if expected is None:
                with pytest.raises(Exhausted):
                    ipam.request_address(pool.id)
            else:
                assert ipam.request_address(pool.id) == expected
                model.add(expected)
        elif op < 0.6:
            wanted = rng.choice(hosts)
            if wanted in model:
                with pytest.raises(AddressInUse):
                    ipam.request_address(pool.id, wanted)
            else:
                assert ipam.request_address(pool.id, wanted) == wanted
                model.add(wanted)
        else:
            gone = rng.choice(hosts)
            ipam.release_address(pool.id, gone)
            model.discard(gone)
        assert set(ipam.allocated(pool.id)) == model


def test_release_then_request_gets_the_lowest_free_address_again(ipam: LocalIpam) -> None:
    pool = ipam.request_pool(subnet=net("10.0.0.0/24"))
    got = [ipam.request_address(pool.id) for _ in range(5)]
    ipam.release_address(pool.id, got[1])
    ipam.release_address(pool.id, got[1])  # idempotent
    ipam.release_address(pool.id, addr("10.0.0.200"))  # never allocated
    ipam.release_address(pool.id, addr("192.0.2.1"))  # not even in the subnet
    ipam.release_address("10.99.0.0/16", addr("10.99.0.1"))  # no such pool
    assert ipam.request_address(pool.id) == got[1]
    assert ipam.request_address(pool.id) == addr("10.0.0.6")


def test_an_exhausted_pool_recovers_after_a_release(ipam: LocalIpam) -> None:
    pool = ipam.request_pool(subnet=net("10.0.0.0/30"))
    first, second = ipam.request_address(pool.id), ipam.request_address(pool.id)
    with pytest.raises(Exhausted):
        ipam.request_address(pool.id)
    ipam.release_address(pool.id, second)
    assert ipam.request_address(pool.id) == second
    ipam.release_address(pool.id, first)
    assert ipam.request_address(pool.id) == first


def test_ipv6_reserves_only_the_subnet_router_anycast_address(ipam: LocalIpam) -> None:
    pool = ipam.request_pool(subnet=net("fd00:1::/126"))
    got = [ipam.request_address(pool.id) for _ in range(3)]
    assert got == [addr("fd00:1::1"), addr("fd00:1::2"), addr("fd00:1::3")]
    with pytest.raises(Exhausted):
        ipam.request_address(pool.id)
    with pytest.raises(InvalidConfig, match="network"):
        ipam.request_address(pool.id, addr("fd00:1::"))


def test_ipv6_slash_64_allocates_cheaply(ipam: LocalIpam) -> None:
    pool = ipam.request_pool(subnet=net("2001:db8::/64"), ip_range=net("2001:db8::ff00/120"))
    assert ipam.request_address(pool.id) == addr("2001:db8::ff00")
    assert ipam.request_address(pool.id, addr("2001:db8::ffff:ffff:ffff:ffff")) == addr("2001:db8::ffff:ffff:ffff:ffff")


def test_reserved_addresses() -> None:
    assert reserved_addresses(net("10.0.0.0/30")) == {int(addr("10.0.0.0")), int(addr("10.0.0.3"))}
    assert reserved_addresses(net("10.0.0.0/31")) == frozenset()
    assert reserved_addresses(net("fd00::/64")) == {int(addr("fd00::"))}
    assert reserved_addresses(net("fd00::/127")) == frozenset()


def test_first_free_subnet_jumps_over_large_clashes() -> None:
    taken: list[IPNetwork] = [net("10.0.0.0/9"), net("10.128.0.0/24"), net("10.128.1.7/32")]
    assert first_free_subnet(net("10.0.0.0/8"), 24, taken) == net("10.128.2.0/24")
    assert first_free_subnet(net("10.0.0.0/8"), 24, [net("10.0.0.0/8")]) is None
    assert first_free_subnet(net("fd00::/56"), 64, [net("fd00::/64")]) == net("fd00:0:0:1::/64")
    assert parse_default_pools(DEFAULT_POOLS)[3] == (net("172.20.0.0/14"), 16)


# Persistence, concurrency, cost -----------------------------------------------------------------


def test_a_new_ipam_on_the_same_file_sees_the_allocations(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    first = SqliteStore(path)
    pool = LocalIpam(first).request_pool(owner="net1")
    ip = LocalIpam(first).request_address(pool.id, owner="ep1")
    first.close()

    second = SqliteStore(path)
    ipam = LocalIpam(second)
    assert ipam.get_pool(pool.id) == pool
    assert ipam.allocated(pool.id) == {ip: "ep1"}
    assert ipam.request_pool().subnet != pool.subnet
    assert ipam.request_address(pool.id) != ip
    second.close()


def test_threads_never_get_the_same_address(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "state.db"))
    ipam = LocalIpam(store)
    pool = ipam.request_pool(subnet=net("10.10.0.0/16"))
    results: list[list[IPAddress]] = [[] for _ in range(8)]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for n in range(50):
                results[index].append(ipam.request_address(pool.id, owner=f"t{index}-{n}"))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    every = [ip for chunk in results for ip in chunk]
    assert len(set(every)) == len(every) == 400
    assert len(ipam.allocated(pool.id)) == 400
    store.close()


def _allocate_in_child(path: str, pool_id: str, index: int, count: int, out: multiprocessing.Queue[str]) -> None:
    # A fresh store per process: SQLite connections must not cross a fork.
    store = SqliteStore(path)
    ipam = LocalIpam(store)
    for n in range(count):
        out.put(str(ipam.request_address(pool_id, owner=f"p{index}-{n}")))
    store.close()


def test_processes_never_get_the_same_address(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    store = SqliteStore(path)
    pool = LocalIpam(store).request_pool(subnet=net("10.20.0.0/16"))
    store.close()
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_allocate_in_child, args=(path, pool.id, i, 50, out)) for i in range(4)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in range(200)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(set(got)) == 200
    store = SqliteStore(path)
    assert {str(ip) for ip in LocalIpam(store).allocated(pool.id)} == set(got)
    store.close()


def test_allocation_goes_on_past_a_thousand_addresses_and_explicit_ones_ahead(tmp_path: Path) -> None:
    # Its cost at this size is measured by benchmarks/bench_cnm.py (ADD at k=1000), not asserted here.
    store = SqliteStore(str(tmp_path / "state.db"))
    ipam = LocalIpam(store)
    pool = ipam.request_pool(subnet=net("10.30.0.0/16"))
    base = int(addr("10.30.0.0"))
    with store.transaction():
        got = [ipam.request_address(pool.id) for _ in range(1000)]
    assert len(set(got)) == 1000
    # Explicit addresses piled up ahead of the frontier, out of order, are skipped by the next request.
    with store.transaction():
        for i in range(2100, 1000, -1):
            ipam.request_address(pool.id, ipaddress.ip_address(base + i))
    assert ipam.request_address(pool.id) == ipaddress.ip_address(base + 2101)
    store.close()


# IPv6: default unique local pools, and the v4 cases above for IPv6 ------------------------------


def test_ula_base_derives_the_prefix_docker_derives_from_a_host_id() -> None:
    # The expected values are those of moby's ipamutils TestDeriveULABaseNetwork.
    assert ula_base("") == net("fd42:98fc:1c14::/48")
    assert ula_base("499d4bc0-b0b3-416f-b1ee-cf6486315593") == net("fd62:fb69:18af::/48")
    drawn = random_ula_base()
    assert drawn.prefixlen == 48
    assert drawn.subnet_of(ULA_PREFIX)


def test_enable_ipv6_without_a_subnet_gets_slash_64s_of_one_unique_local_slash_48(ipam: LocalIpam) -> None:
    first, second = ipam.request_pool(v6=True, owner="n1"), ipam.request_pool(v6=True, owner="n2")
    assert isinstance(first.subnet, ipaddress.IPv6Network)
    assert first.subnet.prefixlen == 64
    base = first.subnet.supernet(new_prefix=48)
    assert base.subnet_of(ULA_PREFIX)  # type: ignore[arg-type]
    assert second.subnet == ipaddress.IPv6Network((int(base.network_address) + (1 << 64), 64))
    # The IPv4 defaults are untouched by IPv6 pools, and the reverse.
    assert ipam.request_pool().subnet == net("172.17.0.0/16")
    assert ipam.default_pools()[-1] == (base, 64)


def test_a_seeded_ipam_uses_dockers_prefix(store: Store) -> None:
    ipam = LocalIpam(store, ula_seed="499d4bc0-b0b3-416f-b1ee-cf6486315593")
    assert ipam.request_pool(v6=True).subnet == net("fd62:fb69:18af::/64")
    assert ipam.request_pool(v6=True).subnet == net("fd62:fb69:18af:1::/64")


def test_the_drawn_slash_48_is_the_stores_and_survives_a_new_ipam(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    first = SqliteStore(path)
    pool = LocalIpam(first).request_pool(v6=True, owner="n1")
    first.close()
    second = SqliteStore(path)
    again = LocalIpam(second)
    assert again.get_pool(pool.id) == pool
    assert again.request_pool(v6=True).subnet.supernet(new_prefix=48) == pool.subnet.supernet(new_prefix=48)
    second.close()
    other = MemoryStore()
    # Another store draws its own /48 (two equal draws of 40 random bits: 1 in 2**40).
    assert LocalIpam(other).request_pool(v6=True).subnet.supernet(new_prefix=48) != pool.subnet.supernet(new_prefix=48)


def test_configured_ipv6_default_pools_replace_the_unique_local_one(store: Store) -> None:
    ipam = LocalIpam(store, default_pools=[*DEFAULT_POOLS, ("fd00:c0ff::/48", 64)])
    assert ipam.default_pools()[-1] == (net("fd00:c0ff::/48"), 64)
    assert ipam.request_pool(v6=True).subnet == net("fd00:c0ff::/64")
    with store.transaction() as txn:
        assert txn.get("ipam.ula", "base") is None  # no /48 drawn when it is not used


def test_default_ipv6_selection_skips_host_networks_and_explicit_pools(store: Store) -> None:
    ipam = LocalIpam(store, ula_seed="")
    base = int(addr("fd42:98fc:1c14::"))
    ipam.request_pool(subnet=ipaddress.IPv6Network((base, 64)), owner="custom")
    host_address = ipaddress.IPv6Network((base + (1 << 64), 64))
    host_route = ipaddress.IPv6Network((base + (2 << 64), 63))
    exclude = [host_address, host_route, net("fe80::/64"), net("::/0"), net("10.0.0.0/8")]
    assert ipam.request_pool(v6=True, exclude=exclude).subnet == ipaddress.IPv6Network((base + (4 << 64), 64))


def test_no_free_default_ipv6_pool_is_exhausted_and_names_the_clash(store: Store) -> None:
    with pytest.raises(Exhausted, match=r"every default IPv6 address pool.*host network fd00::/8.*explicit subnet"):
        LocalIpam(store).request_pool(v6=True, exclude=[net("fd00::/8")])


def test_explicit_ipv6_subnet_overlapping_a_pool_is_refused(ipam: LocalIpam) -> None:
    ipam.request_pool(subnet=net("fd00:1::/64"), owner="net1")
    with pytest.raises(PoolOverlap, match=r"fd00:1::/80 overlaps pool fd00:1::/64 of 'net1'"):
        ipam.request_pool(subnet=net("fd00:1::/80"), owner="net2")
    with pytest.raises(PoolOverlap, match="net1"):
        ipam.request_pool(subnet=net("fd00::/16"))
    # Different families never overlap.
    assert ipam.request_pool(subnet=net("10.0.0.0/8")).subnet == net("10.0.0.0/8")


def test_ipv6_ip_range_must_be_inside_the_subnet(ipam: LocalIpam) -> None:
    with pytest.raises(InvalidConfig, match="not inside"):
        ipam.request_pool(subnet=net("fd00:1::/64"), ip_range=net("fd00:2::/80"))
    with pytest.raises(InvalidConfig, match="not inside"):
        ipam.request_pool(subnet=net("fd00:1::/64"), ip_range=net("10.0.0.0/24"))


def test_ipv6_addresses_are_sequential_from_the_gateway_at_1(ipam: LocalIpam) -> None:
    pool = ipam.request_pool(v6=True)
    prefix = int(pool.subnet.network_address)
    gateway = ipam.request_address(pool.id, owner="gateway")
    got = [ipam.request_address(pool.id, owner=f"ep{i}") for i in range(3)]
    assert [int(a) - prefix for a in (gateway, *got)] == [1, 2, 3, 4]
    assert ipam.allocated(pool.id) == {gateway: "gateway", got[0]: "ep0", got[1]: "ep1", got[2]: "ep2"}


def test_requested_ipv6_address_taken_names_its_owner_and_others_are_checked(ipam: LocalIpam) -> None:
    pool = ipam.request_pool(subnet=net("fd00:1::/64"))
    assert ipam.request_address(pool.id, addr("fd00:1::9"), owner="web") == addr("fd00:1::9")
    with pytest.raises(AddressInUse, match=r"fd00:1::9.*'web'"):
        ipam.request_address(pool.id, addr("fd00:1::9"), owner="db")
    with pytest.raises(InvalidConfig, match="outside subnet"):
        ipam.request_address(pool.id, addr("fd00:2::1"))
    with pytest.raises(InvalidConfig, match="outside subnet"):
        ipam.request_address(pool.id, addr("10.0.0.1"))
    # The last address is a host in IPv6 (no broadcast).
    assert ipam.request_address(pool.id, addr("fd00:1::ffff:ffff:ffff:ffff")) == addr("fd00:1::ffff:ffff:ffff:ffff")


def test_ipv6_release_then_request_gets_the_lowest_free_address_again(ipam: LocalIpam) -> None:
    pool = ipam.request_pool(subnet=net("fd00:1::/64"))
    got = [ipam.request_address(pool.id) for _ in range(5)]
    ipam.release_address(pool.id, got[1])
    ipam.release_address(pool.id, got[1])
    ipam.release_address(pool.id, addr("10.0.0.1"))  # the other family: not allocated, fine
    assert ipam.request_address(pool.id) == got[1]
    assert ipam.request_address(pool.id) == addr("fd00:1::6")


def test_release_ipv6_pool_frees_it_and_its_addresses(ipam: LocalIpam) -> None:
    pool = ipam.request_pool(v6=True)
    ipam.request_address(pool.id, owner="ep1")
    ipam.release_pool(pool.id)
    ipam.release_pool(pool.id)
    with pytest.raises(NotFound):
        ipam.allocated(pool.id)
    again = ipam.request_pool(v6=True)
    assert again.subnet == pool.subnet
    assert ipam.allocated(again.id) == {}


def test_a_dual_stack_network_is_two_pools_listed_for_reconciliation(tmp_path: Path) -> None:
    # What reconcile reads after a restart: every pool of both families and its allocations.
    path = str(tmp_path / "state.db")
    store = SqliteStore(path)
    ipam = LocalIpam(store)
    v4, v6 = ipam.request_pool(owner="net1"), ipam.request_pool(v6=True, owner="net1")
    a4 = ipam.request_address(v4.id, owner="ep1")
    a6 = ipam.request_address(v6.id, owner="ep1")
    store.close()
    store = SqliteStore(path)
    ipam = LocalIpam(store)
    assert sorted(ipam.pools(), key=lambda p: p.subnet.version) == [v4, v6]
    assert (ipam.allocated(v4.id), ipam.allocated(v6.id)) == ({a4: "ep1"}, {a6: "ep1"})
    assert ipam.request_address(v6.id) == a6 + 1
    store.close()


def test_threads_never_get_the_same_ipv6_address(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "state.db"))
    ipam = LocalIpam(store)
    pool = ipam.request_pool(v6=True)
    results: list[list[IPAddress]] = [[] for _ in range(8)]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for n in range(50):
                results[index].append(ipam.request_address(pool.id, owner=f"t{index}-{n}"))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    every = [ip for chunk in results for ip in chunk]
    assert len(set(every)) == len(every) == 400
    assert {int(ip) - int(pool.subnet.network_address) for ip in every} == set(range(1, 401))
    store.close()


def _ipv6_pools_and_addresses_in_child(path: str, index: int, count: int, out: multiprocessing.Queue[str]) -> None:
    store = SqliteStore(path)
    ipam = LocalIpam(store)
    for n in range(count):
        pool = ipam.request_pool(v6=True, owner=f"p{index}-{n}")
        out.put(f"{pool.id} {ipam.request_address(pool.id, owner=f'p{index}-{n}')}")
    store.close()


def test_processes_on_a_fresh_store_share_one_slash_48_and_never_the_same_subnet(tmp_path: Path) -> None:
    # Four processes race to draw the store's /48 and then for /64s and addresses in it.
    path = str(tmp_path / "state.db")
    SqliteStore(path).close()
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_ipv6_pools_and_addresses_in_child, args=(path, i, 10, out)) for i in range(4)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60).split() for _ in range(40)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    subnets = [net(pool_id) for pool_id, _ in got]
    assert len(set(subnets)) == 40
    assert len({s.supernet(new_prefix=48) for s in subnets}) == 1
    assert all(addr(a) == s.network_address + 1 for s, (_, a) in zip(subnets, got, strict=True))
    store = SqliteStore(path)
    assert {str(p.subnet) for p in LocalIpam(store).pools()} == {str(s) for s in subnets}
    store.close()


def _allocate_until_killed(path: str, out: multiprocessing.Queue[str]) -> None:
    store = SqliteStore(path)
    ipam = LocalIpam(store)
    n = 0
    while True:
        pool = ipam.request_pool(v6=True, owner=f"net{n}")
        out.put(f"{pool.id} {ipam.request_address(pool.id, owner=f'ep{n}')}")
        n += 1


def test_a_process_killed_mid_allocation_leaves_no_ipv6_subnet_or_address_to_hand_out_twice(tmp_path: Path) -> None:
    # SIGKILL at an arbitrary point of a stream of IPv6 pool and address allocations: what was
    # committed stays allocated, nothing half-done is visible, and new requests never repeat one.
    path = str(tmp_path / "state.db")
    SqliteStore(path).close()
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[str] = ctx.Queue()
    child = ctx.Process(target=_allocate_until_killed, args=(path, out))
    child.start()
    reported = [out.get(timeout=60).split() for _ in range(20)]
    os.kill(child.pid or 0, signal.SIGKILL)
    child.join(timeout=60)
    assert child.exitcode == -signal.SIGKILL
    store = SqliteStore(path)
    ipam = LocalIpam(store)
    pools = {p.id: p for p in ipam.pools()}
    for n, (pool_id, address) in enumerate(reported):
        assert ipam.allocated(pool_id) == {addr(address): f"ep{n}"}
    # At most the pool being allocated at the kill has no address; none has two.
    assert all(len(ipam.allocated(pool_id)) <= 1 for pool_id in pools)
    base = {p.subnet.supernet(new_prefix=48) for p in pools.values()}
    assert len(base) == 1
    fresh = ipam.request_pool(v6=True)
    assert fresh.id not in pools
    assert fresh.subnet.supernet(new_prefix=48) in base
    for pool in pools.values():
        before = set(ipam.allocated(pool.id))
        assert ipam.request_address(pool.id) not in before
    store.close()
