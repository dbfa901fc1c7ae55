"""Legacy links (``docker run --link target:alias``): environment, hosts lines and icc=false rules.

A link lets a *source* sandbox find a *target* on a network both are on,
under an alias, exactly as Docker's legacy links do:

* environment variables for the source's processes (:func:`link_env`, Docker's
  ``ToEnv`` byte for byte): ``DB_NAME=/app/db``, ``DB_PORT=tcp://IP:lowest``,
  and per exposed port ``DB_PORT_3306_TCP``, ``_ADDR``, ``_PORT``, ``_PROTO``;
* a line ``IP<TAB>alias target-hostname target-name`` in the source's
  /etc/hosts, before its own lines;
* on a network that drops traffic between its endpoints (the bridge driver's
  icc=false), an ACCEPT pair per exposed port of the target, between exactly
  the two addresses; the driver decides (:class:`cnm.driverapi.Linker`).

A link is a record in the store; the hosts line, the environment and the
rules are derived from it, so they survive a restart and
:meth:`cnm.Controller.reapply_firewall`. The record keeps the addresses and
the target's exposed ports as they were when it was made: the ports a
sandbox exposes are fixed at creation, and a link goes away when either
sandbox leaves the network or is deleted.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, cast

import attrs

from cnm._core import records as rec
from cnm._core import views
from cnm._core.records import new_id, now, validate_name
from cnm._core.runtime import Runtime
from cnm._handle import Handle
from cnm.driverapi import Linker, LinkInfo
from cnm.errors import AlreadyExists, Conflict, InvalidConfig, NotFound
from cnm.etchosts import HostEntry
from cnm.steps import Steps, Teardown
from cnm.store import KeyTaken
from cnm.types import PortRange, TransportProtocol

if TYPE_CHECKING:
    from cnm.network import Network
    from cnm.sandbox import Sandbox

__all__ = [
    "ExposedPort",
    "Link",
    "hosts_names",
    "link_env",
    "parse_exposed",
]

log = logging.getLogger(__name__)

ExposedPort = tuple[TransportProtocol, int]
"""An exposed port as ``(protocol, number)``."""

_PROTOCOLS: tuple[TransportProtocol, ...] = ("tcp", "udp")


# --- pure Docker behaviour ------------------------------------------------------------
def _docker_order(port: ExposedPort) -> tuple[int, bool]:
    # Docker's nat.Sort in links.go: lowest number first, tcp before udp on the same number.
    return port[1], port[0] != "tcp"


def _as_ports(specs: Iterable[str]) -> tuple[ExposedPort, ...]:
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


# --- the public handle ------------------------------------------------------------------
class Link(Handle[rec.LinkRecord]):
    """A legacy link from one sandbox to another; get one from :meth:`cnm.sandbox.Sandbox.link`."""

    def __repr__(self) -> str:
        return f"<Link {self.name} -> {self.target_ip}>"

    @property
    def alias(self) -> str:
        """The name the source knows the target by."""
        return self._record.alias

    @property
    def name(self) -> str:
        """Docker's link name, ``/<source>/<alias>``."""
        return f"/{self._source().name}/{self.alias}"

    @property
    def source(self) -> Sandbox:
        """The sandbox that made the link."""
        from cnm.sandbox import Sandbox

        return Sandbox(self._rt, self._source())

    @property
    def target(self) -> Sandbox:
        """The sandbox linked to."""
        from cnm.sandbox import Sandbox

        return Sandbox(self._rt, self._rt.state.get(rec.SandboxRecord, self._record.target_id))

    @property
    def network(self) -> Network:
        """The network the two sandboxes meet on."""
        from cnm.network import Network

        return Network(self._rt, self._rt.state.get(rec.NetworkRecord, self._record.network_id))

    @property
    def target_ip(self) -> ipaddress.IPv4Address:
        """The target's address on the link's network."""
        return ipaddress.IPv4Address(self._record.target_ip)

    @property
    def ports(self) -> tuple[str, ...]:
        """The target's exposed ports the link covers, e.g. ``("3306/tcp", "5432/udp")``."""
        return tuple(self._record.ports)

    def env(self) -> dict[str, str]:
        """This link's environment variables (see :func:`link_env`)."""
        return link_env(self._source().name, self.alias, self._record.target_ip, _as_ports(self._record.ports))

    def delete(self) -> None:
        """Remove the link: its environment, hosts line and rules. Succeeds if it is gone."""
        remove_link(self._rt, self._record)

    def _source(self) -> rec.SandboxRecord:
        return self._rt.state.get(rec.SandboxRecord, self._record.source_id)


