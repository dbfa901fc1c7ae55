"""The none, host and container modes, and Unix sockets across and within namespaces."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

from cnm.demo.harness import Demo, expect, scenario
from cnm.testing import traffic
from cnm.testing.hosts import HOST_UPLINK_ADDRESS


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
