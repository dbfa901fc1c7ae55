"""The demo: cnm's scenarios with real packets, in throwaway namespaces (``python -m cnm.demo``).

It makes its own "host" namespace and an "outside" namespace linked to it
(both under /run/netns, named ``cnmdemo-<random>-h`` and ``-o``), gives a
Controller a temporary state_dir and that host namespace, and runs each
scenario of :data:`SCENARIOS` against them. Every step prints what it shows
and its evidence: the ping line, the address a server saw, the rule from
``iptables-legacy-save`` in the host namespace. It ends with a table of
results, exits 1 if any scenario failed, and removes everything it made
(namespaces, sandbox mounts, processes, the state_dir) on success, on
failure, and on Ctrl-C or SIGTERM. The machine's own network is never touched.

A scenario is a function registered with :func:`scenario`; it gets a
:class:`Demo`, uses only cnm's public API and :mod:`cnm.testing.traffic`, and
returns (or yields) evidence lines. A check that does not hold raises
:class:`ScenarioFailed`. Only features that exist get a scenario: there is no
placeholder that passes without showing anything.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import attrs

from cnm import Controller, IPAMConfig, PortBinding
from cnm.kernel import links, netns
from cnm.kernel.netns import NetNS
from cnm.testing import traffic
from cnm.testing.hosts import HOST_UPLINK_ADDRESS, OUTSIDE_ADDRESS, link_outside, stop_process

__all__ = ["SCENARIOS", "Demo", "Namespace", "Scenario", "ScenarioFailed", "main", "scenario"]

log = logging.getLogger(__name__)

PREFIX = "cnmdemo-"
"""Name prefix of every namespace and directory the demo makes."""

_INDENT = "      "


class ScenarioFailed(Exception):
    """A scenario's check did not hold; the message says what was expected and what happened."""


class _Signalled(BaseException):
    """SIGINT or SIGTERM arrived; unwinds to the cleanup like KeyboardInterrupt does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Interrupts:
    """Turns SIGINT/SIGTERM into :class:`_Signalled` at the demo's safe points.

    An exception raised in the middle of a cnm call or of traffic.serve could
    leave a child process the demo never got the PID of (a server not yet
    returned, a firewall worker not yet reaped). So the first signal is only
    noted, and :meth:`check` raises it between steps; a second one raises at
    once, for a step that hangs.
    """

    def __init__(self) -> None:
        self.pending: int | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler."""
        if self.pending is not None:
            raise _Signalled(signum)
        self.pending = signum

    def check(self) -> None:
        """Raise the noted signal, if any."""
        if self.pending is not None:
            raise _Signalled(self.pending)


def expect(condition: bool, message: str) -> None:
    """Raise :class:`ScenarioFailed` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ScenarioFailed(message)


@attrs.frozen
class Namespace:
    """Runs commands in a namespace the demo made (the host or the outside); a :class:`traffic.Runner`."""

    netns: NetNS

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` to completion in the namespace; takes :func:`subprocess.run`'s keywords."""
        return subprocess.run(["nsenter", f"--net={self.netns.path}", "--", *argv], **kwargs)  # noqa: PLW1510

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in the namespace; takes :class:`subprocess.Popen`'s keywords."""
        return subprocess.Popen(["nsenter", f"--net={self.netns.path}", "--", *argv], **kwargs)


