"""Crash safety of the OVS driver: kills at every step, a reboot, a wiped OVSDB, garbage in OVSDB.

The kill technique is test_recovery.py's: a forked child drives a Controller
on a shared state_dir and is killed after step N; a new Controller reconciles
and the store, the kernel and OVSDB must agree. Its KillSwitch (a step observer:
the OVS driver's own steps, OVSDB writes among them, report to it), run_child and clear
are imported (pytest's importlib mode registers ``tests`` and ``tests.kernel`` as packages).
Its check_common_invariants covers what holds
for any driver; the OVS-specific checks (veths, OVSDB rows) are here.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cnm import Controller, IPAMConfig, PortBinding, errors
from cnm._core import records as rec
from cnm.kernel import addresses, links, netns, sysctl
from cnm.kernel.netns import NetNS
from cnm.ovsdb import Ovsdb, PortSpec
from cnm.testing.hosts import Outside
from cnm.testing.ovs import OvsDaemons
from cnm.testing.traffic import ping, probe, serve
from tests.kernel.test_recovery import KillSwitch, check_common_invariants, clear, run_child

pytestmark = [pytest.mark.kernel, pytest.mark.ovs]

OvsFactory = Callable[[NetNS], OvsDaemons]
_OVS_VETH = re.compile(r"^cno[0-9a-f]{12}$")


@pytest.fixture
def state(tmp_path: Path) -> Iterator[str]:
    """A state_dir shared by the test's controllers; its sandbox namespaces are unmounted at the end."""
    path = str(tmp_path / "state")
    yield path
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(os.path.join(path, "netns")):
            netns.remove(os.path.join(path, "netns", entry))


def cnm_rows(db: Ovsdb) -> list[str]:
    """Every bridge and port row that is cnm's (interfaces go with their ports)."""
    rows = [f"bridge {b.name}" for b in db.bridges() if {"cnm-network", "cnm-shared-bridge"} & set(b.external_ids)]
    return rows + [f"port {p.name}" for p in db.ports() if "cnm-network" in p.external_ids]


def owned_rows(db: Ovsdb, owner: str) -> list[str]:
    """The bridge and port rows that carry ``owner``'s id."""
    rows = [f"bridge {b.name}" for b in db.bridges() if b.external_ids.get("cnm-owner") == owner]
    return sorted(rows + [f"port {p.name}" for p in db.ports() if p.external_ids.get("cnm-owner") == owner])


def check_ovs_invariants(ctl: Controller, db: Ovsdb) -> None:
    """The store, the kernel and OVSDB agree after a reconcile; nothing is held twice or leaked."""
    rt = ctl._rt
    networks = rt.state.list(rec.NetworkRecord)
    endpoints = rt.state.list(rec.EndpointRecord)
    ovs_nets = {n.id: n for n in networks if n.driver == "ovs"}
    joined = {e.id: e for e in endpoints if e.sandbox_id and e.network_id in ovs_nets}
    # Host ends of veths: exactly those of joined endpoints.
    with ctl.host_netns.netlink() as nl:
        veths = {link.name for link in links.list_links(nl) if _OVS_VETH.match(link.name)}
    assert veths == {"cno" + e[:12] for e in joined}, "veths differ from the joined endpoints"
    # OVSDB: cnm's rows name known networks and joined endpoints; each joined endpoint has its port.
    bridges = db.bridges()
    ports = db.ports()
    for b in bridges:
        owner = b.external_ids.get("cnm-network")
        assert owner is None or owner in ovs_nets, f"bridge {b.name} of unknown network {owner}"
    for p in ports:
        owner, endpoint = p.external_ids.get("cnm-network"), p.external_ids.get("cnm-endpoint")
        assert owner is None or owner in ovs_nets, f"port {p.name} of unknown network {owner}"
        assert endpoint is None or endpoint in joined, f"port {p.name} of an endpoint that is not joined"
    errors = {i.name: i.error for i in db.interfaces() if i.error or i.ofport == -1}
    assert not errors, f"OVS interfaces that did not open: {errors}"
    for n in ovs_nets.values():
        vlan = n.options.get("vlan")
        bridge = next((b for b in bridges if b.name == ("cnmovs0" if vlan else "cno-" + n.id[:11])), None)
        assert bridge is not None, f"network {n.name} has no OVS bridge"
        on_bridge = {p.name for p in ports if p.uuid in bridge.ports}
        gateway_if = "cng" + n.id[:12] if vlan else bridge.name
        assert {"cno" + e[:12] for e, r in joined.items() if r.network_id == n.id} | {gateway_if} <= on_bridge
        with ctl.host_netns.netlink() as nl:
            assert n.gateway_interface in addresses.list_addresses(nl, gateway_if)
    shared = any(n.options.get("vlan") for n in ovs_nets.values())
    assert any(b.name == "cnmovs0" for b in bridges) == shared, "the shared bridge outlived its last network"
    check_common_invariants(ctl)


