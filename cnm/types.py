"""Value types shared by the public API, the driver contract and the services.

Every class here is a frozen attrs class that validates on construction, so a
malformed value is refused before anything is created.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from typing import Literal, TypeAlias, cast

import attrs

from cnm.errors import InvalidConfig

__all__ = [
    "IPAMConfig",
    "IPAddress",
    "IPNetwork",
    "Pool",
    "PortBinding",
    "PortRange",
    "TransportProtocol",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
TransportProtocol: TypeAlias = Literal["tcp", "udp"]
_PROTOCOLS = ("tcp", "udp")


def parse_address(value: object, what: str = "address") -> IPAddress:
    """Parse an IPv4 or IPv6 address, raising :class:`InvalidConfig` on error."""
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    try:
        return ipaddress.ip_address(str(value))
    except ValueError as exc:
        raise InvalidConfig(f"invalid {what} {value!r}: {exc}; give an address like 172.28.0.1") from exc


def parse_network(value: object, what: str = "subnet") -> IPNetwork:
    """Parse a CIDR network with no host bits set, raising :class:`InvalidConfig`."""
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    text = str(value)
    if "/" not in text:
        raise InvalidConfig(f"invalid {what} {text!r}: give it in CIDR form, like 172.28.0.0/16")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        hint = ""
        try:
            hint = f"; did you mean {ipaddress.ip_network(text, strict=False)}?"
        except ValueError:
            hint = "; give it in CIDR form, like 172.28.0.0/16"
        raise InvalidConfig(f"invalid {what} {text!r}: {exc}{hint}") from exc


def _subnet(value: object) -> IPNetwork | None:
    return None if value is None or value == "" else parse_network(value, "subnet")


def _ip_range(value: object) -> IPNetwork | None:
    return None if value is None or value == "" else parse_network(value, "ip_range")


def _gateway(value: object) -> IPAddress | None:
    return None if value is None or value == "" else parse_address(value, "gateway")


def _host_ip(value: object) -> IPAddress | None:
    return None if value is None or value == "" else parse_address(value, "host_ip")


def _aux_addresses(value: Mapping[str, object] | None) -> Mapping[str, IPAddress]:
    if not value:
        return {}
    return {str(k): parse_address(v, f"aux address {k!r}") for k, v in value.items()}


@attrs.frozen(kw_only=True)
class IPAMConfig:
    """Addressing of one network, as ``docker network create --subnet ...`` takes it.

    Attributes:
        subnet: the network's CIDR; ``None`` lets the IPAM pick a free default pool.
        gateway: the gateway address; defaults to the first host address.
        ip_range: a CIDR inside ``subnet`` from which endpoint addresses are given out.
        aux_addresses: addresses inside ``subnet`` that are reserved, never given out.
    """

    subnet: IPNetwork | None = attrs.field(default=None, converter=_subnet)
    gateway: IPAddress | None = attrs.field(default=None, converter=_gateway)
    ip_range: IPNetwork | None = attrs.field(default=None, converter=_ip_range)
    aux_addresses: Mapping[str, IPAddress] = attrs.field(factory=dict, converter=_aux_addresses)

    def __attrs_post_init__(self) -> None:
        subnet = self.subnet
        if subnet is None:
            if self.gateway is not None or self.ip_range is not None or self.aux_addresses:
                raise InvalidConfig("gateway, ip_range and aux_addresses need an explicit subnet; add subnet=...")
            return
        if self.gateway is not None and self.gateway not in subnet:
            raise InvalidConfig(f"gateway {self.gateway} is not inside subnet {subnet}; pick an address in it")
        if (
            self.gateway is not None
            and subnet.prefixlen < subnet.max_prefixlen - 1
            and (self.gateway in (subnet.network_address, subnet.broadcast_address))
        ):
            raise InvalidConfig(
                f"gateway {self.gateway} is the network or broadcast address of {subnet}; pick a host address"
            )
        if self.ip_range is not None and (
            self.ip_range.version != subnet.version or not self.ip_range.subnet_of(subnet)  # type: ignore[arg-type]
        ):
            raise InvalidConfig(f"ip_range {self.ip_range} is not inside subnet {subnet}; pick a range in it")
        for name, addr in self.aux_addresses.items():
            if addr not in subnet:
                raise InvalidConfig(f"aux address {name}={addr} is not inside subnet {subnet}")


@attrs.frozen(eq=False)
class PortRange:
    """An inclusive range of port numbers; a single port has ``start == end``.

    A single port is its number: ``PortRange(80, 80) == 80``, ``int()`` gives
    80 and it hashes as 80, so it can be compared with, and looked up among,
    plain ints. A real range equals only the same range, and ``int()`` of it
    raises :class:`InvalidConfig`. Ordering is by ``(start, end)``, an int
    ``n`` counting as ``(n, n)``. ``str()`` gives ``80`` or ``8000-8010``.
    """

    start: int
    end: int

    def __attrs_post_init__(self) -> None:
        for port in (self.start, self.end):
            if not 1 <= port <= 65535:
                raise InvalidConfig(f"port {port} is out of range; ports are 1-65535")
        if self.end < self.start:
            raise InvalidConfig(f"port range {self.start}-{self.end} is reversed; write it low-high")

    @classmethod
    def parse(cls, value: object) -> PortRange:
        """Accept ``80``, ``"80"``, ``"8000-8010"``, ``(8000, 8010)`` or a PortRange."""
        if isinstance(value, PortRange):
            return value
        if isinstance(value, bool):
            raise InvalidConfig(f"invalid port {value!r}; give a number like 80 or a range like 8000-8010")
        if isinstance(value, int):
            return cls(value, value)
        if isinstance(value, tuple) and len(value) == 2:
            return cls(int(value[0]), int(value[1]))
        text = str(value).strip()
        low, _, high = text.partition("-")
        try:
            start, end = int(low), int(high or low)
        except ValueError as exc:
            raise InvalidConfig(f"invalid port {value!r}; give a number like 80 or a range like 8000-8010") from exc
        return cls(start, end)

    def __len__(self) -> int:
        return self.end - self.start + 1

    def _bounds(self, other: object) -> tuple[int, int] | None:
        if isinstance(other, PortRange):
            return other.start, other.end
        if isinstance(other, int) and not isinstance(other, bool):
            return other, other
        return None

    def __eq__(self, other: object) -> bool:
        bounds = self._bounds(other)
        return NotImplemented if bounds is None else (self.start, self.end) == bounds

    def __hash__(self) -> int:
        # Equal values hash alike: a single port hashes as its int.
        return hash(self.start) if self.start == self.end else hash((self.start, self.end))

    def __lt__(self, other: object) -> bool:
        bounds = self._bounds(other)
        return NotImplemented if bounds is None else (self.start, self.end) < bounds

    def __le__(self, other: object) -> bool:
        bounds = self._bounds(other)
        return NotImplemented if bounds is None else (self.start, self.end) <= bounds

    def __gt__(self, other: object) -> bool:
        bounds = self._bounds(other)
        return NotImplemented if bounds is None else (self.start, self.end) > bounds

    def __ge__(self, other: object) -> bool:
        bounds = self._bounds(other)
        return NotImplemented if bounds is None else (self.start, self.end) >= bounds

    def __int__(self) -> int:
        if self.start != self.end:
            raise InvalidConfig(f"port range {self} is not a single port; use .start and .end, or iterate it")
        return self.start

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end + 1))

    def __str__(self) -> str:
        return str(self.start) if self.start == self.end else f"{self.start}-{self.end}"


def _port_range(value: object) -> PortRange:
    return PortRange.parse(value)


def _optional_range(value: object) -> PortRange | None:
    return None if value is None or value in ("", 0) else PortRange.parse(value)


def _protocol(value: object) -> TransportProtocol:
    text = str(value).lower()
    if text not in _PROTOCOLS:
        raise InvalidConfig(f"unknown protocol {value!r}; use one of {', '.join(_PROTOCOLS)}")
    return cast(TransportProtocol, text)


@attrs.frozen(kw_only=True)
class PortBinding:
    """A published port, as ``docker run -p [host_ip:][host_port:]container_port[/protocol]``.

    Attributes:
        container_port: the port (or range, ``"8000-8010"``) inside the sandbox.
        host_port: the host port or range; ``None`` picks a free ephemeral port.
            A range with a single container port means "any free port of the range".
        protocol: ``"tcp"`` or ``"udp"``.
        host_ip: the host address to publish on; ``None`` means every address
            (or the network's ``host_binding_ipv4`` option).

    An endpoint's :attr:`~cnm.endpoint.Endpoint.ports` returns the bindings
    resolved: ``host_port`` holds the port(s) taken and ``host_ip`` the address
    actually bound, ``0.0.0.0`` for every address (as Docker shows it).
    A single port compares equal to its number: ``binding.host_port == 8080``.
    :meth:`parse` reads Docker's ``-p`` syntax.
    """

    container_port: PortRange = attrs.field(converter=_port_range)
    host_port: PortRange | None = attrs.field(default=None, converter=_optional_range)
    protocol: TransportProtocol = attrs.field(default="tcp", converter=_protocol)
    host_ip: IPAddress | None = attrs.field(default=None, converter=_host_ip)

    def __attrs_post_init__(self) -> None:
        host = self.host_port
        if host is not None and len(self.container_port) > 1 and len(host) != len(self.container_port):
            raise InvalidConfig(
                f"host port range {host} and container port range {self.container_port} differ in length; "
                "make them the same size"
            )

    @classmethod
    def parse(cls, spec: str) -> PortBinding:
        """Parse Docker's ``-p`` syntax, ``[host_ip:][host_port:]container_port[/protocol]``.

        ``80`` (an ephemeral host port), ``8080:80``, ``127.0.0.1:8080:80/udp``,
        ``127.0.0.1::80`` (an ephemeral host port on one address); ports may be
        ranges (``8000-8010:8000-8010``, or ``8000-8010:80`` for any free port
        of the range).

        Raises:
            InvalidConfig: ``spec`` is malformed, or names an IPv6 address
                (``[::1]:8080:80``), which cnm does not publish on yet.
        """
        usage = "use [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp], e.g. 8080:80 or 127.0.0.1:8080:80/udp"
        text = str(spec).strip()
        if text.startswith("["):
            raise InvalidConfig(f"invalid port spec {spec!r}: IPv6 host addresses are not supported yet; {usage}")
        ports, slash, protocol = text.partition("/")
        parts = ports.split(":")
        if len(parts) > 3 or not parts[-1] or (slash and not protocol):
            raise InvalidConfig(f"invalid port spec {spec!r}; {usage}")
        host_ip = parts[0] if len(parts) == 3 else None
        host_port = parts[-2] if len(parts) >= 2 else None
        try:
            return cls(
                container_port=parts[-1],
                host_port=host_port or None,
                protocol=protocol or "tcp",
                host_ip=host_ip or None,
            )
        except InvalidConfig as exc:
            raise InvalidConfig(f"invalid port spec {spec!r}: {exc}") from exc

    def __str__(self) -> str:
        host_ip = f"{self.host_ip}:" if self.host_ip is not None else ""
        host = f"{self.host_port}" if self.host_port is not None else ""
        return f"{host_ip}{host}:{self.container_port}/{self.protocol}"


@attrs.frozen(kw_only=True)
class Pool:
    """A subnet handed to one network.

    Args:
        id: an opaque id to pass back to the IPAM's other methods.
        subnet: the network's CIDR.
        ip_range: the part of ``subnet`` that dynamic addresses come from;
            ``None`` means the whole subnet.
    """

    id: str
    subnet: IPNetwork
    ip_range: IPNetwork | None = None
