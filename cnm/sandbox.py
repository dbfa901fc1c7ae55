"""Sandboxes: a workload's network stack (a namespace, its routes, hosts and resolv.conf)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from cnm import _records as rec
from cnm import etchosts, resolvconf
from cnm._runtime import Runtime, new_id, now, validate_name
from cnm._steps import Rollback
from cnm.errors import AlreadyExists, InvalidConfig, NotFound
from cnm.kernel import links, netns, routes
from cnm.kernel.netns import NetNS
from cnm.kernel.process import command_in
from cnm.store import KeyTaken

if TYPE_CHECKING:
    from cnm.endpoint import Endpoint

__all__ = ["Sandbox"]

log = logging.getLogger(__name__)


class Sandbox:
    """A CNM sandbox: a network namespace with loopback up and its own hosts/resolv.conf files."""

    def __init__(self, runtime: Runtime, record: rec.SandboxRecord) -> None:
        self._rt = runtime
        self._record = record

    def __repr__(self) -> str:
        return f"<Sandbox {self.name} id={self.id[:12]}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sandbox) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _current(self) -> rec.SandboxRecord:
        with contextlib.suppress(NotFound):
            self._record = self._rt.reload(self._record)
        return self._record

    @property
    def id(self) -> str:
        """The sandbox's id (64 hex digits)."""
        return self._record.id

    @property
    def name(self) -> str:
        """The sandbox's name."""
        return self._record.name

    @property
    def hostname(self) -> str:
        """The hostname processes in the sandbox see."""
        return self._record.hostname

    @property
    def netns(self) -> NetNS:
        """The sandbox's network namespace."""
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
        /etc/hosts and /etc/resolv.conf.
        """
        return subprocess.run(self.command(argv), **kwargs)  # noqa: PLW1510 - caller's choice

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command inside the sandbox; takes :class:`subprocess.Popen`'s keywords."""
        return subprocess.Popen(self.command(argv), **kwargs)

    def delete(self) -> None:
        """Delete the sandbox: leave every joined endpoint, then remove the namespace and files.

        Endpoints it joined stay (unless it created them itself); deleting what is
        already gone succeeds.
        """
        delete_sandbox(self._rt, self._record)


def joined_endpoints(rt: Runtime, sandbox_id: str) -> list[rec.EndpointRecord]:
    """The endpoints joined to a sandbox, in join order."""
    joined = [e for e in rt.list_records("endpoint", rec.EndpointRecord) if e.sandbox_id == sandbox_id]
    return sorted(joined, key=lambda e: e.join_seq)


def create_sandbox(
    rt: Runtime,
    name: str,
    *,
    hostname: str | None = None,
    dns: Sequence[str] = (),
    dns_search: Sequence[str] = (),
    dns_options: Sequence[str] = (),
) -> Sandbox:
    """Create a sandbox: a fresh namespace with loopback up, and its files."""
    validate_name(name, "sandbox")
    hostname = hostname or name
    if len(hostname) > 64 or not all(c.isalnum() or c in "-." for c in hostname):
        raise InvalidConfig(f"invalid hostname {hostname!r}: at most 64 characters of letters, digits, '-' and '.'")
    for server in dns:
        try:
            ipaddress.ip_address(server)
        except ValueError as exc:
            raise InvalidConfig(f"invalid dns server {server!r}: give an IP address") from exc
    sandbox_id = new_id()
    record = rec.SandboxRecord(
        id=sandbox_id,
        name=name,
        hostname=hostname,
        netns_path=os.path.join(rt.state_dir, "netns", sandbox_id[:12]),
        files_dir=os.path.join(rt.state_dir, "sandboxes", sandbox_id),
        dns=list(dns),
        dns_search=list(dns_search),
        dns_options=list(dns_options),
        created=now(),
        status=rec.CREATING,
    )
    with rt.lock, Rollback(f"create sandbox {name}") as undo:
        with rt.store.transaction() as txn:
            try:
                txn.insert("sandbox.name", name, {"id": sandbox_id})
            except KeyTaken as exc:
                raise AlreadyExists(f"sandbox {name!r} already exists; pick another name or delete it first") from exc
            txn.insert("sandbox", sandbox_id, rec.to_json(record))
        undo.done("record", lambda: _forget(rt, record))
        ns = netns.create(record.netns_path)
        undo.done("namespace", lambda: netns.remove(ns.path))
        with ns.netlink() as nl:
            links.set_link(nl, "lo", up=True)
        os.makedirs(record.files_dir, exist_ok=True)
        undo.done("files", lambda: shutil.rmtree(record.files_dir, ignore_errors=True))
        write_files(rt, record)
        record = attrs.evolve(record, status=rec.READY)
        with rt.store.transaction() as txn:
            txn.put("sandbox", sandbox_id, rec.to_json(record))
    log.info("created sandbox %s (%s)", name, sandbox_id[:12])
    return Sandbox(rt, record)


