"""Sandboxes: a workload's network stack (a namespace, its routes, hosts and resolv.conf).

A sandbox uses one of three namespaces, as Docker's ``--net`` modes do
(:attr:`Sandbox.mode`):

* ``private``: its own, created with it and removed with it (``bridge``, ``none``
  and user networks);
* ``host``: the controller's host namespace, which it never creates or removes;
  its hosts and resolv.conf are copies of the host's;
* ``container``: another sandbox's namespace *and files* (``container:<name>``).
  The owner cannot be deleted while a sandbox shares it.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from cnm import etchosts, resolvconf
from cnm import links as _links
from cnm._core import inspect as _inspect
from cnm._core import records as rec
from cnm._core.records import new_id, now, validate_name
from cnm._core.runtime import Runtime
from cnm._handle import Handle
from cnm.errors import AlreadyExists, Conflict, InvalidConfig, NotFound
from cnm.kernel import netns, routes
from cnm.kernel.netns import Netlink, NetNS
from cnm.kernel.process import command_in
from cnm.steps import Steps, Teardown
from cnm.store import KeyTaken

if TYPE_CHECKING:
    from cnm.endpoint import Endpoint
    from cnm.links import Link

__all__ = ["HOST_HOSTS", "Sandbox"]

log = logging.getLogger(__name__)

HOST_HOSTS = "/etc/hosts"
"""The host's hosts file, copied into host-mode sandboxes."""


