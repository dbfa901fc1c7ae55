"""The conformance kit: run the driver contract against any network driver.

A driver author hands the kit a factory for their driver (the class itself
will do) and gets either a :class:`Report` or a :class:`ConformanceFailure`
listing every broken rule, what was seen, and how to fix it::

    from cnm.testing.conformance import check_driver

    def test_my_driver_conforms():
        check_driver(MyDriver, options={"parent": "eth0"})

or, with the pytest fixtures (``pytest_plugins = ["cnm.testing.fixtures"]``),
one test per rule so a failure names its rule::

    @pytest.mark.parametrize("rule", RULE_IDS)
    def test_contract(driver_conformance, rule):
        driver_conformance(MyDriver, rules=[rule])

Each rule runs in a world of its own: a throwaway host namespace (prepared by
the author's ``setup_host`` hook, e.g. to create a parent interface), a real
:class:`~cnm.controller.Controller` bound to it whose registry holds only the
driver under test, real sandboxes, and the real iptables firewall behind a
wrapper that can fail on demand. The driver is wrapped too, so the kit sees
every verb and its arguments and can make a step fail after the driver did
its part. Nothing outside the namespaces the kit creates is touched.

The rules are listed in :data:`RULES`; ``docs/writing-a-driver.md`` explains
each one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, ClassVar, cast

import attrs
import pytest

from cnm.controller import Controller
from cnm.driverapi import (
    Capabilities,
    Driver,
    DriverContext,
    EndpointInfo,
    JoinResult,
    NetworkInfo,
    NetworkRequest,
    PortPublisher,
    SandboxInfo,
    StaticRoute,
)
from cnm.endpoint import Endpoint
from cnm.errors import EndpointJoined, InvalidConfig, KernelError, NotFound
from cnm.firewall import Firewall, FirewallNetwork, LinkRule, NetworkRules, PortMapping
from cnm.firewall.iptables import IptablesFirewall
from cnm.kernel import addresses, links, netns, routes
from cnm.kernel.netns import NetNS
from cnm.network import Network
from cnm.registry import DriverFactory, DriverRegistry
from cnm.sandbox import Sandbox
from cnm.testing import namespace_prefix
from cnm.testing.hosts import settled, stop_process, throwaway_namespaces, unmount_sandboxes
from cnm.testing.traffic import ping, probe, serve
from cnm.types import PortBinding

__all__ = [
    "RULES",
    "RULE_IDS",
    "ConformanceError",
    "ConformanceFailure",
    "InjectedFailure",
    "Report",
    "Rule",
    "RuleResult",
    "check_driver",
    "driver_conformance",
]

log = logging.getLogger(__name__)

SetupHost = Callable[[NetNS], Mapping[str, object] | None]
"""Prepares the kit's throwaway host namespace; may return options to add (e.g. ``{"parent": "mv0"}``)."""

Leftovers = Callable[[NetNS], Sequence[str]]
"""Lists driver-owned state the kit cannot see itself (OVSDB rows, files...) still present for a host namespace."""


@attrs.frozen
class Rule:
    """One rule of the driver contract.

    Attributes:
        id: a short stable name, used in messages and in ``check_driver(rules=...)``.
        title: the rule in one sentence.
        fix: what a driver does to keep it.
    """

    id: str
    title: str
    fix: str


RULES: Mapping[str, Rule] = {
    rule.id: rule
    for rule in (
        Rule(
            "validate-options",
            "validate_network refuses unknown options with InvalidConfig before anything is created",
            "parse the options into your own attrs class in validate_network and raise cnm.errors.InvalidConfig "
            "naming the unknown option and the known ones; create nothing there",
        ),
        Rule(
            "network-lifecycle",
            "create_network then delete_network leave the host namespace as it was, and may be done again",
            "make delete_network remove every host object create_network made (links, addresses, routes, "
            "firewall rules through context.firewall.teardown_network), and keep no state that outlives it",
        ),
        Rule(
            "endpoint-lifecycle",
            "create_endpoint then delete_endpoint leave the host namespace as it was",
            "make delete_endpoint remove whatever create_endpoint made; create kernel objects for a sandbox "
            "in join, not in create_endpoint",
        ),
        Rule(
            "join-leave",
            "join makes what the sandbox needs; leave removes everything join made, in the host and the sandbox",
            "make leave delete every link join created (deleting the host end of a veth removes both ends); "
            "find them by names derived from the endpoint id, not by state kept in memory",
        ),
        Rule(
            "repeat-delete",
            "delete_network, delete_endpoint and leave succeed when repeated or when the object is already gone",
            "treat 'not found' as success in every delete and in leave (cnm.kernel.links.delete_link returns "
            "False instead of raising); never assume the object, or the sandbox namespace, still exists",
        ),
        Rule(
            "joined-elsewhere",
            "an endpoint joined to one sandbox is refused by another (EndpointJoined) and stays intact",
            "keep per-endpoint kernel objects keyed by the endpoint id so a refused join cannot disturb them; "
            "if the driver's join was called at all, report it as a cnm bug",
        ),
        Rule(
            "rollback-create-network",
            "a create_network that fails midway (the kit fails the firewall) raises and leaves nothing behind",
            "undo the steps create_network already did before re-raising (cnm._steps.Rollback or try/except "
            "around the later steps), and let the firewall's error propagate",
        ),
        Rule(
            "rollback-join",
            "a join that fails midway, in the driver or after it, raises and leaves nothing behind",
            "undo the steps join already did before re-raising (e.g. delete the host link you made when "
            "creating the sandbox interface fails), and make leave undo a join that completed",
        ),
        Rule(
            "interface-naming",
            "the driver names the sandbox interface exactly as asked (eth0, eth1, ... in join order) and reports it",
            "create the interface inside the sandbox with the ifname join receives (born there, or moved and "
            "renamed) and return it as JoinResult(interface=ifname); return interface=None only if you made none",
        ),
        Rule(
            "default-route",
            "the first joined network that reports a gateway gives the sandbox's default route",
            "return JoinResult(gateway=...) for networks that are not internal and add no default route "
            "yourself: the controller points it at the first joined endpoint that offers one",
        ),
        Rule(
            "connectivity",
            "two sandboxes on one network exchange real packets (ICMP and TCP), without NAT between them",
            "put the interfaces of one network on one L2 segment (the same bridge or parent), bring the host "
            "side up, and check the MTU; the controller adds the endpoint's address and brings ifname up",
        ),
        Rule(
            "no-leaks",
            "nothing the driver made stays in the host namespace or the firewall once everything is deleted; "
            "an interface left to a closing sandbox's namespace is down until the namespace goes",
            "remove every link, address, route and firewall rule you create in delete_network, delete_endpoint "
            "or leave (when SandboxInfo.closing, an interface whose other end is inside may instead be set "
            "down and left to the kernel); name them with a prefix and the object id so they can always be found",
        ),
    )
}
"""Every rule of the driver contract, by id."""

