"""Host-port allocation for published ports.

A host port is held in the store under a unique key per (protocol, port,
host address), so two endpoints, threads or processes can never publish the
same one. Before a port is handed out, a socket is bound to it in the host
namespace: a port some other program listens on is refused (explicit) or
skipped (ephemeral). The test socket is closed at once: traffic to a
published port is DNATed before any host listener could see it.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Iterable, Iterator, Sequence

import attrs

from cnm.errors import Exhausted, InvalidConfig, PortInUse
from cnm.kernel.netns import NetNS
from cnm.store import KeyTaken, Store, Transaction
from cnm.types import IPAddress, PortBinding, PortRange, TransportProtocol

__all__ = ["DEFAULT_EPHEMERAL_RANGE", "PortAllocator"]

log = logging.getLogger(__name__)

DEFAULT_EPHEMERAL_RANGE = PortRange(49153, 65535)
_ANY = ipaddress.IPv4Address("0.0.0.0")
_KIND = "port"
_BY_OWNER = "port.owner"  # owner/<port key>: finds an owner's ports without a scan
_CURSOR = "port.cursor"  # protocol -> where the next ephemeral search starts


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


@attrs.define
class PortAllocator:
    """Allocates host ports for an owner (an endpoint id) and releases them.

    Args:
        store: where allocations live.
        host_netns: where the test sockets are bound.
        ephemeral: the range ephemeral ports come from.
    """

    store: Store
    host_netns: NetNS
    ephemeral: PortRange = DEFAULT_EPHEMERAL_RANGE

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
        """Release every port ``owner`` holds; return how many. Idempotent."""
        released = 0
        with self.store.transaction() as txn:
            for key, _ in txn.list(_BY_OWNER, f"{owner}/"):
                txn.delete(_BY_OWNER, key)
                released += txn.delete(_KIND, key.split("/", 1)[1])
        return released

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
        kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
        address = str(host_ip or _ANY)

        def probe() -> int | None:
            for port in block:
                with socket.socket(socket.AF_INET, kind) as sock:
                    try:
                        sock.bind((address, port))
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