# --- store and operations (internal) ------------------------------------------------------
def link_info(link: rec.LinkRecord) -> LinkInfo:
    """What a :class:`~cnm.driverapi.Linker` driver is told about a link."""
    return LinkInfo(
        source_ip=ipaddress.IPv4Address(link.source_ip),
        target_ip=ipaddress.IPv4Address(link.target_ip),
        ports=_as_ports(link.ports),
        alias=link.alias,
    )


def exposed_of(sandbox: rec.SandboxRecord, endpoint: rec.EndpointRecord) -> list[str]:
    """What ``sandbox`` exposes through ``endpoint``: its own, the endpoint's, and the endpoint's published ports.

    A published port is exposed too, as ``docker run -p`` adds it to ``ExposedPorts``.
    """
    published = [f"{port}/{b.protocol}" for b in rec.ports_from_json(endpoint.ports) for port in b.container_port]
    return parse_exposed([*sandbox.exposed, *endpoint.exposed, *published])


def all_links(rt: Runtime) -> list[rec.LinkRecord]:
    """Every link, oldest first."""
    return sorted(rt.state.list(rec.LinkRecord), key=lambda lk: (lk.created, lk.alias))


def links_of(rt: Runtime, sandbox_id: str) -> list[rec.LinkRecord]:
    """Every link from or to a sandbox, oldest first."""
    return rt.state.links_of(sandbox_id)


def links_from(rt: Runtime, sandbox_id: str) -> list[rec.LinkRecord]:
    """The settled links a sandbox made, oldest first."""
    return [lk for lk in links_of(rt, sandbox_id) if lk.source_id == sandbox_id and lk.status == rec.READY]


def find_link(rt: Runtime, sandbox_id: str, alias: str) -> rec.LinkRecord | None:
    """The link a sandbox made under ``alias``, or None."""
    return rt.state.link_by_alias(sandbox_id, alias)


def host_entries(rt: Runtime, sandbox_id: str) -> list[HostEntry]:
    """The hosts lines of a sandbox's links, oldest link first."""
    entries = []
    for link in links_from(rt, sandbox_id):
        with contextlib.suppress(NotFound):
            target = rt.state.get(rec.SandboxRecord, link.target_id)
            names = hosts_names(link.alias, target.hostname, target.name)
            entries.append(HostEntry(ipaddress.IPv4Address(link.target_ip), names))
    return entries


def sandbox_env(rt: Runtime, sandbox: rec.SandboxRecord) -> dict[str, str]:
    """The environment of all of a sandbox's links, oldest link first."""
    env: dict[str, str] = {}
    for link in links_from(rt, sandbox.id):
        env.update(link_env(sandbox.name, link.alias, link.target_ip, _as_ports(link.ports)))
    return env


def inspect_links(rt: Runtime, sandbox: rec.SandboxRecord) -> list[str]:
    """``HostConfig.Links`` entries: ``/<target>:/<source>/<alias>``."""
    shown = []
    for link in links_from(rt, sandbox.id):
        with contextlib.suppress(NotFound):
            shown.append(f"/{rt.state.get(rec.SandboxRecord, link.target_id).name}:/{sandbox.name}/{link.alias}")
    return shown


def _addressed(rt: Runtime, sandbox: rec.SandboxRecord) -> dict[str, rec.EndpointRecord]:
    from cnm.sandbox import joined_endpoints

    return {e.network_id: e for e in joined_endpoints(rt, sandbox.id) if e.address and e.status == rec.READY}


def _check_linkable(rt: Runtime, sandbox: rec.SandboxRecord, role: str, *, creating: bool = False) -> None:
    if sandbox.status != rec.READY and not (creating and sandbox.status == rec.CREATING):
        raise Conflict(f"sandbox {sandbox.name!r} is {sandbox.status}; it cannot be {role} a link")
    if sandbox.mode == rec.CONTAINER:
        owner = rt.state.get(rec.SandboxRecord, sandbox.shares or "").name
        raise InvalidConfig(
            f"sandbox {sandbox.name!r} uses the namespace of sandbox {owner!r}; use {owner!r} in the link instead"
        )
    if sandbox.mode == rec.HOST:
        raise InvalidConfig(
            f"sandbox {sandbox.name!r} uses the host's own stack; legacy links need a sandbox on a bridge-like network"
        )


