"""The remote driver protocol's messages, parsed and serialised field by field.

Docker's libnetwork talks to a network plugin (``NetworkDriver.*``) and an
IPAM plugin (``IpamDriver.*``) with JSON over HTTP. Each request body is
parsed here into a frozen value, refusing a malformed field with
:class:`ProtocolError` (which names the method and the field); each reply is
a value whose :meth:`to_json` writes exactly the keys a Docker 20.10 engine
sends and expects (``shared/reference/docker/raw/4-plugin-calls.jsonl``).

Go marshals an absent map or slice as ``null`` and an absent string as
``""``; both are read as "not given".
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs

from cnm.errors import InvalidConfig

__all__ = [
    "EXPOSED_PORTS",
    "GENERIC",
    "PORT_MAP",
    "CreateEndpointRequest",
    "CreateNetworkRequest",
    "EndpointInterface",
    "EndpointRequest",
    "ExposedPort",
    "IPAMData",
    "JoinReply",
    "JoinRequest",
    "NetworkRequest",
    "PortMapEntry",
    "ProtocolError",
    "ReleaseAddressRequest",
    "ReleasePoolRequest",
    "RequestAddressRequest",
    "RequestPoolRequest",
    "StaticRoute",
    "error_reply",
]

# libnetwork's option labels (netlabel).
GENERIC = "com.docker.network.generic"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
EXPOSED_PORTS = "com.docker.network.endpoint.exposedports"
PORT_MAP = "com.docker.network.portmap"
MAC_ADDRESS = "com.docker.network.endpoint.macaddress"
INTERNAL = "com.docker.network.internal"
GATEWAY_ADDRESS_TYPE = "com.docker.network.gateway"

# RouteType of a static route (libnetwork types.NEXTHOP / types.CONNECTED).
ROUTE_NEXTHOP = 0
ROUTE_CONNECTED = 1

_PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}

_T = TypeVar("_T")


class ProtocolError(InvalidConfig):
    """A request body does not follow the remote driver protocol."""


def error_reply(message: str) -> dict[str, object]:
    """The protocol's error reply; Docker shows it as ``Error response from daemon: remote: <message>``."""
    return {"Err": message}


def _field(body: Mapping[str, Any], key: str, kind: type[_T], where: str, *, default: _T | None = None) -> _T:
    value = body.get(key)
    if value is None:
        if default is None:
            raise ProtocolError(f"{where}: field {key!r} is missing; the caller does not speak the plugin protocol")
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{where}: field {key!r} is {type(value).__name__} {value!r}, expected {kind.__name__}")
    return value


