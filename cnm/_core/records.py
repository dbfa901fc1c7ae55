"""The stored form of networks, endpoints and sandboxes (internal).

Each record is a frozen attrs class that round-trips through JSON. ``status``
marks operations in flight, so that state left by a crash can be told apart
from finished state.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import secrets
from typing import Any, TypeVar

import attrs

from cnm.errors import InvalidConfig
from cnm.types import PortBinding

__all__ = [
    "EndpointRecord",
    "LinkRecord",
    "NetworkRecord",
    "SandboxRecord",
    "from_json",
    "new_id",
    "now",
    "ports_from_json",
    "ports_to_json",
    "validate_name",
]

_R = TypeVar("_R")

# Statuses: "creating" and "deleting" are in flight; "ready" is settled.
CREATING = "creating"
READY = "ready"
DELETING = "deleting"
DEAD = "dead"
"""Status of a sandbox whose namespace disappeared (e.g. after a host reboot); set by reconcile."""

# Sandbox modes: whose network namespace a sandbox uses.
PRIVATE = "private"  # its own, created with it and removed with it
HOST = "host"  # the controller's host namespace, never removed
CONTAINER = "container"  # another sandbox's, with that sandbox's files (``shares``)

DEFAULT_NETWORK = "bridge"
"""The name of the predefined network the controller makes on its default bridge (Docker's docker0
network). It is a network's name, not a driver's: Docker fills a container's top-level
``NetworkSettings`` fields from this network only, whatever drivers are installed."""

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


def new_id() -> str:
    """A fresh 64-hex-digit object id."""
    return secrets.token_hex(32)


def now() -> str:
    """The current time in RFC 3339, as Docker prints it."""
    return datetime.datetime.now(datetime.UTC).isoformat()


def validate_name(name: str, what: str) -> str:
    """Refuse names Docker would refuse."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidConfig(
            f"invalid {what} name {name!r}: use 1-128 characters [a-zA-Z0-9_.-], starting with a letter or digit"
        )
    return name


@attrs.frozen(kw_only=True)
class NetworkRecord:
    """A network as stored."""

    id: str
    name: str
    driver: str
    options: dict[str, Any] = attrs.field(factory=dict)
    internal: bool = False
    labels: dict[str, str] = attrs.field(factory=dict)
    subnet: str | None = None
    gateway: str | None = None
    ip_range: str | None = None
    aux_addresses: dict[str, str] = attrs.field(factory=dict)
    pool_id: str | None = None
    created: str = ""
    predefined: bool = False
    user_options: dict[str, Any] = attrs.field(factory=dict)
    user_gateway: bool = False
    status: str = READY

    @property
    def gateway_interface(self) -> ipaddress.IPv4Interface | None:
        """The gateway with the subnet's prefix length."""
        if self.gateway is None or self.subnet is None:
            return None
        prefix = ipaddress.ip_network(self.subnet).prefixlen
        return ipaddress.IPv4Interface(f"{self.gateway}/{prefix}")


@attrs.frozen(kw_only=True)
class EndpointRecord:
    """An endpoint as stored."""

    id: str
    name: str
    network_id: str
    address: str | None = None
    mac: str | None = None
    ports: list[dict[str, Any]] = attrs.field(factory=list)
    requested_ports: list[dict[str, Any]] = attrs.field(factory=list)
    sandbox_id: str | None = None
    ifname: str | None = None
    gateway: str | None = None
    join_seq: int = 0
    owned_by_sandbox: bool = False
    owner_sandbox_id: str | None = None
    exposed: list[str] = attrs.field(factory=list)
    aliases: list[str] = attrs.field(factory=list)
    created: str = ""
    status: str = READY


@attrs.frozen(kw_only=True)
class SandboxRecord:
    """A sandbox as stored."""

    id: str
    name: str
    hostname: str
    netns_path: str
    files_dir: str
    dns: list[str] = attrs.field(factory=list)
    dns_search: list[str] = attrs.field(factory=list)
    dns_options: list[str] = attrs.field(factory=list)
    join_counter: int = 0
    created: str = ""
    mode: str = PRIVATE
    shares: str | None = None
    network_mode: str = ""
    exposed: list[str] = attrs.field(factory=list)
    status: str = READY


@attrs.frozen(kw_only=True)
class LinkRecord:
    """A legacy link as stored: what the source sees of the target, fixed when it was made.

    The addresses and the target's exposed ports (``"3306/tcp"``) are kept so
    that removing the link's rules never depends on the endpoints still existing.
    """

    id: str
    source_id: str
    target_id: str
    alias: str
    network_id: str
    source_ip: str
    target_ip: str
    ports: list[str] = attrs.field(factory=list)
    created: str = ""
    status: str = READY


def to_json(record: object) -> dict[str, Any]:
    """The record as a JSON-able dict."""
    return attrs.asdict(record)  # type: ignore[arg-type]


def from_json(cls: type[_R], data: dict[str, Any]) -> _R:
    """A record from its JSON form, ignoring keys a newer version may have added."""
    names = {a.name for a in attrs.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def ports_to_json(ports: list[PortBinding] | tuple[PortBinding, ...]) -> list[dict[str, Any]]:
    """Port bindings as JSON-able dicts."""
    return [
        {
            "container_port": str(p.container_port),
            "host_port": None if p.host_port is None else str(p.host_port),
            "protocol": p.protocol,
            "host_ip": None if p.host_ip is None else str(p.host_ip),
        }
        for p in ports
    ]


def ports_from_json(data: list[dict[str, Any]]) -> tuple[PortBinding, ...]:
    """Port bindings from their JSON form."""
    return tuple(PortBinding(**item) for item in data)
