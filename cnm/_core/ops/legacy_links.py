"""Legacy links' operations: make, remove and settle links between sandboxes (internal).

What a link *is* (its environment, its hosts line, the ports it covers) is the pure
:mod:`cnm.legacy_links`; here are its record, its driver rules (:class:`~cnm.driverapi.Linker`),
the source's hosts file and the resolver's names for the source (:mod:`cnm._core.ops.names`),
kept in step.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging

import attrs

from cnm._core import records as rec
from cnm._core import views
from cnm._core.ops.names import sync_network
from cnm._core.ops.refresh import links_from, refresh_files
from cnm._core.records import new_id, now, validate_name
from cnm._core.runtime import Runtime
from cnm.driverapi import Linker, LinkInfo
from cnm.errors import AlreadyExists, Conflict, InvalidConfig, NotFound
from cnm.legacy_links import as_ports, link_env, parse_exposed
from cnm.steps import Steps, Teardown
from cnm.store import KeyTaken

__all__ = [
    "create_link",
    "drop_links",
    "exposed_of",
    "inspect_links",
    "link_info",
    "remove_link",
    "sandbox_env",
    "settle_links",
]

log = logging.getLogger(__name__)


# --- store and operations (internal) ------------------------------------------------------
def link_info(link: rec.LinkRecord) -> LinkInfo:
    """What a :class:`~cnm.driverapi.Linker` driver is told about a link."""
    return LinkInfo(
        source_ip=ipaddress.IPv4Address(link.source_ip),
        target_ip=ipaddress.IPv4Address(link.target_ip),
        ports=as_ports(link.ports),
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


def sandbox_env(rt: Runtime, sandbox: rec.SandboxRecord) -> dict[str, str]:
    """The environment of all of a sandbox's links, oldest link first."""
    env: dict[str, str] = {}
    for link in links_from(rt, sandbox.id):
        env.update(link_env(sandbox.name, link.alias, link.target_ip, as_ports(link.ports)))
    return env


def inspect_links(rt: Runtime, sandbox: rec.SandboxRecord) -> list[str]:
    """``HostConfig.Links`` entries: ``/<target>:/<source>/<alias>``."""
    shown = []
    for link in links_from(rt, sandbox.id):
        with contextlib.suppress(NotFound):
            shown.append(f"/{rt.state.get(rec.SandboxRecord, link.target_id).name}:/{sandbox.name}/{link.alias}")
    return shown


def _addressed(rt: Runtime, sandbox: rec.SandboxRecord) -> dict[str, rec.EndpointRecord]:
    return {e.network_id: e for e in rt.state.endpoints_of_sandbox(sandbox.id) if e.address and e.status == rec.READY}


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
) -> rec.LinkRecord:
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
        with Steps(f"link sandbox {source.name} to {target_record.name} as {alias}", rt.observer) as steps:

            def forget(made: rec.LinkRecord = record, on: rec.NetworkRecord = net) -> None:
                _forget(rt, made)
                _refresh_hosts(rt, made.source_id)
                sync_network(rt, on)

            steps.run("record", functools.partial(_add, rt, record, source), undo=forget)
            drv = rt.driver(net)
            if isinstance(drv, Linker):
                linker, net_info, info = drv, views.network_info(net), link_info(record)
                steps.run(
                    "driver add_link",
                    lambda: linker.add_link(net_info, info),
                    undo=lambda: linker.remove_link(net_info, info),
                )
            ready = attrs.evolve(record, status=rec.READY)
            record = steps.run("record ready", lambda: _save(rt, ready))
            steps.run("hosts file", functools.partial(_refresh_hosts, rt, source.id))
            steps.run("resolver names", functools.partial(sync_network, rt, net))
    log.info("linked sandbox %s to %s as %s on network %s", source.name, target_record.name, alias, net.name)
    return record


def _add(rt: Runtime, record: rec.LinkRecord, source: rec.SandboxRecord) -> None:
    try:
        with rt.state.transaction() as tx:
            tx.add(record)
    except KeyTaken as exc:
        raise AlreadyExists(
            f"sandbox {source.name!r} already has a link named {record.alias!r}; unlink it or pick another alias"
        ) from exc


def _still_needed(rt: Runtime, link: rec.LinkRecord) -> set[str]:
    # Two aliases for one target need the same rules: keep the ports another link still uses.
    return {
        port
        for other in rt.state.links_of(link.source_id)
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
    deleting = attrs.evolve(current, status=rec.DELETING)
    with Steps(f"remove link {current.alias} of sandbox {current.source_id[:12]}", rt.observer) as steps:
        link = steps.run("record delete", lambda: _save(rt, deleting))
        try:
            net = rt.state.get(rec.NetworkRecord, link.network_id)
        except NotFound:
            net = None  # its rules went with the network
        if net is not None:
            linker = rt.driver(net)
            if isinstance(linker, Linker):
                needed = _still_needed(rt, link)
                doomed = attrs.evolve(link, ports=[p for p in link.ports if p not in needed])
                net_info, info = views.network_info(net), link_info(doomed)
                steps.run("driver remove_link", functools.partial(linker.remove_link, net_info, info))
        steps.run("forget", functools.partial(_forget, rt, link))
        steps.run("hosts file", functools.partial(_refresh_hosts, rt, link.source_id))
        if net is not None:
            steps.run("resolver names", functools.partial(sync_network, rt, net))
    log.info("removed link %s of sandbox %s", link.alias, link.source_id[:12])


def drop_links(rt: Runtime, sandbox_id: str, network_id: str | None = None) -> None:
    """Remove every link from or to a sandbox (on one network only, if given).

    Raises:
        TeardownIncomplete: some links could not be removed; the others were.
    """
    with Teardown(f"remove the legacy links of sandbox {sandbox_id[:12]}", rt.observer) as teardown:
        for link in rt.state.links_of(sandbox_id):
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
