"""The world a rule runs in: a throwaway host namespace, a real Controller, the wrapped driver and firewall.

Also :class:`Snapshot`, what a namespace holds, which the rules compare before and after.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import attrs

from cnm.controller import Controller
from cnm.driverapi import Capabilities, Driver, DriverContext, JoinResult, PortPublisher
from cnm.firewallapi import open_firewall
from cnm.handles import Endpoint, Network, Sandbox
from cnm.kernel import addresses, links, netns, netns_dirs, routes
from cnm.kernel.netns import NetNS
from cnm.registry import DriverFactory, DriverRegistry
from cnm.testing.conformance.rules import RULES, ConformanceError, Rule
from cnm.testing.conformance.spies import CheckedFirewall, DriverSpy, PublishingSpy
from cnm.testing.hosts import settled, stop_process, unmount_sandboxes

__all__ = ["Leftovers", "SetupHost", "Snapshot", "World", "link_names", "settled_changes"]

SetupHost = Callable[[NetNS], Mapping[str, object] | None]
"""Prepares the kit's throwaway host namespace; may return options to add (e.g. ``{"parent": "mv0"}``)."""

Leftovers = Callable[[NetNS], Sequence[str]]
"""Lists driver-owned state the kit cannot see itself (OVSDB rows, files...) still present for a host namespace."""

_SENTINEL_NETWORK = "conformance-kit-keeps-nothing"


# --- kernel snapshots -----------------------------------------------------------------------------


@attrs.frozen
class Snapshot:
    """What a namespace holds, by name: links (with kind), addresses (not IPv6 link-local) and main-table routes."""

    links: frozenset[tuple[str, str]]
    addresses: frozenset[str]
    routes: frozenset[str]

    @classmethod
    def take(cls, ns: NetNS) -> Snapshot:
        with ns.netlink() as nl:
            found_links = frozenset((link.name, link.kind or "plain") for link in links.list_links(nl))
            # IPv6 link-local addresses are the kernel's, made when a link first has carrier (a bridge
            # when its first port joins); no driver makes or removes them.
            found_addresses = frozenset(str(a) for a in addresses.list_addresses(nl) if not a.ip.is_link_local)
            found_routes = frozenset(
                f"{r.destination}"
                + (f" via {r.gateway}" if r.gateway else "")
                + (f" dev {r.ifname}" if r.ifname else "")
                for r in routes.list_routes(nl)
            )
        return cls(found_links, found_addresses, found_routes)

    def changes_since(self, before: Snapshot) -> list[str]:
        """Each difference from ``before``, described ("link cnm1a2b (veth) left behind", ...)."""
        found = [f"link {name} ({kind}) left behind" for name, kind in sorted(self.links - before.links)]
        found += [f"link {name} ({kind}) gone" for name, kind in sorted(before.links - self.links)]
        found += [f"address {a} left behind" for a in sorted(self.addresses - before.addresses)]
        found += [f"address {a} gone" for a in sorted(before.addresses - self.addresses)]
        found += [f"route {r} left behind" for r in sorted(self.routes - before.routes)]
        found += [f"route {r} gone" for r in sorted(before.routes - self.routes)]
        return found


def settled_changes(ns: NetNS, before: Snapshot) -> list[str]:
    """:meth:`Snapshot.changes_since`, once the kernel has finished destroying deleted namespaces."""
    return settled(lambda: Snapshot.take(ns).changes_since(before), lambda changes: not changes)


def link_names(ns: NetNS) -> set[str]:
    """The names of the links in ``ns``."""
    with ns.netlink() as nl:
        return {link.name for link in links.list_links(nl)}


# --- the world a rule runs in -----------------------------------------------------------------------