def _meeting_network(
    rt: Runtime, source: rec.SandboxRecord, target: rec.SandboxRecord, network: str | None
) -> rec.NetworkRecord:
    """The network both sandboxes have an address on: the one named, or the only one they share."""
    mine, theirs = _addressed(rt, source), _addressed(rt, target)
    if network is not None:
        net = rt.state.get(rec.NetworkRecord, network)
        absent = [s.name for s, eps in ((source, mine), (target, theirs)) if net.id not in eps]
        if absent:
            names = " and ".join(repr(n) for n in absent)
            raise InvalidConfig(
                f"sandbox {names} has no address on network {net.name!r}; connect it to {net.name!r} before linking"
            )
        return net
    shared = [network_id for network_id in mine if network_id in theirs]
    if not shared:
        raise InvalidConfig(
            f"sandbox {target.name!r} is on no network of sandbox {source.name!r}; a link needs both on one "
            "network: connect them to the same network first"
        )
    if len(shared) > 1:
        names = ", ".join(repr(rt.state.get(rec.NetworkRecord, n).name) for n in shared)
        raise InvalidConfig(
            f"sandboxes {source.name!r} and {target.name!r} share networks {names}; pick one with network="
        )
    return rt.state.get(rec.NetworkRecord, shared[0])


def _forget(rt: Runtime, link: rec.LinkRecord) -> None:
    rt.state.remove(link)


def _save(rt: Runtime, link: rec.LinkRecord) -> rec.LinkRecord:
    return rt.state.put(link)


def _refresh_hosts(rt: Runtime, sandbox_id: str) -> None:
    from cnm.sandbox import refresh_files

    with contextlib.suppress(NotFound):
        refresh_files(rt, rt.state.get(rec.SandboxRecord, sandbox_id))


def create_link(
    rt: Runtime,
    source: rec.SandboxRecord,
    target: str,
    alias: str,
    *,
    network: str | None = None,
    source_creating: bool = False,
) -> Link:
    """Link ``source`` to the sandbox ``target`` under ``alias``: record, rules, hosts line.

    ``source_creating`` lets the source still be ``creating``: the links of
    ``create_sandbox(links=...)`` are part of the sandbox's own creation.
    """
    validate_name(alias, "link alias")
    with rt.locks.operation(sandboxes=[source.id, rt.state.get(rec.SandboxRecord, target).id]):
        source = rt.state.reload(source)
        _check_linkable(rt, source, "the source of", creating=source_creating)
        target_record = rt.state.get(rec.SandboxRecord, target)
        if target_record.id == source.id:
            raise InvalidConfig(f"sandbox {source.name!r} cannot link to itself; name another sandbox")
        _check_linkable(rt, target_record, "the target of")
        net = _meeting_network(rt, source, target_record, network)
        source_ep, target_ep = _addressed(rt, source)[net.id], _addressed(rt, target_record)[net.id]
        record = rec.LinkRecord(
            id=new_id(),
            source_id=source.id,
            target_id=target_record.id,
            alias=alias,
            network_id=net.id,
            source_ip=str(ipaddress.IPv4Interface(source_ep.address).ip),
            target_ip=str(ipaddress.IPv4Interface(target_ep.address).ip),
            ports=exposed_of(target_record, target_ep),
            created=now(),
            status=rec.CREATING,
        )
        with Steps(f"link sandbox {source.name} to {target_record.name} as {alias}") as undo:
            try:
                with rt.state.transaction() as tx:
                    tx.add(record)
            except KeyTaken as exc:
                raise AlreadyExists(
                    f"sandbox {source.name!r} already has a link named {alias!r}; unlink it or pick another alias"
                ) from exc

            def forget(made: rec.LinkRecord = record) -> None:
                _forget(rt, made)
                _refresh_hosts(rt, made.source_id)

            undo.done("record", forget)
            drv = rt.driver(net)
            if isinstance(drv, Linker):
                net_info, info = views.network_info(net), link_info(record)
                drv.add_link(net_info, info)
                undo.done("driver add_link", lambda: drv.remove_link(net_info, info))
            record = _save(rt, attrs.evolve(record, status=rec.READY))
            _refresh_hosts(rt, source.id)
    log.info("linked sandbox %s to %s as %s on network %s", source.name, target_record.name, alias, net.name)
    return Link(rt, record)


