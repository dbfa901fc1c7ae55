"""Several hosts, one etcd: OVS tunnels that follow the membership as hosts join and die."""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from cnm import Controller, IPAMConfig
from cnm.demo.harness import Demo, expect, scenario
from cnm.driverapi import NetworkInfo
from cnm.handles import Sandbox
from cnm.kernel import links, netns
from cnm.kernel.netns import NetNS

if TYPE_CHECKING:
    from cnm.store.etcd import EtcdStore
    from cnm.testing.mesh import MeshMember
    from cnm.testing.ovs import OvsDaemons

_AGENT = """
import json, sys, threading
from cnm.store.etcd import EtcdStore
from cnm.store.etcd_membership import Registration
endpoints, host, address = json.loads(sys.argv[1])
Registration(EtcdStore(endpoints, cluster="demo"), "mesh", host, address, ttl=2)
print("registered", flush=True)
threading.Event().wait()
"""


class _Hosts:
    """The chapter's hosts: each a namespace with OVS daemons, a controller, the network and its membership."""

    def __init__(self, demo: Demo, root: Path, store: EtcdStore, switch: NetNS) -> None:
        self.demo, self.root, self.store, self.switch = demo, root, store, switch
        self.members: dict[str, MeshMember] = {}
        self.sandboxes: dict[str, Sandbox] = {}
        self.ips: dict[str, str] = {}
        self.addresses: dict[str, str] = {}
        self._ovs: dict[str, OvsDaemons] = {}

    def add(self, label: str, index: int) -> None:
        # cnm.testing.ovs imports pytest; only the chapters with OVS need it.
        from cnm.testing.mesh import MeshMember  # noqa: PLC0415 - needs the etcd extra
        from cnm.testing.ovs import OvsDaemons, add_underlay_bridge  # noqa: PLC0415 - needs pytest

        demo = self.demo
        ns = demo.namespace(f"mesh-{label}")
        with self.switch.netlink() as nl:
            links.add_veth(nl, f"p{label}", "ul", ns)
            links.set_link(nl, f"p{label}", master="br", up=True)
        daemons = OvsDaemons(ns, self.root / label / "ovs")
        demo.defer(daemons.stop)
        daemons.start()
        self._ovs[label] = daemons
        self.addresses[label] = f"198.51.100.{index}"
        add_underlay_bridge(
            daemons, bridge="ulbr", uplink="ul", address=ipaddress.IPv4Interface(f"{self.addresses[label]}/24")
        )
        state_dir = str(self.root / label / "state")
        ctl = Controller(state_dir=state_dir, host_netns=ns)
        demo.defer(ctl.close)
        demo.defer(functools.partial(_unmount_sandboxes, state_dir))
        # No peers: only the tunnel key. Each host has its own ip_range until IPAM lives in etcd too.
        net = ctl.create_network(
            "mesh",
            driver="ovs",
            ipam=IPAMConfig(subnet="10.89.12.0/24", ip_range=f"10.89.12.{32 * index}/27"),
            options={"ovsdb": daemons.remote, "tunnel_key": 4242},
        )
        demo.defer(net.delete)
        member = MeshMember(
            self.store,
            ctl.registry.get("ovs"),  # type: ignore[arg-type]
            NetworkInfo(id=net.id, name="mesh", options=net.options),
            host=label,
            address=self.addresses[label],
        )
        demo.defer(member.close)
        self.members[label] = member
        sandbox = ctl.create_sandbox(f"c-{label}", network="mesh")
        demo.defer(sandbox.delete)
        self.sandboxes[label] = sandbox
        self.ips[label] = str(net.endpoint(f"c-{label}").ip)

    def meshed(self, labels: str) -> bool:
        """Each host of ``labels`` has a tunnel to each other one, and to no one else."""
        return all(
            {p.external_ids["cnm-peer"] for p in self._ovs[h].db.ports() if "cnm-peer" in p.external_ids}
            == {self.addresses[o] for o in labels if o != h}
            for h in labels
        )

    def ping(self, src: str, dst: str) -> tuple[bool, str]:
        return self.demo.ping(self.sandboxes[src], self.ips[dst])


@scenario("mesh", "hosts on one etcd: tunnels follow the membership as hosts join and die")
def _mesh(demo: Demo) -> Iterator[str]:
    from cnm.testing.ovs import ovs_available  # noqa: PLC0415 - needs pytest

    reason = ovs_available()
    expect(reason is None, f"cannot run Open vSwitch here: {reason}")
    try:
        from cnm.store.etcd import EtcdStore  # noqa: PLC0415 - the etcd extra is optional
        from cnm.testing.etcd import start_cluster  # noqa: PLC0415 - the etcd extra is optional
    except ImportError as exc:
        expect(False, f"the mesh chapter needs cnm's etcd extra (pip install 'cnm-net[etcd]'): {exc}")
        raise
    root = Path(demo.ctl.state_dir) / "mesh"
    etcd = start_cluster(root / "etcd")
    for member in etcd.members:
        if member.process is not None:
            demo.track(member.process)
    store = EtcdStore(etcd.endpoints, cluster="demo")
    demo.defer(store.close)
    switch = demo.namespace("mesh-sw")
    with switch.netlink() as nl:
        links.ensure_bridge(nl, "br")
    yield f"etcd {etcd.endpoints[0]} (Debian's etcd-server) for the hosts' membership; an underlay switch {switch.name}"
    hosts = _Hosts(demo, root, store, switch)
    for index, label in enumerate("abc", start=1):
        hosts.add(label, index)
    _wait(lambda: hosts.meshed("abc"), "three hosts to tunnel to each other")
    ok, line = hosts.ping("a", "c")
    expect(ok, f"c-a on host a cannot ping c-c on host c: {line}")
    yield f"hosts a, b, c registered their underlay addresses; no peers configured; c-a pings c-c: {line}"

    hosts.add("d", 4)
    _wait(lambda: hosts.meshed("abcd"), "every host to tunnel to host d")
    ok, line = hosts.ping("a", "d")
    expect(ok, f"c-a cannot ping c-d on the new host d: {line}")
    yield f"host d joins; nothing done on a, b, c; c-a pings c-d: {line}"

    hosts.members["c"].leave()
    agent = demo.track(
        subprocess.Popen(
            [sys.executable, "-c", _AGENT, json.dumps([etcd.endpoints, "c", hosts.addresses["c"]])],
            stdout=subprocess.PIPE,
            text=True,
        )
    )
    expect(agent.stdout is not None and agent.stdout.readline().strip() == "registered", "c's agent did not start")
    _wait(lambda: hosts.meshed("abcd"), "host c to be back through its agent")
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait()
    _wait(lambda: hosts.meshed("abd"), "c's lease to expire and a, b, d to drop its tunnel")
    ok, line = hosts.ping("a", "c")
    expect(not ok, "c-a still reaches the dead host c")
    yield f"host c's membership agent SIGKILLed: its lease expires, a, b, d drop its tunnel; c-a to c-c: {line}"


def _wait(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        expect(time.monotonic() < deadline, f"waited {timeout:g}s for {what}")
        time.sleep(0.1)


def _unmount_sandboxes(state_dir: str) -> None:
    directory = os.path.join(state_dir, "netns")
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        netns.remove(os.path.join(directory, name))
