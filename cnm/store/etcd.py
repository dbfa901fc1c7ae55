"""A global-scope :class:`~cnm.store.Store` on etcd, with serializable optimistic transactions.

Several hosts share one etcd cluster; each host's controllers open an
:class:`EtcdStore` on it and see the same records. Keys live under
``/cnm/<cluster>/`` (see docs/multi-host.md)::

    /cnm/<cluster>/kv/<kind>/<key>       one record, its value the record's JSON
    /cnm/<cluster>/deleted/<kind>        touched by every transaction that deletes a <kind> record
    /cnm/<cluster>/members/<network>/<host>   membership (cnm.store.etcd_membership), under a lease

Transactions are optimistic, as etcd's own STM: reads are served from one
snapshot revision (the first read's), writes are buffered, and the commit is a
single etcd transaction that compares everything read against what is there
now: the ``mod_revision`` of each key read (0 for a key read as absent), every
key of a listed range unchanged since the snapshot, and the kind's deletion
marker (a deleted key vanishes from a range, so a range comparison alone cannot
see it). If any comparison fails nothing is written and the whole transaction
body runs again, up to ``attempts`` times (:meth:`EtcdStore.run`, or
:func:`cnm.store.atomic`); then :class:`~cnm.errors.TransactionConflict`.

A body entered with ``with store.transaction()`` cannot be run again by the
store: on a conflict that form raises :class:`~cnm.errors.TransactionConflict`
at once, and callers that want retries use :func:`cnm.store.atomic`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from cnm.errors import InvalidConfig, TransactionConflict
from cnm.store import KeyTaken, Record, Transaction
from cnm.store._etcd_client import EtcdClient, b64, prefix_end

__all__ = ["EtcdStore", "parse_etcd_url"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_ATTEMPTS = 32


def parse_etcd_url(url: str) -> list[str]:
    """``etcd://h:p[,h2:p]`` (or ``etcds://`` for TLS) -> the endpoint list EtcdStore takes."""
    for scheme, protocol in (("etcd://", "http://"), ("etcds://", "https://")):
        if url.startswith(scheme):
            hosts = [part.strip() for part in url[len(scheme) :].split(",") if part.strip()]
            if hosts:
                return [protocol + host for host in hosts]
    raise InvalidConfig(
        f"global store {url!r} is not etcd://host:port[,host:port]; write it like etcd://127.0.0.1:2379"
    )


