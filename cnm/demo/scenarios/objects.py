"""The CNM objects (networks, endpoints, sandboxes) as the store and the kernel see them."""

from __future__ import annotations

from collections.abc import Iterator

from cnm import IPAMConfig, PortBinding
from cnm.demo.harness import Demo, expect, scenario


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
