"""Who is on a global network: hosts' underlay addresses under leases, and a watch of them.

A host on a global network registers ``/cnm/<cluster>/members/<network>/<host>``
(value ``{"host", "address"}``) under a lease that a :class:`Registration`'s
own thread keeps alive. A host that stops renewing (its process killed, its
link down) disappears when the lease's TTL runs out; :meth:`Registration.close`
removes it at once. A :class:`MembershipWatch` lists the members and follows
etcd's watch from that revision on, calling back with a :class:`MemberEvent`
for every host that joins, changes its address or leaves; it resumes from the
last revision it saw when the stream breaks, and lists again (delivering the
difference) if etcd has compacted that revision away.

Nothing here is global: each object owns its thread and ends it in ``close()``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Literal

import attrs

from cnm.errors import InvalidConfig, StoreUnavailable
from cnm.store._etcd_client import b64, prefix_end, unb64
from cnm.store.etcd import EtcdStore

__all__ = ["MemberEvent", "MembershipWatch", "Registration", "members"]

logger = logging.getLogger(__name__)


@attrs.frozen
class MemberEvent:
    """A host joined a network (or changed its address: a new join), or left it."""

    kind: Literal["join", "leave"]
    host: str
    address: str


def _prefix(store: EtcdStore, network: str) -> bytes:
    if not network or "/" in network:
        raise InvalidConfig(f"network {network!r} must be non-empty and without '/' to be a membership key")
    return store.root + b"members/" + network.encode() + b"/"


def _decode(prefix: bytes, key: bytes, value: bytes) -> tuple[str, str]:
    host = key[len(prefix) :].decode()
    try:
        address = str(json.loads(value)["address"])
    except (ValueError, KeyError, TypeError):
        address = ""
    return host, address


def members(store: EtcdStore, network: str) -> dict[str, str]:
    """The hosts registered on ``network`` now, mapped to their underlay addresses."""
    prefix = _prefix(store, network)
    kvs, _ = store.client.range(prefix, prefix_end(prefix))
    return dict(_decode(prefix, kv.key, kv.value) for kv in kvs)


class Registration:
    """This host's entry in a network's membership, kept alive by a thread of its own.

    Args:
        store: the global store.
        network: the network's name (or id) as the membership keys use it.
        host: this host's name, unique among the hosts on the store.
        address: this host's underlay address that tunnels to it use.
        ttl: seconds the entry outlives its last renewal; renewals come every ttl/3.

    Raises:
        cnm.errors.StoreUnavailable: etcd did not answer; nothing was registered.
    """

    def __init__(self, store: EtcdStore, network: str, host: str, address: str, *, ttl: int = 10) -> None:
        if not host or "/" in host:
            raise InvalidConfig(f"host name {host!r} must be non-empty and without '/'")
        if ttl < 2:
            raise InvalidConfig(f"membership ttl {ttl} is too short; give at least 2 seconds")
        self._client = store.client
        self.key = _prefix(store, network) + host.encode()
        self._value = json.dumps({"host": host, "address": address}).encode()
        self.ttl = ttl
        self.lease = 0
        self._stop = threading.Event()
        self._register()
        self._thread = threading.Thread(target=self._keep_alive, name=f"cnm-lease-{host}", daemon=True)
        self._thread.start()

    def _register(self) -> None:
        lease = self._client.grant(self.ttl)
        # Set before the key appears, so whoever sees the key sees this lease here too.
        self.lease = lease
        try:
            self._client.txn([], [{"request_put": {"key": b64(self.key), "value": b64(self._value), "lease": lease}}])
        except BaseException:
            # A failed put leaves a lease without a key: revoke it (the next renewal registers again).
            self._client.revoke(lease)
            raise
        logger.info("registered %s under lease %x (ttl %ds)", self.key.decode(), lease, self.ttl)

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if self._client.keepalive(self.lease) > 0:
                    continue
                # The lease ran out (etcd was away longer than the TTL): the others saw us leave; join again.
                logger.warning("lease of %s expired; registering again", self.key.decode())
                self._register()
            except StoreUnavailable as exc:
                logger.warning("cannot renew %s: %s", self.key.decode(), exc)

    def close(self) -> None:
        """Stop renewing and remove the entry now (revoke the lease)."""
        self._stop.set()
        self._thread.join()
        try:
            self._client.revoke(self.lease)
        except StoreUnavailable as exc:
            # The lease expires by itself; say so rather than fail a shutdown.
            logger.warning("could not revoke lease of %s (it expires in %ds): %s", self.key.decode(), self.ttl, exc)


class MembershipWatch:
    """Calls ``callback`` for every join and leave on a network, from a thread of its own.

    The first calls are a join for each host already registered. ``callback``
    runs on the watch's thread; an exception from it is logged and the watch
    goes on.
    """

    def __init__(self, store: EtcdStore, network: str, callback: Callable[[MemberEvent], None]) -> None:
        self._client = store.client
        self._prefix = _prefix(store, network)
        self._callback = callback
        self._stop = threading.Event()
        self._known: dict[str, str] = {}
        self._revision = self._relist()
        self._thread = threading.Thread(target=self._run, name=f"cnm-watch-{network}", daemon=True)
        self._thread.start()

    def members(self) -> dict[str, str]:
        """The members as this watch has seen them so far."""
        return dict(self._known)

    def _deliver(self, event: MemberEvent) -> None:
        if event.kind == "join":
            self._known[event.host] = event.address
        else:
            self._known.pop(event.host, None)
        try:
            self._callback(event)
        except Exception:
            logger.exception("membership callback failed on %s", event)

    def _relist(self) -> int:
        kvs, revision = self._client.range(self._prefix, prefix_end(self._prefix))
        now = dict(_decode(self._prefix, kv.key, kv.value) for kv in kvs)
        for host, address in list(self._known.items()):
            if host not in now:
                self._deliver(MemberEvent("leave", host, address))
        for host, address in sorted(now.items()):
            if self._known.get(host) != address:
                self._deliver(MemberEvent("join", host, address))
        return revision

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for result in self._client.watch(
                    self._prefix, prefix_end(self._prefix), self._revision + 1, self._stop
                ):
                    if int(result.get("compact_revision", 0)):
                        # What happened since our revision is gone; the state now is what counts.
                        self._revision = self._relist()
                        break
                    for event in result.get("events", []):
                        kv = event["kv"]
                        host, address = _decode(self._prefix, unb64(kv["key"]), unb64(kv.get("value", "")))
                        if event.get("type") == "DELETE":
                            self._deliver(MemberEvent("leave", host, self._known.get(host, "")))
                        elif self._known.get(host) != address:
                            self._deliver(MemberEvent("join", host, address))
                        # Only events move the revision: a created response's header is ahead of the
                        # history it is about to replay.
                        self._revision = max(self._revision, int(kv.get("mod_revision", 0)))
            except StoreUnavailable as exc:
                logger.warning("membership watch of %s: %s", self._prefix.decode(), exc)
            # The stream ended (a member went away): resume from where we were, after a pause.
            self._stop.wait(0.5)

    def close(self) -> None:
        """Stop watching; no callback runs after this returns."""
        self._stop.set()
        self._client.abort_watch(self._stop)
        self._thread.join()
