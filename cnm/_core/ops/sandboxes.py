"""Creating and deleting sandboxes, in Docker's ``--net`` modes (internal).

:func:`create_sandbox` is the one crash-safe call behind ``Controller.create_sandbox(network=,
ports=, links=)``: the sandbox stays ``creating`` until its endpoint, its join and its links are
all made, so reconcile rolls back a crash anywhere in between as a whole. :func:`delete_sandbox`
leaves (or deletes, if it owns them) its endpoints, drops its links, then removes its namespace
and files.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
from collections.abc import Sequence

import attrs

from cnm._core import records as rec
from cnm._core.ops.attach import join, leave
from cnm._core.ops.endpoints import create_endpoint, delete_endpoint
from cnm._core.ops.legacy_links import create_link, drop_links
from cnm._core.ops.refresh import write_files
from cnm._core.records import new_id, now, validate_name
from cnm._core.runtime import Runtime
from cnm.errors import AlreadyExists, Conflict, InvalidConfig, NotFound
from cnm.legacy_links import parse_exposed
from cnm.steps import Steps, Teardown
from cnm.store import KeyTaken
from cnm.types import PortBinding

__all__ = ["create_in_mode", "create_sandbox", "delete_sandbox", "forget", "mark_ready"]

log = logging.getLogger(__name__)


def create_sandbox(
    rt: Runtime,
    name: str,
    *,
    hostname: str | None = None,
    network: str | None = None,
    ports: Sequence[PortBinding] = (),
    dns: Sequence[str] = (),
    dns_search: Sequence[str] = (),
    dns_options: Sequence[str] = (),
    exposed: Sequence[object] = (),
    links: Sequence[tuple[str, str]] = (),
    aliases: Sequence[str] = (),
) -> rec.SandboxRecord:
    """Create a sandbox and, with ``network``, connect it in one call; see :meth:`cnm.Controller.create_sandbox`."""

    def make(mode: str, share: str | None = None, network_mode: str = "", *, ready: bool = True) -> rec.SandboxRecord:
        return create_in_mode(
            rt,
            name,
            hostname=hostname,
            dns=dns,
            dns_search=dns_search,
            dns_options=dns_options,
            mode=mode,
            share=share,
            network_mode=network_mode,
            exposed=exposed,
            ready=ready,
        )

    if ports and not network:
        raise InvalidConfig("ports need a network to publish them on; add network=")
    if aliases and (not network or network.startswith("container:")):
        raise InvalidConfig("aliases are names on a network the sandbox joins; add network= (not container mode)")
    if links and (not network or network.startswith("container:")):
        raise InvalidConfig("links need a network the sandbox joins; add network= (not container mode)")
    with rt.locks.operation():
        for target, alias in links:
            # Refused before anything is created; that the two meet on the network is checked at link time.
            validate_name(alias, "link alias")
            rt.state.get(rec.SandboxRecord, target)
        if len({alias for _, alias in links}) != len(links):
            raise InvalidConfig(f"links {list(links)!r} use one alias twice; give each link its own alias")
        if not network:
            return make(rec.PRIVATE)
        if network.startswith("container:"):
            if ports:
                raise InvalidConfig(
                    f"sandbox {name!r} uses another sandbox's namespace; publish ports on that one instead"
                )
            return make(rec.CONTAINER, share=network.removeprefix("container:"))
        net = rt.state.get(rec.NetworkRecord, network)
        # Host mode is whatever network gives the host's own stack (the host driver's).
        host_stack = not rt.driver(net).capabilities.needs_sandbox_netns
        # The sandbox stays "creating" until the endpoint, the join and the links are all made:
        # reconcile rolls back a crash anywhere in between as one call (the endpoint, found by
        # its owner id, goes with the sandbox), never leaving half of it.
        with Steps(f"create sandbox {name} on network {net.name}", rt.observer) as steps:
            sandbox = steps.run(
                "create the sandbox",
                lambda: make(rec.HOST if host_stack else rec.PRIVATE, network_mode=net.name, ready=False),
                undo=lambda: delete_sandbox(rt, sandbox),  # its endpoint and links go with it
            )
            endpoint = steps.run(
                "create its endpoint",
                lambda: create_endpoint(rt, net, name, ports=ports, owner_sandbox_id=sandbox.id, aliases=aliases),
            )
            steps.run("join", lambda: join(rt, endpoint, sandbox))
            for target, alias in links:
                steps.run(
                    f"link {alias}",
                    functools.partial(create_link, rt, sandbox, target, alias, network=net.name, source_creating=True),
                )
            return steps.run("mark it ready", lambda: mark_ready(rt, sandbox))


def _check_settings(hostname: str | None, dns: Sequence[str]) -> None:
    if hostname is not None and (
        not hostname or len(hostname) > 64 or not all(c.isalnum() or c in "-." for c in hostname)
    ):
        raise InvalidConfig(f"invalid hostname {hostname!r}: at most 64 characters of letters, digits, '-' and '.'")
    for server in dns:
        try:
            ipaddress.ip_address(server)
        except ValueError as exc:
            raise InvalidConfig(f"invalid dns server {server!r}: give an IP address") from exc


def _draft(
    rt: Runtime,
    sandbox_id: str,
    name: str,
    *,
    mode: str,
    hostname: str | None,
    owner: rec.SandboxRecord | None,
    dns: Sequence[str],
    dns_search: Sequence[str],
    dns_options: Sequence[str],
    network_mode: str,
    exposed: Sequence[str] = (),
) -> rec.SandboxRecord:
    """The record of a sandbox about to be created, with its namespace and files chosen by mode."""
    if owner is not None:
        # Same namespace, same files (not copies), same hostname: what the
        # owner's processes see, the sharer's see.
        hostname = owner.hostname
        netns_path = owner.netns_path
        files_dir = owner.files_dir
        dns, dns_search, dns_options = owner.dns, owner.dns_search, owner.dns_options
        network_mode = f"container:{owner.id}"
    elif mode == rec.HOST:
        hostname = hostname or rt.sandbox_os.host_hostname()
        netns_path = rt.host_netns.path
        files_dir = os.path.join(rt.state_dir, "sandboxes", sandbox_id)
    else:
        hostname = hostname or name
        netns_path = os.path.join(rt.netns_dir, sandbox_id[:12])
        files_dir = os.path.join(rt.state_dir, "sandboxes", sandbox_id)
    return rec.SandboxRecord(
        id=sandbox_id,
        name=name,
        hostname=hostname,
        netns_path=netns_path,
        files_dir=files_dir,
        dns=list(dns),
        dns_search=list(dns_search),
        dns_options=list(dns_options),
        created=now(),
        mode=mode,
        shares=None if owner is None else owner.id,
        network_mode=network_mode,
        exposed=list(exposed),
        status=rec.CREATING,
    )


def create_in_mode(
    rt: Runtime,
    name: str,
    *,
    hostname: str | None = None,
    dns: Sequence[str] = (),
    dns_search: Sequence[str] = (),
    dns_options: Sequence[str] = (),
    mode: str = rec.PRIVATE,
    share: str | None = None,
    network_mode: str = "",
    exposed: Sequence[object] = (),
    ready: bool = True,
) -> rec.SandboxRecord:
    """Create a sandbox in ``mode``, with its files.

    Args:
        rt: the controller's runtime.
        name: unique among the controller's sandboxes.
        hostname, dns, dns_search, dns_options: as :meth:`cnm.Controller.create_sandbox`.
        mode: ``private`` makes a fresh namespace with loopback up; ``host``
            uses the controller's host namespace; ``container`` uses the
            namespace and files of the sandbox ``share`` names.
        share: in container mode, the sandbox to share (name or id).
        network_mode: what the caller asked for, kept for :meth:`Sandbox.inspect`.
        exposed: ports the sandbox exposes (``"3306/tcp"``), for legacy links.
        ready: mark the record ready at the end. False leaves it ``creating``
            for a caller that does more (joins, links) before the sandbox is
            done and marks it so with :func:`mark_ready`: a crash before then
            is rolled back by reconcile as a whole.
    """
    validate_name(name, "sandbox")
    exposed_ports = parse_exposed(exposed)
    _check_settings(hostname, dns)
    if mode not in (rec.PRIVATE, rec.HOST, rec.CONTAINER):
        raise InvalidConfig(f"unknown sandbox mode {mode!r}; use private, host or container")
    owner = None
    if mode == rec.CONTAINER:
        if share is None:
            raise InvalidConfig("container mode needs the sandbox to share; give network='container:<name>'")
        if hostname is not None or dns or dns_search or dns_options:
            raise InvalidConfig(
                f"sandbox {name!r} shares the namespace and files of {share!r}: its hostname and DNS "
                "settings are that sandbox's; drop hostname= and dns*="
            )
        if exposed_ports:
            raise InvalidConfig(
                f"sandbox {name!r} shares the namespace of {share!r}: expose the ports on that sandbox instead"
            )
        owner = rt.state.get(rec.SandboxRecord, share)
        if owner.shares is not None:
            # Sharing a sharer means sharing its owner: one owner, one check on delete.
            owner = rt.state.get(rec.SandboxRecord, owner.shares)
    sandbox_id = new_id()
    record = _draft(
        rt,
        sandbox_id,
        name,
        mode=mode,
        hostname=hostname,
        owner=owner,
        dns=dns,
        dns_search=dns_search,
        dns_options=dns_options,
        network_mode=network_mode,
        exposed=exposed_ports,
    )
    # The owner is locked too: it cannot be deleted while a sharer of it is being made.
    lock = rt.locks.operation(sandboxes=[sandbox_id, None if owner is None else owner.id])
    host = rt.sandbox_os
    with lock, Steps(f"create sandbox {name}", rt.observer) as steps:
        steps.run("record", functools.partial(_add, rt, record, owner), undo=lambda: forget(rt, record))
        if mode == rec.PRIVATE:
            path = record.netns_path
            steps.run("namespace", lambda: host.create_namespace(path), undo=lambda: host.remove_namespace(path))
        if mode != rec.CONTAINER:
            files = record.files_dir
            steps.run("files directory", lambda: host.make_directory(files), undo=lambda: host.remove_directory(files))
            steps.run("files", functools.partial(write_files, rt, record))
        if ready:
            record = steps.run("mark it ready", functools.partial(mark_ready, rt, record))
    log.info("created sandbox %s (%s, %s mode)", name, sandbox_id[:12], mode)
    return record


def _add(rt: Runtime, record: rec.SandboxRecord, owner: rec.SandboxRecord | None) -> None:
    with rt.state.transaction() as tx:
        if owner is not None:
            current = tx.get(rec.SandboxRecord, owner.id)
            if current is None or current.status != rec.READY:
                raise Conflict(f"sandbox {owner.name!r} is being deleted or is gone; it cannot be shared")
        try:
            tx.add(record)
        except KeyTaken as exc:
            raise AlreadyExists(
                f"sandbox {record.name!r} already exists; pick another name or delete it first"
            ) from exc


def mark_ready(rt: Runtime, record: rec.SandboxRecord) -> rec.SandboxRecord:
    """Mark a sandbox created with ``ready=False`` as done; the record as stored."""
    with rt.state.transaction() as tx:
        current = tx.get(rec.SandboxRecord, record.id)
        if current is None:
            raise NotFound(f"sandbox {record.name!r} vanished while it was being created; create it again")
        record = attrs.evolve(current, status=rec.READY)
        tx.put(record)
    return record


def forget(rt: Runtime, record: rec.SandboxRecord) -> None:
    """Forget a sandbox's record, its name and its indexes (nothing else is touched)."""
    rt.state.remove(record)


