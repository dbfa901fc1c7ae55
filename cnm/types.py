"""Value types shared by the public API, the driver contract and the services.

Every class here is a frozen attrs class that validates on construction, so a
malformed value is refused before anything is created.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal, TypeAlias, cast

import attrs

from cnm.errors import InvalidConfig

__all__ = [
    "IPAMConfig",
    "IPAddress",
    "IPNetwork",
    "NetworkAddressing",
    "Pool",
    "PortBinding",
    "PortRange",
    "ReconcileReport",
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


def _family_name(version: int) -> str:
    return f"IPv{version}"


@attrs.frozen(kw_only=True)
class IPAMConfig:
    """Addressing of one network in one address family, as ``docker network create --subnet ...`` takes it.

    The family is the subnet's: an IPv4 or an IPv6 CIDR. A dual-stack network
    takes one config per family (see :class:`NetworkAddressing`). Gateway,
    ip_range and aux addresses must be of the subnet's family and inside it.

    Attributes:
        subnet: the network's CIDR; ``None`` lets the IPAM pick a free default pool.
        gateway: the gateway address; defaults to the first host address
            (``.1`` in IPv4, ``::1`` in IPv6, as Docker).
        ip_range: a CIDR inside ``subnet`` from which endpoint addresses are given out.
        aux_addresses: addresses inside ``subnet`` that are reserved, never given out.
    """

    subnet: IPNetwork | None = attrs.field(default=None, converter=_subnet)
    gateway: IPAddress | None = attrs.field(default=None, converter=_gateway)
    ip_range: IPNetwork | None = attrs.field(default=None, converter=_ip_range)
    aux_addresses: Mapping[str, IPAddress] = attrs.field(factory=dict, converter=_aux_addresses)

    @property
    def version(self) -> int | None:
        """The address family, 4 or 6, of ``subnet``; ``None`` when the IPAM is to pick one."""
        return None if self.subnet is None else self.subnet.version

    def __attrs_post_init__(self) -> None:
        subnet = self.subnet
        if subnet is None:
            if self.gateway is not None or self.ip_range is not None or self.aux_addresses:
                raise InvalidConfig("gateway, ip_range and aux_addresses need an explicit subnet; add subnet=...")
            return
        self._same_family(subnet)
        if self.gateway is not None and self.gateway not in subnet:
            raise InvalidConfig(f"gateway {self.gateway} is not inside subnet {subnet}; pick an address in it")
        if self.gateway is not None and subnet.prefixlen < subnet.max_prefixlen - 1:
            # IPv6 has no broadcast address: only its subnet-router anycast address (all-zero host part)
            # is reserved, so the last address of an IPv6 subnet is a host like any other.
            if self.gateway == subnet.network_address:
                what = "network" if subnet.version == 4 else "subnet-router anycast"
                raise InvalidConfig(f"gateway {self.gateway} is the {what} address of {subnet}; pick a host address")
            if subnet.version == 4 and self.gateway == subnet.broadcast_address:
                raise InvalidConfig(
                    f"gateway {self.gateway} is the network or broadcast address of {subnet}; pick a host address"
                )
        if self.ip_range is not None and not self.ip_range.subnet_of(subnet):  # type: ignore[arg-type]
            raise InvalidConfig(f"ip_range {self.ip_range} is not inside subnet {subnet}; pick a range in it")
        for name, addr in self.aux_addresses.items():
            if addr not in subnet:
                raise InvalidConfig(f"aux address {name}={addr} is not inside subnet {subnet}")

    def _same_family(self, subnet: IPNetwork) -> None:
        """Refuse a gateway, ip_range or aux address of the other family, naming the fix."""
        family = _family_name(subnet.version)
        others: list[tuple[str, IPAddress | IPNetwork]] = []
        if self.gateway is not None:
            others.append(("gateway", self.gateway))
        if self.ip_range is not None:
            others.append(("ip_range", self.ip_range))
        others += [(f"aux address {name}", addr) for name, addr in self.aux_addresses.items()]
        for what, value in others:
            if value.version != subnet.version:
                raise InvalidConfig(
                    f"{what} {value} is {_family_name(value.version)} but subnet {subnet} is {family}; "
                    f"give an {family} {what.split()[0]}, or put it in a second IPAMConfig with an "
                    f"{_family_name(value.version)} subnet"
                )


def _configs(value: object) -> tuple[IPAMConfig, ...]:
    if value is None:
        return ()
    if isinstance(value, IPAMConfig):
        return (value,)
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise InvalidConfig(f"ipam must be an IPAMConfig or a sequence of them, not {value!r}")
    configs = tuple(value)
    for item in configs:
        if not isinstance(item, IPAMConfig):
            raise InvalidConfig(f"ipam must be an IPAMConfig or a sequence of them; {item!r} is neither")
    return configs


@attrs.frozen(kw_only=True)
class NetworkAddressing:
    """What a network asks of its IPAM, per address family: the checked form of ``ipam=``.

    Built with :meth:`of` from what ``create_network`` takes. ``v4`` and
    ``v6`` are the config of each family the network has, ``None`` for a
    family it does not have; a config without a subnet asks for a default pool.

    Attributes:
        v4: the IPv4 addressing, ``None`` for an IPv6-only network.
        v6: the IPv6 addressing, ``None`` unless IPv6 is enabled.
    """

    v4: IPAMConfig | None = None
    v6: IPAMConfig | None = None

    @classmethod
    def of(
        cls,
        ipam: IPAMConfig | Iterable[IPAMConfig] | None = None,
        *,
        enable_ipv6: bool = False,
        ipv6_only: bool = False,
    ) -> NetworkAddressing:
        """Sort ``ipam`` (one config or a sequence, at most one per family) into families.

        As Docker: an IPv4 family is always there unless ``ipv6_only``; with
        ``enable_ipv6`` (implied by ``ipv6_only``) and no IPv6 config, the
        IPv6 subnet comes from a default pool. A config without a subnet
        stands for the network's first family (IPv4, or IPv6 when ``ipv6_only``).

        Raises:
            InvalidConfig: two configs of one family; an IPv6 subnet without
                ``enable_ipv6``; an IPv4 subnet on an ``ipv6_only`` network; a
                non-bool flag.
        """
        for flag, value in (("enable_ipv6", enable_ipv6), ("ipv6_only", ipv6_only)):
            if not isinstance(value, bool):
                raise InvalidConfig(f"{flag} must be True or False, not {value!r}")
        enable_ipv6 = enable_ipv6 or ipv6_only
        first = 6 if ipv6_only else 4
        by_family: dict[int, IPAMConfig] = {}
        for config in _configs(ipam):
            version = config.version or first
            if version in by_family:
                raise InvalidConfig(
                    f"two {_family_name(version)} IPAM configs given ({by_family[version].subnet or 'a default pool'} "
                    f"and {config.subnet or 'a default pool'}); a network has at most one subnet per address family"
                )
            by_family[version] = config
        if 6 in by_family and not enable_ipv6:
            raise InvalidConfig(
                f"subnet {by_family[6].subnet or 'a default pool'} is IPv6 but the network does not enable IPv6; "
                "pass enable_ipv6=True (or drop the IPv6 config)"
            )
        if 4 in by_family and ipv6_only:
            raise InvalidConfig(
                f"subnet {by_family[4].subnet} is IPv4 but the network is ipv6_only; drop the IPv4 config "
                "or ipv6_only=True"
            )
        v4 = None if ipv6_only else by_family.get(4, IPAMConfig())
        v6 = by_family.get(6, IPAMConfig()) if enable_ipv6 else None
        return cls(v4=v4, v6=v6)

    @property
    def configs(self) -> tuple[IPAMConfig, ...]:
        """The configs of the families present, IPv4 first."""
        return tuple(c for c in (self.v4, self.v6) if c is not None)


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
        host_ip: the host IPv4 address to publish on; ``None`` means every address
            (or the network's ``host_binding_ipv4`` option). An IPv6 one is
            refused with :class:`InvalidConfig` until ports are published over IPv6.

    An endpoint's :attr:`~cnm.handles.Endpoint.ports` returns the bindings
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
        if self.host_ip is not None and self.host_ip.version == 6:
            # The port mapper and both firewall backends publish on IPv4 only so far; refusing here keeps an
            # IPv6 host address from ending in a raw socket error half-way through creating an endpoint.
            raise InvalidConfig(
                f"host_ip {self.host_ip} is IPv6; cnm does not publish ports on IPv6 host addresses yet; "
                "give an IPv4 host_ip, or none for every IPv4 address"
            )
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


@attrs.frozen
class ReconcileReport:
    """What :meth:`cnm.Controller.reconcile` did, one line per action.

    Attributes:
        actions: each repair, in the order it was made.
        errors: repairs that failed (the next reconcile retries them).
    """

    actions: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.actions or self.errors)

    def __str__(self) -> str:
        lines = list(self.actions) + [f"FAILED: {e}" for e in self.errors]
        return "\n".join(lines) if lines else "nothing to do"