RULE_IDS: tuple[str, ...] = tuple(RULES)
"""The rule ids in the order the kit checks them (handy for ``pytest.mark.parametrize``)."""

_SENTINEL_NETWORK = "conformance-kit-keeps-nothing"
_UNREACHABLE_ROUTE = StaticRoute(
    destination=ipaddress.IPv4Network("198.51.100.0/24"), next_hop=ipaddress.IPv4Address("203.0.113.254")
)
"""A route whose next hop is on no link of a fresh sandbox: installing it fails (ENETUNREACH)."""


class ConformanceError(AssertionError):
    """One rule broken: says which, what the kit saw, and how to fix it.

    Attributes:
        driver: the driver's name.
        rule: the broken rule.
        problem: what the kit saw.
    """

    def __init__(self, driver: str, rule: Rule, problem: str) -> None:
        self.driver = driver
        self.rule = rule
        self.problem = problem
        super().__init__(
            f"driver {driver!r} breaks rule {rule.id!r} ({rule.title}): {problem}\n    how to fix: {rule.fix}"
        )


class ConformanceFailure(AssertionError):
    """The driver broke one or more rules; ``str()`` lists each.

    Attributes:
        report: every rule's result.
        failures: one :class:`ConformanceError` per rule that failed.
    """

    def __init__(self, report: Report, failures: Sequence[ConformanceError]) -> None:
        self.report = report
        self.failures = tuple(failures)
        listed = "\n".join(f"- {failure}" for failure in self.failures)
        super().__init__(f"driver {report.driver!r} failed {len(self.failures)} conformance rule(s):\n{listed}")

    def broken_rules(self) -> list[str]:
        """The ids of the rules that failed."""
        return [failure.rule.id for failure in self.failures]


class InjectedFailure(KernelError):
    """A failure the kit makes on purpose, to check that a caller undoes its steps."""


@attrs.frozen
class RuleResult:
    """The outcome of one rule: passed, or failed with the error; ``note`` says what was checked."""

    rule: str
    passed: bool
    note: str = ""


@attrs.frozen
class Report:
    """What :func:`check_driver` found, rule by rule."""

    driver: str
    results: tuple[RuleResult, ...]

    @property
    def passed(self) -> bool:
        """True if every rule passed."""
        return all(r.passed for r in self.results)

    def __str__(self) -> str:
        lines = [f"conformance of driver {self.driver!r}:"]
        lines += [f"  {'ok  ' if r.passed else 'FAIL'} {r.rule}: {r.note}" for r in self.results]
        return "\n".join(lines)


# --- the wrapped driver ---------------------------------------------------------------------------


@attrs.frozen
class _Call:
    verb: str
    args: tuple[Any, ...]
    result: object = None


class _Spy:
    """Wraps the driver under test: records each verb, and can sabotage the step after a join.

    With ``sabotage_join`` set, the next join's result gains a route the
    controller cannot install (its next hop is on no link), so the
    controller's own step after the driver's join fails and it must undo the
    join through the driver's leave.
    """

    name: ClassVar[str] = "conformance-subject"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, inner: Driver) -> None:
        self.inner = inner
        self.calls: list[_Call] = []
        self.sabotage_join = False

    def _called(self, verb: str, args: tuple[Any, ...], result: object = None) -> None:
        self.calls.append(_Call(verb, args, result))

    def last(self, verb: str) -> _Call:
        """The most recent call of ``verb``."""
        for call in reversed(self.calls):
            if call.verb == verb:
                return call
        raise LookupError(f"the driver's {verb} was never called")

    def count(self, verb: str) -> int:
        """How often ``verb`` was called."""
        return sum(1 for call in self.calls if call.verb == verb)

    def validate_network(self, network: NetworkRequest) -> dict[str, object]:
        result = self.inner.validate_network(network)
        self._called("validate_network", (network,), result)
        return result

    def create_network(self, network: NetworkInfo) -> None:
        self.inner.create_network(network)
        self._called("create_network", (network,))

    def delete_network(self, network: NetworkInfo) -> None:
        self.inner.delete_network(network)
        self._called("delete_network", (network,))

    def create_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        self.inner.create_endpoint(network, endpoint)
        self._called("create_endpoint", (network, endpoint))

    def delete_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        self.inner.delete_endpoint(network, endpoint)
        self._called("delete_endpoint", (network, endpoint))

    def join(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo, ifname: str) -> JoinResult:
        result = self.inner.join(network, endpoint, sandbox, ifname)
        self._called("join", (network, endpoint, sandbox, ifname), result)
        if self.sabotage_join and result.interface is not None:
            self.sabotage_join = False
            return attrs.evolve(result, routes=(*result.routes, _UNREACHABLE_ROUTE))
        return result

    def leave(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo) -> None:
        self.inner.leave(network, endpoint, sandbox)
        self._called("leave", (network, endpoint, sandbox))