class Demo:
    """What a scenario works with: the controller, the host and outside namespaces, and helpers.

    Attributes:
        ctl: a Controller whose host is the demo's host namespace.
        host: runs commands in the host namespace.
        outside: runs commands in the outside namespace (192.0.2.2, linked to the host's 192.0.2.1).
        outside_address: the outside namespace's address.
        host_address: the host namespace's address on the link to the outside.
    """

    def __init__(
        self,
        ctl: Controller,
        host: Namespace,
        outside: Namespace,
        interrupts: _Interrupts | None = None,
        make_namespace: Callable[[str], NetNS] | None = None,
    ) -> None:
        self.ctl = ctl
        self._make_namespace = make_namespace
        self._interrupts = interrupts or _Interrupts()
        self.host = host
        self.outside = outside
        self.outside_address = OUTSIDE_ADDRESS.ip
        self.host_address = HOST_UPLINK_ADDRESS.ip
        self._processes: list[subprocess.Popen[Any]] = []
        self._undo: list[Callable[[], object]] = []

    def defer(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` when the current scenario ends (last deferred first), pass or fail."""
        self._undo.append(fn)
        self.checkpoint()

    def checkpoint(self) -> None:
        """Stop here if Ctrl-C or SIGTERM arrived: a safe point, where every process started is known."""
        self._interrupts.check()

    def finish_scenario(self) -> list[Exception]:
        """Run the deferred calls of the scenario that just ended; the errors they raised."""
        errors: list[Exception] = []
        while self._undo:
            fn = self._undo.pop()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - every undo runs; the caller reports them all
                errors.append(exc)
        return errors

    def namespace(self, label: str) -> NetNS:
        """A new namespace ``cnmdemo-<token>-<label>`` with loopback up, removed when the demo ends."""
        if self._make_namespace is None:
            raise RuntimeError("this Demo was made without a namespace factory; give make_namespace=")
        return self._make_namespace(label)

    def track(self, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        """Stop ``proc`` by PID when the current scenario ends (and on Ctrl-C)."""
        self._processes.append(proc)
        self.defer(lambda: stop_process(proc))
        return proc

    def serve(self, where: traffic.Runner, protocol: str, port: int) -> subprocess.Popen[str]:
        """Start a traffic server (it answers with the peer's address); stopped by PID when the scenario ends."""
        return self.track(traffic.serve(where, protocol, port))

    def stop_processes(self) -> None:
        """End every process the demo started, by PID."""
        for proc in self._processes:
            stop_process(proc)

    def ping(self, where: traffic.Runner, address: object) -> tuple[bool, str]:
        """Ping ``address`` once from ``where``: whether it answered, and ping's telling line."""
        result = where.run(
            ["ping", "-n", "-c", "1", "-W", "1", str(address)], capture_output=True, text=True, timeout=30
        )
        lines = result.stdout.splitlines() + result.stderr.splitlines()
        wanted = "bytes from" if result.returncode == 0 else "packet loss"
        line = next((ln for ln in lines if wanted in ln), lines[-1] if lines else "(no output)")
        return result.returncode == 0, line.strip()

    def rules(self) -> list[str]:
        """The host namespace's rules, as ``iptables-legacy-save`` prints them."""
        result = self.host.run(["iptables-legacy-save"], capture_output=True, text=True, timeout=30)
        expect(result.returncode == 0, f"iptables-legacy-save failed: {result.stderr.strip()}")
        output: str = result.stdout
        return output.splitlines()

    def rule(self, network_id: str, *needles: str) -> str:
        """The one rule of a network (its ``cnm:<id>`` comment, or its own chain) that contains every needle."""
        tag = network_id[:12]
        found = [ln for ln in self.rules() if tag in ln and all(n in ln for n in needles)]
        expect(len(found) == 1, f"expected one rule of network {tag} with {needles}, found {found}")
        return found[0]


# --- the registry ---------------------------------------------------------------------------------


@attrs.frozen
class Scenario:
    """One demo scenario.

    Attributes:
        key: a short name, used on the command line and in the results table.
        title: one line saying what the scenario shows.
        run: the function; returns or yields evidence lines, raises ScenarioFailed.
    """

    key: str
    title: str
    run: Callable[[Demo], Iterable[str]]


SCENARIOS: dict[str, Scenario] = {}
"""Every registered scenario, in the order it runs."""


def scenario(key: str, title: str) -> Callable[[Callable[[Demo], Iterable[str]]], Callable[[Demo], Iterable[str]]]:
    """Register a scenario function under ``key``; scenarios run in registration order."""

    def register(fn: Callable[[Demo], Iterable[str]]) -> Callable[[Demo], Iterable[str]]:
        if key in SCENARIOS:
            raise ValueError(f"demo scenario {key!r} is registered twice; pick another key")
        SCENARIOS[key] = Scenario(key, title, fn)
        return fn

    return register


# --- the scenarios --------------------------------------------------------------------------------


@scenario("bridge", "the default bridge network: two sandboxes ping each other")
def _bridge(demo: Demo) -> Iterator[str]:
    net = demo.ctl.network("bridge")
    c1 = demo.ctl.create_sandbox("c1", network="bridge")
    demo.defer(c1.delete)
    c2 = demo.ctl.create_sandbox("c2", network="bridge")
    demo.defer(c2.delete)
    ip1, ip2 = net.endpoint("c1").ip, net.endpoint("c2").ip
    yield f"network 'bridge' (driver {net.driver}, subnet {net.subnet}, gateway {net.gateway}): c1={ip1}, c2={ip2}"
    for src, dst, addr in ((c2, "c1", ip1), (c1, "c2", ip2)):
        ok, line = demo.ping(src, addr)
        expect(ok, f"{src.name} could not ping {dst} at {addr}: {line}")
        yield f"{src.name} pings {dst}: {line}"
    route = c1.run(["ip", "-4", "route", "show", "default"], capture_output=True, text=True).stdout.strip()
    expect(route.startswith(f"default via {net.gateway} dev eth0"), f"c1's default route is {route!r}")
    yield f"c1's default route goes through the bridge's gateway: {route}"


@scenario("publish", "a published TCP port, reached from outside through the host's address (DNAT)")
def _publish(demo: Demo) -> Iterator[str]:
    net = demo.ctl.create_network("web", ipam=IPAMConfig(subnet="10.89.1.0/24"))
    demo.defer(net.delete)
    web = demo.ctl.create_sandbox("web", network="web", ports=[PortBinding(container_port=80, host_port=8080)])
    demo.defer(web.delete)
    ep = net.endpoint("web")
    yield f"sandbox web is {ep.ip} on network web, publishing {', '.join(str(p) for p in ep.ports)}"
    demo.serve(web, "tcp", 80)
    peer = traffic.probe(demo.outside, "tcp", str(demo.host_address), 8080)
    expect(peer == str(demo.outside_address), f"outside -> {demo.host_address}:8080 got {peer!r}")
    yield f"outside {demo.outside_address} -> {demo.host_address}:8080 reached web:80, whose server saw peer {peer}"
    yield "the rule: " + demo.rule(net.id, "-j DNAT", "--dport 8080")
    peer = traffic.probe(demo.outside, "tcp", str(demo.host_address), 80, timeout=1)
    expect(peer is None, f"unpublished host port 80 answered with {peer!r}")
    yield f"outside -> {demo.host_address}:80 (not published): no answer"


@scenario("masquerade", "MASQUERADE: a sandbox reaches an outside server, which sees the host's address")
def _masquerade(demo: Demo) -> Iterator[str]:
    net = demo.ctl.create_network("out", ipam=IPAMConfig(subnet="10.89.2.0/24"))
    demo.defer(net.delete)
    sb = demo.ctl.create_sandbox("client", network="out")
    demo.defer(sb.delete)
    demo.serve(demo.outside, "tcp", 7000)
    peer = traffic.probe(sb, "tcp", str(demo.outside_address), 7000)
    expect(peer == str(demo.host_address), f"the outside server saw {peer!r}, not the host's {demo.host_address}")
    yield (
        f"client {net.endpoint('client').ip} -> outside {demo.outside_address}:7000; "
        f"the server saw peer {peer} (the host's address)"
    )
    yield "the rule: " + demo.rule(net.id, "-j MASQUERADE", f"-s {net.subnet}")


@scenario("isolation", "two bridge networks are isolated from each other")
def _isolation(demo: Demo) -> Iterator[str]:
    a = demo.ctl.create_network("net-a", ipam=IPAMConfig(subnet="10.89.3.0/24"))
    demo.defer(a.delete)
    b = demo.ctl.create_network("net-b", ipam=IPAMConfig(subnet="10.89.4.0/24"))
    demo.defer(b.delete)
    sa = demo.ctl.create_sandbox("sa", network="net-a")
    demo.defer(sa.delete)
    sb = demo.ctl.create_sandbox("sb", network="net-b")
    demo.defer(sb.delete)
    ip_b = b.endpoint("sb").ip
    demo.serve(sb, "tcp", 9000)
    demo.serve(demo.outside, "tcp", 9001)
    # The positive control: sa is connected, so the silence below is isolation, not breakage.
    peer = traffic.probe(sa, "tcp", str(demo.outside_address), 9001)
    expect(peer is not None, "sa cannot reach the outside server, so isolation shows nothing")
    yield f"sa (net-a) reaches the outside server at {demo.outside_address}:9001"
    ok, line = demo.ping(sa, ip_b)
    expect(not ok, f"sa on net-a pinged sb on net-b: {line}")
    yield f"sa (net-a) pings sb (net-b, {ip_b}): {line}"
    peer = traffic.probe(sa, "tcp", str(ip_b), 9000, timeout=1)
    expect(peer is None, f"sa reached sb's server on net-b: {peer!r}")
    yield "sa -> sb:9000: no answer"
    yield "the rule: " + demo.rule(b.id, "CNM-ISOLATION-STAGE-2", "-j DROP")


@scenario("icc", "icc=false: sandboxes on one network cannot talk, published ports still work")
def _icc(demo: Demo) -> Iterator[str]:
    net = demo.ctl.create_network("quiet", ipam=IPAMConfig(subnet="10.89.5.0/24"), options={"icc": False})
    demo.defer(net.delete)
    q1 = demo.ctl.create_sandbox("q1", network="quiet", ports=[PortBinding(container_port=80, host_port=8088)])
    demo.defer(q1.delete)
    q2 = demo.ctl.create_sandbox("q2", network="quiet")
    demo.defer(q2.delete)
    ip1 = net.endpoint("q1").ip
    demo.serve(q1, "tcp", 80)
    ok, line = demo.ping(q2, ip1)
    expect(not ok, f"q2 pinged q1 on an icc=false network: {line}")
    yield f"q2 pings q1 ({ip1}): {line}"
    peer = traffic.probe(q2, "tcp", str(ip1), 80, timeout=1)
    expect(peer is None, f"q2 reached q1:80 on an icc=false network: {peer!r}")
    yield "q2 -> q1:80: no answer"
    ok, line = demo.ping(q2, net.gateway)
    expect(ok, f"q2 cannot ping its gateway {net.gateway}: {line}")
    yield f"q2 pings the gateway: {line}"
    peer = traffic.probe(demo.outside, "tcp", str(demo.host_address), 8088)
    expect(peer == str(demo.outside_address), f"outside -> {demo.host_address}:8088 got {peer!r}")
    yield f"outside -> {demo.host_address}:8088 reached q1:80, whose server saw peer {peer}"
    yield "the rule: " + demo.rule(net.id, "-A CNM-FORWARD", "-j DROP")


@scenario("internal", "an internal network: its sandboxes talk to each other, never to the outside")
def _internal(demo: Demo) -> Iterator[str]:
    net = demo.ctl.create_network("inside", ipam=IPAMConfig(subnet="10.89.6.0/24"), internal=True)
    demo.defer(net.delete)
    i1 = demo.ctl.create_sandbox("i1", network="inside")
    demo.defer(i1.delete)
    i2 = demo.ctl.create_sandbox("i2", network="inside")
    demo.defer(i2.delete)
    ok, line = demo.ping(i1, net.endpoint("i2").ip)
    expect(ok, f"i1 cannot ping i2 on the internal network: {line}")
    yield f"i1 pings i2: {line}"
    demo.serve(demo.outside, "tcp", 7001)
    peer = traffic.probe(i1, "tcp", str(demo.outside_address), 7001, timeout=1)
    expect(peer is None, f"i1 on an internal network reached the outside: {peer!r}")
    yield f"i1 -> outside {demo.outside_address}:7001: no answer"
    routes = i1.run(["ip", "-4", "route"], capture_output=True, text=True).stdout.strip()
    expect("default" not in routes, f"i1 has a default route: {routes!r}")
    yield f"i1's routes: {routes} (no default route)"
    yield "the rule: " + demo.rule(net.id, "CNM-ISOLATION-STAGE-1", "-j DROP", f"! -d {net.subnet}")


@scenario("objects", "the CNM objects: networks, endpoints, sandboxes, as the store and the kernel see them")
def _objects(demo: Demo) -> Iterator[str]:
    front = demo.ctl.create_network("front", ipam=IPAMConfig(subnet="10.89.7.0/24"))
    demo.defer(front.delete)
    back = demo.ctl.create_network("back", ipam=IPAMConfig(subnet="10.89.8.0/24"), internal=True)
    demo.defer(back.delete)
    app = demo.ctl.create_sandbox("app", hostname="app")
    demo.defer(app.delete)
    # One sandbox, endpoints on two networks: eth0 and eth1 in join order.
    ep_front = front.create_endpoint("app-front", ports=[PortBinding(container_port=80)])
    demo.defer(ep_front.delete)
    ep_back = back.create_endpoint("app-back")
    demo.defer(ep_back.delete)
    ep_front.join(app)
    ep_back.join(app)
    names = [n.name for n in demo.ctl.networks()]
    expect({"bridge", "none", "host", "front", "back"} <= set(names), f"networks() lists {names}")
    yield f"networks: {', '.join(names)}"
    for net in (front, back):
        yield (
            f"network {net.name}: id {net.id[:12]} driver {net.driver} subnet {net.subnet} "
            f"gateway {net.gateway} internal={net.internal} endpoints={[e.name for e in net.endpoints()]}"
        )
    for ep, ifname in ((ep_front, "eth0"), (ep_back, "eth1")):
        expect(ep.ifname == ifname, f"endpoint {ep.name} is {ep.ifname}, expected {ifname}")
        sandbox = ep.sandbox
        expect(sandbox is not None and sandbox.name == "app", f"endpoint {ep.name} is joined to {sandbox}")
        seen = app.run(["ip", "-o", "-4", "addr", "show", ifname], capture_output=True, text=True).stdout
        link = app.run(["ip", "-o", "link", "show", ifname], capture_output=True, text=True).stdout
        expect(str(ep.ip_interface) in seen, f"{ifname} in app has {seen!r}, the store says {ep.ip_interface}")
        expect(ep.mac is not None and ep.mac in link, f"{ifname} in app is {link!r}, the store says mac {ep.mac}")
        ports = ", ".join(str(p) for p in ep.ports) or "none"
        yield (
            f"endpoint {ep.name}: network {ep.network.name} ip {ep.ip_interface} mac {ep.mac} "
            f"as {ifname} in sandbox app (the kernel agrees); published ports: {ports}"
        )
    yield (
        f"sandbox app: id {app.id[:12]} hostname {app.hostname} netns {app.netns_path} "
        f"endpoints {[e.name for e in app.endpoints()]}"
    )
    with open(app.hosts_path, encoding="utf-8") as f:
        hosts = [ln for ln in f.read().splitlines() if ln.endswith("\tapp")]
    expect(bool(hosts), f"{app.hosts_path} has no line for app")
    yield f"its /etc/hosts names it: {' | '.join(hosts)}"


@scenario("modes", "the none, host and container modes: loopback only, the host's stack, a shared namespace")
def _modes(demo: Demo) -> Iterator[str]:
    lonely = demo.ctl.create_sandbox("lonely", network="none")
    demo.defer(lonely.delete)
    interfaces = lonely.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
    names = [ln.split(":")[1].strip() for ln in interfaces]
    expect(names == ["lo"], f"a sandbox on none has interfaces {names}")
    ok, line = demo.ping(lonely, demo.outside_address)
    expect(not ok, f"a sandbox on none reached the outside: {line}")
    yield f"none: lonely has interfaces {names} and no route out: {line}"

    agent = demo.ctl.create_sandbox("agent", network="host")
    demo.defer(agent.delete)
    seen = agent.run(["ip", "-o", "-4", "addr", "show", "uplink0"], capture_output=True, text=True).stdout
    expect(str(HOST_UPLINK_ADDRESS) in seen, f"a host-mode sandbox does not see the host's uplink0: {seen!r}")
    demo.serve(agent, "tcp", 7100)
    peer = traffic.probe(demo.outside, "tcp", str(demo.host_address), 7100)
    expect(peer == str(demo.outside_address), f"outside -> host:7100 (agent's server) got {peer!r}")
    yield f"host: agent sees the host's {HOST_UPLINK_ADDRESS} on uplink0 and serves host port 7100 without NAT"
    yield f"      (outside -> {demo.host_address}:7100: the server saw peer {peer})"

    web = demo.ctl.create_sandbox("web", network="bridge")
    demo.defer(web.delete)
    side = demo.ctl.create_sandbox("web-side", network="container:web")
    demo.defer(side.delete)
    mine = web.run(["ip", "-o", "-4", "addr", "show", "eth0"], capture_output=True, text=True).stdout.split()
    theirs = side.run(["ip", "-o", "-4", "addr", "show", "eth0"], capture_output=True, text=True).stdout.split()
    expect(mine[3:4] == theirs[3:4] and bool(mine), f"web has {mine}, its sharer {theirs}")
    demo.serve(web, "tcp", 7200)
    peer = traffic.probe(side, "tcp", "127.0.0.1", 7200)
    expect(peer == "127.0.0.1", f"web-side -> 127.0.0.1:7200 (web's server) got {peer!r}")
    yield f"container: web-side shares web's namespace: the same eth0 {mine[3]}, and web's server on its loopback"
    yield f"      (web-side -> 127.0.0.1:7200: the server saw peer {peer}); hostname {side.hostname}"


@scenario("unix-socket", "Unix sockets: a socket file crosses namespaces, an abstract socket does not")
def _unix_socket(demo: Demo) -> Iterator[str]:
    a = demo.ctl.create_sandbox("ua", network="none")
    demo.defer(a.delete)
    b = demo.ctl.create_sandbox("ub", network="none")
    demo.defer(b.delete)
    side = demo.ctl.create_sandbox("ua-side", network="container:ua")
    demo.defer(side.delete)
    shared = tempfile.mkdtemp(prefix="uds-", dir=demo.ctl.state_dir)
    demo.defer(lambda: shutil.rmtree(shared, ignore_errors=True))
    path = os.path.join(shared, "app.sock")

    demo.track(traffic.serve_unix(a, path))
    ok, answer = traffic.probe_unix(b, path)
    expect(ok and answer.startswith("ua net:"), f"ub could not use {path}: {answer}")
    yield f"ub -> {path} (a file ua listens on): answered by '{answer}', though ub is on none in its own namespace"
    demo.track(traffic.serve_unix(a, "@cnm-demo"))
    ok, answer = traffic.probe_unix(side, "@cnm-demo")
    expect(ok and answer.startswith("ua "), f"ua-side (container:ua) could not reach @cnm-demo: {answer}")
    yield f"ua-side (container:ua) -> abstract @cnm-demo: answered by '{answer}'"
    ok, answer = traffic.probe_unix(b, "@cnm-demo")
    expect(not ok, f"ub reached ua's abstract socket: {answer}")
    yield f"ub -> abstract @cnm-demo: {answer} (abstract names belong to a network namespace)"


@scenario("links", "a legacy link (todomvc -> db): environment variables, a hosts entry, a hole in icc=false")
def _links(demo: Demo) -> Iterator[str]:
    net = demo.ctl.create_network("todo", ipam=IPAMConfig(subnet="10.89.10.0/24"), options={"icc": False})
    demo.defer(net.delete)
    db = demo.ctl.create_sandbox("db", network="todo", exposed=["6379/tcp"])
    demo.defer(db.delete)
    other = demo.ctl.create_sandbox("other", network="todo")
    demo.defer(other.delete)
    app = demo.ctl.create_sandbox("todomvc", network="todo", links=[("db", "db")])
    demo.defer(app.delete)
    ip = net.endpoint("db").ip
    env = app.run(["env"], capture_output=True, text=True, link_env=True).stdout.splitlines()
    wanted = f"DB_PORT=tcp://{ip}:6379"
    expect(wanted in env, f"todomvc's environment lacks {wanted}: {env}")
    yield "todomvc's environment: " + ", ".join(sorted(ln for ln in env if ln.startswith("DB_")))
    hosts = app.run(["grep", "-w", "db", "/etc/hosts"], capture_output=True, text=True).stdout.strip()
    expect(hosts.split()[:2] == [str(ip), "db"], f"todomvc's /etc/hosts has {hosts!r} for db")
    yield f"todomvc's /etc/hosts: {hosts}"
    demo.serve(db, "tcp", 6379)
    demo.serve(db, "tcp", 6380)
    peer = traffic.probe(app, "tcp", str(ip), 6379)
    expect(peer is not None, "todomvc cannot reach db:6379 through its link")
    yield f"todomvc -> db:6379 (exposed, linked) on an icc=false network: the server saw {peer}"
    for who, port in ((app, 6380), (other, 6379)):
        peer = traffic.probe(who, "tcp", str(ip), port, timeout=1)
        expect(peer is None, f"{who.name} reached db:{port}: {peer!r}")
    yield "todomvc -> db:6380 (not exposed) and other -> db:6379 (not linked): no answer"
    yield "the rule: " + demo.rule(net.id, "--dport 6379", "-j ACCEPT", f"-d {ip}/32", "-s ")


@scenario("ovs", "an Open vSwitch network spanning two hosts, over VXLAN and then GRE")
def _ovs(demo: Demo) -> Iterator[str]:
    # cnm.testing.ovs imports pytest; only this scenario needs it.
    from cnm.testing.ovs import OvsDaemons, add_underlay_bridge, ovs_available

    reason = ovs_available()
    expect(reason is None, f"cannot run Open vSwitch here: {reason}")
    hosts = {label: demo.namespace(label) for label in ("ovs-a", "ovs-b")}
    with hosts["ovs-a"].netlink() as nl:
        links.add_veth(nl, "ul", "ul", hosts["ovs-b"])
    underlay = {
        "ovs-a": ipaddress.IPv4Interface("198.51.100.1/24"),
        "ovs-b": ipaddress.IPv4Interface("198.51.100.2/24"),
    }
    ctls: dict[str, Controller] = {}
    daemons: dict[str, OvsDaemons] = {}
    for label, ns in hosts.items():
        daemons[label] = OvsDaemons(ns, Path(demo.ctl.state_dir) / label / "ovs")
        demo.defer(daemons[label].stop)
        daemons[label].start()
        add_underlay_bridge(daemons[label], bridge="ulbr", uplink="ul", address=underlay[label])
        state_dir = os.path.join(demo.ctl.state_dir, label, "state")
        ctls[label] = Controller(state_dir=state_dir, host_netns=ns)
        demo.defer(ctls[label].close)
        demo.defer(functools.partial(_unmount_sandboxes, state_dir))
    yield f"two hosts {', '.join(ns.name for ns in hosts.values())}, each with its own ovsdb-server and ovs-vswitchd"
    yield f"      underlay: {underlay['ovs-a']} <-> {underlay['ovs-b']} on OVS bridges ulbr"
    for tunnel, key in (("vxlan", 42), ("gre", 43)):
        nets = {}
        for label, peer, ip_range in (("ovs-a", "ovs-b", "10.89.11.0/25"), ("ovs-b", "ovs-a", "10.89.11.128/25")):
            nets[label] = ctls[label].create_network(
                "span",
                driver="ovs",
                ipam=IPAMConfig(subnet="10.89.11.0/24", ip_range=ip_range),
                options={
                    "ovsdb": daemons[label].remote,
                    "peers": [str(underlay[peer].ip)],
                    "tunnel": tunnel,
                    "tunnel_key": key,
                },
            )
            demo.defer(nets[label].delete)
        c1 = ctls["ovs-a"].create_sandbox("c1", network="span")
        demo.defer(c1.delete)
        c2 = ctls["ovs-b"].create_sandbox("c2", network="span")
        demo.defer(c2.delete)
        ip1, ip2 = nets["ovs-a"].endpoint("c1").ip, nets["ovs-b"].endpoint("c2").ip
        ok, line = demo.ping(c1, ip2)
        expect(ok, f"{tunnel}: c1 on host a cannot ping c2 on host b: {line}")
        tunnels = [p for p in daemons["ovs-a"].db.interfaces() if p.type == tunnel]
        expect(bool(tunnels), f"no {tunnel} interface in host a's OVSDB")
        yield (
            f"{tunnel} (key {key}, MTU {nets['ovs-a'].options['mtu']}): c1 {ip1} on host a pings c2 {ip2} "
            f"on host b: {line}"
        )
        yield f"      host a's OVSDB: interface {tunnels[0].name} type {tunnel} options {dict(tunnels[0].options)}"
        c1.delete()
        c2.delete()
        for net in nets.values():
            net.delete()


@scenario("inspect", "the CNM objects as inspect() shows them: docker network inspect and docker inspect's shapes")
def _inspect(demo: Demo) -> Iterator[str]:
    net = demo.ctl.create_network("shown", ipam=IPAMConfig(subnet="10.89.12.0/24", gateway="10.89.12.1"))
    demo.defer(net.delete)
    sb = demo.ctl.create_sandbox("s1", network="shown", ports=[PortBinding(container_port=80, host_port=8090)])
    demo.defer(sb.delete)
    doc = net.inspect()
    expect(doc["IPAM"]["Config"] == [{"Subnet": "10.89.12.0/24", "Gateway": "10.89.12.1"}], f"IPAM is {doc['IPAM']}")
    expect(list(doc["Containers"]) == [sb.id], f"Containers is {doc['Containers']}")
    yield "network inspect shown: " + json.dumps({k: doc[k] for k in ("Name", "Driver", "Scope", "Internal", "IPAM")})
    yield "      Containers: " + json.dumps(doc["Containers"])
    settings = sb.inspect()["NetworkSettings"]
    expect(settings["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8090"}]}, f"Ports {settings['Ports']}")
    yield "sandbox inspect s1: NetworkSettings.Ports " + json.dumps(settings["Ports"])
    entry = settings["Networks"]["shown"]
    yield "      NetworkSettings.Networks.shown: " + json.dumps(
        {k: entry[k] for k in ("NetworkID", "EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "MacAddress")}
    )
    yield "      the same as JSON from the command line: cnm network inspect shown --format json"


def _unmount_sandboxes(state_dir: str) -> None:
    directory = os.path.join(state_dir, "netns")
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        netns.remove(os.path.join(directory, name))


# --- running --------------------------------------------------------------------------------------


@attrs.frozen
class Result:
    """How one scenario ended."""

    scenario: Scenario
    passed: bool
    seconds: float
    detail: str = ""


def _say(text: str = "") -> None:
    print(text, flush=True)


def run_scenario(demo: Demo, sc: Scenario, position: str) -> Result:
    """Run one scenario, printing its progress line and evidence; then run its deferred cleanup."""
    _say(f"{position} {sc.key}: {sc.title}")
    start = time.monotonic()
    failure = ""
    try:
        for line in sc.run(demo):
            _say(f"{_INDENT}{line}")
            demo.checkpoint()
    except ScenarioFailed as exc:
        failure = str(exc)
    except Exception as exc:
        log.debug("scenario %s raised", sc.key, exc_info=True)
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        undo_errors = demo.finish_scenario()
    if undo_errors and not failure:
        failure = "cleanup failed: " + "; ".join(f"{type(e).__name__}: {e}" for e in undo_errors)
    seconds = time.monotonic() - start
    _say(f"{_INDENT}{'PASS' if not failure else 'FAIL: ' + failure} ({seconds:.1f} s)")
    return Result(sc, not failure, seconds, failure)


def print_table(results: Sequence[Result], not_run: Sequence[Scenario] = (), *, stopped: bool = False) -> None:
    """The closing table: one row per scenario with its result.

    ``not_run`` are the scenarios an interrupt kept from finishing; with
    ``stopped`` the first of them was running (STOPPED), the others never
    started (NOT RUN).
    """
    rows = [(r.scenario.key, "PASS" if r.passed else "FAIL", f"{r.seconds:.1f}s", r.scenario.title) for r in results]
    rows += [(s.key, "STOPPED" if stopped and i == 0 else "NOT RUN", "-", s.title) for i, s in enumerate(not_run)]
    widths = [max(len(row[i]) for row in [("scenario", "result", "time", ""), *rows]) for i in range(3)]
    _say()
    _say(f"{'scenario':<{widths[0]}}  {'result':<{widths[1]}}  {'time':>{widths[2]}}  what it shows")
    for key, result, seconds, title in rows:
        _say(f"{key:<{widths[0]}}  {result:<{widths[1]}}  {seconds:>{widths[2]}}  {title}")
    passed = sum(r.passed for r in results)
    failed = len(results) - passed
    _say(f"{len(rows)} scenarios: {passed} passed, {failed} failed, {len(not_run)} not finished")


class Environment:
    """The throwaway world the demo runs in; :meth:`close` removes all of it."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(3)
        self.state_dir: str | None = None
        self.namespaces: list[NetNS] = []
        self.ctl: Controller | None = None
        self.demo: Demo | None = None

    def open(self, interrupts: _Interrupts) -> Demo:
        """Make the host and outside namespaces, the link between them, and the controller."""
        self.state_dir = tempfile.mkdtemp(prefix=f"{PREFIX}{self.token}-")
        host = self._namespace("h")
        outside = self._namespace("o")
        link_outside(host, outside)
        self.ctl = Controller(state_dir=self.state_dir, host_netns=host)
        self.demo = Demo(self.ctl, Namespace(host), Namespace(outside), interrupts, self._namespace)
        interrupts.check()
        return self.demo

    def _namespace(self, label: str) -> NetNS:
        path = os.path.join(netns.NETNS_RUN_DIR, f"{PREFIX}{self.token}-{label}")
        ns = netns.create(path)
        self.namespaces.append(ns)
        with ns.netlink() as nl:
            links.set_link(nl, "lo", up=True)
        return ns

    def close(self) -> list[str]:
        """Remove everything made, each step independent of the others; what could not be removed."""
        problems: list[str] = []

        def step(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep removing the rest, report at the end
                problems.append(f"{what}: {exc}")

        if self.demo is not None:
            step("the scenario's own cleanup", lambda: _raise_all(self.demo.finish_scenario() if self.demo else []))
            step("processes", self.demo.stop_processes)
        if self.ctl is not None:
            step("the controller", self.ctl.close)
        if self.state_dir is not None:
            sandboxes = os.path.join(self.state_dir, "netns")
            for name in sorted(os.listdir(sandboxes)) if os.path.isdir(sandboxes) else []:
                path = os.path.join(sandboxes, name)
                step(f"sandbox namespace {path}", lambda p=path: netns.remove(p))  # type: ignore[misc]
        for ns in reversed(self.namespaces):
            step(f"namespace {ns.path}", lambda n=ns: netns.remove(n.path))  # type: ignore[misc]
        if self.state_dir is not None:
            step(f"state dir {self.state_dir}", lambda: shutil.rmtree(self.state_dir or "", ignore_errors=False))
        return problems


def _raise_all(errors: Sequence[Exception]) -> None:
    if errors:
        raise ExceptionGroup("deferred cleanup failed", list(errors))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; the process exit status (0 when every scenario passed)."""
    parser = argparse.ArgumentParser(
        prog="python -m cnm.demo",
        description="cnm's scenarios with real packets, in throwaway namespaces (needs root).",
    )
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="run only these (default: all)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--debug", action="store_true", help="log cnm's steps to stderr")
    args = parser.parse_args(argv)
    if args.list:
        for sc in SCENARIOS.values():
            _say(f"{sc.key:<12}{sc.title}")
        return 0
    unknown = [k for k in args.scenarios if k not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    chosen = [SCENARIOS[k] for k in (args.scenarios or SCENARIOS)]
    if os.geteuid() != 0:
        print("the demo creates network namespaces: run it as root (sudo ./run demo)", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, stream=sys.stderr)

    env = Environment()
    results: list[Result] = []
    running: Scenario | None = None
    status = 1
    interrupts = _Interrupts()
    previous = {s: signal.signal(s, interrupts.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        demo = env.open(interrupts)
        host, outside = (ns.name for ns in env.namespaces[:2])
        _say(f"cnm demo in throwaway namespaces: host {host}, outside {outside} ({OUTSIDE_ADDRESS.ip})")
        _say(f"{_INDENT}state_dir {env.state_dir}; the machine's own network is not touched")
        for i, sc in enumerate(chosen, 1):
            interrupts.check()
            running = sc
            results.append(run_scenario(demo, sc, f"[{i}/{len(chosen)}]"))
            running = None
        print_table(results)
        status = 0 if all(r.passed for r in results) else 1
    except _Signalled as exc:
        _say()
        _say(f"interrupted by {exc}; cleaning up")
        print_table(results, chosen[len(results) :], stopped=running is not None)
        status = 128 + exc.signum
    except Exception as exc:
        log.debug("demo setup failed", exc_info=True)
        print(f"the demo could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        status = 1
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        problems = env.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    for problem in problems:
        print(f"cleanup: could not remove {problem}", file=sys.stderr)
    if problems:
        return status or 1
    _say(f"cleaned up: namespaces {PREFIX}{env.token}-*, sandbox mounts, processes and the state dir are gone")
    return status


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