def sandbox_with_published_port(ctl: Controller, remote: str) -> None:
    ctl.create_sandbox("s1", network="o1", ports=[PortBinding(container_port=80, host_port=8080)])
    ctl.sandbox("s1").delete()


def vlan_network(ctl: Controller, remote: str) -> None:
    # The shared bridge and a tagged gateway port come and go.
    ctl.create_network(
        "v1", driver="ovs", ipam=IPAMConfig(subnet="10.84.0.0/24"), options={"ovsdb": remote, "vlan": 10}
    )
    ctl.network("v1").delete()


SCENARIOS = {"sandbox_with_published_port": sandbox_with_published_port, "vlan_network": vlan_network}


@pytest.mark.timeout(600)  # a kill and a reconcile at every step: see test_recovery
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_kill_at_every_step(host_netns: NetNS, state: str, ovs_factory: OvsFactory, scenario: str) -> None:
    ovs = ovs_factory(host_netns)
    with Controller(state_dir=state, host_netns=host_netns) as ctl:
        ctl.create_network("o1", driver="ovs", ipam=IPAMConfig(subnet="10.81.0.0/24"), options={"ovsdb": ovs.remote})
    kill_at = 1
    while True:
        with Controller(state_dir=state, host_netns=host_netns) as ctl:
            check_ovs_invariants(ctl, ovs.db)
            # Back to the scenario's start before each kill.
            clear(ctl, "o1")
            with contextlib.suppress(errors.NetworkNotFound):
                ctl.network("v1").delete()
        switch = KillSwitch(kill_at)

        def work(switch: KillSwitch = switch) -> None:
            with Controller(state_dir=state, host_netns=host_netns, reconcile=False, observer=switch) as child:
                SCENARIOS[scenario](child, ovs.remote)

        if run_child(work):
            break
        kill_at += 1
        assert kill_at < 200, "the scenario never finished"
    with Controller(state_dir=state, host_netns=host_netns) as ctl:
        check_ovs_invariants(ctl, ovs.db)
        ctl.network("o1").delete()
        check_ovs_invariants(ctl, ovs.db)
    assert cnm_rows(ovs.db) == []
    print(f"{scenario}: killed at each of {kill_at - 1} steps")
    assert kill_at > 10, f"only {kill_at} kill points: the step hooks are not reached"


