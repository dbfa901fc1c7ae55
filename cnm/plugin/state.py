"""What a plugin keeps in its cnm store, so that a restarted plugin (SIGKILL included) loses nothing.

Records (kind, key):

* ``plugin.network``, the NetworkID: the driver's validated options, the pools
  Docker gave, ``internal``, and ``state``: ``creating`` until the driver's
  create_network returned, then ``ready``;
* ``plugin.endpoint``, the EndpointID: the network, address and MAC, and the
  join (``joining`` until the driver's join returned, then ``joined``, with the
  reply Docker was given) and the published ports (``publishing``, then
  ``published``);
* ``plugin.hostport``, ``<protocol>/<port>``: a host port held by an endpoint,
  so that two containers never get the same one;
* ``plugin.meta``, ``owner``: the plugin's owner id, drawn once.

An intent (``creating``, ``joining``, ``publishing``) is written before the
kernel work and replaced when it is done: a plugin killed in between finds it
at its next start and undoes the half-made work (:meth:`NetworkPlugin.reconcile
<cnm.plugin.network.NetworkPlugin.reconcile>`).
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from cnm.driverapi import EndpointInfo, IPAMData, NetworkInfo
from cnm.store import Store, Transaction
from cnm.types import PortBinding

__all__ = ["EndpointRecord", "JoinRecord", "NetworkRecord", "docker_mac", "owner_id", "sandbox_ifname"]

NETWORK = "plugin.network"
ENDPOINT = "plugin.endpoint"
HOST_PORT = "plugin.hostport"
META = "plugin.meta"


def sandbox_ifname(endpoint_id: str) -> str:
    """The interface the driver makes for Docker to move into the container: ``cnmj`` + 11 digits of the id."""
    return "cnmj" + endpoint_id[:11]


def docker_mac(address: ipaddress.IPv4Interface) -> str:
    """Docker's MAC for an address: ``02:42:`` and the address bytes."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.ip.packed)


def owner_id(store: Store) -> str:
    """This plugin's owner id (12 hex digits): every kernel object and rule it makes carries it."""
    with store.transaction() as txn:
        record = txn.get(META, "owner")
        if record is None:
            record = {"owner": secrets.token_hex(6)}
            txn.put(META, "owner", record)
        return str(record["owner"])


def _pool_json(data: IPAMData) -> dict[str, Any]:
    return {
        "pool": str(data.pool),
        "gateway": None if data.gateway is None else str(data.gateway),
        "aux": {name: str(addr) for name, addr in data.aux_addresses.items()},
    }


def _pool_of(record: Mapping[str, Any]) -> IPAMData:
    gateway = record.get("gateway")
    return IPAMData(
        pool=ipaddress.ip_network(record["pool"]),
        gateway=None if gateway is None else ipaddress.ip_interface(gateway),
        aux_addresses={name: ipaddress.ip_address(addr) for name, addr in record.get("aux", {}).items()},
    )


@attrs.frozen(kw_only=True)
class NetworkRecord:
    """A network Docker created through this plugin."""

    info: NetworkInfo
    state: Literal["creating", "ready"] = "ready"

    def to_record(self) -> dict[str, Any]:
        """As stored."""
        return {
            "name": self.info.name,
            "options": dict(self.info.options),
            "ipv4": [_pool_json(p) for p in self.info.ipv4],
            "internal": self.info.internal,
            "state": self.state,
        }

    @classmethod
    def from_record(cls, key: str, record: Mapping[str, Any]) -> NetworkRecord:
        """Read a stored network."""
        return cls(
            info=NetworkInfo(
                id=key,
                name=record["name"],
                options=record["options"],
                ipv4=tuple(_pool_of(p) for p in record["ipv4"]),
                internal=record["internal"],
            ),
            state=record["state"],
        )

    @staticmethod
    def load(txn: Transaction, network_id: str) -> NetworkRecord | None:
        """The stored network, or None."""
        record = txn.get(NETWORK, network_id)
        return None if record is None else NetworkRecord.from_record(network_id, record)

    def save(self, txn: Transaction) -> None:
        """Store (or replace) it."""
        txn.put(NETWORK, self.info.id, self.to_record())


@attrs.frozen(kw_only=True)
class JoinRecord:
    """An endpoint's join: the sandbox, the interface handed to Docker, and the reply Docker got."""

    sandbox_key: str
    ifname: str
    state: Literal["joining", "joined"]
    reply: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class EndpointRecord:
    """An endpoint Docker created through this plugin.

    Attributes:
        ports: the published ports with their host ports chosen; ``ports_state``
            says whether the driver has published them yet.
    """

    info: EndpointInfo
    join: JoinRecord | None = None
    ports_state: Literal["", "publishing", "published"] = ""

    def to_record(self) -> dict[str, Any]:
        """As stored."""
        join = None if self.join is None else attrs.asdict(self.join)
        return {
            "name": self.info.name,
            "network_id": self.info.network_id,
            "address": None if self.info.address is None else str(self.info.address),
            "mac": self.info.mac,
            "ports": [
                {
                    "container_port": str(p.container_port),
                    "host_port": None if p.host_port is None else str(p.host_port),
                    "protocol": p.protocol,
                    "host_ip": None if p.host_ip is None else str(p.host_ip),
                }
                for p in self.info.ports
            ],
            "ports_state": self.ports_state,
            "join": join,
        }

    @classmethod
    def from_record(cls, key: str, record: Mapping[str, Any]) -> EndpointRecord:
        """Read a stored endpoint."""
        address = record["address"]
        join = record["join"]
        return cls(
            info=EndpointInfo(
                id=key,
                name=record["name"],
                network_id=record["network_id"],
                address=None if address is None else ipaddress.IPv4Interface(address),
                mac=record["mac"],
                ports=tuple(PortBinding(**p) for p in record["ports"]),
            ),
            join=None if join is None else JoinRecord(**join),
            ports_state=record["ports_state"],
        )

    @staticmethod
    def load(txn: Transaction, endpoint_id: str) -> EndpointRecord | None:
        """The stored endpoint, or None."""
        record = txn.get(ENDPOINT, endpoint_id)
        return None if record is None else EndpointRecord.from_record(endpoint_id, record)

    def save(self, txn: Transaction) -> None:
        """Store (or replace) it."""
        txn.put(ENDPOINT, self.info.id, self.to_record())
