"""A small etcd v3 client over etcd3gw, with endpoint failover and typed errors.

etcd3gw talks to one member's JSON gateway; this wrapper keeps one etcd3gw
client per member of the cluster and moves on to the next member when one does
not answer, so a cluster that keeps its quorum keeps serving cnm after one
member is gone. Every call is bounded by the timeout given; when no member
answers, :class:`~cnm.errors.StoreUnavailable` names every endpoint tried.

The watch stream is done here rather than with etcd3gw's ``Watcher``: that one
gives no signal when the stream ends (a member restarting or killed) and cannot
be resumed from a revision, both of which a membership watch needs.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import etcd3gw
import requests
from etcd3gw import exceptions as etcd_exceptions

from cnm.errors import InvalidConfig, StoreUnavailable, TransactionConflict

__all__ = ["EtcdClient", "KeyValue", "b64", "prefix_end", "unb64"]

logger = logging.getLogger(__name__)

_UNREACHABLE = (
    etcd_exceptions.ConnectionFailedError,
    etcd_exceptions.ConnectionTimeoutError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
)


def b64(data: bytes) -> str:
    """The JSON gateway's encoding of keys and values."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """Decode a key or value from the JSON gateway."""
    return base64.b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


@attrs.frozen
class KeyValue:
    """One key as etcd returned it."""

    key: bytes
    value: bytes
    mod_revision: int
    lease: int = 0


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=unb64(raw["key"]),
        value=unb64(raw.get("value", "")),
        mod_revision=int(raw.get("mod_revision", 0)),
        lease=int(raw.get("lease", 0)),
    )


def _reason(exc: Exception) -> str:
    """A short why for a member that did not answer: the error's class, and an SSL verdict if there is one."""
    text = f"{exc} {exc.__cause__ or ''} {exc.__context__ or ''}"
    for marker in ("CERTIFICATE_VERIFY_FAILED", "certificate required", "SSLError", "timed out", "Connection refused"):
        if marker in text:
            return f"{type(exc).__name__} ({marker})"
    return type(exc).__name__


def _shut(resp: requests.Response) -> None:
    try:
        # Shut the socket down, not just close our file: that wakes a reader blocked on it.
        sock = socket.socket(fileno=socket.dup(resp.raw.fileno()))
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    except (OSError, ValueError, AttributeError):
        logger.debug("watch stream already closed")


def parse_endpoint(text: str) -> tuple[str, str, int]:
    """``host:port``, ``[v6]:port`` or ``http(s)://host:port`` -> (protocol, host, port)."""
    protocol = "http"
    rest = text.strip()
    for scheme in ("http://", "https://"):
        if rest.startswith(scheme):
            protocol, rest = scheme[:-3], rest[len(scheme) :]
    rest = rest.rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidConfig(f"etcd endpoint {text!r} is not host:port; write it as 127.0.0.1:2379 or https://h:2379")
    return protocol, host.strip("[]"), int(port)


