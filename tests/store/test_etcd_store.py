"""EtcdStore against a real etcd: conflicts, retries, concurrent IPAM, unreachable etcd, a lost member."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnm.errors import InvalidConfig, StoreUnavailable, TransactionConflict
from cnm.ipam import LocalIpam
from cnm.store import Transaction, atomic
from cnm.store.etcd import EtcdStore, parse_etcd_url
from cnm.testing.etcd import EtcdCluster, free_port, make_tls, start_cluster


def _in_thread(
    store: EtcdStore, first: threading.Event, then: threading.Event, body: object
) -> tuple[threading.Thread, list[Exception]]:
    """Run a transaction in a thread that reads, waits for ``then``, then writes and commits."""
    errors: list[Exception] = []

    def run() -> None:
        try:
            with store.transaction() as txn:
                body(txn)  # type: ignore[operator]
                first.set()
                then.wait(10)
                txn.put("k", "written-by-a", {})
        except Exception as exc:  # noqa: BLE001 - handed to the main thread, which asserts on it
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    first.wait(10)
    return thread, errors


@pytest.mark.parametrize(
    ("reads", "meanwhile"),
    [
        pytest.param(lambda t: t.get("k", "x"), lambda t: t.put("k", "x", {"v": 2}), id="key-changed"),
        pytest.param(lambda t: t.get("k", "absent"), lambda t: t.put("k", "absent", {}), id="absent-key-created"),
        pytest.param(lambda t: t.list("k", "p/"), lambda t: t.put("k", "p/new", {}), id="range-insert"),
        pytest.param(lambda t: t.list("k", "p/"), lambda t: t.put("k", "p/1", {"v": 9}), id="range-update"),
        pytest.param(lambda t: t.list("k", "p/"), lambda t: t.delete("k", "p/1"), id="range-delete"),
    ],
)
def test_a_commit_fails_when_what_it_read_changed(etcd_store: EtcdStore, reads: object, meanwhile: object) -> None:
    with etcd_store.transaction() as txn:
        txn.put("k", "x", {"v": 1})
        txn.put("k", "p/1", {"v": 1})
    read, go = threading.Event(), threading.Event()
    reader, errors = _in_thread(etcd_store, read, go, reads)
    done = threading.Event()

    def writer() -> None:
        with etcd_store.transaction() as txn:
            meanwhile(txn)  # type: ignore[operator]
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    t.join()
    assert done.is_set()
    go.set()
    reader.join(10)
    assert len(errors) == 1
    assert isinstance(errors[0], TransactionConflict)
    assert "nothing was written" in str(errors[0])
    with etcd_store.transaction() as txn:
        assert txn.get("k", "written-by-a") is None


def test_unrelated_writes_do_not_conflict(etcd_store: EtcdStore) -> None:
    read, go = threading.Event(), threading.Event()
    reader, errors = _in_thread(etcd_store, read, go, lambda t: (t.get("k", "a"), t.list("k", "p/")))
    writer = threading.Thread(target=lambda: atomic(etcd_store, lambda t: t.put("k", "q/1", {})))
    writer.start()
    writer.join()
    go.set()
    reader.join(10)
    assert errors == []


def test_run_retries_the_whole_body_until_it_commits(etcd_store: EtcdStore) -> None:
    calls = 0
    other = EtcdStore(etcd_store.client.endpoints, cluster=etcd_store.root.decode().split("/")[2])

    def body(txn: Transaction) -> int:
        nonlocal calls
        calls += 1
        value = (txn.get("k", "counter") or {"n": 0})["n"]
        if calls < 3:
            # Someone else bumps the counter between our read and our commit, twice.
            atomic(other, lambda t: t.put("k", "counter", {"n": (t.get("k", "counter") or {"n": 0})["n"] + 10}))
        txn.put("k", "counter", {"n": value + 1})
        return calls

    assert etcd_store.run(body) == 3
    with etcd_store.transaction() as txn:
        assert txn.get("k", "counter") == {"n": 21}
    other.close()


def test_run_gives_up_after_its_attempts_with_advice(etcd_server: EtcdCluster, cluster_name: str) -> None:
    store = EtcdStore(etcd_server.endpoints, cluster=cluster_name, attempts=3)
    other = EtcdStore(etcd_server.endpoints, cluster=cluster_name)
    calls = 0

    def body(txn: Transaction) -> None:
        nonlocal calls
        calls += 1
        txn.get("k", "hot")
        atomic(other, lambda t: t.put("k", "hot", {"n": calls}))
        txn.put("k", "mine", {})

    with pytest.raises(TransactionConflict, match=r"3 times in a row; nothing was written: try the operation again"):
        store.run(body)
    assert calls == 3
    with store.transaction() as txn:
        assert txn.get("k", "mine") is None
    store.close()
    other.close()


def _allocate_in_threads(store_of: object, pool_id: str, threads: int, each: int) -> list[str]:
    got: list[str] = []
    errors: list[Exception] = []
    lock = threading.Lock()

    def work() -> None:
        store = store_of()  # type: ignore[operator]
        ipam = LocalIpam(store)
        try:
            for _ in range(each):
                address = str(ipam.request_address(pool_id, owner=threading.current_thread().name))
                with lock:
                    got.append(address)
        except Exception as exc:  # noqa: BLE001 - handed to the main thread, which asserts on it
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    return got


@pytest.mark.parametrize("shared", [True, False], ids=["one-store", "store-per-thread"])
def test_concurrent_allocations_from_threads_never_repeat(etcd_store: EtcdStore, shared: bool) -> None:
    pool = LocalIpam(etcd_store).request_pool(owner="mesh")
    endpoints, cluster = etcd_store.client.endpoints, etcd_store.root.decode().split("/")[2]
    got = _allocate_in_threads(
        (lambda: etcd_store) if shared else (lambda: EtcdStore(endpoints, cluster=cluster)), pool.id, 8, 25
    )
    assert len(got) == 200
    assert [a for a, n in Counter(got).items() if n > 1] == []
    assert sorted(map(str, LocalIpam(etcd_store).allocated(pool.id))) == sorted(got)


_WORKER = """
import json, sys
from cnm.ipam import LocalIpam
from cnm.store.etcd import EtcdStore
endpoints, cluster, pool, count = json.loads(sys.argv[1])
ipam = LocalIpam(EtcdStore(endpoints, cluster=cluster))
sys.stdin.readline()  # start together
print(json.dumps([str(ipam.request_address(pool, owner=f"proc{pool}")) for _ in range(count)]))
"""


def test_concurrent_allocations_from_processes_never_repeat(etcd_store: EtcdStore) -> None:
    ipam = LocalIpam(etcd_store)
    pool = ipam.request_pool(owner="mesh")
    ipam.release_address(pool.id, ipam.request_address(pool.id))  # a released offset in the hints too
    args = json.dumps([list(etcd_store.client.endpoints), etcd_store.root.decode().split("/")[2], pool.id, 30])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    got: list[str] = []
    # Threads in this process allocate at the same time as the four processes.
    here = threading.Thread(target=lambda: got.extend(_allocate_in_threads(lambda: etcd_store, pool.id, 2, 10)))
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    here.start()
    for p in procs:
        out, _ = p.communicate(timeout=100)
        assert p.returncode == 0
        got.extend(json.loads(out))
    here.join()
    assert len(got) == 4 * 30 + 20
    assert [a for a, n in Counter(got).items() if n > 1] == []
    assert sorted(map(str, ipam.allocated(pool.id))) == sorted(got)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a hung etcd)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_unreachable_etcd_is_a_typed_error_naming_the_endpoints(silent_port: int) -> None:
    refused = f"127.0.0.1:{free_port()}"
    hung = f"127.0.0.1:{silent_port}"
    store = EtcdStore([refused, hung], cluster="x", timeout=0.5)
    with pytest.raises(StoreUnavailable) as caught:
        LocalIpam(store).request_pool(owner="n")
    message = str(caught.value)
    assert refused in message
    assert hung in message
    assert "nothing was written" in message
    assert isinstance(caught.value, ConnectionError)
    store.close()


def test_etcd_gone_mid_way_writes_nothing_and_work_resumes_when_it_returns(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "etcd")
    try:
        store = EtcdStore(cluster.endpoints, cluster="c", timeout=1.0)
        ipam = LocalIpam(store)
        pool = ipam.request_pool(owner="n")
        first = ipam.request_address(pool.id)
        member = cluster.members[0]
        member.kill()
        with pytest.raises(StoreUnavailable):
            ipam.request_address(pool.id)
        with pytest.raises(StoreUnavailable):
            ipam.release_address(pool.id, first)
        member.start(f"{member.name}={member.peer_url}")
        while not member.serving():
            threading.Event().wait(0.05)
        assert ipam.allocated(pool.id) == {first: ""}
        second = ipam.request_address(pool.id)
        assert second == first + 1
        store.close()
    finally:
        cluster.stop()


def test_one_member_of_three_killed_and_operations_go_on(etcd_cluster3: EtcdCluster) -> None:
    store = EtcdStore(etcd_cluster3.endpoints, cluster="c", timeout=2.0)
    ipam = LocalIpam(store)
    pool = ipam.request_pool(owner="n")
    before = [ipam.request_address(pool.id) for _ in range(5)]
    # Kill the member this store was talking to, so the store has to move on to another.
    etcd_cluster3.members[0].kill()
    after = [ipam.request_address(pool.id) for _ in range(5)]
    ipam.release_address(pool.id, before[0])
    assert ipam.request_address(pool.id) == before[0]
    assert len(set(before + after)) == 10
    assert set(ipam.allocated(pool.id)) == set(before + after)
    store.close()


def test_parse_etcd_url() -> None:
    assert parse_etcd_url("etcd://10.0.0.1:2379,h2:2379") == ["http://10.0.0.1:2379", "http://h2:2379"]
    assert parse_etcd_url("etcds://h:2379") == ["https://h:2379"]
    for bad in ["http://h:2379", "etcd://", "h:2379"]:
        with pytest.raises(InvalidConfig, match="etcd://host:port"):
            parse_etcd_url(bad)
    with pytest.raises(InvalidConfig, match="host:port"):
        EtcdStore(["nohost"])


def test_a_snapshot_compacted_away_runs_the_body_again(etcd_store: EtcdStore) -> None:
    calls = 0

    def body(txn: Transaction) -> int:
        nonlocal calls
        calls += 1
        txn.get("k", "a")
        if calls == 1:
            # Another writer moves on and etcd compacts the history this transaction reads from.
            _, revision = etcd_store.client.txn([], [{"request_put": {"key": "eA==", "value": ""}}])
            etcd_store.client.call("/kv/compaction", {"revision": revision, "physical": True})
        txn.get("k", "b")
        txn.put("k", "b", {"n": calls})
        return calls

    assert etcd_store.run(body) == 2
    with etcd_store.transaction() as txn:
        assert txn.get("k", "b") == {"n": 2}


def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    cluster = start_cluster(tmp_path / "etcd", tls=tls)
    try:
        assert cluster.endpoints[0].startswith("https://127.0.0.1:")
        store = EtcdStore(
            cluster.endpoints, ca_cert=str(tls.ca), cert_cert=str(tls.client_cert), cert_key=str(tls.client_key)
        )
        ipam = LocalIpam(store)
        pool = ipam.request_pool(owner="n")
        assert str(ipam.request_address(pool.id)) == str(pool.subnet.network_address + 1)
        store.close()
        # Without the client certificate the member refuses the connection: a typed error, nothing written.
        anonymous = EtcdStore(cluster.endpoints, ca_cert=str(tls.ca), timeout=2.0)
        with pytest.raises(StoreUnavailable, match=r"https://127\.0\.0\.1"):
            LocalIpam(anonymous).request_pool(owner="m")
        anonymous.close()
    finally:
        cluster.stop()
