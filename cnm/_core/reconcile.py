"""Reconciliation: make the kernel and the store agree again after a crash or a reboot.

Every operation records its intent in the store (a ``creating`` or
``deleting`` status) before it touches the kernel, and every driver verb is
idempotent, so an interrupted operation can always be finished or undone:

* namespaces hidden under a later mount of the namespace directory (a crash,
  an ``ip netns add`` on a fresh machine) are brought back, stacked mounts
  of it removed;
* records still ``creating`` are rolled back, records ``deleting`` are finished;
  a sandbox is ``creating`` until all of ``create_sandbox(network=, ports=,
  links=)`` is done, so a crash anywhere in that call rolls all of it back;
* endpoints a sandbox made for itself are deleted once that sandbox is gone;
* sandboxes whose namespace is gone (a reboot) are marked ``dead``: their
  endpoints leave, the endpoints they own are deleted, their addresses and
  host ports are released;
* networks whose host objects are gone are re-created by their driver;
* joined endpoints whose interfaces vanished are joined again, under the
  interface names they had;
* kernel objects that are recognisably cnm's but unknown to the store are
  removed, and so are allocations nobody owns;
* legacy links half made or half removed are removed, and so are links whose
  sandboxes or network vanished;
* the firewall is rebuilt from the store, links' rules included;
* finally the resolver's files are rewritten from the store and the resolver
  (re)started if a network with names has sandboxes, stopped if none has.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable
from typing import Generic, ParamSpec, TypeVar

import attrs

from cnm._core import records as rec
from cnm._core import views
from cnm._core.ops import names
from cnm._core.ops.attach import join, leave
from cnm._core.ops.endpoints import delete_endpoint, free_endpoint
from cnm._core.ops.legacy_links import link_info, settle_links
from cnm._core.ops.networks import free_network
from cnm._core.ops.sandboxes import delete_sandbox
from cnm._core.runtime import Runtime
from cnm.driverapi import Linker, Reconciler
from cnm.errors import CNMError
from cnm.firewallapi import NetworkRules
from cnm.types import ReconcileReport

__all__ = ["reapply_firewall", "reconcile"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_P = ParamSpec("_P")


@attrs.frozen
class _Outcome(Generic[_T]):
    """How one repair went: ``ok`` is False if it failed (the error is in the report)."""

    ok: bool
    value: _T | None = None


class _Log:
    def __init__(self) -> None:
        self.actions: list[str] = []
        self.errors: list[str] = []

    def did(self, action: str) -> None:
        log.info("reconcile: %s", action)
        self.actions.append(action)

    def attempt(self, what: str, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _Outcome[_T]:
        """Run one repair; a failure (a partly failed teardown included) is recorded and the others still run."""
        try:
            return _Outcome(True, fn(*args, **kwargs))
        except CNMError as exc:
            log.error("reconcile: %s failed: %s", what, exc)
            self.errors.append(f"{what}: {exc}")
            return _Outcome(False)

    def repair(self, what: str, done: str, fn: Callable[_P, object], *args: _P.args, **kwargs: _P.kwargs) -> bool:
        """Run one repair and record ``done`` only if it succeeded; True if it did."""
        if not self.attempt(what, fn, *args, **kwargs).ok:
            return False
        self.did(done)
        return True


def reconcile(rt: Runtime) -> ReconcileReport:
    """Finish or undo interrupted operations, repair and collect garbage; see the module doc."""
    out = _Log()
    with rt.locks.everything():
        _unshadow_namespaces(rt, out)
        _settle_networks(rt, out)
        _settle_sandboxes(rt, out)
        _settle_endpoints(rt, out)
        for line in out.attempt("settle legacy links", settle_links, rt).value or []:
            out.did(line)
        _restore_networks(rt, out)
        _repair_joins(rt, out)
        _collect_garbage(rt, out)
        _release_orphans(rt, out)
        out.attempt("re-apply the firewall", reapply_firewall, rt)
        for line in out.attempt("restore the resolver's names", names.restore, rt).value or []:
            out.did(line)
    return ReconcileReport(tuple(out.actions), tuple(out.errors))


def reapply_firewall(rt: Runtime) -> None:
    """Rebuild every cnm rule from the store, touching no other rule."""
    # Exclusive: a rule added by a concurrent operation after the store was read would be dropped.
    with rt.locks.everything():
        networks = sorted(rt.state.list(rec.NetworkRecord), key=lambda n: n.created)
        endpoints = rt.state.list(rec.EndpointRecord)
        # A link half made or half removed gets no rules; reconcile settles it.
        kept_links = [lk for lk in rt.state.list(rec.LinkRecord) if lk.status == rec.READY]
        described: list[NetworkRules] = []
        for network in networks:
            if network.status != rec.READY:
                continue
            driver = rt.driver(network)
            if not isinstance(driver, Reconciler):
                continue
            joined = [views.endpoint_info(e) for e in endpoints if e.network_id == network.id and e.sandbox_id]
            rules = driver.firewall_rules(views.network_info(network), joined)
            if rules is not None and isinstance(driver, Linker):
                infos = [link_info(lk) for lk in kept_links if lk.network_id == network.id]
                rules = attrs.evolve(rules, links=rules.links + driver.link_rules(views.network_info(network), infos))
            if rules is not None:
                described.append(rules)
        rt.firewall.reapply(described)


def _unshadow_namespaces(rt: Runtime, out: _Log) -> None:
    # First: a sandbox whose namespace is hidden under a later mount of the
    # directory would otherwise be taken for one that lost its namespace.
    shadowed = out.attempt(f"clear shadowed mounts of {rt.netns_dir}", rt.sandbox_os.clear_shadowed, rt.netns_dir)
    for line in shadowed.value or []:
        out.did(line)


def _settle_networks(rt: Runtime, out: _Log) -> None:
    for network in rt.state.list(rec.NetworkRecord):
        if network.status in (rec.CREATING, rec.DELETING):

            def undo(network: rec.NetworkRecord = network) -> None:
                rt.driver(network).delete_network(views.network_info(network))
                free_network(rt, network)

            verb = "rolled back" if network.status == rec.CREATING else "finished deleting"
            out.repair(f"settle network {network.name}", f"{verb} network {network.name}", undo)


def _settle_sandboxes(rt: Runtime, out: _Log) -> None:
    for sandbox in rt.state.list(rec.SandboxRecord):
        if sandbox.status in (rec.CREATING, rec.DELETING):
            verb = "rolled back" if sandbox.status == rec.CREATING else "finished deleting"
            out.repair(f"settle sandbox {sandbox.name}", f"{verb} sandbox {sandbox.name}", delete_sandbox, rt, sandbox)
        elif sandbox.status == rec.READY and not rt.sandbox_os.namespace_exists(sandbox.netns_path):
            released = True
            joined = rt.state.endpoints_of_sandbox(sandbox.id)
            unjoined = [e for e in rt.state.endpoints_owned_by(sandbox.id) if e.id not in {j.id for j in joined}]
            for endpoint in [*joined, *unjoined]:
                action = delete_endpoint if endpoint.owned_by_sandbox else leave
                released &= out.attempt(f"release endpoint {endpoint.name}", action, rt, endpoint).ok
            rt.state.put(attrs.evolve(sandbox, status=rec.DEAD))
            left = "its endpoints left" if released else "some of its endpoints could not leave"
            out.did(f"sandbox {sandbox.name} lost its namespace: marked dead, {left}")


def _settle_endpoints(rt: Runtime, out: _Log) -> None:
    sandboxes = {s.id for s in rt.state.list(rec.SandboxRecord)}
    for endpoint in rt.state.list(rec.EndpointRecord):
        if endpoint.owner_sandbox_id is not None and endpoint.owner_sandbox_id not in sandboxes:
            # Made by a sandbox for itself, and that sandbox is gone: it goes too.
            out.repair(
                f"delete endpoint {endpoint.name}",
                f"deleted endpoint {endpoint.name}, whose sandbox is gone",
                delete_endpoint,
                rt,
                endpoint,
            )
            continue
        if endpoint.status == rec.READY:
            continue
        try:
            rt.state.get(rec.NetworkRecord, endpoint.network_id)
        except CNMError:
            out.repair(
                f"forget endpoint {endpoint.name}",
                f"forgot endpoint {endpoint.name} of a vanished network",
                free_endpoint,
                rt,
                endpoint,
            )
            continue
        if endpoint.sandbox_id is not None:
            # Interrupted in join (creating) or in leave (deleting): either way, leave.
            out.repair(
                f"settle the join of endpoint {endpoint.name}",
                f"undid the interrupted join/leave of endpoint {endpoint.name}",
                leave,
                rt,
                endpoint,
            )
        else:
            verb = "rolled back" if endpoint.status == rec.CREATING else "finished deleting"
            out.repair(
                f"settle endpoint {endpoint.name}", f"{verb} endpoint {endpoint.name}", delete_endpoint, rt, endpoint
            )


def _restore_networks(rt: Runtime, out: _Log) -> None:
    for network in rt.state.list(rec.NetworkRecord):
        driver = rt.driver(network)
        if (
            network.status == rec.READY
            and isinstance(driver, Reconciler)
            and out.attempt(
                f"restore network {network.name}", driver.restore_network, views.network_info(network)
            ).value
        ):
            out.did(f"re-created the host objects of network {network.name}")


def _interface_present(rt: Runtime, sandbox: rec.SandboxRecord, ifname: str | None) -> bool:
    if ifname is None:
        return True
    with rt.sandbox_os.network(sandbox.netns_path) as stack:
        return stack.interface_exists(ifname)


def _repair_joins(rt: Runtime, out: _Log) -> None:
    broken: dict[str, list[rec.EndpointRecord]] = {}
    for endpoint in rt.state.list(rec.EndpointRecord):
        if endpoint.sandbox_id is None or endpoint.status != rec.READY:
            continue
        network = rt.state.get(rec.NetworkRecord, endpoint.network_id)
        sandbox = rt.state.get(rec.SandboxRecord, endpoint.sandbox_id)
        driver = rt.driver(network)
        if sandbox.status != rec.READY or not isinstance(driver, Reconciler):
            continue
        intact = driver.endpoint_intact(
            views.network_info(network), views.endpoint_info(endpoint), rt.sandbox_info(sandbox)
        ) and _interface_present(rt, sandbox, endpoint.ifname)
        if not intact:
            broken.setdefault(sandbox.id, []).append(endpoint)
    for sandbox_id, endpoints in broken.items():
        # All of a sandbox's broken endpoints leave before any joins again, and they join in their
        # old order under their old names: a route or a program naming eth0 finds it again, and no
        # step points the default route at an interface that is still missing.
        endpoints.sort(key=lambda e: e.join_seq)
        sandbox = rt.state.get(rec.SandboxRecord, sandbox_id)
        left = [e for e in endpoints if out.attempt(f"rejoin endpoint {e.name}", _leave_for_rejoin, rt, e).ok]
        for e in left:
            # The address stays the same across the rejoin, so the sandbox's links stay valid.
            out.repair(
                f"rejoin endpoint {e.name}",
                f"endpoint {e.name} had lost its interface: joined sandbox {sandbox.name} again as {e.ifname}",
                _join_as,
                rt,
                e,
                sandbox,
            )


def _leave_for_rejoin(rt: Runtime, endpoint: rec.EndpointRecord) -> None:
    leave(rt, endpoint, keep_links=True, refresh=False)


def _join_as(rt: Runtime, endpoint: rec.EndpointRecord, sandbox: rec.SandboxRecord) -> None:
    join(rt, rt.state.reload(endpoint), rt.state.reload(sandbox), ifname=endpoint.ifname)


def _collect_garbage(rt: Runtime, out: _Log) -> None:
    networks = [n for n in rt.state.list(rec.NetworkRecord) if n.status == rec.READY]
    endpoints = rt.state.list(rec.EndpointRecord)
    for name in sorted({n.driver for n in networks} | set(rt.registry.names())):
        try:
            driver = rt.registry.get(name)
        except CNMError:
            continue
        if not isinstance(driver, Reconciler):
            continue
        mine = [n for n in networks if n.driver == name]
        ids = {n.id for n in mine}
        joined = [views.endpoint_info(e) for e in endpoints if e.network_id in ids and e.sandbox_id]
        infos = [views.network_info(n) for n in mine]
        garbage = out.attempt(f"collect garbage of driver {name}", driver.collect_garbage, infos, joined)
        for line in garbage.value or []:
            out.did(line)
    sandboxes = rt.state.list(rec.SandboxRecord)
    known_ns = {os.path.basename(s.netns_path) for s in sandboxes}
    known_files = {os.path.basename(s.files_dir) for s in sandboxes}
    host = rt.sandbox_os
    remove: Callable[[str], object]
    for directory, known, remove in (
        (rt.netns_dir, known_ns, host.remove_namespace),
        (os.path.join(rt.state_dir, "sandboxes"), known_files, host.remove_directory),
    ):
        for entry in host.list_directory(directory):
            if entry not in known:
                remove(os.path.join(directory, entry))
                out.did(f"removed orphaned {os.path.join(directory, entry)}")


def _release_orphans(rt: Runtime, out: _Log) -> None:
    networks = rt.state.list(rec.NetworkRecord)
    endpoints = rt.state.list(rec.EndpointRecord)
    by_pool = {n.pool_id: n for n in networks if n.pool_id}
    for pool in rt.ipam.pools():
        network = by_pool.get(pool.id)
        if network is None:
            rt.ipam.release_pool(pool.id)
            out.did(f"released pool {pool.id} of no network")
            continue
        expected = {ipaddress.ip_address(a) for a in (network.gateway, *network.aux_addresses.values()) if a}
        expected |= {
            ipaddress.IPv4Interface(e.address).ip for e in endpoints if e.network_id == network.id and e.address
        }
        for address in set(rt.ipam.allocated(pool.id)) - expected:
            rt.ipam.release_address(pool.id, address)
            out.did(f"released address {address} of no endpoint")
    owners = {e.id for e in endpoints}
    for owner in sorted(set(rt.ports.held().values()) - owners):
        rt.ports.release(owner)
        out.did(f"released host ports of vanished endpoint {owner[:12]}")
    # A restarted process takes back the sockets holding its published (joined) endpoints' ports.
    for problem in rt.ports.retake([e.id for e in endpoints if e.sandbox_id is not None]):
        log.error("reconcile: %s", problem)
        out.errors.append(problem)