def delete_sandbox(rt: Runtime, sandbox: rec.SandboxRecord) -> None:
    """Leave every joined endpoint, delete endpoints the sandbox owns, remove what the sandbox owns.

    Its namespace only in private mode, its files unless it shares another's;
    refused while sharers exist.
    """
    with rt.locks.operation(sandboxes=[sandbox.id]):
        try:
            sandbox = rt.state.reload(sandbox)
        except NotFound:
            return
        sharers = rt.state.sharers_of(sandbox.id)
        if sharers:
            names = ", ".join(repr(s.name) for s in sharers)
            raise Conflict(
                f"sandbox {sandbox.name!r} is shared by {names} (network='container:{sandbox.name}'); "
                "delete those first"
            )
        operation = f"delete sandbox {sandbox.name}"
        deleting = attrs.evolve(sandbox, status=rec.DELETING)
        with Steps(operation, rt.observer) as steps:
            sandbox = steps.run("record delete", lambda: rt.state.put(deleting))
        # The namespace and files stay until every endpoint is out: a retry or reconcile finishes the job.
        with Teardown(operation, rt.observer) as teardown:
            teardown.run("drop legacy links", lambda: drop_links(rt, sandbox.id))
            joined = rt.state.endpoints_of_sandbox(sandbox.id)
            # Owned but no longer joined (left, or a crash before the join): deleted all the same.
            unjoined = [e for e in rt.state.endpoints_owned_by(sandbox.id) if e.id not in {j.id for j in joined}]
            for endpoint in [*reversed(joined), *unjoined]:
                if endpoint.owned_by_sandbox and endpoint.owner_sandbox_id in (None, sandbox.id):
                    teardown.run(f"delete endpoint {endpoint.name}", functools.partial(delete_endpoint, rt, endpoint))
                else:
                    teardown.run(f"leave endpoint {endpoint.name}", functools.partial(leave, rt, endpoint))
        host = rt.sandbox_os
        with Steps(operation, rt.observer) as steps:
            if rt.owns_netns(sandbox):
                steps.run("namespace", functools.partial(host.remove_namespace, sandbox.netns_path))
            if sandbox.mode != rec.CONTAINER:
                steps.run("files", functools.partial(host.remove_directory, sandbox.files_dir))
            steps.run("forget", functools.partial(forget, rt, sandbox))
    log.info("deleted sandbox %s (%s mode)", sandbox.name, sandbox.mode)
