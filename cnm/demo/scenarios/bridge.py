"""The default bridge network: two sandboxes ping each other."""

from __future__ import annotations

from collections.abc import Iterator

from cnm.demo.harness import Demo, expect, scenario


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
