"""Persistent state: a small transactional document store.

Records are JSON objects filed under a ``kind`` ("network", "endpoint",
"ipam.address", ...) and a ``key`` unique within the kind. Uniqueness is what
keeps two processes from allocating the same address or host port: an
:meth:`Transaction.insert` of a taken key raises :class:`KeyTaken`.

:class:`SqliteStore` is the default (one file in the controller's state_dir,
safe between threads and processes); :class:`MemoryStore` is for unit tests;
:class:`cnm.store.etcd.EtcdStore` (the ``etcd`` extra) is the global scope
shared by several hosts. Transactions nest: a transaction opened while the same
thread already holds one joins it, so a caller can make several services'
writes atomic.

SQLite and memory transactions hold a lock; etcd's are optimistic and can lose
to a concurrent writer at commit. :func:`atomic` runs a transaction body so that
it is run again in that case, on any store.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

from cnm.errors import CNMError

__all__ = ["KeyTaken", "MemoryStore", "Record", "RetryingStore", "SqliteStore", "Store", "Transaction", "atomic"]

Record = dict[str, Any]
T = TypeVar("T")


class KeyTaken(CNMError):
    """An insert found the key already present (internal; services translate it)."""


class Transaction(Protocol):
    """Reads and writes inside one atomic transaction."""

    def get(self, kind: str, key: str) -> Record | None:
        """The record, or None."""

    def put(self, kind: str, key: str, value: Record) -> None:
        """Insert or replace."""

    def insert(self, kind: str, key: str, value: Record) -> None:
        """Insert; raise :class:`KeyTaken` if the key exists."""

    def delete(self, kind: str, key: str) -> bool:
        """Delete; True if the key existed."""

    def list(self, kind: str, prefix: str = "") -> list[tuple[str, Record]]:
        """All records of a kind whose key starts with ``prefix``, by key."""


class Store(Protocol):
    """A source of transactions."""

    def transaction(self) -> contextlib.AbstractContextManager[Transaction]:
        """Open (or join) a transaction; commit on normal exit, roll back on error."""

    def close(self) -> None:
        """Release the store's resources."""


@runtime_checkable
class RetryingStore(Store, Protocol):
    """A store whose transactions can conflict at commit and that can run a body again."""

    def run(self, body: Callable[[Transaction], T]) -> T:
        """Run ``body`` in a transaction, again on conflict (bounded); return what it returns."""


def atomic(store: Store, body: Callable[[Transaction], T]) -> T:
    """Run ``body(txn)`` in one transaction of ``store`` and return its result.

    On a store with optimistic transactions (etcd) the body runs again when a
    concurrent writer won, so it must have no effect outside the transaction;
    a body that runs inside an open transaction of this thread joins it and
    runs once (the outermost transaction retries). On SQLite or memory it runs
    once under the store's lock.
    """
    if isinstance(store, RetryingStore):
        return store.run(body)
    with store.transaction() as txn:
        return body(txn)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind  TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
"""


class _SqliteTransaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, kind: str, key: str) -> Record | None:
        row = self._conn.execute("SELECT value FROM records WHERE kind=? AND key=?", (kind, key)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, kind: str, key: str, value: Record) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO records(kind, key, value) VALUES (?, ?, ?)", (kind, key, json.dumps(value))
        )

    def insert(self, kind: str, key: str, value: Record) -> None:
        try:
            self._conn.execute("INSERT INTO records(kind, key, value) VALUES (?, ?, ?)", (kind, key, json.dumps(value)))
        except sqlite3.IntegrityError as exc:
            raise KeyTaken(f"{kind} {key} already exists") from exc

    def delete(self, kind: str, key: str) -> bool:
        cur = self._conn.execute("DELETE FROM records WHERE kind=? AND key=?", (kind, key))
        return cur.rowcount > 0

    def list(self, kind: str, prefix: str = "") -> list[tuple[str, Record]]:
        if prefix:
            # Range scan on the primary key: keys k with prefix <= k < prefix + U+10FFFF.
            rows = self._conn.execute(
                "SELECT key, value FROM records WHERE kind=? AND key>=? AND key<? ORDER BY key",
                (kind, prefix, prefix + "\U0010ffff"),
            )
        else:
            rows = self._conn.execute("SELECT key, value FROM records WHERE kind=? ORDER BY key", (kind,))
        return [(key, json.loads(value)) for key, value in rows]


class SqliteStore:
    """The default store: one SQLite file, one connection per thread.

    Writers take SQLite's write lock at the start of a transaction
    (``BEGIN IMMEDIATE``) so read-modify-write sequences are serialised across
    threads and processes; waits are bounded by ``timeout`` seconds.
    """

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self._timeout = timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            self._local.depth = 0
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Open or join this thread's transaction."""
        conn = self._connect()
        if self._local.depth:
            self._local.depth += 1
            try:
                yield _SqliteTransaction(conn)
            finally:
                self._local.depth -= 1
            return
        conn.execute("BEGIN IMMEDIATE")
        self._local.depth = 1
        try:
            yield _SqliteTransaction(conn)
        except BaseException:
            self._local.depth = 0
            conn.execute("ROLLBACK")
            raise
        self._local.depth = 0
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


class _MemoryTransaction:
    def __init__(self, data: dict[tuple[str, str], str]) -> None:
        self._data = data

    def get(self, kind: str, key: str) -> Record | None:
        value = self._data.get((kind, key))
        return None if value is None else json.loads(value)

    def put(self, kind: str, key: str, value: Record) -> None:
        self._data[(kind, key)] = json.dumps(value)

    def insert(self, kind: str, key: str, value: Record) -> None:
        if (kind, key) in self._data:
            raise KeyTaken(f"{kind} {key} already exists")
        self.put(kind, key, value)

    def delete(self, kind: str, key: str) -> bool:
        return self._data.pop((kind, key), None) is not None

    def list(self, kind: str, prefix: str = "") -> list[tuple[str, Record]]:
        return sorted(
            (key, json.loads(value)) for (k, key), value in self._data.items() if k == kind and key.startswith(prefix)
        )


class MemoryStore:
    """An in-memory store with the same semantics, for unit tests."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], str] = {}
        self._lock = threading.RLock()
        self._local = threading.local()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Open or join this thread's transaction (rolled back on error)."""
        with self._lock:
            if getattr(self._local, "depth", 0):
                self._local.depth += 1
                try:
                    yield _MemoryTransaction(self._data)
                finally:
                    self._local.depth -= 1
                return
            snapshot = dict(self._data)
            self._local.depth = 1
            try:
                yield _MemoryTransaction(self._data)
            except BaseException:
                self._data.clear()
                self._data.update(snapshot)
                raise
            finally:
                self._local.depth = 0

    def close(self) -> None:
        """Nothing to release."""