class EtcdClient:
    """The calls cnm makes to etcd, tried on each member in turn.

    Args:
        endpoints: the cluster's client URLs (``host:port``, ``https://host:port``).
        timeout: seconds one call may take on one member before the next is tried.
        ca_cert, cert_cert, cert_key: TLS: the CA bundle, and a client certificate and key.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        ca_cert: str | None = None,
        cert_cert: str | None = None,
        cert_key: str | None = None,
    ) -> None:
        if not endpoints:
            raise InvalidConfig("no etcd endpoint given; pass at least one host:port")
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self._clients: list[etcd3gw.Etcd3Client] = []
        for text in self.endpoints:
            protocol, host, port = parse_endpoint(text)
            self._clients.append(
                etcd3gw.Etcd3Client(
                    host=host,
                    port=port,
                    protocol=protocol,
                    ca_cert=ca_cert,
                    cert_cert=cert_cert,
                    cert_key=cert_key,
                    timeout=timeout,
                )
            )
            # requests lets REQUESTS_CA_BUNDLE (and proxy variables) override the session's own CA, so a
            # ca_cert given here would be silently ignored where that variable is set: etcd is reached
            # directly, with exactly the TLS settings given.
            self._clients[-1].session.trust_env = False
        self._lock = threading.Lock()
        self._current = 0
        # Each watch stream in progress, under the stop event of the watch it belongs to.
        self._watches: dict[threading.Event, requests.Response] = {}

    def _order(self) -> list[int]:
        with self._lock:
            start = self._current
        return [(start + i) % len(self._clients) for i in range(len(self._clients))]

    def _unavailable(self, what: str, errors: list[str]) -> StoreUnavailable:
        return StoreUnavailable(
            f"etcd did not answer {what} within {self.timeout:g}s at any of {', '.join(self.endpoints)} "
            f"({'; '.join(errors)}); nothing was written: start etcd or check the endpoints and TLS settings, "
            "then try again"
        )

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to the v3 API ``path`` on the first member that answers."""
        errors: list[str] = []
        for index in self._order():
            client = self._clients[index]
            try:
                result: dict[str, Any] = client.post(client.get_url(path), json=body)
            except _UNREACHABLE as exc:
                errors.append(f"{self.endpoints[index]}: {_reason(exc)}")
                logger.debug("etcd member %s did not answer %s: %s", self.endpoints[index], path, exc)
                continue
            except etcd_exceptions.Etcd3Exception as exc:
                detail = getattr(exc, "detail_text", "") or str(exc)
                if "leader" in detail or "timed out" in detail or "unavailable" in detail:
                    # This member lost its quorum or leader; another may still have one.
                    errors.append(f"{self.endpoints[index]}: {detail.strip()}")
                    continue
                if "compacted" in detail:
                    # A snapshot read at a revision etcd has since compacted: the transaction must start over.
                    raise TransactionConflict(
                        f"etcd compacted the revision this transaction reads from ({detail.strip()}); nothing was "
                        "written: run the operation again"
                    ) from exc
                hint = " (raise --max-txn-ops on the etcd members)" if "too many operations" in detail else ""
                raise StoreUnavailable(
                    f"etcd at {self.endpoints[index]} refused {path}: {detail.strip()}{hint}; nothing was written"
                ) from exc
            with self._lock:
                self._current = index
            return result
        raise self._unavailable(path, errors)

    def range(self, key: bytes, range_end: bytes | None = None, revision: int = 0) -> tuple[list[KeyValue], int]:
        """The keys in ``[key, range_end)`` (or ``key`` alone) at ``revision`` (0: now), and that revision."""
        body: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if revision:
            body["revision"] = revision
        result = self.call("/kv/range", body)
        return [_kv(raw) for raw in result.get("kvs", [])], int(result["header"]["revision"])

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]]) -> tuple[bool, int]:
        """One etcd transaction; whether its comparisons held, and the revision after it."""
        result = self.call("/kv/txn", {"compare": compare, "success": success})
        return bool(result.get("succeeded", False)), int(result["header"]["revision"])

    def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its id."""
        return int(self.call("/lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew a lease; its TTL now, or -1 if it has expired."""
        result = self.call("/lease/keepalive", {"ID": lease})
        return int(result.get("result", {}).get("TTL", -1))

    def revoke(self, lease: int) -> None:
        """Revoke a lease, deleting its keys."""
        try:
            self.call("/kv/lease/revoke", {"ID": lease})
        except etcd_exceptions.Etcd3Exception as exc:
            if "not found" not in str(getattr(exc, "detail_text", exc)):
                raise

    def watch(
        self, key: bytes, range_end: bytes, start_revision: int, stop: threading.Event
    ) -> Iterator[dict[str, Any]]:
        """Watch responses for ``[key, range_end)`` from ``start_revision`` until the stream ends.

        Yields each response's ``result`` (``events``, ``header``, ``compact_revision``);
        returns when the member closes the stream or ``stop`` is set (see :meth:`abort`);
        raises :class:`~cnm.errors.StoreUnavailable` when no member accepts the watch.
        """
        body: dict[str, Any] = {
            "create_request": {
                "key": b64(key),
                "range_end": b64(range_end),
                "start_revision": start_revision,
                "progress_notify": True,
            }
        }
        errors: list[str] = []
        for index in self._order():
            client = self._clients[index]
            try:
                # No read timeout: a watch is quiet while nothing changes; abort() ends it.
                resp = client.session.post(
                    client.get_url("/watch"), json=body, stream=True, timeout=(self.timeout, None)
                )
            except _UNREACHABLE as exc:
                errors.append(f"{self.endpoints[index]}: {_reason(exc)}")
                continue
            with self._lock:
                self._watches[stop] = resp
            try:
                if stop.is_set():
                    return
                yield from self._stream(resp)
            except (*_UNREACHABLE, requests.exceptions.ChunkedEncodingError, OSError, ValueError) as exc:
                if not stop.is_set():
                    logger.info("etcd watch on %s ended: %s", self.endpoints[index], exc)
            finally:
                with self._lock:
                    if self._watches.get(stop) is resp:
                        del self._watches[stop]
                resp.close()
            return
        raise self._unavailable("a watch", errors)

    @staticmethod
    def _stream(resp: requests.Response) -> Iterator[dict[str, Any]]:
        buffer = b""
        for chunk in resp.iter_content(chunk_size=None):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    message = json.loads(line)
                    if "error" in message:
                        raise ValueError(f"watch failed: {message['error']}")
                    yield message["result"]

    def abort_watch(self, stop: threading.Event) -> None:
        """End the stream of the watch whose stop event is ``stop`` (from any thread); set ``stop`` first."""
        with self._lock:
            resp = self._watches.get(stop)
        if resp is not None:
            _shut(resp)

    def abort_watches(self) -> None:
        """End every watch stream in progress (from any thread)."""
        with self._lock:
            streams = list(self._watches.values())
        for resp in streams:
            _shut(resp)

    def close(self) -> None:
        """End watches and close every member's HTTP session."""
        self.abort_watches()
        for client in self._clients:
            client.session.close()