class Sandbox(Handle[rec.SandboxRecord]):
    """A CNM sandbox: a network namespace with loopback up and its own hosts/resolv.conf files."""

    def __repr__(self) -> str:
        return f"<Sandbox {self.name} id={self.id[:12]}>"

    @property
    def name(self) -> str:
        """The sandbox's name."""
        return self._record.name

    @property
    def hostname(self) -> str:
        """The hostname processes in the sandbox see."""
        return self._record.hostname

    @property
    def mode(self) -> str:
        """Whose namespace the sandbox uses: ``"private"``, ``"host"`` or ``"container"``."""
        return self._record.mode

    @property
    def network_mode(self) -> str:
        """What ``network=`` asked for at creation, as Docker's ``HostConfig.NetworkMode``.

        A network name, ``"host"``, ``"container:<owner id>"``, or ``""`` when
        the sandbox was created without a network.
        """
        return self._record.network_mode

    @property
    def shares(self) -> Sandbox | None:
        """In container mode, the sandbox whose namespace and files this one uses; else None."""
        owner = self._record.shares
        return None if owner is None else Sandbox(self._rt, self._rt.state.get(rec.SandboxRecord, owner))

    def sharers(self) -> list[Sandbox]:
        """The sandboxes created with ``network="container:<this one>"``, in name order."""
        return [Sandbox(self._rt, r) for r in sharers_of(self._rt, self.id)]

    @property
    def netns(self) -> NetNS:
        """The sandbox's network namespace (the host's in host mode, the owner's in container mode)."""
        return NetNS(self._record.netns_path)

    @property
    def netns_path(self) -> str:
        """The path of the namespace file (usable with ``nsenter --net=PATH``)."""
        return self._record.netns_path

    @property
    def hosts_path(self) -> str:
        """The sandbox's /etc/hosts file."""
        return os.path.join(self._record.files_dir, "hosts")

    @property
    def resolv_conf_path(self) -> str:
        """The sandbox's /etc/resolv.conf file."""
        return os.path.join(self._record.files_dir, "resolv.conf")

    @property
    def hostname_path(self) -> str:
        """The sandbox's /etc/hostname file."""
        return os.path.join(self._record.files_dir, "hostname")

    def endpoints(self) -> list[Endpoint]:
        """The endpoints joined to the sandbox, in join order."""
        from cnm.endpoint import Endpoint

        return [Endpoint(self._rt, r) for r in joined_endpoints(self._rt, self.id)]

    @property
    def exposed(self) -> tuple[str, ...]:
        """The ports the sandbox exposes (``--expose``), e.g. ``("3306/tcp",)``; published ones not included."""
        return tuple(self._record.exposed)

    # --- legacy links ------------------------------------------------------------
    def link(self, target: str, alias: str, *, network: str | None = None) -> Link:
        """Link to the sandbox ``target`` under ``alias``, as ``docker run --link target:alias`` does.

        This sandbox's /etc/hosts gets ``IP<TAB>alias target-hostname
        target-name``, :meth:`link_env` gets Docker's variables, and on a
        network that drops traffic between endpoints (bridge with icc off) this
        sandbox may reach the target's exposed ports, and nothing else of it.

        Args:
            target: the sandbox to link to, by name or id.
            alias: the name this sandbox knows it by (``DB`` in ``DB_PORT``).
            network: the network to meet on; needed only when the two share several.

        Raises:
            SandboxNotFound: ``target`` does not exist.
            InvalidConfig: the two share no network (or several, and none was
                named); a sandbox in host or container mode; a link to itself.
            AlreadyExists: this sandbox already has a link named ``alias``.
        """
        return _links.create_link(self._rt, self._current(), target, alias, network=network)

    def unlink(self, alias: str) -> None:
        """Remove the link named ``alias``: its variables, hosts line and rules. Succeeds if there is none."""
        link = _links.find_link(self._rt, self.id, alias)
        if link is not None:
            _links.remove_link(self._rt, link)

    def links(self) -> list[Link]:
        """The links this sandbox made, oldest first."""
        return [_links.Link(self._rt, r) for r in _links.links_from(self._rt, self.id)]

    def link_env(self) -> dict[str, str]:
        """The environment variables of all this sandbox's links, as Docker sets them.

        See :func:`cnm.links.link_env`; pass ``link_env=True`` to :meth:`run` or
        :meth:`popen` to give them to a process.
        """
        return _links.sandbox_env(self._rt, self._current())

    def _with_link_env(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        # Docker's order: link variables over the inherited environment, the caller's own env over both.
        if not kwargs.pop("link_env", False):
            return kwargs
        base = kwargs.get("env")
        linked = self.link_env()
        kwargs["env"] = {**os.environ, **linked} if base is None else {**linked, **base}
        return kwargs

    def command(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` in the sandbox (its namespace, hostname and files)."""
        files = {
            "/etc/hosts": self.hosts_path,
            "/etc/resolv.conf": self.resolv_conf_path,
            "/etc/hostname": self.hostname_path,
        }
        return command_in(self.netns, argv, files=files, hostname=self.hostname)

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command inside the sandbox; takes :func:`subprocess.run`'s keywords.

        The process sees the sandbox's interfaces, its hostname, and its
        /etc/hosts and /etc/resolv.conf. With ``link_env=True`` its environment
        also holds the variables of the sandbox's links (:meth:`link_env`);
        variables given in ``env`` win over them.
        """
        kwargs = self._with_link_env(kwargs)
        return subprocess.run(self.command(argv), **kwargs)  # noqa: PLW1510 - caller's choice

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command inside the sandbox; takes :class:`subprocess.Popen`'s keywords and ``link_env``."""
        kwargs = self._with_link_env(kwargs)
        return subprocess.Popen(self.command(argv), **kwargs)

    def inspect(self) -> dict[str, Any]:
        """The sandbox as ``docker inspect`` shows a container's networking.

        ``Id``, ``Name``, ``Created``, the files' paths, ``HostConfig.NetworkMode``
        and the DNS settings, ``Config.Hostname``, and ``NetworkSettings`` with
        one entry per joined network under ``Networks`` (empty in container
        mode, whose ``SandboxID`` and ``SandboxKey`` are empty, as Docker's are).
        """
        record = self._current()
        joined = [
            (self._rt.state.get(rec.NetworkRecord, e.network_id), e) for e in joined_endpoints(self._rt, record.id)
        ]
        return _inspect.sandbox(
            record,
            joined,
            hosts_path=self.hosts_path,
            resolv_conf_path=self.resolv_conf_path,
            hostname_path=self.hostname_path,
            links=_links.inspect_links(self._rt, record),
        )

    def delete(self) -> None:
        """Delete the sandbox: leave every joined endpoint, then remove the namespace and files.

        Endpoints it joined stay; those it created itself (``network=``) are
        deleted, joined or not, with their addresses and host ports. Deleting what is
        already gone succeeds. A host-mode sandbox never removes the host's
        namespace; a container-mode sandbox removes nothing of its owner's.

        Interfaces inside the namespace are cut off at once and go with it:
        the kernel destroys them moments after the delete returns. Stop the
        sandbox's processes first; one left running keeps the namespace and
        its cut-off interfaces alive until it ends or :meth:`Controller.reconcile`
        removes them. Their addresses are free at once either way.

        Raises:
            Conflict: other sandboxes share this one's namespace (container mode);
                delete them first.
        """
        delete_sandbox(self._rt, self._record)


def joined_endpoints(rt: Runtime, sandbox_id: str) -> list[rec.EndpointRecord]:
    """The endpoints joined to a sandbox, in join order."""
    return rt.state.endpoints_of_sandbox(sandbox_id)


def sharers_of(rt: Runtime, sandbox_id: str) -> list[rec.SandboxRecord]:
    """The sandboxes sharing ``sandbox_id``'s namespace, in name order."""
    return rt.state.sharers_of(sandbox_id)


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
        hostname = hostname or socket.gethostname()
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


def create_sandbox(
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
) -> Sandbox:
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
    exposed_ports = _links.parse_exposed(exposed)
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
    with lock, Steps(f"create sandbox {name}") as undo:
        with rt.state.transaction() as tx:
            if owner is not None:
                current = tx.get(rec.SandboxRecord, owner.id)
                if current is None or current.status != rec.READY:
                    raise Conflict(f"sandbox {owner.name!r} is being deleted or is gone; it cannot be shared")
            try:
                tx.add(record)
            except KeyTaken as exc:
                raise AlreadyExists(f"sandbox {name!r} already exists; pick another name or delete it first") from exc
        undo.done("record", lambda: _forget(rt, record))
        if mode == rec.PRIVATE:
            ns = netns.create(record.netns_path, loopback_up=True)
            undo.done("namespace", lambda: netns.remove(ns.path))
        if mode != rec.CONTAINER:
            os.makedirs(record.files_dir, exist_ok=True)
            undo.done("files", lambda: shutil.rmtree(record.files_dir, ignore_errors=True))
            write_files(rt, record)
        record = mark_ready(rt, record) if ready else record
    log.info("created sandbox %s (%s, %s mode)", name, sandbox_id[:12], mode)
    return Sandbox(rt, record)


def mark_ready(rt: Runtime, record: rec.SandboxRecord) -> rec.SandboxRecord:
    """Mark a sandbox created with ``ready=False`` as done; the record as stored."""
    with rt.state.transaction() as tx:
        current = tx.get(rec.SandboxRecord, record.id)
        if current is None:
            raise NotFound(f"sandbox {record.name!r} vanished while it was being created; create it again")
        record = attrs.evolve(current, status=rec.READY)
        tx.put(record)
    return record


def _forget(rt: Runtime, record: rec.SandboxRecord) -> None:
    rt.state.remove(record)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def write_files(rt: Runtime, sandbox: rec.SandboxRecord) -> None:
    """Write the sandbox's hostname, hosts and resolv.conf files (a sharer has none of its own)."""
    if sandbox.mode == rec.CONTAINER:
        return
    etchosts.write(os.path.join(sandbox.files_dir, "hostname"), sandbox.hostname + "\n")
    overrides = sandbox.dns or sandbox.dns_search or sandbox.dns_options
    if sandbox.mode == rec.HOST and not overrides:
        # The host's stack is the sandbox's, so even a loopback resolver (a
        # local stub) works: copy the file as it is, as Docker does.
        resolv = _read(resolvconf.HOST_RESOLV_CONF)
    else:
        resolv = resolvconf.render(resolvconf.read_host(), sandbox.dns, sandbox.dns_search, sandbox.dns_options)
    etchosts.write(os.path.join(sandbox.files_dir, "resolv.conf"), resolv)
    if sandbox.mode == rec.HOST:
        etchosts.write(os.path.join(sandbox.files_dir, "hosts"), _read(HOST_HOSTS) or etchosts.STANDARD_BLOCK)
    refresh_files(rt, sandbox)


def refresh_files(rt: Runtime, sandbox: rec.SandboxRecord) -> None:
    """Rewrite the hosts file from the sandbox's joined endpoints (one line per address) and its links.

    Only a private-mode sandbox's: a host-mode one keeps its copy of the
    host's file, and a sharer's file is its owner's.
    """
    if sandbox.mode != rec.PRIVATE:
        return
    own = [
        etchosts.HostEntry(ipaddress.IPv4Interface(e.address).ip, (sandbox.hostname,))
        for e in joined_endpoints(rt, sandbox.id)
        if e.address is not None
    ]
    path = os.path.join(sandbox.files_dir, "hosts")
    if os.path.isdir(sandbox.files_dir):
        etchosts.write(path, etchosts.render(own, _links.host_entries(rt, sandbox.id)))


def update_gateway(rt: Runtime, sandbox: rec.SandboxRecord, nl: Netlink | None = None) -> None:
    """Point the default route at the first-joined endpoint that offers a gateway, or remove it.

    Only in a namespace the sandbox owns: the host's routes (host mode) are
    never touched, and a sharer has no endpoints of its own. ``nl``, if
    given, is a netlink socket already open in the sandbox's namespace.
    """
    if not rt.owns_netns(sandbox):
        return
    ns = NetNS(sandbox.netns_path)
    if nl is None and not ns.exists():
        return
    gateway_ep = next((e for e in joined_endpoints(rt, sandbox.id) if e.gateway is not None), None)
    with contextlib.ExitStack() as stack:
        if nl is None or nl.netns != ns:
            nl = stack.enter_context(ns.netlink())
        if gateway_ep is None or gateway_ep.ifname is None or gateway_ep.gateway is None:
            routes.delete_route(nl, ipaddress.IPv4Network("0.0.0.0/0"))
            return
        routes.replace_default_route(nl, ipaddress.IPv4Address(gateway_ep.gateway), gateway_ep.ifname)


def check_join(rt: Runtime, sandbox: rec.SandboxRecord, network: rec.NetworkRecord, *, host_stack: bool) -> None:
    """Refuse a join the sandbox's mode does not allow, as ``docker network connect`` does.

    Args:
        rt: the controller's runtime.
        sandbox: the sandbox about to be joined.
        network: the endpoint's network.
        host_stack: the network's driver gives the host's own stack (needs no
            namespace of the sandbox's own: the host driver).

    Raises:
        InvalidConfig: a sharer joins anything; a host-mode sandbox joins a
            network that needs its own namespace, or a second network; a
            private one joins the host network; ``none`` is combined with others.
    """
    if sandbox.mode == rec.CONTAINER:
        owner = rt.state.get(rec.SandboxRecord, sandbox.shares or "").name
        raise InvalidConfig(
            f"sandbox {sandbox.name!r} uses the namespace of sandbox {owner!r}; connect {owner!r} to "
            f"{network.name!r} instead"
        )
    joined = [rt.state.get(rec.NetworkRecord, e.network_id) for e in joined_endpoints(rt, sandbox.id)]
    if sandbox.mode == rec.HOST and (not host_stack or joined):
        raise InvalidConfig(
            f"sandbox {sandbox.name!r} uses the host's own stack; it cannot join network {network.name!r}"
        )
    if sandbox.mode != rec.HOST and host_stack:
        raise InvalidConfig(
            f"network {network.name!r} gives the host's own stack; only a sandbox created with "
            f"network={network.name!r} can be on it"
        )
    if joined and (network.driver == "null" or any(n.driver == "null" for n in joined)):
        raise InvalidConfig(
            f"sandbox {sandbox.name!r} cannot be on a null network ('none') and on others at once; disconnect it first"
        )


def delete_sandbox(rt: Runtime, sandbox: rec.SandboxRecord) -> None:
    """Leave every joined endpoint, delete endpoints the sandbox owns, remove what the sandbox owns.

    Its namespace only in private mode, its files unless it shares another's;
    refused while sharers exist.
    """
    from cnm.endpoint import delete_endpoint, leave

    with rt.locks.operation(sandboxes=[sandbox.id]):
        try:
            sandbox = rt.state.reload(sandbox)
        except NotFound:
            return
        sharers = sharers_of(rt, sandbox.id)
        if sharers:
            names = ", ".join(repr(s.name) for s in sharers)
            raise Conflict(
                f"sandbox {sandbox.name!r} is shared by {names} (network='container:{sandbox.name}'); "
                "delete those first"
            )
        sandbox = rt.state.put(attrs.evolve(sandbox, status=rec.DELETING))
        # The namespace and files stay until every endpoint is out: a retry or reconcile finishes the job.
        with Teardown(f"delete sandbox {sandbox.name}") as teardown:
            teardown.run("drop legacy links", lambda: _links.drop_links(rt, sandbox.id))
            joined = joined_endpoints(rt, sandbox.id)
            # Owned but no longer joined (left, or a crash before the join): deleted all the same.
            unjoined = [e for e in rt.state.endpoints_owned_by(sandbox.id) if e.id not in {j.id for j in joined}]
            for endpoint in [*reversed(joined), *unjoined]:
                if endpoint.owned_by_sandbox and endpoint.owner_sandbox_id in (None, sandbox.id):
                    teardown.run(f"delete endpoint {endpoint.name}", functools.partial(delete_endpoint, rt, endpoint))
                else:
                    teardown.run(f"leave endpoint {endpoint.name}", functools.partial(leave, rt, endpoint))
        if rt.owns_netns(sandbox):
            netns.remove(sandbox.netns_path)
        if sandbox.mode != rec.CONTAINER:
            shutil.rmtree(sandbox.files_dir, ignore_errors=True)
        _forget(rt, sandbox)
    log.info("deleted sandbox %s (%s mode)", sandbox.name, sandbox.mode)
