"""What the CNM objects of one controller share (internal).

:class:`Runtime` bundles the controller's services (store, IPAM, port
allocator, driver registry, host namespace) and the translations between
stored records and the info objects drivers receive.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
from typing import Any

import attrs

from cnm import _records as rec
from cnm._locks import StateLocks
from cnm.driverapi import Driver, EndpointInfo, IPAMData, NetworkInfo, SandboxInfo
from cnm.errors import EndpointNotFound, InvalidConfig, NetworkNotFound, NotFound, SandboxNotFound
from cnm.ipamapi import Ipam
from cnm.kernel.netns import NetNS
from cnm.portmapper import PortAllocator
from cnm.registry import DriverRegistry
from cnm.store import Store, Transaction

__all__ = ["Runtime", "new_id", "now", "validate_name"]

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


def new_id() -> str:
    """A fresh 64-hex-digit object id."""
    return secrets.token_hex(32)


def now() -> str:
    """The current time in RFC 3339, as Docker prints it."""
    return datetime.datetime.now(datetime.UTC).isoformat()


def validate_name(name: str, what: str) -> str:
    """Refuse names Docker would refuse."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidConfig(
            f"invalid {what} name {name!r}: use 1-128 characters [a-zA-Z0-9_.-], starting with a letter or digit"
        )
    return name


