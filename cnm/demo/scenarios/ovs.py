"""Open vSwitch: one network spanning two hosts, over VXLAN and then GRE."""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

from cnm import Controller, IPAMConfig
from cnm.demo.harness import Demo, expect, scenario
from cnm.kernel import links, netns


@scenario("ovs", "an Open vSwitch network spanning two hosts, over VXLAN and then GRE")
def _ovs(demo: Demo) -> Iterator[str]:
    # cnm.testing.ovs imports pytest; only this scenario needs it.
    from cnm.testing.ovs import OvsDaemons, add_underlay_bridge, ovs_available  # noqa: PLC0415 - needs pytest

    reason = ovs_available()
    expect(reason is None, f"cannot run Open vSwitch here: {reason}")
    hosts = {label: demo.namespace(label) for label in ("ovs-a", "ovs-b")}
    with hosts["ovs-a"].netlink() as nl:
        links.add_veth(nl, "ul", "ul", hosts["ovs-b"])
    underlay = {
        "ovs-a": ipaddress.IPv4Interface("198.51.100.1/24"),
        "ovs-b": ipaddress.IPv4Interface("198.51.100.2/24"),
    }
    ctls: dict[str, Controller] = {}
    daemons: dict[str, OvsDaemons] = {}
    for label, ns in hosts.items():
        daemons[label] = OvsDaemons(ns, Path(demo.ctl.state_dir) / label / "ovs")
        demo.defer(daemons[label].stop)
        daemons[label].start()
        add_underlay_bridge(daemons[label], bridge="ulbr", uplink="ul", address=underlay[label])
        state_dir = os.path.join(demo.ctl.state_dir, label, "state")
        ctls[label] = Controller(state_dir=state_dir, host_netns=ns)
        demo.defer(ctls[label].close)
        demo.defer(functools.partial(_unmount_sandboxes, state_dir))
    yield f"two hosts {', '.join(ns.name for ns in hosts.values())}, each with its own ovsdb-server and ovs-vswitchd"
    yield f"      underlay: {underlay['ovs-a']} <-> {underlay['ovs-b']} on OVS bridges ulbr"
    for tunnel, key in (("vxlan", 42), ("gre", 43)):
        nets = {}
        for label, peer, ip_range in (("ovs-a", "ovs-b", "10.89.11.0/25"), ("ovs-b", "ovs-a", "10.89.11.128/25")):
            nets[label] = ctls[label].create_network(
                "span",
                driver="ovs",
                ipam=IPAMConfig(subnet="10.89.11.0/24", ip_range=ip_range),
                options={
                    "ovsdb": daemons[label].remote,
                    "peers": [str(underlay[peer].ip)],
                    "tunnel": tunnel,
                    "tunnel_key": key,
                },
            )
            demo.defer(nets[label].delete)
        c1 = ctls["ovs-a"].create_sandbox("c1", network="span")
        demo.defer(c1.delete)
        c2 = ctls["ovs-b"].create_sandbox("c2", network="span")
        demo.defer(c2.delete)
        ip1, ip2 = nets["ovs-a"].endpoint("c1").ip, nets["ovs-b"].endpoint("c2").ip
        ok, line = demo.ping(c1, ip2)
        expect(ok, f"{tunnel}: c1 on host a cannot ping c2 on host b: {line}")
        tunnels = [p for p in daemons["ovs-a"].db.interfaces() if p.type == tunnel]
        expect(bool(tunnels), f"no {tunnel} interface in host a's OVSDB")
        yield (
            f"{tunnel} (key {key}, MTU {nets['ovs-a'].options['mtu']}): c1 {ip1} on host a pings c2 {ip2} "
            f"on host b: {line}"
        )
        yield f"      host a's OVSDB: interface {tunnels[0].name} type {tunnel} options {dict(tunnels[0].options)}"
        c1.delete()
        c2.delete()
        for net in nets.values():
            net.delete()


def _unmount_sandboxes(state_dir: str) -> None:
    directory = os.path.join(state_dir, "netns")
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        netns.remove(os.path.join(directory, name))
