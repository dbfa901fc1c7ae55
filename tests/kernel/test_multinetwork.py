"""Many networks per sandbox, and CNM's contracts between networks, shown with real packets.

Connect and disconnect on a running sandbox (eth0, eth1, ... in join order; the
default route on the first non-internal network, moving when it leaves); same
network talks, different networks are isolated, and a sandbox on two networks
forwards nothing between them.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from cnm import Controller, IPAMConfig
from cnm.etchosts import STANDARD_BLOCK
from cnm.handles import Sandbox
from cnm.kernel import routes
from cnm.kernel.sysctl import get_sysctl, set_sysctl
from cnm.testing.hosts import Outside
from cnm.testing.traffic import ping, probe, serve

pytestmark = pytest.mark.kernel

Track = Callable[[subprocess.Popen[Any]], subprocess.Popen[Any]]


def _routes(sandbox: Sandbox) -> list[str]:
    out = sandbox.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    return [" ".join(line.split()) for line in out.splitlines()]


def _default(sandbox: Sandbox) -> str | None:
    """``default via GATEWAY dev IFNAME``, without the attributes that follow."""
    found = next((r for r in _routes(sandbox) if r.startswith("default")), None)
    return None if found is None else " ".join(found.split()[:5])


def _ifnames(sandbox: Sandbox) -> dict[str, str | None]:
    return {ep.network.name: ep.ifname for ep in sandbox.endpoints()}


@pytest.mark.usefixtures("firewall_backend")  # isolation and MASQUERADE are the firewall's
def test_connect_and_disconnect_move_the_default_route(
    controller: Controller, outside: Outside, processes: Track
) -> None:
    a = controller.create_network("neta", ipam=IPAMConfig(subnet="10.71.0.0/24"))
    b = controller.create_network("netb", ipam=IPAMConfig(subnet="10.72.0.0/24"))
    processes(serve(outside, "tcp", 7300))
    sb = controller.create_sandbox("m", network="neta")
    assert _default(sb) == "default via 10.71.0.1 dev eth0"
    # Connect a second network: eth1, the default route stays on the first, one hosts line each.
    eb = b.create_endpoint("m-netb")
    eb.join(sb)
    assert _ifnames(sb) == {"neta": "eth0", "netb": "eth1"}
    assert _default(sb) == "default via 10.71.0.1 dev eth0"
    assert "10.72.0.0/24 dev eth1 proto kernel scope link src 10.72.0.2" in _routes(sb)
    hosts = sb.run(["cat", "/etc/hosts"], capture_output=True, text=True, check=True).stdout
    assert hosts.endswith("10.71.0.2\tm\n10.72.0.2\tm\n")
    assert probe(sb, "tcp", str(outside.address), 7300) == str(outside.host_address)
    # Disconnect the first: the default route moves to the next network, and the outside stays reachable.
    a.endpoint("m").leave()
    assert _ifnames(sb) == {"netb": "eth1"}
    assert _default(sb) == "default via 10.72.0.1 dev eth1"
    assert not any("10.71.0." in r for r in _routes(sb))
    assert probe(sb, "tcp", str(outside.address), 7300) == str(outside.host_address)
    assert sb.run(["cat", "/etc/hosts"], capture_output=True, text=True).stdout == STANDARD_BLOCK + "10.72.0.2\tm\n"
    # Connect again: the next name (join order), and the default route stays where it is.
    a.endpoint("m").join(sb)
    assert _ifnames(sb) == {"netb": "eth1", "neta": "eth2"}
    assert _default(sb) == "default via 10.72.0.1 dev eth1"
    settings = sb.inspect()["NetworkSettings"]["Networks"]
    assert list(settings) == ["netb", "neta"]
    assert settings["neta"]["IPAddress"] == "10.71.0.2"
    assert settings["netb"]["Gateway"] == "10.72.0.1"
    assert set(a.inspect()["Containers"]) == set(b.inspect()["Containers"]) == {sb.id}
    # The last gateway network leaves: no default route at all.
    eb.leave()
    a.endpoint("m").leave()
    assert _default(sb) is None
    assert probe(sb, "tcp", str(outside.address), 7300, timeout=1) is None
    eb.delete()
    sb.delete()
    # The endpoint the sandbox made goes with it, though it was not joined when the sandbox went.
    assert a.endpoints() == []
    a.delete()
    b.delete()


def test_internal_network_never_gives_the_default_route(controller: Controller) -> None:
    controller.create_network("int", ipam=IPAMConfig(subnet="10.73.0.0/24"), internal=True)
    ext = controller.create_network("ext", ipam=IPAMConfig(subnet="10.74.0.0/24"))
    sb = controller.create_sandbox("i", network="int")
    assert _default(sb) is None
    ep = ext.create_endpoint("i-ext")
    ep.join(sb)
    assert _default(sb) == "default via 10.74.0.1 dev eth1"
    ep.leave()
    assert _default(sb) is None
    ep.delete()
    sb.delete()


@pytest.mark.usefixtures("firewall_backend")  # isolation and MASQUERADE are the firewall's
def test_networks_isolated_and_dual_homed_sandbox_forwards_nothing(controller: Controller, processes: Track) -> None:
    a = controller.create_network("na", ipam=IPAMConfig(subnet="10.75.0.0/24"))
    b = controller.create_network("nb", ipam=IPAMConfig(subnet="10.76.0.0/24"))
    sa = controller.create_sandbox("sa", network="na")
    sa2 = controller.create_sandbox("sa2", network="na")
    sb = controller.create_sandbox("sb", network="nb")
    dual = controller.create_sandbox("dual", network="na")
    b.create_endpoint("dual-nb").join(dual)
    dual_a, dual_b = a.endpoint("dual").ip, b.endpoint("dual-nb").ip
    ip_sb = b.endpoint("sb").ip
    assert dual_a is not None
    assert dual_b is not None
    assert ip_sb is not None
    for where in (sb, dual, sa2):
        processes(serve(where, "tcp", 7400))
    # Same network talks; the dual-homed sandbox is reached from both sides.
    assert probe(sa, "tcp", str(sa2.endpoints()[0].ip), 7400) == "10.75.0.2"
    assert probe(sa, "tcp", str(dual_a), 7400) == "10.75.0.2"
    assert probe(sb, "tcp", str(dual_b), 7400) == str(ip_sb)
    # Different networks are isolated.
    assert not ping(sa, str(ip_sb))
    assert probe(sa, "tcp", str(ip_sb), 7400, timeout=1) is None
    # Even with routes through the dual-homed sandbox on both sides, it forwards nothing.
    assert get_sysctl(dual.netns, "net.ipv4.ip_forward") == "0"
    with sa.netns.netlink() as nl:
        routes.add_route(nl, ipaddress.IPv4Network("10.76.0.0/24"), gateway=dual_a, ifname="eth0")
    with sb.netns.netlink() as nl:
        routes.add_route(nl, ipaddress.IPv4Network("10.75.0.0/24"), gateway=dual_b, ifname="eth0")
    assert probe(sa, "tcp", str(ip_sb), 7400, timeout=1) is None
    # Control: with forwarding switched on by hand the same routes work, so forwarding
    # (off, as cnm leaves it) was the only thing in the way.
    set_sysctl(dual.netns, "net.ipv4.ip_forward", "1")
    assert probe(sa, "tcp", str(ip_sb), 7400) == str(a.endpoint("sa").ip)
    set_sysctl(dual.netns, "net.ipv4.ip_forward", "0")
    assert probe(sa, "tcp", str(ip_sb), 7400, timeout=1) is None
    for s in (sa, sa2, sb, dual):
        s.delete()
    b.endpoint("dual-nb").delete()
    a.delete()
    b.delete()
