"""Published ports and MASQUERADE: traffic between the sandboxes and the outside, through the host."""

from __future__ import annotations

from collections.abc import Iterator

from cnm import IPAMConfig, PortBinding
from cnm.demo.harness import Demo, expect, scenario
from cnm.testing import traffic


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
    yield "the rule: " + demo.rule(net.id, "-j DNAT", "--dport 8080", nft=("map addr_", "tcp . 8080 :"))
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
    yield "the rule: " + demo.rule(
        net.id, "-j MASQUERADE", f"-s {net.subnet}", nft=(f"ip saddr {net.subnet}", "masquerade")
    )
