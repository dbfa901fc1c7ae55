"""Host-port allocation for published ports, and the sockets that hold them while published.

A host port is reserved in the store under a unique key per (protocol, port,
host address), so two endpoints, threads or processes can never publish the
same one. Before a port is handed out, a socket is bound to it in the host
namespace: a port some other program has bound is refused (explicit) or
skipped (ephemeral).

While a port is published (from join to leave or delete) the controller also
holds it in the kernel: a socket bound to it in the host namespace stays open,
so no other program can bind the port and receive traffic meant for the
sandbox. TCP sockets listen, as Docker 28's do (a bound-only socket would let
a program that sets SO_REUSEADDR bind too), and every held socket carries a
drop-all BPF filter, so no connection completes and no datagram queues on
it: traffic to a published port is DNATed before it could reach them anyway.
See :class:`PortHolder` for how processes sharing one state_dir share this.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import os
import secrets
import socket
import struct
import threading
from collections.abc import Collection, Iterable, Iterator, Sequence

import attrs

from cnm.errors import Exhausted, InvalidConfig, KernelError, PortInUse
from cnm.kernel.netns import NetNS
from cnm.store import KeyTaken, Store, Transaction
from cnm.types import IPAddress, PortBinding, PortRange, TransportProtocol

__all__ = ["DEFAULT_EPHEMERAL_RANGE", "PortAllocator", "PortHolder"]

log = logging.getLogger(__name__)

DEFAULT_EPHEMERAL_RANGE = PortRange(49153, 65535)
_ANY = ipaddress.IPv4Address("0.0.0.0")
_KIND = "port"
_BY_OWNER = "port.owner"  # owner/<port key>: finds an owner's ports without a scan
_CURSOR = "port.cursor"  # protocol -> where the next ephemeral search starts
_HOLDER = "port.holder"  # <port key> -> the process holding its socket: {"pid", "start", "token"}

_SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>; the socket module does not export it
# A classic BPF program of one instruction (struct sock_filter), BPF_RET|BPF_K 0: "keep 0 bytes", i.e. drop all.
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)


def _key(protocol: str, port: int, host_ip: IPAddress) -> str:
    return f"{protocol}/{port:05d}/{host_ip}"


def read_ephemeral_range(netns: NetNS) -> PortRange:
    """The host's ``net.ipv4.ip_local_port_range``, or Docker's fallback."""

    def read() -> PortRange:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = f.read().split()
        return PortRange(int(low), int(high))

    try:
        return netns.in_thread(read)
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL_RANGE


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces and parentheses, so count after the last ")".
    return int(stat.rsplit(")", 1)[1].split()[19])


@attrs.frozen
class _Process:
    """A holder of ports: a process (pid and start time, so a reused pid is not it) and a controller in it."""

    pid: int
    start: int
    token: str

    @classmethod
    def me(cls) -> _Process:
        pid = os.getpid()
        return cls(pid, _start_time(pid) or 0, secrets.token_hex(4))

    @classmethod
    def from_json(cls, data: dict[str, object]) -> _Process:
        return cls(int(str(data["pid"])), int(str(data["start"])), str(data["token"]))

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "start": self.start, "token": self.token}

    def alive(self) -> bool:
        return _start_time(self.pid) == self.start


def _describe(key: str) -> str:
    protocol, port, ip = key.split("/")
    return f"{int(port)}/{protocol} on {ip}"


class PortHolder:
    """The sockets that hold one controller's published host ports, bound in the host namespace.

    Several processes may open one state_dir, each with its controller. The
    store says, per held port (``port.holder``), which controller holds it:
    its process id and that process's start time (so a reused pid is not
    mistaken for it) and a token of the controller. When a port cannot be
    bound, that record tells a sibling from another program: a live holder
    other than this controller is a sibling, whose socket already keeps the
    port; anything else is another program. A controller that closes removes
    its records; a crashed one leaves records naming a dead process. Either
    way :meth:`take` (on open and reconcile) binds the port again.

    Thread-safe; one per controller, closed by ``Controller.close``.
    """

    def __init__(self, store: Store, host_netns: NetNS) -> None:
        self._store = store
        self._host = host_netns
        self._me = _Process.me()
        self._sockets: dict[str, socket.socket] = {}
        self._lock = threading.Lock()

    def held(self) -> set[str]:
        """The port keys (``proto/port/host_ip``) this controller holds a socket for."""
        with self._lock:
            return set(self._sockets)

    def take(self, keys: Collection[str], *, labels: dict[str, str], strict: bool) -> list[str]:
        """Bind a held socket for every key not held yet, except those a live sibling holds.

        ``labels`` names each key's endpoint for messages. With ``strict``, a
        port that cannot be bound raises and none of this call's sockets stay
        open; otherwise each such port is reported in the returned lines.

        Raises:
            PortInUse: (strict) another program has bound a port.
            KernelError: (strict) the kernel refused the bind otherwise.
        """
        with self._lock:
            missing = sorted(k for k in keys if k not in self._sockets)
        if not missing:
            return []
        with self._store.transaction() as txn:
            marks = {k: txn.get(_HOLDER, k) for k in missing}
        wanted = [k for k in missing if not self._sibling_holds(marks[k])]

        def bind_all() -> tuple[dict[str, socket.socket], dict[str, OSError]]:
            taken: dict[str, socket.socket] = {}
            failed: dict[str, OSError] = {}
            for key in wanted:
                protocol, port, ip = key.split("/")
                try:
                    taken[key] = _bind(protocol, ip, int(port), hold=True)
                except OSError as exc:
                    failed[key] = exc
                    if strict:
                        break
            return taken, failed

        taken, failed = self._host.in_thread(bind_all)
        if failed and strict:
            for sock in taken.values():
                sock.close()
            key, exc = next(iter(failed.items()))
            raise self._error(key, labels.get(key, "?"), exc) from exc
        if taken:
            with self._store.transaction() as txn:
                for key in taken:
                    txn.put(_HOLDER, key, self._me.to_json())
            with self._lock:
                self._sockets.update(taken)
        return [str(self._error(key, labels.get(key, "?"), exc)) for key, exc in failed.items()]

    def drop(self, keys: Collection[str]) -> int:
        """Close the sockets of ``keys`` this controller holds and remove its records of them; return how many."""
        with self._lock:
            closing = {k: self._sockets.pop(k) for k in keys if k in self._sockets}
        for sock in closing.values():
            sock.close()
        if closing:
            with self._store.transaction() as txn:
                for key in closing:
                    mark = txn.get(_HOLDER, key)
                    if mark is not None and _Process.from_json(mark) == self._me:
                        txn.delete(_HOLDER, key)
        return len(closing)

    def close(self) -> None:
        """Close every held socket and remove this controller's records; the ports are free afterwards."""
        self.drop(self.held())

    def _sibling_holds(self, mark: dict[str, object] | None) -> bool:
        if mark is None:
            return False
        holder = _Process.from_json(mark)
        return holder != self._me and holder.alive()

    @staticmethod
    def _error(key: str, label: str, exc: OSError) -> KernelError | PortInUse:
        if exc.errno == errno.EADDRINUSE:
            return PortInUse(
                f"host port {_describe(key)} of endpoint {label} is in use by another program in the host "
                "namespace; stop it, or publish another host port"
            )
        return KernelError(f"hold host port {_describe(key)} of endpoint {label} failed: {exc.strerror}", exc.errno)


