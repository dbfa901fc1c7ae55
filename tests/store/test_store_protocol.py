"""The Store Protocol's semantics, the same on every store: memory, SQLite and etcd."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cnm.store import KeyTaken, MemoryStore, SqliteStore, Store, atomic


@pytest.fixture(params=["memory", "sqlite", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        s: Store = MemoryStore()
    elif request.param == "sqlite":
        s = SqliteStore(str(tmp_path / "state.db"))
    else:
        s = request.getfixturevalue("etcd_store")
    yield s
    s.close()


def test_put_get_and_replace(store: Store) -> None:
    with store.transaction() as txn:
        assert txn.get("network", "n1") is None
        txn.put("network", "n1", {"name": "a", "n": [1, 2]})
        assert txn.get("network", "n1") == {"name": "a", "n": [1, 2]}
    with store.transaction() as txn:
        assert txn.get("network", "n1") == {"name": "a", "n": [1, 2]}
        txn.put("network", "n1", {"name": "b"})
    with store.transaction() as txn:
        assert txn.get("network", "n1") == {"name": "b"}


def test_insert_refuses_a_taken_key(store: Store) -> None:
    with store.transaction() as txn:
        txn.insert("ipam.address", "p/10.0.0.2", {"owner": "x"})
    with pytest.raises(KeyTaken), store.transaction() as txn:
        txn.insert("ipam.address", "p/10.0.0.2", {"owner": "y"})
    with store.transaction() as txn:
        assert txn.get("ipam.address", "p/10.0.0.2") == {"owner": "x"}


def test_delete_says_whether_the_key_existed(store: Store) -> None:
    with store.transaction() as txn:
        txn.put("k", "a", {})
    with store.transaction() as txn:
        assert txn.delete("k", "a") is True
        assert txn.delete("k", "a") is False
        assert txn.get("k", "a") is None
    with store.transaction() as txn:
        assert txn.get("k", "a") is None


def test_list_by_kind_and_prefix_in_key_order(store: Store) -> None:
    with store.transaction() as txn:
        for key in ["p2/b", "p1/b", "p1/a", "p10/a"]:
            txn.put("addr", key, {"k": key})
        txn.put("addrx", "p1/z", {})
        txn.put("other", "p1/a", {})
    with store.transaction() as txn:
        assert [k for k, _ in txn.list("addr")] == ["p1/a", "p1/b", "p10/a", "p2/b"]
        assert txn.list("addr", "p1/") == [("p1/a", {"k": "p1/a"}), ("p1/b", {"k": "p1/b"})]
        assert txn.list("none") == []


def test_a_transaction_reads_its_own_writes_in_lists(store: Store) -> None:
    with store.transaction() as txn:
        txn.put("k", "a", {"v": 1})
        txn.put("k", "b", {"v": 1})
    with store.transaction() as txn:
        txn.delete("k", "a")
        txn.put("k", "c", {"v": 2})
        txn.put("k", "b", {"v": 3})
        assert txn.list("k") == [("b", {"v": 3}), ("c", {"v": 2})]


def test_an_error_rolls_back_every_write(store: Store) -> None:
    with store.transaction() as txn:
        txn.put("k", "kept", {})

    def fail() -> None:
        with store.transaction() as txn:
            txn.put("k", "new", {})
            txn.delete("k", "kept")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail()
    with store.transaction() as txn:
        assert txn.list("k") == [("kept", {})]


def test_nested_transactions_join_the_outer_one(store: Store) -> None:
    def fail() -> None:
        with store.transaction() as outer:
            outer.put("k", "outer", {})
            with store.transaction() as inner:
                inner.put("k", "inner", {})
                assert inner.get("k", "outer") == {}
            raise RuntimeError("undo both")

    with pytest.raises(RuntimeError):
        fail()
    with store.transaction() as txn:
        assert txn.list("k") == []


def test_atomic_returns_the_body_result(store: Store) -> None:
    def body(txn: object) -> int:
        with store.transaction() as inner:
            inner.put("k", "a", {"n": 7})
        return 7

    assert atomic(store, body) == 7
    with store.transaction() as txn:
        assert txn.get("k", "a") == {"n": 7}


def test_keys_with_slashes_and_unicode(store: Store) -> None:
    key = "172.28.0.0/16/172.28.0.5 é"
    with store.transaction() as txn:
        txn.insert("ipam.address", key, {"owner": "ü"})
    with store.transaction() as txn:
        assert txn.list("ipam.address", "172.28.0.0/16/") == [(key, {"owner": "ü"})]