def _str(body: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = _field(body, key, str, where, default=None if required else "")
    if required and not value:
        raise ProtocolError(f"{where}: field {key!r} is empty")
    return value


def _map(body: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    return dict(_field(body, key, dict, where, default={}))


def _list(body: Mapping[str, Any], key: str, where: str) -> list[Any]:
    return list(_field(body, key, list, where, default=[]))


def body_of(body: object, where: str) -> Mapping[str, Any]:
    """A request body as a JSON object (an empty body is an empty object)."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ProtocolError(f"{where}: the body is {type(body).__name__}, expected a JSON object")
    return body


@attrs.frozen(kw_only=True)
class IPAMData:
    """One entry of ``IPv4Data``/``IPv6Data``: a pool Docker's IPAM gave the network."""

    address_space: str
    pool: str
    gateway: str = ""
    aux_addresses: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def parse(cls, body: object, where: str) -> IPAMData:
        """Read one entry."""
        data = body_of(body, where)
        return cls(
            address_space=_str(data, "AddressSpace", where),
            pool=_str(data, "Pool", where, required=True),
            gateway=_str(data, "Gateway", where),
            aux_addresses={str(k): str(v) for k, v in _map(data, "AuxAddresses", where).items()},
        )


@attrs.frozen(kw_only=True)
class CreateNetworkRequest:
    """``NetworkDriver.CreateNetwork``.

    Attributes:
        options: the driver options given with ``docker network create -o``
            (``com.docker.network.generic``).
        enable_ipv6: ``--ipv6``.
        internal: ``--internal`` (``com.docker.network.internal`` among the Options).
    """

    network_id: str
    options: Mapping[str, object]
    enable_ipv6: bool
    internal: bool
    ipv4: tuple[IPAMData, ...]
    ipv6: tuple[IPAMData, ...]

    @classmethod
    def parse(cls, body: object) -> CreateNetworkRequest:
        """Read the request."""
        where = "NetworkDriver.CreateNetwork"
        data = body_of(body, where)
        options = _map(data, "Options", where)
        generic = options.get(GENERIC) or {}
        if not isinstance(generic, dict):
            raise ProtocolError(f"{where}: option {GENERIC!r} is {type(generic).__name__}, expected an object")
        generic = dict(generic)
        # libnetwork sends its own network's generic map as Options: --internal is a key of it, beside
        # the user's -o options (com.docker.network.generic), not one of those.
        internal = options.get(INTERNAL, generic.pop(INTERNAL, False))
        return cls(
            network_id=_str(data, "NetworkID", where, required=True),
            options=generic,
            enable_ipv6=bool(options.get(ENABLE_IPV6, False)),
            internal=internal in (True, "true"),
            ipv4=tuple(IPAMData.parse(d, f"{where} IPv4Data") for d in _list(data, "IPv4Data", where)),
            ipv6=tuple(IPAMData.parse(d, f"{where} IPv6Data") for d in _list(data, "IPv6Data", where)),
        )


@attrs.frozen(kw_only=True)
class NetworkRequest:
    """A request naming only a network: ``DeleteNetwork``, ``AllocateNetwork``, ``FreeNetwork``."""

    network_id: str

    @classmethod
    def parse(cls, body: object, method: str) -> NetworkRequest:
        """Read the request."""
        where = f"NetworkDriver.{method}"
        return cls(network_id=_str(body_of(body, where), "NetworkID", where, required=True))


@attrs.frozen(kw_only=True)
class ExposedPort:
    """One of ``com.docker.network.endpoint.exposedports``: ``{"Proto": 6, "Port": 80}``."""

    proto: int
    port: int

    @classmethod
    def parse(cls, body: object, where: str) -> ExposedPort:
        """Read one entry."""
        data = body_of(body, where)
        return cls(proto=_field(data, "Proto", int, where), port=_field(data, "Port", int, where))


@attrs.frozen(kw_only=True)
class PortMapEntry:
    """One of ``com.docker.network.portmap``: a ``-p`` binding as Docker resolved it (HostPort 0: any)."""

    proto: int
    ip: str
    port: int
    host_ip: str
    host_port: int
    host_port_end: int

    @property
    def protocol(self) -> str:
        """``tcp``, ``udp`` or ``sctp``."""
        return _PROTOCOLS.get(self.proto, str(self.proto))

    @classmethod
    def parse(cls, body: object, where: str) -> PortMapEntry:
        """Read one entry."""
        data = body_of(body, where)
        return cls(
            proto=_field(data, "Proto", int, where),
            ip=_str(data, "IP", where),
            port=_field(data, "Port", int, where),
            host_ip=_str(data, "HostIP", where),
            host_port=_field(data, "HostPort", int, where, default=0),
            host_port_end=_field(data, "HostPortEnd", int, where, default=0),
        )

    def to_json(self) -> dict[str, object]:
        """The entry as Docker writes it."""
        return {
            "Proto": self.proto,
            "IP": self.ip,
            "Port": self.port,
            "HostIP": self.host_ip,
            "HostPort": self.host_port,
            "HostPortEnd": self.host_port_end,
        }


def _ports(options: Mapping[str, Any], where: str) -> tuple[tuple[ExposedPort, ...], tuple[PortMapEntry, ...]]:
    exposed = tuple(ExposedPort.parse(p, f"{where} {EXPOSED_PORTS}") for p in _list(options, EXPOSED_PORTS, where))
    port_map = tuple(PortMapEntry.parse(p, f"{where} {PORT_MAP}") for p in _list(options, PORT_MAP, where))
    return exposed, port_map


@attrs.frozen(kw_only=True)
class EndpointInterface:
    """The ``Interface`` of a CreateEndpoint request or reply; ``""`` means not given (or nothing to add)."""

    address: str = ""
    address_ipv6: str = ""
    mac_address: str = ""

    def to_json(self) -> dict[str, str]:
        """Only the fields set: a reply may fill only what Docker left empty."""
        fields = {"Address": self.address, "AddressIPv6": self.address_ipv6, "MacAddress": self.mac_address}
        return {key: value for key, value in fields.items() if value}


@attrs.frozen(kw_only=True)
class CreateEndpointRequest:
    """``NetworkDriver.CreateEndpoint``: the address Docker's IPAM gave, ``--mac-address``, ports."""

    network_id: str
    endpoint_id: str
    interface: EndpointInterface
    exposed_ports: tuple[ExposedPort, ...] = ()
    port_map: tuple[PortMapEntry, ...] = ()

    @classmethod
    def parse(cls, body: object) -> CreateEndpointRequest:
        """Read the request; a MAC given only as the base64 option is taken from there."""
        where = "NetworkDriver.CreateEndpoint"
        data = body_of(body, where)
        iface = _map(data, "Interface", where)
        options = _map(data, "Options", where)
        mac = _str(iface, "MacAddress", where)
        raw_mac = options.get(MAC_ADDRESS)
        if not mac and isinstance(raw_mac, str) and raw_mac:
            # Go marshals a net.HardwareAddr ([]byte) as base64.
            mac = ":".join(f"{b:02x}" for b in base64.b64decode(raw_mac))
        exposed, port_map = _ports(options, where)
        return cls(
            network_id=_str(data, "NetworkID", where, required=True),
            endpoint_id=_str(data, "EndpointID", where, required=True),
            interface=EndpointInterface(
                address=_str(iface, "Address", where),
                address_ipv6=_str(iface, "AddressIPv6", where),
                mac_address=mac.lower(),
            ),
            exposed_ports=exposed,
            port_map=port_map,
        )


@attrs.frozen(kw_only=True)
class EndpointRequest:
    """A request naming an endpoint (and maybe ports): DeleteEndpoint, Leave, EndpointOperInfo, Program/Revoke."""

    network_id: str
    endpoint_id: str
    exposed_ports: tuple[ExposedPort, ...] = ()
    port_map: tuple[PortMapEntry, ...] = ()

    @classmethod
    def parse(cls, body: object, method: str) -> EndpointRequest:
        """Read the request."""
        where = f"NetworkDriver.{method}"
        data = body_of(body, where)
        exposed, port_map = _ports(_map(data, "Options", where), where)
        return cls(
            network_id=_str(data, "NetworkID", where, required=True),
            endpoint_id=_str(data, "EndpointID", where, required=True),
            exposed_ports=exposed,
            port_map=port_map,
        )


@attrs.frozen(kw_only=True)
class JoinRequest:
    """``NetworkDriver.Join``: the endpoint goes into the sandbox whose netns file is ``sandbox_key``."""

    network_id: str
    endpoint_id: str
    sandbox_key: str
    options: Mapping[str, object] = attrs.field(factory=dict)

    @classmethod
    def parse(cls, body: object) -> JoinRequest:
        """Read the request."""
        where = "NetworkDriver.Join"
        data = body_of(body, where)
        return cls(
            network_id=_str(data, "NetworkID", where, required=True),
            endpoint_id=_str(data, "EndpointID", where, required=True),
            sandbox_key=_str(data, "SandboxKey", where, required=True),
            options=_map(data, "Options", where),
        )


@attrs.frozen(kw_only=True)
class StaticRoute:
    """A route Docker adds in the sandbox after the join."""

    destination: str
    route_type: int = ROUTE_NEXTHOP
    next_hop: str = ""

    def to_json(self) -> dict[str, object]:
        """As the Join reply carries it."""
        route: dict[str, object] = {"Destination": self.destination, "RouteType": self.route_type}
        if self.next_hop:
            route["NextHop"] = self.next_hop
        return route


@attrs.frozen(kw_only=True)
class JoinReply:
    """The Join reply: Docker moves ``src_name`` into the sandbox as ``<dst_prefix>N``, then sets routes."""

    src_name: str
    dst_prefix: str = "eth"
    gateway: str = ""
    gateway_ipv6: str = ""
    static_routes: tuple[StaticRoute, ...] = ()
    disable_gateway_service: bool = False

    def to_json(self) -> dict[str, object]:
        """The keys a Docker 20.10 engine reads, as the captured plugin sent them."""
        reply: dict[str, object] = {
            "InterfaceName": {"SrcName": self.src_name, "DstPrefix": self.dst_prefix},
            "Gateway": self.gateway,
            "StaticRoutes": [r.to_json() for r in self.static_routes],
            "DisableGatewayService": self.disable_gateway_service,
        }
        if self.gateway_ipv6:
            reply["GatewayIPv6"] = self.gateway_ipv6
        return reply

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JoinReply:
        """Read a stored (or received) reply back."""
        where = "NetworkDriver.Join reply"
        name = _map(data, "InterfaceName", where)
        return cls(
            src_name=_str(name, "SrcName", where, required=True),
            dst_prefix=_str(name, "DstPrefix", where) or "eth",
            gateway=_str(data, "Gateway", where),
            gateway_ipv6=_str(data, "GatewayIPv6", where),
            static_routes=tuple(
                StaticRoute(
                    destination=_str(r, "Destination", where, required=True),
                    route_type=_field(r, "RouteType", int, where, default=ROUTE_NEXTHOP),
                    next_hop=_str(r, "NextHop", where),
                )
                for r in _list(data, "StaticRoutes", where)
            ),
            disable_gateway_service=bool(data.get("DisableGatewayService", False)),
        )


# --- IPAM --------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RequestPoolRequest:
    """``IpamDriver.RequestPool``: ``--subnet`` (Pool), ``--ip-range`` (SubPool), ``--ipam-opt``, ``--ipv6``."""

    address_space: str
    pool: str
    sub_pool: str
    options: Mapping[str, object]
    v6: bool

    @classmethod
    def parse(cls, body: object) -> RequestPoolRequest:
        """Read the request."""
        where = "IpamDriver.RequestPool"
        data = body_of(body, where)
        return cls(
            address_space=_str(data, "AddressSpace", where),
            pool=_str(data, "Pool", where),
            sub_pool=_str(data, "SubPool", where),
            options=_map(data, "Options", where),
            v6=_field(data, "V6", bool, where, default=False),
        )


@attrs.frozen(kw_only=True)
class RequestAddressRequest:
    """``IpamDriver.RequestAddress``; ``Options.RequestAddressType`` marks the gateway's request."""

    pool_id: str
    address: str
    options: Mapping[str, object]

    @property
    def for_gateway(self) -> bool:
        """Whether Docker asks for the network's gateway."""
        return self.options.get("RequestAddressType") == GATEWAY_ADDRESS_TYPE

    @classmethod
    def parse(cls, body: object) -> RequestAddressRequest:
        """Read the request."""
        where = "IpamDriver.RequestAddress"
        data = body_of(body, where)
        return cls(
            pool_id=_str(data, "PoolID", where, required=True),
            address=_str(data, "Address", where),
            options=_map(data, "Options", where),
        )


@attrs.frozen(kw_only=True)
class ReleaseAddressRequest:
    """``IpamDriver.ReleaseAddress``: the address without its prefix length."""

    pool_id: str
    address: str

    @classmethod
    def parse(cls, body: object) -> ReleaseAddressRequest:
        """Read the request."""
        where = "IpamDriver.ReleaseAddress"
        data = body_of(body, where)
        return cls(
            pool_id=_str(data, "PoolID", where, required=True), address=_str(data, "Address", where, required=True)
        )


@attrs.frozen(kw_only=True)
class ReleasePoolRequest:
    """``IpamDriver.ReleasePool``."""

    pool_id: str

    @classmethod
    def parse(cls, body: object) -> ReleasePoolRequest:
        """Read the request."""
        where = "IpamDriver.ReleasePool"
        return cls(pool_id=_str(body_of(body, where), "PoolID", where, required=True))