@attrs.define
class PortAllocator:
    """Allocates host ports for an owner (an endpoint id), holds them while published, and releases them.

    Args:
        store: where allocations live.
        host_netns: where the probing and holding sockets are bound.
        ephemeral: the range ephemeral ports come from.
    """

    store: Store
    host_netns: NetNS
    ephemeral: PortRange = DEFAULT_EPHEMERAL_RANGE
    holder: PortHolder = attrs.field(init=False)
    """The sockets holding the published ports."""

    def __attrs_post_init__(self) -> None:
        self.holder = PortHolder(self.store, self.host_netns)

    def allocate(
        self,
        owner: str,
        bindings: Sequence[PortBinding],
        default_host_ip: IPAddress | None = None,
        *,
        label: str = "",
    ) -> list[PortBinding]:
        """Resolve ``bindings`` for ``owner``: choose host ports and hold them.

        ``label`` names the owner in error messages (an endpoint's name).

        All or nothing: on any error no port stays held.

        Raises:
            PortInUse: an explicit host port is held by another endpoint or program.
            Exhausted: no free port (or block of ports) is left in a range.
            InvalidConfig: a host address is not an address of the host.
        """
        resolved: list[PortBinding] = []
        with self.store.transaction() as txn:
            for binding in bindings:
                host_ip = binding.host_ip or default_host_ip
                candidates: Iterable[PortRange]
                size = len(binding.container_port)
                if binding.host_port is None:
                    candidates = self._blocks(self.ephemeral, size, self._cursor(txn, binding.protocol))
                    explicit = False
                elif size == 1 and len(binding.host_port) > 1:
                    candidates = self._blocks(binding.host_port, 1)
                    explicit = False
                else:
                    candidates = [binding.host_port]
                    explicit = True
                chosen = self._take(
                    txn,
                    owner=owner,
                    label=label,
                    protocol=binding.protocol,
                    host_ip=host_ip,
                    candidates=candidates,
                    explicit=explicit,
                    what=str(binding),
                )
                if binding.host_port is None:
                    txn.put(_CURSOR, binding.protocol, {"next": chosen.end + 1})
                # The address actually bound: 0.0.0.0 for every address, as Docker shows it.
                resolved.append(attrs.evolve(binding, host_port=chosen, host_ip=host_ip or _ANY))
        return resolved

    def release(self, owner: str) -> int:
        """Release every port ``owner`` holds (closing its held sockets); return how many. Idempotent."""
        released = 0
        with self.store.transaction() as txn:
            keys = self._keys(txn, owner)
            self.holder.drop(keys)
            for key in keys:
                txn.delete(_BY_OWNER, f"{owner}/{key}")
                released += txn.delete(_KIND, key)
        return released

    def hold(self, owner: str) -> None:
        """Hold ``owner``'s host ports with bound sockets while they are published (from join to leave).

        A port a live sibling controller of this state_dir already holds is
        left to it. All or nothing.

        Raises:
            PortInUse: another program has bound one of the ports since it was allocated.
        """
        with self.store.transaction() as txn:
            keys = self._keys(txn, owner)
            labels = self._labels(txn, keys)
        self.holder.take(keys, labels=labels, strict=True)

    def unhold(self, owner: str) -> int:
        """Close the sockets holding ``owner``'s ports (its ports stay allocated); return how many. Idempotent."""
        with self.store.transaction() as txn:
            keys = self._keys(txn, owner)
        return self.holder.drop(keys)

    def retake(self, owners: Collection[str]) -> list[str]:
        """Hold exactly the ports of ``owners`` (the published ones): bind the missing, close the others.

        For open and reconcile: a restarted process takes its ports back. A
        port a live sibling controller holds is left to it; a port another
        program has bound is reported in the returned lines, not raised.
        """
        with self.store.transaction() as txn:
            keys = [k for owner in owners for k in self._keys(txn, owner)]
            labels = self._labels(txn, keys)
        self.holder.drop(self.holder.held() - set(keys))
        return self.holder.take(keys, labels=labels, strict=False)

    def close(self) -> None:
        """Close every held socket (the ports stay allocated in the store)."""
        self.holder.close()

    @staticmethod
    def _keys(txn: Transaction, owner: str) -> list[str]:
        return [key.split("/", 1)[1] for key, _ in txn.list(_BY_OWNER, f"{owner}/")]

    @staticmethod
    def _labels(txn: Transaction, keys: Iterable[str]) -> dict[str, str]:
        labels = {}
        for key in keys:
            value = txn.get(_KIND, key) or {}
            labels[key] = repr(str(value.get("name") or value.get("owner") or "?"))
        return labels

    def held(self) -> dict[str, str]:
        """Every held port key (``proto/port/host_ip``) and its owner."""
        with self.store.transaction() as txn:
            return {key: str(value.get("owner")) for key, value in txn.list(_KIND)}

    @staticmethod
    def _cursor(txn: Transaction, protocol: str) -> int:
        # Ephemeral ports are handed out round-robin, as Docker does, so a port
        # just released is not reused at once (stale conntrack entries) and the
        # search starts where the last one ended instead of at the bottom.
        data = txn.get(_CURSOR, protocol)
        return int(data["next"]) if data else 0

    @staticmethod
    def _blocks(window: PortRange, size: int, start: int = 0) -> Iterator[PortRange]:
        first, last = window.start, window.end - size + 1
        if last < first:
            return
        start = start if first <= start <= last else first
        for port in (*range(start, last + 1), *range(first, start)):
            yield PortRange(port, port + size - 1)

    def _take(
        self,
        txn: Transaction,
        *,
        owner: str,
        label: str,
        protocol: TransportProtocol,
        host_ip: IPAddress | None,
        candidates: Iterable[PortRange],
        explicit: bool,
        what: str,
    ) -> PortRange:
        ip = host_ip or _ANY
        for block in candidates:
            holder = self._holder(txn, protocol, block, ip)
            if holder is not None:
                if explicit:
                    raise PortInUse(
                        f"host port {block}/{protocol} for {what} is already published by {holder}; "
                        "pick another host port or leave it empty for an ephemeral one"
                    )
                continue
            busy = self._bound_elsewhere(protocol, block, host_ip)
            if busy is not None:
                if explicit:
                    raise PortInUse(
                        f"host port {busy}/{protocol} for {what} is in use by another program in the host "
                        "namespace; stop it or pick another host port"
                    )
                continue
            try:
                for number in block:
                    key = _key(protocol, number, ip)
                    txn.insert(_KIND, key, {"owner": owner, "name": label})
                    txn.put(_BY_OWNER, f"{owner}/{key}", {})
            except KeyTaken as exc:  # pragma: no cover - the transaction holds the write lock
                raise PortInUse(f"host port {block}/{protocol} was taken concurrently; retry") from exc
            return block
        raise Exhausted(f"no free host port for {what} in its range; free some published ports or widen the range")

    @staticmethod
    def _holder(txn: Transaction, protocol: str, block: PortRange, ip: IPAddress) -> str | None:
        for port in block:
            for key, value in txn.list(_KIND, f"{protocol}/{port:05d}/"):
                held_ip = ipaddress.ip_address(key.rsplit("/", 1)[1])
                if held_ip == ip or _ANY in (held_ip, ip):
                    return f"endpoint {value.get('name') or value.get('owner')}"
        return None

    def _bound_elsewhere(self, protocol: str, block: PortRange, host_ip: IPAddress | None) -> int | None:
        address = str(host_ip or _ANY)

        def probe() -> int | None:
            for port in block:
                try:
                    _bind(protocol, address, port, hold=False).close()
                except OSError as exc:
                    if exc.errno == errno.EADDRNOTAVAIL:
                        raise InvalidConfig(
                            f"host_ip {address} is not an address of the host namespace; "
                            "use one of its addresses or leave host_ip empty"
                        ) from exc
                    if exc.errno == errno.EADDRINUSE:
                        return port
                    raise
            return None

        return self.host_netns.in_thread(probe)


def _bind(protocol: str, address: str, port: int, *, hold: bool) -> socket.socket:
    """A socket bound to ``address:port``; with ``hold``, one fit to keep (listening if TCP, filtered).

    Call it in the host namespace's thread: the socket keeps the namespace it was made in.
    """
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
    try:
        if hold:
            # struct sock_fprog: the instruction count, then a pointer to the instructions
            # (a buffer of this call's, alive until the kernel has copied it).
            code = ctypes.create_string_buffer(_DROP_ALL, len(_DROP_ALL))
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, struct.pack("HL", 1, ctypes.addressof(code)))
            if kind == socket.SOCK_STREAM:
                # Listening: SO_REUSEADDR then only spares us a TIME_WAIT of an earlier holder.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        if hold and kind == socket.SOCK_STREAM:
            sock.listen(1)
    except BaseException:
        sock.close()
        raise
    return sock
