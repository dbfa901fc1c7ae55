"""Docker's legacy links (``docker run --link target:alias``) as pure functions: environment, hosts names, ports.

A link lets a *source* sandbox find a *target* on a network both are on,
under an alias, exactly as Docker's legacy links do:

* environment variables for the source's processes (:func:`link_env`, Docker's
  ``ToEnv`` byte for byte): ``DB_NAME=/app/db``, ``DB_PORT=tcp://IP:lowest``,
  and per exposed port ``DB_PORT_3306_TCP``, ``_ADDR``, ``_PORT``, ``_PROTO``;
* a line ``IP<TAB>alias target-hostname target-name`` in the source's
  /etc/hosts, before its own lines (:func:`hosts_names`);
* on a network that drops traffic between its endpoints (the bridge driver's
  icc=false), an ACCEPT pair per exposed port of the target, between exactly
  the two addresses; the driver decides (:class:`cnm.driverapi.Linker`).

A link is a record in the controller's store (:class:`cnm.handles.Link` is its
handle); the hosts line, the environment and the rules are derived from it,
so they survive a restart and :meth:`cnm.Controller.reapply_firewall`. The
record keeps the addresses and the target's exposed ports as they were when it
was made: the ports a sandbox exposes are fixed at creation, and a link goes
away when either sandbox leaves the network or is deleted.

This module has no state and touches nothing; it was the first half of ``cnm.links``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

from cnm.errors import InvalidConfig
from cnm.types import PortRange, TransportProtocol

__all__ = ["ExposedPort", "as_ports", "hosts_names", "link_env", "parse_exposed"]

ExposedPort = tuple[TransportProtocol, int]
"""An exposed port as ``(protocol, number)``."""


_PROTOCOLS: tuple[TransportProtocol, ...] = ("tcp", "udp")


def _docker_order(port: ExposedPort) -> tuple[int, bool]:
    # Docker's nat.Sort in links.go: lowest number first, tcp before udp on the same number.
    return port[1], port[0] != "tcp"


def as_ports(specs: Iterable[str]) -> tuple[ExposedPort, ...]:
    """Stored exposed ports (``"3306/tcp"``) as ``(protocol, number)`` pairs, in Docker's order."""
    ports = set()
    for spec in specs:
        number, _, proto = spec.partition("/")
        ports.add((cast(TransportProtocol, proto), int(number)))
    return tuple(sorted(ports, key=_docker_order))


def parse_exposed(specs: Iterable[object]) -> list[str]:
    """Exposed ports as Docker stores them: ``"3306/tcp"``, one per port, lowest first.

    Accepts what ``--expose`` accepts: ``3306``, ``"3306"`` (tcp),
    ``"5432/udp"`` and ranges such as ``"8000-8002/tcp"``, which expose every
    port of the range. Duplicates collapse.

    Raises:
        InvalidConfig: a port out of 1-65535, a reversed range, or a protocol
            other than tcp and udp.
    """
    ports: set[ExposedPort] = set()
    for spec in specs:
        text = str(spec).strip().lower()
        number, _, proto = text.partition("/")
        proto = proto or "tcp"
        if proto not in _PROTOCOLS:
            raise InvalidConfig(f"exposed port {spec!r} has unknown protocol {proto!r}; use tcp or udp")
        for port in PortRange.parse(number):
            ports.add((proto, port))
    return [f"{port}/{proto}" for proto, port in sorted(ports, key=_docker_order)]


def _env_prefix(alias: str) -> str:
    # Docker takes the last path element of the link name, upper-cases it and turns '-' into '_'.
    return alias.rsplit("/", 1)[-1].upper().replace("-", "_")


def _next_contiguous(ports: Sequence[ExposedPort], value: int, index: int) -> int:
    # Docker's nextContiguous, quirks kept: it ignores the protocol and counts a repeated number.
    if index + 1 == len(ports):
        return index
    for i in range(index + 1, len(ports)):
        if ports[i][1] > value + 1:
            return i - 1
        value += 1
    return len(ports) - 1


def link_env(source_name: str, alias: str, target_ip: str, ports: Iterable[ExposedPort]) -> dict[str, str]:
    """The environment Docker gives a container for ``--link target:alias``, in Docker's order.

    Args:
        source_name: the linking sandbox's name (``app`` in ``DB_NAME=/app/db``).
        alias: the link's alias.
        target_ip: the target's address on the link's network.
        ports: the target's exposed ports.

    Three or more consecutive ports also get Docker's ``_START``/``_END``
    variables. Docker also copies the target's own environment as
    ``ALIAS_ENV_*``; sandboxes have no environment of their own, so there is none.
    """
    prefix, ordered = _env_prefix(alias), sorted(set(ports), key=_docker_order)
    env: dict[str, str] = {}
    if ordered:
        proto, port = ordered[0]
        env[f"{prefix}_PORT"] = f"{proto}://{target_ip}:{port}"
    i = 0
    while i < len(ordered):
        proto, port = ordered[i]
        j = _next_contiguous(ordered, port, i)
        if j > i + 1:
            first = f"{prefix}_PORT_{port}_{proto.upper()}"
            env[f"{first}_START"] = f"{proto}://{target_ip}:{port}"
            env[f"{first}_ADDR"] = target_ip
            env[f"{first}_PROTO"] = proto
            env[f"{first}_PORT_START"] = str(port)
            last_proto, last_port = ordered[j]
            # Docker names the end after the first port, with the last port's protocol.
            last = f"{prefix}_PORT_{port}_{last_proto.upper()}"
            env[f"{last}_END"] = f"{last_proto}://{target_ip}:{last_port}"
            env[f"{last}_PORT_END"] = str(last_port)
            i = j + 1
        else:
            i += 1
    for proto, port in ordered:
        name = f"{prefix}_PORT_{port}_{proto.upper()}"
        env[name] = f"{proto}://{target_ip}:{port}"
        env[f"{name}_ADDR"] = target_ip
        env[f"{name}_PORT"] = str(port)
        env[f"{name}_PROTO"] = proto
    env[f"{prefix}_NAME"] = f"/{source_name}/{alias}"
    return env


def hosts_names(alias: str, target_hostname: str, target_name: str) -> tuple[str, ...]:
    """The names of a link's hosts line: alias, the target's hostname, and its name unless it is the alias."""
    if alias == target_name:
        return (alias, target_hostname)
    return (alias, target_hostname, target_name)