class _PublishingSpy(_Spy):
    """The wrapper for drivers that publish ports, so ``isinstance(_, PortPublisher)`` stays true."""

    def publish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        cast(PortPublisher, self.inner).publish_ports(network, endpoint)
        self._called("publish_ports", (network, endpoint))

    def unpublish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        cast(PortPublisher, self.inner).unpublish_ports(network, endpoint)
        self._called("unpublish_ports", (network, endpoint))


# --- the wrapped firewall -------------------------------------------------------------------------


class _CheckedFirewall:
    """Delegates to a real firewall, keeps what is in force, and fails on demand (``fail_on``)."""

    def __init__(self, inner: Firewall) -> None:
        self.inner = inner
        self.fail_on: set[str] = set()
        self.methods: list[str] = []
        self.networks: dict[str, FirewallNetwork] = {}
        self.ports: dict[str, set[PortMapping]] = {}
        self.links: dict[str, set[LinkRule]] = {}

    def _enter(self, method: str) -> None:
        self.methods.append(method)
        if method in self.fail_on:
            raise InjectedFailure(f"firewall.{method} failed (injected by the conformance kit)")

    def setup_network(self, network: FirewallNetwork) -> None:
        self._enter("setup_network")
        self.inner.setup_network(network)
        self.networks[network.id] = network

    def teardown_network(self, network: FirewallNetwork) -> None:
        self._enter("teardown_network")
        self.inner.teardown_network(network)
        self.networks.pop(network.id, None)
        self.ports.pop(network.id, None)
        self.links.pop(network.id, None)

    def add_ports(self, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
        self._enter("add_ports")
        self.inner.add_ports(network, ports)
        self.ports.setdefault(network.id, set()).update(ports)

    def remove_ports(self, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
        self._enter("remove_ports")
        self.inner.remove_ports(network, ports)
        self.ports.get(network.id, set()).difference_update(ports)

    def add_link(self, network: FirewallNetwork, link: LinkRule) -> None:
        self._enter("add_link")
        self.inner.add_link(network, link)
        self.links.setdefault(network.id, set()).add(link)

    def remove_link(self, network: FirewallNetwork, link: LinkRule) -> None:
        self._enter("remove_link")
        self.inner.remove_link(network, link)
        self.links.get(network.id, set()).discard(link)

    def reapply(self, networks: Sequence[NetworkRules]) -> None:
        self._enter("reapply")
        self.inner.reapply(networks)
        self.networks = {item.network.id: item.network for item in networks}
        self.ports = {item.network.id: set(item.ports) for item in networks}
        self.links = {item.network.id: set(item.links) for item in networks}

    def cleanup(self, keep: Collection[str] = ()) -> int:
        self._enter("cleanup")
        removed = self.inner.cleanup(keep)
        kept = {network_id[:12] for network_id in keep}
        for network_id in [n for n in self.networks if n[:12] not in kept]:
            self.networks.pop(network_id, None)
            self.ports.pop(network_id, None)
            self.links.pop(network_id, None)
        return removed

    def in_force(self) -> list[str]:
        """What the driver asked for and has not withdrawn, one description each."""
        found = [f"the rules of network {n.id[:12]} on {n.interface}" for n in self.networks.values()]
        found += [f"{len(p)} published port(s) of network {nid[:12]}" for nid, p in self.ports.items() if p]
        found += [f"{len(lk)} link rule(s) of network {nid[:12]}" for nid, lk in self.links.items() if lk]
        return found


# --- kernel snapshots -----------------------------------------------------------------------------


@attrs.frozen
class _Snapshot:
    """What a namespace holds, by name: links (with kind), addresses and main-table routes."""

    links: frozenset[tuple[str, str]]
    addresses: frozenset[str]
    routes: frozenset[str]

    @classmethod
    def take(cls, ns: NetNS) -> _Snapshot:
        with ns.netlink() as nl:
            found_links = frozenset((link.name, link.kind or "plain") for link in links.list_links(nl))
            found_addresses = frozenset(str(a) for a in addresses.list_addresses(nl))
            found_routes = frozenset(
                f"{r.destination}"
                + (f" via {r.gateway}" if r.gateway else "")
                + (f" dev {r.ifname}" if r.ifname else "")
                for r in routes.list_routes(nl)
            )
        return cls(found_links, found_addresses, found_routes)

    def changes_since(self, before: _Snapshot) -> list[str]:
        """Each difference from ``before``, described ("link cnm1a2b (veth) left behind", ...)."""
        found = [f"link {name} ({kind}) left behind" for name, kind in sorted(self.links - before.links)]
        found += [f"link {name} ({kind}) gone" for name, kind in sorted(before.links - self.links)]
        found += [f"address {a} left behind" for a in sorted(self.addresses - before.addresses)]
        found += [f"address {a} gone" for a in sorted(before.addresses - self.addresses)]
        found += [f"route {r} left behind" for r in sorted(self.routes - before.routes)]
        found += [f"route {r} gone" for r in sorted(before.routes - self.routes)]
        return found


def _settled_changes(ns: NetNS, before: _Snapshot) -> list[str]:
    """:meth:`_Snapshot.changes_since`, once the kernel has finished destroying deleted namespaces."""
    return settled(lambda: _Snapshot.take(ns).changes_since(before), lambda changes: not changes)


def _link_names(ns: NetNS) -> set[str]:
    with ns.netlink() as nl:
        return {link.name for link in links.list_links(nl)}


# --- the world a rule runs in -----------------------------------------------------------------------


class _World:
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
    ) -> None:
        self.driver = driver
        self.rule = rule
        self._leftovers = leftovers
        self._processes: list[subprocess.Popen[Any]] = []
        self._counter = 0
        self._stack = contextlib.ExitStack()
        try:
            self._start(factory, options, setup_host, make_netns)
        except BaseException:
            self._stack.close()
            raise

    def _start(
        self,
        factory: DriverFactory,
        options: Mapping[str, object],
        setup_host: SetupHost | None,
        make_netns: Callable[[str], NetNS],
    ) -> None:
        self.host = make_netns("h")
        self._stack.callback(netns.remove, self.host.path)
        extra = setup_host(self.host) if setup_host is not None else None
        self.options: dict[str, object] = {**options, **(extra or {})}
        self.state_dir = tempfile.mkdtemp(prefix="cnm-conformance-")
        self._stack.callback(shutil.rmtree, self.state_dir, ignore_errors=True)
        self._stack.callback(self._unmount_sandboxes)
        iptables = IptablesFirewall(self.host)
        self._stack.callback(iptables.close)  # ends its worker process
        self.firewall = _CheckedFirewall(iptables)
        self._spies: list[_Spy] = []
        registry = DriverRegistry(self._context_for, load_entry_points=False)
        registry.register(self.driver, self._wrap(factory))
        self.ctl = Controller(
            state_dir=self.state_dir, host_netns=self.host, firewall=self.firewall, registry=registry, predefined=False
        )
        self._stack.callback(self.ctl.close)
        self.baseline = _Snapshot.take(self.host)
        self._stack.callback(self._end_processes)

    def close(self) -> None:
        self._stack.close()

    def _context_for(self, name: str) -> DriverContext:
        path = os.path.join(self.state_dir, "drivers", name)
        os.makedirs(path, exist_ok=True)
        return DriverContext(host_netns=self.host, firewall=self.firewall, state_dir=path)

    def _wrap(self, factory: DriverFactory) -> DriverFactory:
        def make(context: DriverContext) -> Driver:
            inner = factory(context)
            base: type[_Spy] = _PublishingSpy if isinstance(inner, PortPublisher) else _Spy
            cls = type(
                f"Checked{type(inner).__name__}", (base,), {"name": inner.name, "capabilities": inner.capabilities}
            )
            spy: _Spy = cls(inner)
            self._spies.append(spy)
            return spy

        return make

    def _unmount_sandboxes(self) -> None:
        unmount_sandboxes(self.state_dir)

    def _end_processes(self) -> None:
        for proc in self._processes:
            stop_process(proc)

    # --- helpers the rules use ---------------------------------------------------------------
    @property
    def spy(self) -> _Spy:
        if not self._spies:
            raise LookupError("the driver was never constructed")
        return self._spies[-1]

    @property
    def capabilities(self) -> Capabilities:
        return self.spy.capabilities

    def fail(self, problem: str, rule: str | None = None) -> ConformanceError:
        return ConformanceError(self.driver, RULES[rule] if rule else self.rule, problem)

    def name(self, kind: str) -> str:
        self._counter += 1
        return f"ct-{kind}{self._counter}"

    def network(self, **kwargs: Any) -> Network:
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
        try:
            return net.create_endpoint(self.name("ep"), **kwargs)
        except Exception as exc:
            raise self.fail(f"create_endpoint failed: {type(exc).__name__}: {exc}", "endpoint-lifecycle") from exc

    def sandbox(self) -> Sandbox:
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
        try:
            ep.join(sb)
        except Exception as exc:
            raise self.fail(f"join to a fresh sandbox failed: {type(exc).__name__}: {exc}", "join-leave") from exc
        return cast(JoinResult, self.spy.last("join").result)

    def track(self, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
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
        problems = _settled_changes(self.host, self.baseline)
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


# --- the rules ------------------------------------------------------------------------------------


def _rule_validate_options(w: _World) -> str:
    before = _Snapshot.take(w.host)
    bogus = "conformance-unknown-option"
    try:
        w.ctl.create_network("ct-bad", driver=w.driver, options={**w.options, bogus: "x"})
    except InvalidConfig as exc:
        if bogus not in str(exc):
            raise w.fail(f"the InvalidConfig does not name the bad option {bogus!r}: {exc}") from exc
    except Exception as exc:
        raise w.fail(
            f"an unknown option was refused with {type(exc).__name__} instead of InvalidConfig: {exc}"
        ) from exc
    else:
        raise w.fail(f"create_network accepted the unknown option {bogus!r}")
    if w._spies and w.spy.count("create_network"):
        raise w.fail("create_network was called although validate_network should have refused the options")
    changes = _Snapshot.take(w.host).changes_since(before)
    if changes:
        raise w.fail(f"refusing the options still changed the host: {'; '.join(changes)}")
    return "unknown option refused with InvalidConfig, nothing created"


def _rule_network_lifecycle(w: _World) -> str:
    for attempt in ("first", "second"):
        net = w.network()
        w.teardown(net)
        w.assert_clean(f"after the {attempt} create_network + delete_network")
    w.assert_no_rules("after two networks were created and deleted")
    return "created and deleted a network twice; host and firewall unchanged"


def _rule_endpoint_lifecycle(w: _World) -> str:
    net = w.network()
    with_net = _Snapshot.take(w.host)
    ep = w.endpoint(net)
    w.teardown(ep)
    changes = _Snapshot.take(w.host).changes_since(with_net)
    if changes:
        raise w.fail(f"after create_endpoint + delete_endpoint: {'; '.join(changes)}")
    w.teardown(net)
    w.assert_clean("after the network was deleted")
    return "created and deleted an endpoint; host unchanged"


def _check_interface(w: _World, ep: Endpoint, sb: Sandbox) -> str | None:
    """Check the last join made the interface it was asked for; return its name (None if it made none)."""
    call = w.spy.last("join")
    asked: str = call.args[3]
    result = cast(JoinResult, call.result)
    if not (asked.startswith("eth") and asked[3:].isdigit()):
        raise w.fail(f"the controller asked the driver for interface {asked!r}, not ethN", "interface-naming")
    if result.interface is None:
        if ep.ifname is not None:
            raise w.fail(f"join made no interface but the store records {ep.ifname!r}", "interface-naming")
        return None
    if result.interface != asked:
        raise w.fail(
            f"join was asked for {asked!r} but reported JoinResult(interface={result.interface!r})",
            "interface-naming",
        )
    if asked not in _link_names(sb.netns):
        raise w.fail(f"join reported interface {asked!r} but the sandbox has no such link", "interface-naming")
    if ep.ip_interface is not None:
        with sb.netns.netlink() as nl:
            found = addresses.list_addresses(nl, asked)
        if ep.ip_interface not in found:
            raise w.fail(
                f"the sandbox's {asked} does not carry the endpoint's address {ep.ip_interface} (it has {found})",
                "interface-naming",
            )
    return asked


def _check_order(w: _World) -> None:
    """Every verb came in the documented order, per network and per endpoint."""
    networks: set[str] = set()
    state: dict[str, str] = {}  # endpoint id -> created | joined | deleted
    for call in w.spy.calls:
        verb = call.verb
        if verb in ("validate_network", "publish_ports", "unpublish_ports"):
            continue
        net_id = call.args[0].id
        if verb == "create_network":
            networks.add(net_id)
            continue
        if net_id not in networks:
            raise w.fail(f"the driver saw {verb} for network {net_id[:12]} outside its create/delete_network")
        if verb == "delete_network":
            alive = [e for e, st in state.items() if st != "deleted" and e.startswith(net_id + "/")]
            if alive:
                raise w.fail(f"delete_network came while endpoints {alive} were not deleted")
            networks.discard(net_id)
            continue
        key = f"{net_id}/{call.args[1].id}"
        allowed = {
            "create_endpoint": (None,),
            "join": ("created",),
            "leave": ("joined",),
            "delete_endpoint": ("created",),
        }
        if state.get(key) not in allowed[verb]:
            raise w.fail(
                f"the driver saw {verb} for endpoint {key[-64:][:12]} while it was {state.get(key) or 'unknown'}"
            )
        state[key] = {"create_endpoint": "created", "join": "joined", "leave": "created", "delete_endpoint": "deleted"}[
            verb
        ]


def _rule_join_leave(w: _World) -> str:
    net = w.network()
    ep, sb = w.pair(net)
    host_before, sb_before = _Snapshot.take(w.host), _Snapshot.take(sb.netns)
    w.join(ep, sb)
    made = _check_interface(w, ep, sb)
    if made is None and not w.host_stack:
        changes = _Snapshot.take(sb.netns).changes_since(sb_before)
        if changes:
            raise w.fail(f"join reported no interface but changed the sandbox: {'; '.join(changes)}")
    ep.leave()
    sb_changes = [] if w.host_stack else _Snapshot.take(sb.netns).changes_since(sb_before)
    host_changes = _Snapshot.take(w.host).changes_since(host_before)
    if sb_changes or host_changes:
        where = [f"in the sandbox: {'; '.join(sb_changes)}"] if sb_changes else []
        where += [f"in the host namespace: {'; '.join(host_changes)}"] if host_changes else []
        raise w.fail(f"after leave, what join made is still there: {' / '.join(where)}")
    # A second join after a leave must work: no stale state from the first.
    w.join(ep, sb)
    _check_interface(w, ep, sb)
    w.teardown(sb, ep, net)
    _check_order(w)
    w.assert_clean("after the sandbox, endpoint and network were deleted")
    return f"join made {made or 'no interface'}; leave removed everything; joined again; verbs in order"


def _again(w: _World, what: str, call: Callable[[], object]) -> None:
    try:
        call()
    except Exception as exc:
        raise w.fail(f"{what} raised {type(exc).__name__}: {exc}") from exc


def _rule_repeat_delete(w: _World) -> str:
    net = w.network()
    ep, sb = w.pair(net)
    w.join(ep, sb)
    ep.leave()
    inner = w.spy.inner
    left = w.spy.last("leave").args
    _again(w, "leave repeated after a successful leave", lambda: inner.leave(*left))
    w.join(ep, sb)
    w.teardown(sb)  # leaves the endpoint, then removes the namespace
    gone = w.spy.last("leave").args
    _again(w, "leave when the sandbox is already deleted", lambda: inner.leave(*gone))
    w.teardown(ep)
    net_info, ep_info = w.spy.last("delete_endpoint").args
    _again(w, "delete_endpoint repeated after a successful delete", lambda: inner.delete_endpoint(net_info, ep_info))
    never = attrs.evolve(ep_info, id=secrets.token_hex(32), name="ct-never-created")
    _again(w, "delete_endpoint of an endpoint that was never created", lambda: inner.delete_endpoint(net_info, never))
    w.teardown(net)
    _again(w, "delete_network repeated after a successful delete", lambda: inner.delete_network(net_info))
    never_net = attrs.evolve(net_info, id=secrets.token_hex(32), name="ct-never-created")
    _again(w, "delete_network of a network that was never created", lambda: inner.delete_network(never_net))
    w.assert_clean("after the repeated deletes")
    return "leave, delete_endpoint and delete_network succeeded when repeated or when their object was gone"


def _rule_joined_elsewhere(w: _World) -> str:
    net = w.network()
    ep, sb1 = w.pair(net)
    other, sb2 = w.pair(net)
    w.join(ep, sb1)
    joins = w.spy.count("join")
    sb2_before = _Snapshot.take(sb2.netns)
    try:
        ep.join(sb2)
    except EndpointJoined:
        pass
    except Exception as exc:
        raise w.fail(f"joining elsewhere raised {type(exc).__name__} instead of EndpointJoined: {exc}") from exc
    else:
        raise w.fail(f"an endpoint joined to {sb1.name!r} was joined to {sb2.name!r} as well")
    if w.spy.count("join") != joins:
        raise w.fail("the driver's join was called for an endpoint that is joined elsewhere")
    changes = _Snapshot.take(sb2.netns).changes_since(sb2_before)
    if changes:
        raise w.fail(f"the refused join changed the other sandbox: {'; '.join(changes)}")
    if ep.sandbox != sb1:
        raise w.fail(f"after the refused join the endpoint is joined to {ep.sandbox}, not {sb1.name!r}")
    _check_interface(w, ep, sb1)
    try:
        ep.join(sb1)
    except Exception as exc:
        raise w.fail(f"joining the same sandbox again raised {type(exc).__name__}: {exc}") from exc
    w.teardown(sb1, sb2, ep, other, net)
    w.assert_clean("after everything was deleted")
    return "EndpointJoined raised, the driver not called, both sandboxes intact"


def _firewall_methods(calls: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(m for m in calls if m not in ("cleanup", "reapply")))


def _rule_rollback_create_network(w: _World) -> str:
    start = len(w.firewall.methods)
    w.teardown(w.network())
    used = [m for m in _firewall_methods(w.firewall.methods[start:]) if m != "teardown_network"]
    w.assert_clean("after a normal create_network + delete_network")
    if not used:
        return "not applicable: create_network makes no firewall call the kit could fail"
    for method in used:
        w.firewall.fail_on = {method}
        try:
            name = w.name("net")
            try:
                w.ctl.create_network(name, driver=w.driver, options=w.options)
            except InjectedFailure:
                pass
            except Exception as exc:
                raise w.fail(
                    f"with firewall.{method} failing, create_network raised {type(exc).__name__} ({exc}) "
                    "instead of letting the firewall's error through"
                ) from exc
            else:
                raise w.fail(f"create_network succeeded although firewall.{method} failed; the rules are missing")
        finally:
            w.firewall.fail_on = set()
        with contextlib.suppress(NotFound):
            w.ctl.network(name)
            raise w.fail(f"with firewall.{method} failing, the store still lists network {name!r}")
        w.assert_clean(f"after create_network failed at firewall.{method}")
    return f"create_network undone when firewall.{'/'.join(used)} failed"


@attrs.frozen
class _Before:
    host: _Snapshot
    sandbox: _Snapshot
    rules: list[str]


def _before_join(w: _World, sb: Sandbox) -> _Before:
    return _Before(_Snapshot.take(w.host), _Snapshot.take(sb.netns), w.firewall.in_force())


def _check_undone(w: _World, ep: Endpoint, sb: Sandbox, how: str, before: _Before) -> None:
    problems = [f"in the host namespace: {c}" for c in _Snapshot.take(w.host).changes_since(before.host)]
    if not w.host_stack:
        problems += [f"in the sandbox: {c}" for c in _Snapshot.take(sb.netns).changes_since(before.sandbox)]
    problems += [f"firewall: {r}" for r in w.firewall.in_force() if r not in before.rules]
    if problems:
        raise w.fail(f"{how}, the failed join left {'; '.join(problems)}")
    if ep.sandbox is not None:
        raise w.fail(f"{how}, the store still says the endpoint is joined to {ep.sandbox.name!r}")


def _join_must_fail(w: _World, ep: Endpoint, sb: Sandbox, how: str) -> None:
    before = _before_join(w, sb)
    try:
        ep.join(sb)
    except Exception as exc:  # noqa: BLE001 - the injected failure surfaces as whatever the failed step raises
        log.debug("%s: join failed as it should: %r", how, exc)
    else:
        raise w.fail(f"{how}, join succeeded; the failure was swallowed")
    _check_undone(w, ep, sb, how, before)


def _rule_rollback_join(w: _World) -> str:
    net = w.network()
    publishes = isinstance(w.spy, PortPublisher)
    ep, sb = w.pair(net, ports=[PortBinding(container_port=80)] if publishes else [])
    notes = []
    # 1. The driver fails itself: the interface name it must create is taken in the sandbox.
    with sb.netns.netlink() as nl:
        links.ensure_bridge(nl, "eth0", up=False)  # a placeholder; any link kind would do
    how = "with eth0 already taken in the sandbox"
    before = _before_join(w, sb)
    made_interface = True
    try:
        ep.join(sb)
    except Exception:  # noqa: BLE001 - any error will do; what matters is what it left
        _check_undone(w, ep, sb, how, before)
        notes.append("failure inside join (name taken) undone")
    else:
        result = cast(JoinResult, w.spy.last("join").result)
        if result.interface is not None:
            raise w.fail(f"{how}, join succeeded and reported interface {result.interface!r}", "interface-naming")
        ep.leave()  # a driver that makes no interface has nothing to collide with
        made_interface = False
        notes.append("join makes no interface, so nothing to collide with")
    with sb.netns.netlink() as nl:
        links.delete_link(nl, "eth0")
    # 2. The driver's join succeeds, then the controller's next step fails: leave must undo the join.
    if made_interface:
        w.spy.sabotage_join = True
        _join_must_fail(w, ep, sb, "when the controller's step after the driver's join failed")
        notes.append("failure after join undone by leave")
    # 3. Every firewall call made while joining fails in turn.
    start = len(w.firewall.methods)
    w.join(ep, sb)
    ep.leave()
    used = [m for m in _firewall_methods(w.firewall.methods[start:]) if not m.startswith(("remove", "teardown"))]
    for method in used:
        w.firewall.fail_on = {method}
        try:
            _join_must_fail(w, ep, sb, f"with firewall.{method} failing")
        finally:
            w.firewall.fail_on = set()
    if used:
        notes.append(f"firewall.{'/'.join(used)} failures undone")
    w.join(ep, sb)
    w.teardown(sb, ep, net)
    w.assert_clean("after everything was deleted")
    return "; ".join(notes)


def _default_route(sb: Sandbox) -> str | None:
    with sb.netns.netlink() as nl:
        found = [r for r in routes.list_routes(nl) if r.destination.prefixlen == 0]
    if not found:
        return None
    return f"via {found[0].gateway} dev {found[0].ifname}"


def _join_two(w: _World) -> tuple[list[Network], list[Endpoint], Sandbox, list[JoinResult]]:
    """One sandbox joined to two networks of the driver, or to one when the controller allows no more."""
    nets = [w.network(), w.network()]
    first, sb = w.pair(nets[0])
    eps = [first]
    results = [w.join(first, sb)]
    second = w.endpoint(nets[1])
    eps.append(second)
    joins = w.spy.count("join")
    try:
        second.join(sb)
    except InvalidConfig:
        if w.spy.count("join") != joins:
            raise
        # The controller refuses a second network for this kind of sandbox (none, host): nothing to check.
    else:
        results.append(cast(JoinResult, w.spy.last("join").result))
    return nets, eps, sb, results


def _join_call(w: _World, ep: Endpoint) -> _Call:
    for call in reversed(w.spy.calls):
        if call.verb == "join" and call.args[1].id == ep.id:
            return call
    raise LookupError(f"the driver's join was never called for endpoint {ep.name}")


def _rule_interface_naming(w: _World) -> str:
    nets, eps, sb, results = _join_two(w)
    made = []
    for index, ep in enumerate(eps[: len(results)]):
        call = _join_call(w, ep)
        asked: str = call.args[3]
        result = cast(JoinResult, call.result)
        if asked != f"eth{index}" and not w.host_stack:
            raise w.fail(f"join number {index + 1} in a fresh sandbox asked for {asked!r}, expected eth{index}")
        if result.interface is None:
            continue
        if result.interface != asked:
            raise w.fail(f"join was asked for {asked!r} but reported JoinResult(interface={result.interface!r})")
        if ep.ifname != asked:
            raise w.fail(f"join made {asked!r} but the store records {ep.ifname!r}")
        if asked not in _link_names(sb.netns):
            raise w.fail(f"join reported interface {asked!r} but the sandbox has no such link")
        made.append(asked)
    w.teardown(sb, *eps, *nets)
    w.assert_clean("after everything was deleted")
    joined = f"{len(results)} network(s) joined"
    return f"{joined}; interfaces {made} as asked" if made else f"{joined}; the driver makes no interfaces"


def _rule_default_route(w: _World) -> str:
    nets, eps, sb, results = _join_two(w)

    def expected(index: int) -> str | None:
        if index >= len(results) or results[index].gateway is None:
            return None
        if results[index].interface is None:
            raise w.fail(f"join reported gateway {results[index].gateway} but no interface to reach it through")
        return f"via {results[index].gateway} dev eth{index}"

    first = expected(0) or expected(1)
    seen = _default_route(sb) if not w.host_stack else first
    if seen != first:
        raise w.fail(
            f"with {len(results)} network(s) joined, the default route is {seen or 'missing'}, expected {first}"
        )
    eps[0].leave()
    after = expected(1)
    seen = _default_route(sb) if not w.host_stack else after
    if seen != after:
        raise w.fail(f"after the first network left, the default route is {seen or 'missing'}, expected {after}")
    w.teardown(sb, *eps, *nets)
    w.assert_clean("after everything was deleted")
    if first is None:
        return "no network reports a gateway; no default route"
    return f"default route {first}, then {after or 'none'} after leaving the first network"


def _rule_connectivity(w: _World) -> str:
    net = w.network()
    if not w.capabilities.needs_address:
        w.teardown(net)
        return "not applicable: the driver gives endpoints no addresses"
    pairs = [w.pair(net), w.pair(net)]
    for ep, sb in pairs:
        if w.join(ep, sb).interface is None:
            raise w.fail("the driver gives endpoints addresses but made no interface to carry them")
    ips = [str(ep.ip) for ep, _ in pairs]
    sbs = [sb for _, sb in pairs]
    for src, dst in ((0, 1), (1, 0)):
        if not ping(sbs[src], ips[dst], count=1, wait=2.0):
            raise w.fail(f"ping from {ips[src]} to {ips[dst]} on one network got no answer")
    w.track(serve(sbs[1], "tcp", 7070))
    peer = probe(sbs[0], "tcp", ips[1], 7070)
    if peer is None:
        raise w.fail(f"TCP from {ips[0]} to {ips[1]}:7070 got no answer")
    if peer != ips[0]:
        raise w.fail(f"TCP from {ips[0]} arrived from {peer}: traffic within one network must not be NATed")
    w._end_processes()
    w.teardown(*sbs, *(ep for ep, _ in pairs), net)
    w.assert_clean("after everything was deleted")
    return f"ping both ways and TCP between {ips[0]} and {ips[1]}"


def _rule_no_leaks(w: _World) -> str:
    nets = [w.network(), w.network()]
    publishes = isinstance(w.spy, PortPublisher)
    ports = [PortBinding(container_port=80), PortBinding(container_port=53, protocol="udp")] if publishes else []
    pairs = [w.pair(nets[0], ports=ports), w.pair(nets[1]), w.pair(nets[0])]
    for ep, sb in pairs:
        w.join(ep, sb)
    # Hold the sandboxes' namespaces open, as a process still inside would: the kernel then cannot
    # hide a veth the driver forgot by destroying the namespace (and it would do so only later).
    with contextlib.ExitStack() as held:
        for _, sb in pairs:
            fd = os.open(sb.netns_path, os.O_RDONLY | os.O_CLOEXEC)
            held.callback(os.close, fd)
        # Delete sandboxes while joined (they leave first), then endpoints, then networks.
        w.teardown(*(sb for _, sb in pairs), *(ep for ep, _ in pairs), *nets)
        _check_order(w)
        w.assert_cut_off("after two networks, three endpoints and three sandboxes were deleted")
    w.assert_clean("after two networks, three endpoints and three sandboxes were deleted and their namespaces let go")
    w.assert_no_rules("after everything was deleted")
    return "host links, addresses, routes and firewall rules as before" + (" (with published ports)" * publishes)


_CHECKS: Mapping[str, Callable[[_World], str]] = {
    "validate-options": _rule_validate_options,
    "network-lifecycle": _rule_network_lifecycle,
    "endpoint-lifecycle": _rule_endpoint_lifecycle,
    "join-leave": _rule_join_leave,
    "repeat-delete": _rule_repeat_delete,
    "joined-elsewhere": _rule_joined_elsewhere,
    "rollback-create-network": _rule_rollback_create_network,
    "rollback-join": _rule_rollback_join,
    "interface-naming": _rule_interface_naming,
    "default-route": _rule_default_route,
    "connectivity": _rule_connectivity,
    "no-leaks": _rule_no_leaks,
}


# --- entry points ---------------------------------------------------------------------------------


def _own_namespaces() -> contextlib.AbstractContextManager[Callable[[str], NetNS]]:
    return throwaway_namespaces(namespace_prefix() + "k")


def check_driver(
    factory: DriverFactory,
    *,
    name: str | None = None,
    options: Mapping[str, object] | None = None,
    setup_host: SetupHost | None = None,
    leftovers: Leftovers | None = None,
    rules: Collection[str] | None = None,
    netns_factory: Callable[[str], NetNS] | None = None,
) -> Report:
    """Check a driver against the contract, one fresh world per rule; raise if any rule breaks.

    Args:
        factory: builds the driver from a :class:`~cnm.driverapi.DriverContext`;
            the driver class itself will do.
        name: the name to register it under; its ``name`` attribute by default.
        options: the options every test network is created with.
        setup_host: called with each fresh host namespace before anything else,
            to create what the driver expects to find there (a parent
            interface, private daemons...). It may return options to add, e.g.
            the parent's name.
        leftovers: lists the driver's own state that the kit cannot see (OVSDB
            rows, files) still present for a host namespace; checked wherever
            the kit checks for leaked kernel objects.
        rules: the ids of the rules to check (see :data:`RULE_IDS`); all by default.
        netns_factory: makes the namespaces (the ``netns_factory`` fixture);
            by default the kit makes and removes its own.

    Returns:
        The report, when every rule passed.

    Raises:
        ConformanceFailure: one or more rules broke; it lists each, with the fix.
        InvalidConfig: an unknown rule id, or no name for the driver.
    """
    driver = name or getattr(factory, "name", None)
    if not isinstance(driver, str) or not driver:
        raise InvalidConfig("the driver has no name attribute; pass check_driver(..., name='mydriver')")
    selected = list(RULE_IDS if rules is None else rules)
    unknown = [r for r in selected if r not in RULES]
    if unknown:
        raise InvalidConfig(f"unknown conformance rule(s) {unknown}; known rules: {', '.join(RULE_IDS)}")
    results: list[RuleResult] = []
    failures: list[ConformanceError] = []
    with contextlib.ExitStack() as stack:
        make = netns_factory or stack.enter_context(_own_namespaces())
        for rule_id in selected:
            rule = RULES[rule_id]
            try:
                world = _World(
                    driver=driver,
                    factory=factory,
                    options=dict(options or {}),
                    setup_host=setup_host,
                    leftovers=leftovers,
                    make_netns=make,
                    rule=rule,
                )
            except Exception as exc:
                raise InvalidConfig(
                    f"the conformance kit could not set up its host namespace for {driver!r}: "
                    f"{type(exc).__name__}: {exc}; check setup_host"
                ) from exc
            try:
                note = _CHECKS[rule_id](world)
            except ConformanceError as exc:
                failures.append(exc)
                results.append(RuleResult(rule_id, passed=False, note=exc.problem))
            except Exception as exc:  # noqa: BLE001 - any error of the driver breaks the rule under test
                error = ConformanceError(driver, rule, f"unexpected {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                failures.append(error)
                results.append(RuleResult(rule_id, passed=False, note=error.problem))
            else:
                results.append(RuleResult(rule_id, passed=True, note=note))
            finally:
                world.close()
    report = Report(driver, tuple(results))
    log.info("%s", report)
    if failures:
        raise ConformanceFailure(report, failures)
    return report


@pytest.fixture
def driver_conformance(netns_factory: Callable[[str], NetNS]) -> Callable[..., Report]:
    """:func:`check_driver` with the test's ``netns_factory``; call it with the driver factory."""

    def run(factory: DriverFactory, **kwargs: Any) -> Report:
        return check_driver(factory, netns_factory=netns_factory, **kwargs)

    return run


_: type[Firewall] = _CheckedFirewall
_spy: type[Driver] = _Spy
_publisher: type[PortPublisher] = _PublishingSpy
