"""Safe by default (issue 18 items 1, 2 and 6), with real packets, on both firewall backends.

An outside namespace routes the network's subnet (and, for the loopback
test, 127.0.0.1) via the host namespace, as a neighbour on the host's LAN
can: what it reaches is what cnm lets through.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from cnm import Controller, IPAMConfig, PortBinding
from cnm.handles import Sandbox
from cnm.kernel.netns import NetNS
from cnm.testing.hosts import Outside, firewall_rules, flush_firewall
from cnm.testing.traffic import ping, probe, serve

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("firewall_backend")]

Track = Callable[[subprocess.Popen[Any]], subprocess.Popen[Any]]
SUBNET = "172.30.41.0/24"


class _Host:
    """Runs commands in the host namespace (the host itself, as a client)."""

    def __init__(self, netns: NetNS) -> None:
        self._argv = ["nsenter", f"--net={netns.path}", "--"]

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run([*self._argv, *argv], **kwargs)  # noqa: PLW1510

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen([*self._argv, *argv], **kwargs)


def _route_subnet_via_host(outside: Outside) -> None:
    argv = ["ip", "route", "add", SUBNET, "via", str(outside.host_address)]
    outside.run(argv, check=True, capture_output=True)


def _web(controller: Controller, processes: Track, **options: object) -> tuple[Sandbox, str]:
    """A network with ``options`` and a sandbox ``web``: port 80 published on host port 18080, 81 not."""
    controller.create_network("sec", ipam=IPAMConfig(subnet=SUBNET), options=options)
    web = controller.create_sandbox(
        "web", network="sec", ports=[PortBinding(container_port=80, host_port=18080, protocol="tcp")]
    )
    processes(serve(web, "tcp", 80))
    processes(serve(web, "tcp", 81))
    return web, str(controller.network("sec").endpoint("web").ip)


def _delete(controller: Controller, web: Sandbox) -> None:
    web.delete()
    controller.network("sec").delete()


def test_only_published_ports_and_replies_get_in_by_default(
    controller: Controller, outside: Outside, processes: Track
) -> None:
    _route_subnet_via_host(outside)
    web, ip = _web(controller, processes)
    # The published port, through the host's address: the client's own address is kept.
    assert probe(outside, "tcp", str(outside.host_address), 18080) == str(outside.address)
    # Straight to the sandbox's address: dropped, published container port or not.
    assert probe(outside, "tcp", ip, 81) is None
    assert probe(outside, "tcp", ip, 80) is None
    # The sandbox's own connection out: the reply comes back (masqueraded to the host's address).
    processes(serve(outside, "tcp", 9000))
    assert probe(web, "tcp", str(outside.address), 9000) == str(outside.host_address)
    _delete(controller, web)


def test_nat_unprotected_opens_the_sandbox_address(controller: Controller, outside: Outside, processes: Track) -> None:
    _route_subnet_via_host(outside)
    web, ip = _web(controller, processes, **{"com.docker.network.bridge.gateway_mode_ipv4": "nat-unprotected"})
    assert probe(outside, "tcp", ip, 81) == str(outside.address)
    assert probe(outside, "tcp", str(outside.host_address), 18080) == str(outside.address)
    processes(serve(outside, "tcp", 9000))
    assert probe(web, "tcp", str(outside.address), 9000) == str(outside.host_address)
    _delete(controller, web)


def test_routed_opens_only_the_published_container_ports_and_icmp(
    controller: Controller, outside: Outside, processes: Track, firewall_backend: str
) -> None:
    _route_subnet_via_host(outside)
    web, ip = _web(controller, processes, **{"com.docker.network.bridge.gateway_mode_ipv4": "routed"})
    # The published container port (80, of the mapping 18080:80), straight at the sandbox's address.
    assert probe(outside, "tcp", ip, 80) == str(outside.address)
    # An unpublished port is dropped; and nothing is DNATed from the host port.
    assert probe(outside, "tcp", ip, 81) is None
    assert probe(outside, "tcp", str(outside.host_address), 18080) is None
    assert ping(outside, ip)
    # No masquerade: the outside sees the sandbox's own address.
    processes(serve(outside, "tcp", 9000))
    assert probe(web, "tcp", str(outside.address), 9000) == ip
    # Rules flushed by someone, then rebuilt from the store: the same semantics.
    flush_firewall(controller.host_netns, firewall_backend)
    controller.reapply_firewall()
    assert probe(outside, "tcp", ip, 80) == str(outside.address)
    assert probe(outside, "tcp", ip, 81) is None
    _delete(controller, web)
    # The network's own chain (iptables) or set (nftables) goes with it.
    rules = firewall_rules(controller.host_netns, firewall_backend)
    assert "CNM-ROUTED-" not in rules
    assert "routed_" not in rules


def test_a_trusted_host_interface_reaches_the_sandbox_address(
    controller: Controller, outside: Outside, processes: Track
) -> None:
    _route_subnet_via_host(outside)
    web, ip = _web(controller, processes, trusted_host_interfaces="uplink9:uplink0")
    assert probe(outside, "tcp", ip, 81) == str(outside.address)
    _delete(controller, web)


def _route_loopback_via_host(outside: Outside) -> None:
    """Make the outside send packets to 127.0.0.1 to the host, and take their answers from 127.0.0.1."""
    for argv in (
        ["ip", "route", "del", "local", "127.0.0.0/8", "table", "local"],
        ["ip", "route", "del", "local", "127.0.0.1", "table", "local"],
    ):
        outside.run(argv, capture_output=True)  # one of them is there, depending on the kernel
    for argv in (
        ["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"],
        ["sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1"],
        ["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"],
        ["sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=0"],
        # The answers come from 127.0.0.1, which is also the outside's own (on its lo).
        ["sysctl", "-qw", "net.ipv4.conf.eth0.accept_local=1"],
        ["ip", "route", "add", "127.0.0.1/32", "via", str(outside.host_address), "dev", "eth0"],
    ):
        outside.run(argv, check=True, capture_output=True)


def _flush_loopback_drop(host: NetNS, backend: str, controller: Controller) -> None:
    if backend == "iptables":
        argv = ["iptables-legacy", "-t", "raw", "-F", "CNM-RAW"]
    else:
        argv = ["nft", "flush", "chain", "inet", getattr(controller.firewall, "table", ""), "raw"]
    _Host(host).run(argv, check=True, capture_output=True)


def test_a_loopback_published_port_is_reached_from_the_host_only(
    controller: Controller, outside: Outside, processes: Track, firewall_backend: str
) -> None:
    controller.create_network("sec", ipam=IPAMConfig(subnet=SUBNET))
    binding = PortBinding(container_port=80, host_port=18081, protocol="tcp", host_ip="127.0.0.1")
    web = controller.create_sandbox("web", network="sec", ports=[binding])
    processes(serve(web, "tcp", 80))
    host = _Host(controller.host_netns)
    assert probe(host, "tcp", "127.0.0.1", 18081) is not None
    _route_loopback_via_host(outside)
    assert probe(outside, "tcp", "127.0.0.1", 18081) is None
    # The packets do reach the host and its DNAT: without cnm's raw drop, the neighbour gets in.
    _flush_loopback_drop(controller.host_netns, firewall_backend, controller)
    assert probe(outside, "tcp", "127.0.0.1", 18081) == str(outside.address)
    controller.reconcile()
    assert probe(outside, "tcp", "127.0.0.1", 18081) is None
    assert probe(host, "tcp", "127.0.0.1", 18081) is not None
    _delete(controller, web)
