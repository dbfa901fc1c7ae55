"""Host ports of published ports: reserved in the plugin's store, so two containers never get the same one.

Docker leaves a remote network's ``-p`` to its plugin, with the host port it
was given (``-p 8080:80``), a range to pick from (``-p 8000-8010:80``) or none
(``-p 80``: any free port of Docker's own ephemeral range).
"""

from __future__ import annotations

from cnm.errors import Exhausted, InvalidConfig, PortInUse
from cnm.plugin import messages as msg
from cnm.plugin.state import HOST_PORT
from cnm.store import KeyTaken, Store, Transaction
from cnm.types import PortBinding

__all__ = ["EPHEMERAL_PORTS", "release", "release_orphans", "reserve"]

EPHEMERAL_PORTS = range(49153, 61000)
"""Host ports for ``-p CONTAINER`` without a host port: Docker's own range (49153-60999)."""


def reserve(store: Store, endpoint_id: str, entries: tuple[msg.PortMapEntry, ...]) -> tuple[PortBinding, ...]:
    """Take a host port for each ``-p`` of an endpoint, all or none; the bindings with their host ports.

    Raises:
        cnm.errors.PortInUse: a host port asked for is another endpoint's.
        cnm.errors.Exhausted: no port of a range is free.
        cnm.errors.InvalidConfig: a protocol other than tcp and udp.
    """
    bindings = []
    with store.transaction() as txn:
        for entry in entries:
            if entry.protocol not in ("tcp", "udp"):
                raise InvalidConfig(f"cannot publish {entry.protocol} port {entry.port}; cnm publishes tcp and udp")
            if entry.host_port:
                candidates = range(entry.host_port, max(entry.host_port, entry.host_port_end) + 1)
            else:
                candidates = EPHEMERAL_PORTS
            port = _take_port(txn, endpoint_id, entry, candidates)
            bindings.append(
                PortBinding(
                    container_port=entry.port,
                    host_port=port,
                    protocol=entry.protocol,
                    host_ip=entry.host_ip or None,
                )
            )
    return tuple(bindings)


def _take_port(txn: Transaction, endpoint_id: str, entry: msg.PortMapEntry, candidates: range) -> int:
    for port in candidates:
        key = f"{entry.protocol}/{port}"
        try:
            txn.insert(HOST_PORT, key, {"endpoint": endpoint_id})
        except KeyTaken:
            held = txn.get(HOST_PORT, key)
            if held is not None and held.get("endpoint") == endpoint_id:
                return port  # its own already: a repeated call, or one a killed plugin began
            continue
        return port
    if len(candidates) == 1:
        raise PortInUse(
            f"host port {candidates[0]}/{entry.protocol} is already published by another container; "
            "choose another host port"
        )
    raise Exhausted(
        f"no free host port in {candidates[0]}-{candidates[-1]}/{entry.protocol}; stop a container that publishes one"
    )


def release_orphans(store: Store, keep: set[str]) -> int:
    """Give back every host port held by an endpoint not in ``keep``; how many."""
    released = 0
    with store.transaction() as txn:
        for key, value in txn.list(HOST_PORT):
            if value.get("endpoint") not in keep:
                txn.delete(HOST_PORT, key)
                released += 1
    return released


def release(store: Store, endpoint_id: str) -> None:
    """Give back every host port the endpoint holds."""
    with store.transaction() as txn:
        for key, value in txn.list(HOST_PORT):
            if value.get("endpoint") == endpoint_id:
                txn.delete(HOST_PORT, key)