def test_reboot_restores_the_ovs_network(
    host_netns: NetNS,
    outside: Outside,
    state: str,
    ovs_factory: OvsFactory,
    processes: Callable[[subprocess.Popen[Any]], Any],
) -> None:
    ovs = ovs_factory(host_netns)
    with Controller(state_dir=state, host_netns=host_netns) as ctl:
        net = ctl.create_network(
            "boot", driver="ovs", ipam=IPAMConfig(subnet="10.82.0.0/24"), options={"ovsdb": ovs.remote}
        )
        ctl.create_sandbox("old", network="boot", ports=[PortBinding(container_port=80, host_port=8080)])
        bridge, veth = "cno-" + net.id[:11], "cno" + net.endpoint("old").id[:12]
    # The "reboot": the bridge's rows (its ports with them), the veth, every rule and the
    # sandbox mounts vanish, and routing is off again; the store stays.
    assert ovs.db.delete_bridge(bridge)
    with host_netns.netlink() as nl:
        links.delete_link(nl, veth)
    for table in ("filter", "nat"):
        subprocess.run(["nsenter", f"--net={host_netns.path}", "--", "iptables-legacy", "-t", table, "-F"], check=True)
    for entry in os.listdir(os.path.join(state, "netns")):
        subprocess.run(["umount", os.path.join(state, "netns", entry)], check=True)
    sysctl.set_sysctl(host_netns, "net.ipv4.ip_forward", "0")
    assert cnm_rows(ovs.db) == []
    with Controller(state_dir=state, host_netns=host_netns) as ctl:
        assert ctl.sandbox("old")._record.status == "dead"
        assert ovs.db.bridge(bridge) is not None
        a = ctl.create_sandbox("a", network="boot", ports=[PortBinding(container_port=80, host_port=8080)])
        b = ctl.create_sandbox("b", network="boot")
        assert ping(b, str(ctl.network("boot").endpoint("a").ip))
        processes(serve(a, "tcp", 80))
        assert probe(b, "tcp", str(ctl.network("boot").endpoint("a").ip), 80) == str(
            ctl.network("boot").endpoint("b").ip
        )
        # In through the published port, which needs the restored routing and rules.
        assert probe(outside, "tcp", str(outside.host_address), 8080) == str(outside.address)
        check_ovs_invariants(ctl, ovs.db)
        for s in ctl.sandboxes():
            s.delete()
        ctl.network("boot").delete()
        check_ovs_invariants(ctl, ovs.db)
    assert cnm_rows(ovs.db) == []


def test_wiped_ovsdb_brings_back_the_network_and_live_sandboxes(
    host_netns: NetNS, state: str, ovs_factory: OvsFactory
) -> None:
    ovs = ovs_factory(host_netns)
    with Controller(state_dir=state, host_netns=host_netns) as ctl:
        net = ctl.create_network(
            "w", driver="ovs", ipam=IPAMConfig(subnet="10.83.0.0/24"), options={"ovsdb": ovs.remote}
        )
        old = ctl.create_sandbox("old", network="w")
    # Open vSwitch comes back with an empty database: every bridge and port row is gone.
    ovs.stop()
    os.unlink(ovs.directory / "conf.db")
    ovs.start()
    assert cnm_rows(ovs.db) == []
    with Controller(state_dir=state, host_netns=host_netns) as ctl:
        assert ctl.sandbox("old")._record.status == rec.READY
        new = ctl.create_sandbox("new", network="w")
        assert ping(new, str(net.endpoint("old").ip))
        assert ping(old, str(net.gateway))
        check_ovs_invariants(ctl, ovs.db)
        for s in ctl.sandboxes():
            s.delete()
        ctl.network("w").delete()
    assert cnm_rows(ovs.db) == []