def _forget(rt: Runtime, record: rec.SandboxRecord) -> None:
    with rt.store.transaction() as txn:
        txn.delete("sandbox.name", record.name)
        txn.delete("sandbox", record.id)


def write_files(rt: Runtime, sandbox: rec.SandboxRecord) -> None:
    """Write the sandbox's hostname, hosts and resolv.conf files."""
    etchosts.write(os.path.join(sandbox.files_dir, "hostname"), sandbox.hostname + "\n")
    etchosts.write(
        os.path.join(sandbox.files_dir, "resolv.conf"),
        resolvconf.render(resolvconf.read_host(), sandbox.dns, sandbox.dns_search, sandbox.dns_options),
    )
    refresh_files(rt, sandbox)


def refresh_files(rt: Runtime, sandbox: rec.SandboxRecord) -> None:
    """Rewrite the hosts file from the sandbox's joined endpoints (one line per address)."""
    own = [
        etchosts.HostEntry(ipaddress.IPv4Interface(e.address).ip, (sandbox.hostname,))
        for e in joined_endpoints(rt, sandbox.id)
        if e.address is not None
    ]
    path = os.path.join(sandbox.files_dir, "hosts")
    if os.path.isdir(sandbox.files_dir):
        etchosts.write(path, etchosts.render(own))


def update_gateway(rt: Runtime, sandbox: rec.SandboxRecord) -> None:
    """Point the default route at the first-joined endpoint that offers a gateway, or remove it."""
    ns = NetNS(sandbox.netns_path)
    if not ns.exists():
        return
    gateway_ep = next((e for e in joined_endpoints(rt, sandbox.id) if e.gateway is not None), None)
    with ns.netlink() as nl:
        if gateway_ep is None or gateway_ep.ifname is None or gateway_ep.gateway is None:
            routes.delete_route(nl, ipaddress.IPv4Network("0.0.0.0/0"))
            return
        routes.replace_default_route(nl, ipaddress.IPv4Address(gateway_ep.gateway), gateway_ep.ifname)


def delete_sandbox(rt: Runtime, sandbox: rec.SandboxRecord) -> None:
    """Leave every joined endpoint, delete endpoints the sandbox owns, remove the namespace and files."""
    from cnm.endpoint import delete_endpoint, leave

    with rt.lock:
        try:
            sandbox = rt.reload(sandbox)
        except NotFound:
            return
        with rt.store.transaction() as txn:
            sandbox = attrs.evolve(sandbox, status=rec.DELETING)
            txn.put("sandbox", sandbox.id, rec.to_json(sandbox))
        errors: list[Exception] = []
        for endpoint in reversed(joined_endpoints(rt, sandbox.id)):
            try:
                if endpoint.owned_by_sandbox:
                    delete_endpoint(rt, endpoint)
                else:
                    leave(rt, endpoint)
            except Exception as exc:  # noqa: BLE001 - continue the teardown, report all at the end
                errors.append(exc)
        if errors:
            raise ExceptionGroup(f"deleting sandbox {sandbox.name!r} left endpoints behind; retry the delete", errors)
        netns.remove(sandbox.netns_path)
        shutil.rmtree(sandbox.files_dir, ignore_errors=True)
        _forget(rt, sandbox)
    log.info("deleted sandbox %s", sandbox.name)
