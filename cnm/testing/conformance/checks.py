"""The rule checks: one function per rule of :data:`~cnm.testing.conformance.rules.RULES`, run in a fresh world."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import attrs

from cnm.driverapi import JoinResult, PortPublisher
from cnm.errors import EndpointJoined, InvalidConfig, NotFound
from cnm.handles import Endpoint, Network, Sandbox
from cnm.kernel import addresses, links, routes
from cnm.testing.conformance.rules import InjectedFailure
from cnm.testing.conformance.spies import Call
from cnm.testing.conformance.world import Snapshot, World, link_names
from cnm.testing.traffic import ping, probe, serve
from cnm.types import PortBinding

__all__ = ["CHECKS"]

log = logging.getLogger(__name__)


def _rule_validate_options(w: World) -> str:
    before = Snapshot.take(w.host)
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
    changes = Snapshot.take(w.host).changes_since(before)
    if changes:
        raise w.fail(f"refusing the options still changed the host: {'; '.join(changes)}")
    return "unknown option refused with InvalidConfig, nothing created"


def _rule_network_lifecycle(w: World) -> str:
    for attempt in ("first", "second"):
        net = w.network()
        w.teardown(net)
        w.assert_clean(f"after the {attempt} create_network + delete_network")
    w.assert_no_rules("after two networks were created and deleted")
    return "created and deleted a network twice; host and firewall unchanged"


def _rule_endpoint_lifecycle(w: World) -> str:
    net = w.network()
    with_net = Snapshot.take(w.host)
    ep = w.endpoint(net)
    w.teardown(ep)
    changes = Snapshot.take(w.host).changes_since(with_net)
    if changes:
        raise w.fail(f"after create_endpoint + delete_endpoint: {'; '.join(changes)}")
    w.teardown(net)
    w.assert_clean("after the network was deleted")
    return "created and deleted an endpoint; host unchanged"


def _check_interface(w: World, ep: Endpoint, sb: Sandbox) -> str | None:
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
    if asked not in link_names(sb.netns):
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


def _check_order(w: World) -> None:
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


def _rule_join_leave(w: World) -> str:
    net = w.network()
    ep, sb = w.pair(net)
    host_before, sb_before = Snapshot.take(w.host), Snapshot.take(sb.netns)
    w.join(ep, sb)
    made = _check_interface(w, ep, sb)
    if made is None and not w.host_stack:
        changes = Snapshot.take(sb.netns).changes_since(sb_before)
        if changes:
            raise w.fail(f"join reported no interface but changed the sandbox: {'; '.join(changes)}")
    ep.leave()
    sb_changes = [] if w.host_stack else Snapshot.take(sb.netns).changes_since(sb_before)
    host_changes = Snapshot.take(w.host).changes_since(host_before)
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


def _again(w: World, what: str, call: Callable[[], object]) -> None:
    try:
        call()
    except Exception as exc:
        raise w.fail(f"{what} raised {type(exc).__name__}: {exc}") from exc


def _rule_repeat_delete(w: World) -> str:
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


def _rule_joined_elsewhere(w: World) -> str:
    net = w.network()
    ep, sb1 = w.pair(net)
    other, sb2 = w.pair(net)
    w.join(ep, sb1)
    joins = w.spy.count("join")
    sb2_before = Snapshot.take(sb2.netns)
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
    changes = Snapshot.take(sb2.netns).changes_since(sb2_before)
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


def _rule_rollback_create_network(w: World) -> str:
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
    host: Snapshot
    sandbox: Snapshot
    rules: list[str]


def _before_join(w: World, sb: Sandbox) -> _Before:
    return _Before(Snapshot.take(w.host), Snapshot.take(sb.netns), w.firewall.in_force())


def _check_undone(w: World, ep: Endpoint, sb: Sandbox, how: str, before: _Before) -> None:
    problems = [f"in the host namespace: {c}" for c in Snapshot.take(w.host).changes_since(before.host)]
    if not w.host_stack:
        problems += [f"in the sandbox: {c}" for c in Snapshot.take(sb.netns).changes_since(before.sandbox)]
    problems += [f"firewall: {r}" for r in w.firewall.in_force() if r not in before.rules]
    if problems:
        raise w.fail(f"{how}, the failed join left {'; '.join(problems)}")
    if ep.sandbox is not None:
        raise w.fail(f"{how}, the store still says the endpoint is joined to {ep.sandbox.name!r}")


def _join_must_fail(w: World, ep: Endpoint, sb: Sandbox, how: str) -> None:
    before = _before_join(w, sb)
    try:
        ep.join(sb)
    except Exception as exc:  # noqa: BLE001 - the injected failure surfaces as whatever the failed step raises
        log.debug("%s: join failed as it should: %r", how, exc)
    else:
        raise w.fail(f"{how}, join succeeded; the failure was swallowed")
    _check_undone(w, ep, sb, how, before)


def _rule_rollback_join(w: World) -> str:
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


def _join_two(w: World) -> tuple[list[Network], list[Endpoint], Sandbox, list[JoinResult]]:
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


def _join_call(w: World, ep: Endpoint) -> Call:
    for call in reversed(w.spy.calls):
        if call.verb == "join" and call.args[1].id == ep.id:
            return call
    raise LookupError(f"the driver's join was never called for endpoint {ep.name}")


def _rule_interface_naming(w: World) -> str:
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
        if asked not in link_names(sb.netns):
            raise w.fail(f"join reported interface {asked!r} but the sandbox has no such link")
        made.append(asked)
    w.teardown(sb, *eps, *nets)
    w.assert_clean("after everything was deleted")
    joined = f"{len(results)} network(s) joined"
    return f"{joined}; interfaces {made} as asked" if made else f"{joined}; the driver makes no interfaces"


def _rule_default_route(w: World) -> str:
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


def _rule_connectivity(w: World) -> str:
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
        if not ping(sbs[src], ips[dst], wait=2.0):
            raise w.fail(f"ping from {ips[src]} to {ips[dst]} on one network got no answer")
    w.track(serve(sbs[1], "tcp", 7070))
    peer = probe(sbs[0], "tcp", ips[1], 7070)
    if peer is None:
        raise w.fail(f"TCP from {ips[0]} to {ips[1]}:7070 got no answer")
    if peer != ips[0]:
        raise w.fail(f"TCP from {ips[0]} arrived from {peer}: traffic within one network must not be NATed")
    w.end_processes()
    w.teardown(*sbs, *(ep for ep, _ in pairs), net)
    w.assert_clean("after everything was deleted")
    return f"ping both ways and TCP between {ips[0]} and {ips[1]}"


def _rule_no_leaks(w: World) -> str:
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


CHECKS: Mapping[str, Callable[[World], str]] = {
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
"""The check of each rule, by rule id; each returns a note on what it checked or raises ConformanceError."""
