"""OVS tunnels that follow an etcd membership: hosts join and leave a network without touching the others.

Four throwaway host namespaces, each with its own ovsdb-server, ovs-vswitchd
and controller, share an underlay (a kernel bridge in a switch namespace) and
one real etcd. Each host registers its underlay address in the network's
membership and watches it; every join or leave it sees becomes
``OvsDriver.set_peers`` on its own copy of the network. Nothing is configured
per peer: a network's options name only its tunnel_key.

Until the controller takes a global store (issue 21, phase 2), each host
allocates from its own ip_range of the shared subnet, and this test is the glue
between membership and driver (cnm.testing.mesh) that the controller will own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cnm import Controller, IPAMConfig
from cnm.driverapi import NetworkInfo
from cnm.kernel import links, netns
from cnm.kernel.netns import NetNS
from cnm.store.etcd import EtcdStore
from cnm.testing.etcd import EtcdCluster, start_cluster
from cnm.testing.mesh import MeshMember
from cnm.testing.ovs import OvsDaemons, add_underlay_bridge
from cnm.testing.traffic import ping

pytestmark = [pytest.mark.kernel, pytest.mark.ovs]

OvsFactory = Callable[[NetNS], OvsDaemons]
SUBNET = "10.211.0.0/24"
KEY = 77
_WAIT = 30.0


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = start_cluster(tmp_path / "etcd")
    yield cluster
    cluster.stop()


def tunnel_peers(ovs: OvsDaemons) -> set[str]:
    """The peers this host's OVS has tunnel ports to."""
    return {p.external_ids["cnm-peer"] for p in ovs.db.ports() if "cnm-peer" in p.external_ids}


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _WAIT
    while not check():
        assert time.monotonic() < deadline, f"not within {_WAIT:g}s: {what}"
        time.sleep(0.1)


class Host:
    """One host: namespace, OVS daemons, controller, the mesh network, and its membership glue."""

    def __init__(self, name: str, index: int, *, ns: NetNS, ovs: OvsDaemons, state_dir: Path, store: EtcdStore) -> None:
        self.name, self.ns, self.ovs = name, ns, ovs
        self.address = f"192.0.2.{index}"
        add_underlay_bridge(ovs, bridge="ulbr", uplink="ul", address=ipaddress.IPv4Interface(f"{self.address}/24"))
        self.ctl = Controller(state_dir=str(state_dir), host_netns=ns)
        self.net = self.ctl.create_network(
            "mesh",
            driver="ovs",
            ipam=IPAMConfig(subnet=SUBNET, ip_range=f"10.211.0.{32 * index}/27"),
            options={"ovsdb": ovs.remote, "tunnel_key": KEY},
        )
        self.member = MeshMember(
            store,
            self.ctl.registry.get("ovs"),  # type: ignore[arg-type]
            NetworkInfo(id=self.net.id, name="mesh", options=self.net.options),
            host=name,
            address=self.address,
        )
        self.sandbox = self.ctl.create_sandbox(f"c-{name}", network="mesh")
        self.ip = str(self.net.endpoint(f"c-{name}").ip)

    def close(self) -> None:
        self.member.close()
        self.sandbox.delete()
        self.net.delete()
        self.ctl.close()
        sandboxes = Path(self.ctl.state_dir) / "netns"
        if sandboxes.exists():
            for name in os.listdir(sandboxes):
                netns.remove(str(sandboxes / name))


# A host's membership agent in a process of its own, so that it can be SIGKILLed.
_AGENT = """
import json, sys, threading
from cnm.store.etcd import EtcdStore
from cnm.store.etcd_membership import Registration
endpoints, cluster, host, address = json.loads(sys.argv[1])
Registration(EtcdStore(endpoints, cluster=cluster), "mesh", host, address, ttl=2)
print("registered", flush=True)
threading.Event().wait()
"""


def test_tunnels_follow_the_membership_as_hosts_join_and_die(
    netns_factory: Callable[[str], NetNS], ovs_factory: OvsFactory, tmp_path: Path, etcd: EtcdCluster
) -> None:
    switch = netns_factory("sw")
    with switch.netlink() as nl:
        links.ensure_bridge(nl, "br")
    hosts: dict[str, Host] = {}
    agent: subprocess.Popen[str] | None = None
    store = EtcdStore(etcd.endpoints, cluster="mesh-test")

    def add_host(name: str, index: int) -> Host:
        ns = netns_factory(f"h{name}")
        with switch.netlink() as nl:
            links.add_veth(nl, f"p{name}", "ul", ns)
            links.set_link(nl, f"p{name}", master="br", up=True)
        host = Host(name, index, ns=ns, ovs=ovs_factory(ns), state_dir=tmp_path / name, store=store)
        hosts[name] = host
        return host

    def mesh_is(expected: set[str]) -> bool:
        return all(tunnel_peers(hosts[h].ovs) == {hosts[o].address for o in expected - {h}} for h in expected)

    try:
        for index, name in enumerate("abc", start=1):
            add_host(name, index)
        eventually(lambda: mesh_is({"a", "b", "c"}), "three hosts tunnel to each other")
        a, b, c = hosts["a"], hosts["b"], hosts["c"]
        assert a.net.options["mtu"] == 1500 - 50  # room for the VXLAN header from the start
        for src, dst in ((a, b), (b, c), (c, a)):
            assert ping(src.sandbox, dst.ip, wait=2), f"{src.name} cannot ping {dst.name}"

        # A fourth host joins: nothing is done on the other three, their watches add its tunnel.
        d = add_host("d", 4)
        eventually(lambda: mesh_is({"a", "b", "c", "d"}), "the fourth host is in every tunnel mesh")
        for other in (a, b, c):
            assert ping(d.sandbox, other.ip, wait=2), f"d cannot ping {other.name}"
            assert ping(other.sandbox, d.ip)

        # Host c's membership now lives in an agent process, which is SIGKILLed: no goodbye,
        # its lease runs out and the others remove its tunnel.
        c.member.leave()
        agent = subprocess.Popen(
            [sys.executable, "-c", _AGENT, json.dumps([etcd.endpoints, "mesh-test", "c", c.address])],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert agent.stdout is not None
        assert agent.stdout.readline().strip() == "registered"
        eventually(lambda: mesh_is({"a", "b", "c", "d"}), "c is back through its agent")
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()
        eventually(
            lambda: all(tunnel_peers(h.ovs) == {o.address for o in (a, b, d) if o is not h} for h in (a, b, d)),
            "a, b and d drop their tunnels to the dead host c",
        )
        assert ping(a.sandbox, d.ip)
        assert not ping(a.sandbox, c.ip, count=2)
        assert [e for h in hosts.values() for e in h.member.errors] == []
    finally:
        if agent is not None:
            if agent.poll() is None:
                os.kill(agent.pid, signal.SIGKILL)
                agent.wait()
            if agent.stdout is not None:
                agent.stdout.close()
        for host in hosts.values():
            with contextlib.suppress(Exception):
                host.close()
        store.close()