def test_garbage_is_collected_and_foreign_rows_are_kept(host_netns: NetNS, state: str, ovs_factory: OvsFactory) -> None:
    ovs = ovs_factory(host_netns)
    orphan_net, orphan_ep = "f" * 64, "e" * 64
    orphan_bridge = "cno-" + orphan_net[:11]
    remotes_file = os.path.join(state, "drivers", "ovs", "ovsdb-remotes.json")
    with Controller(state_dir=state, host_netns=host_netns) as ctl:
        ctl.create_network("gone", driver="ovs", ipam=IPAMConfig(subnet="10.85.0.0/24"), options={"ovsdb": ovs.remote})
        ctl.network("gone").delete()
        owner = ctl.owner_id
    mine = {"cnm-network": orphan_net, "cnm-owner": owner}
    # With no OVS network left, the server is still known from the driver's list.
    ovs.db.add_bridge(orphan_bridge, datapath_type="netdev", external_ids=mine)
    ovs.db.add_bridge("user0", datapath_type="netdev")
    with Controller(state_dir=state, host_netns=host_netns) as ctl:
        assert [b.name for b in ovs.db.bridges()] == ["user0"]
        with open(remotes_file) as f:
            assert f.read() == "[]", "a server that holds nothing of cnm's is still listed"
        net = ctl.create_network(
            "g", driver="ovs", ipam=IPAMConfig(subnet="10.86.0.0/24"), options={"ovsdb": ovs.remote}
        )
        box = ctl.create_sandbox("s", network="g")
        bridge = "cno-" + net.id[:11]
        # An endpoint's port and veth that no joined endpoint owns, next to a foreign port and veth.
        with host_netns.netlink() as nl:
            links.add_veth(nl, "cno" + orphan_ep[:12], "orphanpeer", host_netns)
            links.set_alias(nl, "cno" + orphan_ep[:12], f"cnm:{owner}")
            links.add_veth(nl, "userveth0", "userveth1", host_netns)
        ovs.db.add_port(
            bridge,
            PortSpec(
                name="cno" + orphan_ep[:12],
                external_ids={"cnm-network": net.id, "cnm-endpoint": orphan_ep, "cnm-owner": owner},
            ),
        )
        ovs.db.add_port(bridge, PortSpec(name="userveth0"))
        ovs.db.add_bridge(orphan_bridge, datapath_type="netdev", external_ids=mine)
        # And the gateway lost its address (as after a reboot that kept the database).
        with host_netns.netlink() as nl:
            assert addresses.delete_address(nl, bridge, net._record.gateway_interface)
        report = ctl.reconcile()
        assert sorted(report.actions) == sorted(
            [
                "re-created the host objects of network g",
                f"deleted orphaned OVS bridge {orphan_bridge} of network {orphan_net[:12]} ({ovs.remote})",
                f"deleted orphaned OVS port cno{orphan_ep[:12]} of network {net.id[:12]} ({ovs.remote})",
                f"deleted orphaned veth cno{orphan_ep[:12]}",
            ]
        ), str(report)
        assert not report.errors
        check_ovs_invariants(ctl, ovs.db)
        assert ping(box, str(net.gateway))
        # Foreign rows and links are untouched.
        assert "user0" in {b.name for b in ovs.db.bridges()}
        assert "userveth0" in {p.name for p in ovs.db.ports()}
        with host_netns.netlink() as nl:
            assert links.get_link(nl, "userveth0") is not None
        assert not ctl.reconcile(), "a second reconcile found more to do"
        box.delete()
        net.delete()
    assert cnm_rows(ovs.db) == []


def test_two_controllers_on_one_ovsdb_collect_only_their_own_rows(
    host_netns: NetNS, tmp_path: Path, ovs_factory: OvsFactory
) -> None:
    ovs = ovs_factory(host_netns)
    opts = {"ovsdb": ovs.remote}
    with (
        Controller(state_dir=str(tmp_path / "a"), host_netns=host_netns, predefined=False) as a,
        Controller(state_dir=str(tmp_path / "b"), host_netns=host_netns, predefined=False) as b,
    ):
        net_a = a.create_network("oa", driver="ovs", ipam=IPAMConfig(subnet="10.87.0.0/24"), options=opts)
        box_a = a.create_sandbox("sa", network="oa")
        net_b = b.create_network("ob", driver="ovs", ipam=IPAMConfig(subnet="10.88.0.0/24"), options=opts)
        box_b = b.create_sandbox("sb", network="ob")
        rows_a, rows_b = owned_rows(ovs.db, a.owner_id), owned_rows(ovs.db, b.owner_id)
        assert f"bridge cno-{net_a.id[:11]}" in rows_a
        assert f"bridge cno-{net_b.id[:11]}" in rows_b
        assert len(rows_a) == len(rows_b) >= 3  # each: its bridge, a gateway port or bridge port, an endpoint's port
        assert sorted(cnm_rows(ovs.db)) == sorted(rows_a + rows_b)
        for ctl in (b, a, b):
            assert not ctl.reconcile(), f"reconcile of {ctl.state_dir} found something to do"
        assert owned_rows(ovs.db, a.owner_id) == rows_a
        assert owned_rows(ovs.db, b.owner_id) == rows_b
        assert ping(box_a, str(net_a.gateway))
        for box, net in ((box_b, net_b), (box_a, net_a)):
            box.delete()
            net.delete()
    assert cnm_rows(ovs.db) == []