def mac_for(address: ipaddress.IPv4Address) -> str:
    """Docker's MAC for an IPv4 address: 02:42 followed by the four address bytes."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.packed)


@attrs.define(kw_only=True)
class Runtime:
    """The services of one controller, shared by its Network, Endpoint and Sandbox objects."""

    state_dir: str
    host_netns: NetNS
    store: Store
    ipam: Ipam
    ports: PortAllocator
    registry: DriverRegistry
    locks: StateLocks

    # --- records -----------------------------------------------------------
    def _find(self, txn: Transaction, kind: str, ref: str, scope: str = "") -> dict[str, Any] | None:
        data = txn.get(kind, ref)
        if data is not None and (not scope or data.get("network_id") == scope):
            return data
        named = txn.get(f"{kind}.name", f"{scope}/{ref}" if scope else ref)
        if named is not None:
            return txn.get(kind, named["id"])
        if len(ref) >= 6 and all(c in "0123456789abcdef" for c in ref):
            matches = [v for k, v in txn.list(kind, ref) if not scope or v.get("network_id") == scope]
            if len(matches) == 1:
                return matches[0]
        return None

    def network_record(self, ref: str) -> rec.NetworkRecord:
        """A network by name, id or unique id prefix."""
        with self.store.transaction() as txn:
            data = self._find(txn, "network", ref)
        if data is None:
            raise NetworkNotFound(f"network {ref!r} not found; see Controller.networks()")
        return rec.from_json(rec.NetworkRecord, data)

    def endpoint_record(self, ref: str, network_id: str = "") -> rec.EndpointRecord:
        """An endpoint by id, or by name within a network."""
        with self.store.transaction() as txn:
            data = self._find(txn, "endpoint", ref, network_id)
        if data is None:
            raise EndpointNotFound(f"endpoint {ref!r} not found; see Network.endpoints()")
        return rec.from_json(rec.EndpointRecord, data)

    def sandbox_record(self, ref: str) -> rec.SandboxRecord:
        """A sandbox by name, id or unique id prefix."""
        with self.store.transaction() as txn:
            data = self._find(txn, "sandbox", ref)
        if data is None:
            raise SandboxNotFound(f"sandbox {ref!r} not found; see Controller.sandboxes()")
        return rec.from_json(rec.SandboxRecord, data)

    def reload(self, record: Any) -> Any:
        """The current stored version of ``record``; NotFound if it is gone."""
        kind = {rec.NetworkRecord: "network", rec.EndpointRecord: "endpoint", rec.SandboxRecord: "sandbox"}[
            type(record)
        ]
        with self.store.transaction() as txn:
            data = txn.get(kind, record.id)
        if data is None:
            raise NotFound(f"{kind} {record.name!r} no longer exists")
        return rec.from_json(type(record), data)

    # --- endpoints and their indexes ---------------------------------------------
    # Endpoints are found by network ("endpoint.name", keyed network/name) and by
    # sandbox ("sandbox.endpoint", keyed sandbox/endpoint) through prefix scans,
    # so no hot path reads every endpoint of the controller.
    @staticmethod
    def put_endpoint(txn: Transaction, record: rec.EndpointRecord) -> None:
        """Store an endpoint record and keep the by-sandbox index in step."""
        old = txn.get("endpoint", record.id)
        old_sandbox = None if old is None else old.get("sandbox_id")
        if old_sandbox and old_sandbox != record.sandbox_id:
            txn.delete("sandbox.endpoint", f"{old_sandbox}/{record.id}")
        if record.sandbox_id:
            txn.put("sandbox.endpoint", f"{record.sandbox_id}/{record.id}", {"id": record.id})
        if record.owner_sandbox_id:
            # Found by the owner's delete even when not joined: it goes with the sandbox either way.
            txn.put("sandbox.owned", f"{record.owner_sandbox_id}/{record.id}", {"id": record.id})
        txn.put("endpoint", record.id, rec.to_json(record))

    @staticmethod
    def drop_endpoint(txn: Transaction, record: rec.EndpointRecord) -> None:
        """Delete an endpoint record, its name and its index entries."""
        old = txn.get("endpoint", record.id)
        if old is not None and old.get("sandbox_id"):
            txn.delete("sandbox.endpoint", f"{old['sandbox_id']}/{record.id}")
        if record.owner_sandbox_id:
            txn.delete("sandbox.owned", f"{record.owner_sandbox_id}/{record.id}")
        txn.delete("endpoint.name", f"{record.network_id}/{record.name}")
        txn.delete("endpoint", record.id)

    def endpoints_of_network(self, network_id: str) -> list[rec.EndpointRecord]:
        """A network's endpoints, in name order."""
        return self._indexed("endpoint.name", network_id)

    def endpoints_of_sandbox(self, sandbox_id: str) -> list[rec.EndpointRecord]:
        """The endpoints joined to a sandbox, in join order."""
        return sorted(self._indexed("sandbox.endpoint", sandbox_id), key=lambda e: e.join_seq)

    def endpoints_owned_by(self, sandbox_id: str) -> list[rec.EndpointRecord]:
        """The endpoints a sandbox created (``create_sandbox(network=...)``), joined or not."""
        return self._indexed("sandbox.owned", sandbox_id)

    def _indexed(self, index: str, owner: str) -> list[rec.EndpointRecord]:
        with self.store.transaction() as txn:
            found = (txn.get("endpoint", v["id"]) for _, v in txn.list(index, f"{owner}/"))
            return [rec.from_json(rec.EndpointRecord, data) for data in found if data is not None]

    def list_records(self, kind: str, cls: type[Any]) -> list[Any]:
        """Every record of a kind."""
        with self.store.transaction() as txn:
            return [rec.from_json(cls, v) for _, v in txn.list(kind)]

    # --- driver views --------------------------------------------------------
    def driver(self, network: rec.NetworkRecord) -> Driver:
        """The network's driver."""
        return self.registry.get(network.driver)

    @staticmethod
    def network_info(network: rec.NetworkRecord) -> NetworkInfo:
        """What a driver is told about a network."""
        ipv4: tuple[IPAMData, ...] = ()
        if network.subnet is not None:
            pool = ipaddress.ip_network(network.subnet)
            ipv4 = (
                IPAMData(
                    pool=pool,
                    gateway=network.gateway_interface,
                    aux_addresses={k: ipaddress.ip_address(v) for k, v in network.aux_addresses.items()},
                ),
            )
        return NetworkInfo(
            id=network.id, name=network.name, options=network.options, ipv4=ipv4, internal=network.internal
        )

    @staticmethod
    def endpoint_info(endpoint: rec.EndpointRecord) -> EndpointInfo:
        """What a driver is told about an endpoint."""
        return EndpointInfo(
            id=endpoint.id,
            name=endpoint.name,
            network_id=endpoint.network_id,
            address=None if endpoint.address is None else ipaddress.IPv4Interface(endpoint.address),
            mac=endpoint.mac,
            ports=rec.ports_from_json(endpoint.ports),
        )

    @property
    def netns_dir(self) -> str:
        """Where the controller's sandbox namespaces are mounted: ``<state_dir>/netns``."""
        return os.path.join(self.state_dir, "netns")

    def owns_netns(self, sandbox: rec.SandboxRecord) -> bool:
        """True if the sandbox's namespace is its own (private mode) and this controller's to change or remove.

        Belt and braces: whatever the record says, only a namespace file under
        the controller's own netns directory is ever modified or removed.
        """
        path = os.path.abspath(sandbox.netns_path)
        return (
            sandbox.mode == rec.PRIVATE
            and os.path.dirname(path) == self.netns_dir
            and path != os.path.abspath(self.host_netns.path)
        )

    def sandbox_info(self, sandbox: rec.SandboxRecord) -> SandboxInfo:
        """What a driver is told about a sandbox."""
        return SandboxInfo(
            id=sandbox.id,
            name=sandbox.name,
            netns=NetNS(sandbox.netns_path),
            # Exactly when delete_sandbox unmounts the namespace after the leaves.
            closing=sandbox.status == rec.DELETING and self.owns_netns(sandbox),
        )