def _still_needed(rt: Runtime, link: rec.LinkRecord) -> set[str]:
    # Two aliases for one target need the same rules: keep the ports another link still uses.
    return {
        port
        for other in links_of(rt, link.source_id)
        if other.id != link.id
        and other.status == rec.READY
        and (other.network_id, other.source_ip, other.target_ip) == (link.network_id, link.source_ip, link.target_ip)
        for port in other.ports
    }


def remove_link(rt: Runtime, link: rec.LinkRecord) -> None:
    """Withdraw a link's rules, forget it and rewrite the source's hosts file; succeed if it is gone."""
    with rt.locks.operation(sandboxes=[link.source_id, link.target_id]):
        _remove_link(rt, link)


def _remove_link(rt: Runtime, link: rec.LinkRecord) -> None:
    # Callers hold the lock of at least one end. drop_links runs inside a sandbox's
    # or an endpoint's operation and must not take the other end's lock after a
    # network's (the lock order); the store's transactions keep the records
    # consistent, and the other end's files are rewritten from the store anyway.
    with rt.state.transaction() as tx:
        current = tx.get(rec.LinkRecord, link.id)
    if current is None:
        return
    link = _save(rt, attrs.evolve(current, status=rec.DELETING))
    try:
        net = rt.state.get(rec.NetworkRecord, link.network_id)
    except NotFound:
        net = None  # its rules went with the network
    if net is not None:
        drv = rt.driver(net)
        if isinstance(drv, Linker):
            needed = _still_needed(rt, link)
            doomed = attrs.evolve(link, ports=[p for p in link.ports if p not in needed])
            drv.remove_link(views.network_info(net), link_info(doomed))
    _forget(rt, link)
    _refresh_hosts(rt, link.source_id)
    log.info("removed link %s of sandbox %s", link.alias, link.source_id[:12])


def drop_links(rt: Runtime, sandbox_id: str, network_id: str | None = None) -> None:
    """Remove every link from or to a sandbox (on one network only, if given).

    Raises:
        TeardownIncomplete: some links could not be removed; the others were.
    """
    with Teardown(f"remove the legacy links of sandbox {sandbox_id[:12]}") as teardown:
        for link in links_of(rt, sandbox_id):
            if network_id in (None, link.network_id):
                teardown.run(f"remove link {link.alias}", functools.partial(_remove_link, rt, link))


def _broken(rt: Runtime, link: rec.LinkRecord) -> str | None:
    """Why a link can no longer stand, or None if it can."""
    if link.status == rec.CREATING:
        return "it was interrupted while being made"
    if link.status == rec.DELETING:
        return "it was interrupted while being removed"
    for sandbox_id, address in ((link.source_id, link.source_ip), (link.target_id, link.target_ip)):
        try:
            sandbox = rt.state.get(rec.SandboxRecord, sandbox_id)
        except NotFound:
            return "one of its sandboxes is gone"
        endpoint = _addressed(rt, sandbox).get(link.network_id)
        if sandbox.status != rec.READY or endpoint is None or endpoint.address is None:
            return f"sandbox {sandbox.name!r} is no longer on its network"
        if str(ipaddress.IPv4Interface(endpoint.address).ip) != address:
            return f"sandbox {sandbox.name!r} has another address now"
    return None


def settle_links(rt: Runtime) -> list[str]:
    """Remove links left half made or half removed, or whose sandboxes or network are gone; for reconcile."""
    done = []
    with rt.locks.everything():
        every = all_links(rt)
        with rt.state.transaction() as tx:
            for link in every:
                tx.put(link)  # a state_dir written before the link.end index existed gets it here
        for link in every:
            reason = _broken(rt, link)
            if reason is not None:
                remove_link(rt, link)
                done.append(f"removed link {link.alias!r} of sandbox {link.source_id[:12]}: {reason}")
    return done
