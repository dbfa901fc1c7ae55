"""The OVS driver end to end: private OVS daemons per host namespace, real packets, real tunnels.

Each test starts its own ovsdb-server and ovs-vswitchd (userspace datapath:
this kernel has no openvswitch module) for each host namespace it makes, and
shares them between the steps of that test only.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cnm import Controller, IPAMConfig, PortBinding, errors
from cnm.kernel import links, netns
from cnm.kernel.netns import NetNS
from cnm.ovsdb import Ovsdb, PortSpec
from cnm.testing.hosts import Outside
from cnm.testing.ovs import OvsDaemons, add_underlay_bridge
from cnm.testing.traffic import ping, probe, serve

pytestmark = [pytest.mark.kernel, pytest.mark.ovs]

Track = Callable[[subprocess.Popen[Any]], subprocess.Popen[Any]]
OvsFactory = Callable[[NetNS], OvsDaemons]
CNM_PREFIXES = ("cno", "cng", "cnt")


def cnm_rows(daemons: OvsDaemons) -> list[str]:
    """Every bridge, port and interface row that names a cnm network or endpoint."""
    rows = [f"bridge {b.name}" for b in daemons.db.bridges() if "cnm-network" in b.external_ids]
    rows += [f"bridge {b.name}" for b in daemons.db.bridges() if "cnm-shared-bridge" in b.external_ids]
    rows += [f"port {p.name}" for p in daemons.db.ports() if "cnm-network" in p.external_ids]
    rows += [f"interface {i.name}" for i in daemons.db.interfaces() if "cnm-network" in i.external_ids]
    return rows


def cnm_links(host: NetNS) -> list[str]:
    with host.netlink() as nl:
        return [link.name for link in links.list_links(nl) if link.name.startswith(CNM_PREFIXES)]


def test_single_host_sandboxes_talk_nat_out_and_published_port_in(
    controller: Controller, outside: Outside, ovs_factory: OvsFactory, processes: Track
) -> None:
    ovs = ovs_factory(controller.host_netns)
    net = controller.create_network(
        "o1", driver="ovs", ipam=IPAMConfig(subnet="10.50.0.0/24"), options={"ovsdb": ovs.remote}
    )
    assert net.options["datapath"] == "netdev"  # detected: no openvswitch module here
    sb1 = controller.create_sandbox("c1", network="o1", ports=[PortBinding(container_port=80, host_port=8080)])
    sb2 = controller.create_sandbox("c2", network="o1")
    ip1, ip2 = str(net.endpoint("c1").ip), str(net.endpoint("c2").ip)
    # Each endpoint is a veth port of the network's own bridge, tagged with its network and endpoint.
    bridge = next(b for b in ovs.db.bridges() if b.external_ids.get("cnm-network") == net.id)
    ports = {p.name: p for p in ovs.db.ports() if p.uuid in bridge.ports}
    assert sorted(p.external_ids.get("cnm-endpoint", "")[:12] for p in ports.values() if p.name != bridge.name) == (
        sorted([net.endpoint("c1").id[:12], net.endpoint("c2").id[:12]])
    )
    assert ping(sb2, ip1)
    processes(serve(sb1, "tcp", 80))
    # TCP between sandboxes: the checksum-offload trap would let ping through but not this.
    assert probe(sb2, "tcp", ip1, 80) == ip2
    assert "default via 10.50.0.1 dev eth0" in sb1.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    processes(serve(outside, "tcp", 7000))
    # Out through the host: masqueraded to the host's address.
    assert probe(sb2, "tcp", str(outside.address), 7000) == str(outside.host_address)
    # In through the published port: DNAT keeps the client's address.
    assert probe(outside, "tcp", str(outside.host_address), 8080) == str(outside.address)
    sb1.delete()
    sb2.delete()
    net.delete()
    assert cnm_rows(ovs) == []
    assert cnm_links(controller.host_netns) == []


def test_isolation_from_bridge_networks_other_ovs_bridges_and_other_vlans(
    controller: Controller, ovs_factory: OvsFactory, processes: Track
) -> None:
    ovs = ovs_factory(controller.host_netns)
    opts = {"ovsdb": ovs.remote}
    controller.create_network("br", ipam=IPAMConfig(subnet="10.61.0.0/24"))
    controller.create_network("o1", driver="ovs", ipam=IPAMConfig(subnet="10.62.0.0/24"), options=opts)
    controller.create_network("o2", driver="ovs", ipam=IPAMConfig(subnet="10.63.0.0/24"), options=opts)
    va = controller.create_network(
        "va", driver="ovs", ipam=IPAMConfig(subnet="10.64.0.0/24"), options={**opts, "vlan": 10}
    )
    vb = controller.create_network(
        "vb", driver="ovs", ipam=IPAMConfig(subnet="10.65.0.0/24"), options={**opts, "vlan": 20}
    )
    with pytest.raises(errors.AlreadyExists, match="VLAN 10"):
        controller.create_network(
            "vc", driver="ovs", ipam=IPAMConfig(subnet="10.66.0.0/24"), options={**opts, "vlan": 10}
        )
    network_of = {"br": "br", "o1": "o1", "o2": "o2", "va": "va", "va2": "va", "vb": "vb"}
    names = list(network_of)
    boxes = {n: controller.create_sandbox(f"s-{n}", network=network_of[n]) for n in names}
    ips = {n: str(controller.network(network_of[n]).endpoint(f"s-{n}").ip) for n in names}
    # The VLAN networks share one bridge; their ports carry their tags.
    shared = next(b for b in ovs.db.bridges() if "cnm-shared-bridge" in b.external_ids)
    tags = {p.name: p.tag for p in ovs.db.ports() if p.uuid in shared.ports and p.name != shared.name}
    assert sorted(tags.values()) == [10, 10, 10, 20, 20]  # va: gateway + 2 endpoints; vb: gateway + 1
    for n in names:
        processes(serve(boxes[n], "tcp", 9000))
    assert ping(boxes["va"], ips["va2"])
    assert probe(boxes["va"], "tcp", ips["va2"], 9000) == ips["va"]
    pairs = [("o1", "br"), ("br", "o1"), ("o1", "o2"), ("o2", "o1"), ("va", "vb"), ("vb", "va"), ("va", "o1")]
    with concurrent.futures.ThreadPoolExecutor(len(pairs)) as pool:
        answers = list(pool.map(lambda p: probe(boxes[p[0]], "tcp", ips[p[1]], 9000, timeout=0.5), pairs))
    assert [p for p, answer in zip(pairs, answers, strict=True) if answer is not None] == []
    # Even on one L2 segment's terms (an address of vb's subnet, on-link), VLAN 10 cannot reach VLAN 20.
    boxes["va"].run(["ip", "addr", "add", "10.65.0.200/24", "dev", "eth0"], check=True)
    assert not ping(boxes["va"], ips["vb"], wait=0.5)
    for box in boxes.values():
        box.delete()
    for n in ("va", "vb", "o1", "o2", "br"):
        controller.network(n).delete()
    assert va.id != vb.id
    assert cnm_rows(ovs) == []
    assert cnm_links(controller.host_netns) == []


@contextlib.contextmanager
def controller_in(host: NetNS, state_dir: Path) -> Iterator[Controller]:
    ctl = Controller(state_dir=str(state_dir), host_netns=host)
    try:
        yield ctl
    finally:
        ctl.close()
        sandboxes = state_dir / "netns"
        if sandboxes.exists():
            for name in os.listdir(sandboxes):
                netns.remove(str(sandboxes / name))


def test_two_hosts_over_vxlan_then_gre(
    netns_factory: Callable[[str], NetNS], ovs_factory: OvsFactory, tmp_path: Path, processes: Track
) -> None:
    ha, hb = netns_factory("hA"), netns_factory("hB")
    with ha.netlink() as nl:
        links.add_veth(nl, "ul", "ul", hb)
    ovs_a, ovs_b = ovs_factory(ha), ovs_factory(hb)
    underlay = {"a": ipaddress.IPv4Interface("192.0.2.1/24"), "b": ipaddress.IPv4Interface("192.0.2.2/24")}
    add_underlay_bridge(ovs_a, bridge="ulbr", uplink="ul", address=underlay["a"])
    add_underlay_bridge(ovs_b, bridge="ulbr", uplink="ul", address=underlay["b"])
    with controller_in(ha, tmp_path / "a") as ctl_a, controller_in(hb, tmp_path / "b") as ctl_b:
        for tunnel, key in (("vxlan", 42), ("gre", 43)):
            nets = {}
            for ctl, me, peer, ovs, ip_range in (
                (ctl_a, "a", "b", ovs_a, "10.210.0.0/25"),
                (ctl_b, "b", "a", ovs_b, "10.210.0.128/25"),
            ):
                nets[me] = ctl.create_network(
                    "mh",
                    driver="ovs",
                    ipam=IPAMConfig(subnet="10.210.0.0/24", ip_range=ip_range),
                    options={
                        "ovsdb": ovs.remote,
                        "peers": [str(underlay[peer].ip)],
                        "tunnel": tunnel,
                        "tunnel_key": key,
                    },
                )
            assert nets["a"].options["mtu"] == 1500 - (50 if tunnel == "vxlan" else 42)
            c1 = ctl_a.create_sandbox("c1", network="mh")
            c2 = ctl_b.create_sandbox("c2", network="mh")
            ip1, ip2 = str(nets["a"].endpoint("c1").ip), str(nets["b"].endpoint("c2").ip)
            # Each host gives out addresses, its gateway's included, from its own ip_range.
            assert ipaddress.IPv4Address(ip1) in ipaddress.IPv4Network("10.210.0.0/25")
            assert ipaddress.IPv4Address(ip2) in ipaddress.IPv4Network("10.210.0.128/25")
            assert nets["a"].gateway != nets["b"].gateway
            # The very first packet gets through (no flow to learn first); how fast is load's business.
            assert ping(c1, ip2, wait=2), f"{tunnel}: c1 cannot ping c2"
            assert ping(c2, ip1)
            server = processes(serve(c2, "tcp", 5000))
            assert probe(c1, "tcp", ip2, 5000) == ip1, f"{tunnel}: no TCP from c1 to c2"
            # A full-size packet fits: the sandbox MTU leaves room for the tunnel header.
            size = nets["a"].options["mtu"] - 28  # type: ignore[operator]
            assert c1.run(["ping", "-c1", "-W2", "-M", "do", "-s", str(size), ip2], capture_output=True).returncode == 0
            server.terminate()
            server.wait()
            for sb in (c1, c2):
                sb.delete()
            for net in nets.values():
                net.delete()
            for host, ovs in ((ha, ovs_a), (hb, ovs_b)):
                assert cnm_rows(ovs) == [], tunnel
                assert cnm_links(host) == [], tunnel
                assert [b.name for b in ovs.db.bridges()] == ["ulbr"]
                assert sorted(p.name for p in ovs.db.ports()) == ["ul", "ulbr"]


def test_stopped_daemons_fail_fast_and_leave_nothing_half_made(controller: Controller, ovs_factory: OvsFactory) -> None:
    ovs = ovs_factory(controller.host_netns)
    net = controller.create_network(
        "o1", driver="ovs", ipam=IPAMConfig(subnet="10.70.0.0/24"), options={"ovsdb": ovs.remote, "timeout": 1}
    )
    rows_before = cnm_rows(ovs)
    links_before = cnm_links(controller.host_netns)
    # ovs-vswitchd stopped: the change is not applied within the timeout and is taken back.
    # Which limit fires first, the wait for cur_cfg or the socket's, is load's choice:
    # both are a KernelError naming ovs-vswitchd. The bounds only tell failing from hanging.
    ovs.stop_switch()
    started = time.monotonic()
    with pytest.raises(errors.KernelError, match="ovs-vswitchd"):
        controller.create_sandbox("c1", network="o1")
    assert time.monotonic() - started < 30
    assert cnm_rows(ovs) == rows_before
    assert controller.sandboxes() == []
    assert net.endpoints() == []
    # ovsdb-server stopped: the next operation fails at once.
    ovs.stop_server()
    for attempt in (
        lambda: controller.create_sandbox("c2", network="o1"),
        lambda: controller.create_network(
            "o2", driver="ovs", ipam=IPAMConfig(subnet="10.71.0.0/24"), options={"ovsdb": ovs.remote}
        ),
    ):
        started = time.monotonic()
        with pytest.raises(errors.KernelError, match="ovsdb-server"):
            attempt()
        assert time.monotonic() - started < 30
    assert controller.sandboxes() == []
    assert [n.name for n in controller.networks()] == ["bridge", "host", "none", "o1"]
    assert cnm_links(controller.host_netns) == links_before
    # Back up, everything is as it was and deletes cleanly.
    ovs.start_server()
    ovs.start_switch()
    assert cnm_rows(ovs) == rows_before
    net.delete()
    assert cnm_rows(ovs) == []
    assert cnm_links(controller.host_netns) == []


def test_a_committed_change_waits_through_an_ovsdb_server_restart(
    controller: Controller, ovs_factory: OvsFactory
) -> None:
    # The port is committed, then ovsdb-server goes away while the change waits for a stopped
    # ovs-vswitchd, and both come back: the call waits on through a new connection and succeeds.
    # (Reported as failed, it would leave a row that a retry meets as AlreadyExists.)
    ovs = ovs_factory(controller.host_netns)
    ids = {"cnm-test": "restart"}
    ovs.db.add_bridge("cnmrb", datapath_type="netdev", external_ids=ids)
    ovs.stop_switch()

    def restart_once_committed() -> None:
        deadline = time.monotonic() + 30
        while ovs.db.port("cnmrp") is None:
            assert time.monotonic() < deadline, "the port was never committed"
            time.sleep(0.02)
        ovs.stop_server()
        ovs.start_server()
        ovs.start_switch()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        restarted = pool.submit(restart_once_committed)
        Ovsdb(ovs.remote, timeout=60).add_port("cnmrb", PortSpec(name="cnmrp", type="internal", external_ids=ids))
        restarted.result()
    [iface] = [i for i in ovs.db.interfaces() if i.name == "cnmrp"]
    assert iface.error is None
    assert iface.ofport is not None
    assert iface.ofport > 0
    assert sorted(p.name for p in ovs.db.ports() if p.external_ids == ids) == ["cnmrb", "cnmrp"]
    ovs.db.delete_bridge("cnmrb")
