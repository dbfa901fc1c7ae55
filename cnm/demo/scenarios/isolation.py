"""Who may not talk: separate bridge networks, icc=false, internal networks."""

from __future__ import annotations

from collections.abc import Iterator

from cnm import IPAMConfig, PortBinding
from cnm.demo.harness import Demo, expect, scenario
from cnm.testing import traffic


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
    yield "the rule: " + demo.rule(b.id, "CNM-ISOLATION-STAGE-2", "-j DROP", nft=("chain isolation", "@bridges drop"))


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
    yield "the rule: " + demo.rule(net.id, "-A CNM-FORWARD", "-j DROP", nft=("chain forward", "iifname", "drop"))


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
    yield "the rule: " + demo.rule(
        net.id, "CNM-ISOLATION-STAGE-1", "-j DROP", f"! -d {net.subnet}", nft=(f"ip daddr != {net.subnet} drop",)
    )