class World:
    """A throwaway host namespace with a real Controller whose only driver is the wrapped one."""

    def __init__(
        self,
        *,
        driver: str,
        factory: DriverFactory,
        options: Mapping[str, object],
        setup_host: SetupHost | None,
        leftovers: Leftovers | None,
        make_netns: Callable[[str], NetNS],
        rule: Rule,
        firewall: str = "iptables",
    ) -> None:
        self.driver = driver
        self.rule = rule
        self._leftovers = leftovers
        self._processes: list[subprocess.Popen[Any]] = []
        self._counter = 0
        self._stack = contextlib.ExitStack()
        try:
            self._start(factory, options, setup_host, make_netns, firewall)
        except BaseException:
            self._stack.close()
            raise

    def _start(
        self,
        factory: DriverFactory,
        options: Mapping[str, object],
        setup_host: SetupHost | None,
        make_netns: Callable[[str], NetNS],
        firewall: str,
    ) -> None:
        self.host = make_netns("h")
        self._stack.callback(netns.remove, self.host.path)
        extra = setup_host(self.host) if setup_host is not None else None
        self.options: dict[str, object] = {**options, **(extra or {})}
        self.state_dir = tempfile.mkdtemp(prefix="cnm-conformance-")
        self._stack.callback(shutil.rmtree, self.state_dir, ignore_errors=True)
        self._stack.callback(netns_dirs.release_directory, os.path.join(self.state_dir, "netns"))
        self._stack.callback(self._unmount_sandboxes)
        backend = open_firewall(firewall, self.host)
        self._stack.callback(backend.close)  # ends its worker process
        self.firewall = CheckedFirewall(backend)
        self._spies: list[DriverSpy] = []
        registry = DriverRegistry(self._context_for, load_entry_points=False)
        registry.register(self.driver, self._wrap(factory))
        self.ctl = Controller(
            state_dir=self.state_dir, host_netns=self.host, firewall=self.firewall, registry=registry, predefined=False
        )
        self._stack.callback(self.ctl.close)
        self.baseline = Snapshot.take(self.host)
        self._stack.callback(self.end_processes)

    def close(self) -> None:
        """Remove everything the world made: controller, firewall worker, processes, namespaces, state dir."""
        self._stack.close()

    def _context_for(self, name: str) -> DriverContext:
        path = os.path.join(self.state_dir, "drivers", name)
        os.makedirs(path, exist_ok=True)
        return DriverContext(host_netns=self.host, firewall=self.firewall, state_dir=path)

    def _wrap(self, factory: DriverFactory) -> DriverFactory:
        def make(context: DriverContext) -> Driver:
            inner = factory(context)
            base: type[DriverSpy] = PublishingSpy if isinstance(inner, PortPublisher) else DriverSpy
            cls = type(
                f"Checked{type(inner).__name__}", (base,), {"name": inner.name, "capabilities": inner.capabilities}
            )
            spy: DriverSpy = cls(inner)
            self._spies.append(spy)
            return spy

        return make

    def _unmount_sandboxes(self) -> None:
        unmount_sandboxes(self.state_dir)

    def end_processes(self) -> None:
        """Stop, by PID, every process a rule started in this world."""
        for proc in self._processes:
            stop_process(proc)

    # --- helpers the rules use ---------------------------------------------------------------
    @property
    def spy(self) -> DriverSpy:
        """The wrapper around the driver the controller built last."""
        if not self._spies:
            raise LookupError("the driver was never constructed")
        return self._spies[-1]

    @property
    def capabilities(self) -> Capabilities:
        """The capabilities the driver under test declares."""
        return self.spy.capabilities

    def fail(self, problem: str, rule: str | None = None) -> ConformanceError:
        """The error for ``problem``, against ``rule`` (the rule under test by default), for the caller to raise."""
        return ConformanceError(self.driver, RULES[rule] if rule else self.rule, problem)

    def name(self, kind: str) -> str:
        """A fresh object name in this world: ``ct-<kind><n>``."""
        self._counter += 1
        return f"ct-{kind}{self._counter}"

    def network(self, **kwargs: Any) -> Network:
        """A new network of the driver under test, with the kit's options."""
        try:
            return self.ctl.create_network(self.name("net"), driver=self.driver, options=self.options, **kwargs)
        except Exception as exc:
            raise self.fail(
                f"creating a network with options {self.options} failed: {type(exc).__name__}: {exc}. "
                "Pass the options your driver needs to check_driver(options=...), and prepare the host with "
                "setup_host=",
                "network-lifecycle",
            ) from exc

    def endpoint(self, net: Network, **kwargs: Any) -> Endpoint:
        """A new endpoint on ``net``."""
        try:
            return net.create_endpoint(self.name("ep"), **kwargs)
        except Exception as exc:
            raise self.fail(f"create_endpoint failed: {type(exc).__name__}: {exc}", "endpoint-lifecycle") from exc

    def sandbox(self) -> Sandbox:
        """A new sandbox, on no network."""
        return self.ctl.create_sandbox(self.name("sb"))

    @property
    def host_stack(self) -> bool:
        """The driver gives sandboxes the host's own stack (the host driver): sandboxes are made on the network."""
        return not self.capabilities.needs_sandbox_netns

    def pair(self, net: Network, **kwargs: Any) -> tuple[Endpoint, Sandbox]:
        """An endpoint on ``net`` and a sandbox that may join it, not joined yet."""
        if not self.host_stack:
            return self.endpoint(net, **kwargs), self.sandbox()
        # Only a sandbox created on a host-stack network may be on it; it comes with its own endpoint.
        try:
            sb = self.ctl.create_sandbox(self.name("sb"), network=net.name)
        except Exception as exc:
            raise self.fail(f"create_sandbox(network=...) failed: {type(exc).__name__}: {exc}", "join-leave") from exc
        ep = net.endpoint(sb.name)
        ep.leave()
        return ep, sb

    def join(self, ep: Endpoint, sb: Sandbox) -> JoinResult:
        """Join ``ep`` to ``sb``, which must work; what the driver's join returned."""
        try:
            ep.join(sb)
        except Exception as exc:
            raise self.fail(f"join to a fresh sandbox failed: {type(exc).__name__}: {exc}", "join-leave") from exc
        return cast(JoinResult, self.spy.last("join").result)

    def track(self, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        """Stop ``proc`` by PID when the world closes (or at :meth:`end_processes`)."""
        self._processes.append(proc)
        return proc

    def teardown(self, *objects: Sandbox | Endpoint | Network) -> None:
        """Delete in the order given; a failure here is the driver's (deletes must succeed)."""
        for obj in objects:
            try:
                obj.delete()
            except Exception as exc:
                kind = type(obj).__name__.lower()
                raise self.fail(
                    f"deleting {kind} {obj.name!r} failed: {type(exc).__name__}: {exc}", "repeat-delete"
                ) from exc

    def assert_clean(self, when: str) -> None:
        """Fail ``no-leaks`` if the host or the firewall differs from the start of the world."""
        problems = settled_changes(self.host, self.baseline)
        problems += [f"{item} still in force" for item in self.firewall.in_force()]
        if self._leftovers is not None:
            problems += [f"{item} left behind" for item in self._leftovers(self.host)]
        if problems:
            raise self.fail(f"{when}, the host namespace is not as it was: {'; '.join(problems)}", "no-leaks")
        leftover = [n.name for n in self.ctl.networks()]
        if leftover:
            raise self.fail(f"{when}, the store still lists networks {leftover}", "no-leaks")

    def assert_cut_off(self, when: str) -> None:
        """Fail ``no-leaks`` if a link the world did not start with is still up in the host namespace.

        While something holds a deleted sandbox's namespace, an interface whose
        other end is inside may outlive the delete, but only cut off (down).
        """
        with self.host.netlink() as nl:
            up = sorted(
                f"link {link.name} ({link.kind or 'plain'})"
                for link in links.list_links(nl)
                if link.up and (link.name, link.kind or "plain") not in self.baseline.links
            )
        if up:
            raise self.fail(
                f"{when}, with the sandboxes' namespaces still held open (as a process left inside would), "
                f"the host namespace still has {', '.join(up)} up",
                "no-leaks",
            )

    def assert_no_rules(self, when: str) -> None:
        """Ask the firewall itself: no rule tagged for any network may be left (this removes them)."""
        left = self.firewall.inner.cleanup(keep=(_SENTINEL_NETWORK,))
        if left:
            raise self.fail(f"{when}, {left} firewall rule(s) tagged for networks were still installed", "no-leaks")