class _EtcdTransaction:
    """One attempt: snapshot reads, buffered writes, and what must not have changed."""

    def __init__(self, store: EtcdStore) -> None:
        self._store = store
        self._client = store.client
        self.revision = 0  # the snapshot; 0 until the first read
        self.reads: dict[bytes, int] = {}  # key -> mod_revision seen (0: absent)
        self.ranges: list[tuple[bytes, bytes]] = []
        self.writes: dict[bytes, bytes | None] = {}  # None: delete
        self.seen: dict[bytes, bytes | None] = {}  # snapshot values read so far (None: absent)
        self.deleted_kinds: set[str] = set()

    def _range(self, key: bytes, end: bytes | None = None) -> list[Any]:
        kvs, revision = self._client.range(key, end, self.revision)
        if not self.revision:
            self.revision = revision
        return kvs

    def _read(self, key: bytes) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        if key in self.seen:
            return self.seen[key]
        if any(start <= key < end for start, end in self.ranges):
            # Absent from a range already listed: the range's comparison covers it.
            return None
        kvs = self._range(key)
        self.reads[key] = kvs[0].mod_revision if kvs else 0
        self.seen[key] = kvs[0].value if kvs else None
        return self.seen[key]

    def get(self, kind: str, key: str) -> Record | None:
        raw = self._read(self._store.record_key(kind, key))
        return None if raw is None else _loads(raw)

    def put(self, kind: str, key: str, value: Record) -> None:
        self.writes[self._store.record_key(kind, key)] = json.dumps(value, separators=(",", ":")).encode()

    def insert(self, kind: str, key: str, value: Record) -> None:
        if self._read(self._store.record_key(kind, key)) is not None:
            raise KeyTaken(f"{kind} {key} already exists")
        self.put(kind, key, value)

    def delete(self, kind: str, key: str) -> bool:
        full = self._store.record_key(kind, key)
        if self._read(full) is None:
            return False
        self.writes[full] = None
        self.deleted_kinds.add(kind)
        return True

    def list(self, kind: str, prefix: str = "") -> list[tuple[str, Record]]:
        start = self._store.record_key(kind, prefix)
        end = prefix_end(start)
        base = len(self._store.record_key(kind, ""))
        # Read the deletion marker first: a delete committed after the snapshot then fails the commit.
        self._read(self._store.deleted_marker(kind))
        found = {kv.key: kv.value for kv in self._range(start, end)}
        self.ranges.append((start, end))
        # Later reads of these keys need no comparison of their own: the range's and the marker's cover them.
        self.seen.update(found)
        for key, value in self.writes.items():
            if start <= key < end:
                if value is None:
                    found.pop(key, None)
                else:
                    found[key] = value
        return sorted((key[base:].decode(), _loads(value)) for key, value in found.items())

    def commit(self) -> None:
        if not self.writes:
            return  # Read-only: one snapshot is already a serializable view.
        compare: list[dict[str, Any]] = [
            {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": mod}
            for key, mod in self.reads.items()
        ]
        compare += [
            {
                "key": b64(start),
                "range_end": b64(end),
                "target": "MOD",
                "result": "LESS",
                "mod_revision": self.revision + 1,
            }
            for start, end in self.ranges
        ]
        success: list[dict[str, Any]] = []
        for key, value in self.writes.items():
            if value is None:
                success.append({"request_delete_range": {"key": b64(key)}})
            else:
                success.append({"request_put": {"key": b64(key), "value": b64(value)}})
        for kind in sorted(self.deleted_kinds):
            marker = self._store.deleted_marker(kind)
            if marker not in self.writes:
                success.append({"request_put": {"key": b64(marker), "value": b64(b"")}})
        ok, _ = self._client.txn(compare, success)
        if not ok:
            raise TransactionConflict(
                f"a concurrent writer changed what this etcd transaction read ({len(self.reads)} key(s), "
                f"{len(self.ranges)} range(s)) since revision {self.revision}; nothing was written: run the operation "
                "again"
            )


def _loads(raw: bytes) -> Record:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise TransactionConflict(f"an etcd record is not a JSON object ({raw[:40]!r}); keep cnm's keys for cnm only")
    return value


class EtcdStore:
    """cnm's store on an etcd cluster: the global scope shared by every host on it.

    Args:
        endpoints: the cluster's client URLs (``host:port`` or ``https://host:port``);
            a call goes to the next one when a member does not answer.
        cluster: the name under ``/cnm/`` that this cnm deployment's keys live in;
            deployments sharing an etcd use different names.
        timeout: seconds a call may take on one member; etcd unreachable then
            raises :class:`~cnm.errors.StoreUnavailable`, with nothing written.
        attempts: how many times :meth:`run` runs a transaction body that keeps
            conflicting before :class:`~cnm.errors.TransactionConflict`.
        ca_cert, cert_cert, cert_key: TLS: the CA bundle, and a client certificate and key.

    Raises:
        cnm.errors.InvalidConfig: a malformed endpoint or cluster name.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        cluster: str = "default",
        timeout: float = 5.0,
        attempts: int = _ATTEMPTS,
        ca_cert: str | None = None,
        cert_cert: str | None = None,
        cert_key: str | None = None,
    ) -> None:
        if not cluster or "/" in cluster:
            raise InvalidConfig(f"etcd cluster name {cluster!r} must be non-empty and without '/'")
        self.client = EtcdClient(endpoints, timeout=timeout, ca_cert=ca_cert, cert_cert=cert_cert, cert_key=cert_key)
        self.root = f"/cnm/{cluster}/".encode()
        self.attempts = attempts
        #: Transaction bodies :meth:`run` ran again after a conflict, since the store was opened.
        self.conflicts = 0
        self._count_lock = threading.Lock()
        self._local = threading.local()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> EtcdStore:
        """An EtcdStore for ``etcd://h:p[,h2:p]`` (``etcds://`` for TLS); see :func:`parse_etcd_url`."""
        return cls(parse_etcd_url(url), **options)

    def record_key(self, kind: str, key: str) -> bytes:
        """The etcd key of a record."""
        if not kind or "/" in kind:
            raise InvalidConfig(f"store kind {kind!r} must be non-empty and without '/'")
        return self.root + b"kv/" + kind.encode() + b"/" + key.encode()

    def deleted_marker(self, kind: str) -> bytes:
        """The key every transaction deleting a ``kind`` record touches."""
        return self.root + b"deleted/" + kind.encode()

    @property
    def in_transaction(self) -> bool:
        """Whether this thread has a transaction open on this store."""
        return getattr(self._local, "txn", None) is not None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Open (or join) this thread's transaction; commit on normal exit.

        Raises:
            cnm.errors.TransactionConflict: at commit, when a concurrent writer won;
                nothing was written (:meth:`run` retries instead).
            cnm.errors.StoreUnavailable: etcd did not answer.
        """
        current: _EtcdTransaction | None = getattr(self._local, "txn", None)
        if current is not None:
            yield current
            return
        txn = _EtcdTransaction(self)
        self._local.txn = txn
        try:
            yield txn
            txn.commit()
        finally:
            self._local.txn = None

    def run(self, body: Callable[[Transaction], T]) -> T:
        """Run ``body`` in a transaction, running it again on conflict (``attempts`` times in all).

        Inside another transaction of this thread the body joins it and runs
        once: the outermost transaction is the one that commits and retries.
        """
        if self.in_transaction:
            with self.transaction() as txn:
                return body(txn)
        delay = 0.02
        for attempt in range(1, self.attempts + 1):
            try:
                with self.transaction() as txn:
                    return body(txn)
            except TransactionConflict:
                with self._count_lock:
                    self.conflicts += 1
                if attempt == self.attempts:
                    break
                logger.debug("etcd transaction conflicted (attempt %d of %d); running it again", attempt, self.attempts)
                # Jittered backoff so that writers contending for the same keys spread out.
                time.sleep(random.uniform(0, delay))  # noqa: S311 - jitter, not cryptography
                delay = min(delay * 2, 0.5)
        raise TransactionConflict(
            f"an etcd transaction conflicted with concurrent writers {self.attempts} times in a row; nothing was "
            "written: try the operation again, or spread out the writers (raise EtcdStore attempts= if this is normal)"
        )

    def close(self) -> None:
        """Close the HTTP sessions to etcd."""
        self.client.close()
