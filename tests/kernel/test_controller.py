"""Controller-level guarantees: bad input leaves nothing behind, state survives a reopen,
controllers in different host namespaces never see each other, nothing leaks."""

from __future__ import annotations

import ipaddress
import os
import re
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cnm import Controller, IPAMConfig, PortBinding, errors
from cnm.kernel import links
from cnm.kernel.netns import NetNS
from cnm.testing.hosts import Outside, iptables_save, settled, unmount_sandboxes
from cnm.testing.traffic import ping, probe, serve
from cnm.types import PortRange

pytestmark = pytest.mark.kernel

GOLDEN = Path(__file__).parent / "golden" / "controller"


def host_links(ns: NetNS) -> list[str]:
    with ns.netlink() as nl:
        return sorted(link.name for link in links.list_links(nl))


def store_rows(ctl: Controller) -> list[tuple[str, str]]:
    """Every stored object; the ephemeral-port cursor is state of the allocator, not an object."""
    with sqlite3.connect(os.path.join(ctl.state_dir, "cnm.db")) as db:
        return sorted(db.execute("SELECT kind, key FROM records WHERE kind != 'port.cursor'"))


def snapshot(ctl: Controller) -> tuple[list[str], str, list[tuple[str, str]], list[str]]:
    netns_dir = os.path.join(ctl.state_dir, "netns")
    mounts = sorted(os.listdir(netns_dir)) if os.path.isdir(netns_dir) else []
    return host_links(ctl.host_netns), iptables_save(ctl.host_netns), store_rows(ctl), mounts


def normalise(text: str, ctl: Controller) -> str:
    """Replace ids and generated names by stable placeholders for golden files."""
    text = text.replace(ctl.owner_id, "<owner>")
    for net in ctl.networks():
        text = text.replace(net.id[:12], f"<{net.name}-id>").replace(net.id[:11], f"<{net.name}-id>")
    # iptables-save lists user chains by name, and a network's own chains are named by its id: sort them again.
    text = re.sub(r"(?m)(?:^:\S+ -\n)+", lambda chains: "".join(sorted(chains[0].splitlines(True))), text)
    # Each network's block in CNM goes to the top of the chain, so the blocks' order follows which network
    # was (re)applied last; only the order inside a block means anything (every rule matches its own bridge).
    return re.sub(r"(?m)(?:^-A CNM ! .*\n)+", lambda block: "".join(_by_network(block[0].splitlines(True))), text)


def _by_network(rules: list[str]) -> list[str]:
    """The rules grouped by the network placeholder they carry, groups in name order, each group's order kept."""
    return sorted(rules, key=lambda rule: re.findall(r"<[a-z-]+-id>", rule)[-1])


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.rules"
    if os.environ.get("CNM_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"rules differ from {path}; CNM_UPDATE_GOLDEN=1 regenerates it"


BAD_INPUTS: list[tuple[str, type[errors.CNMError], Callable[[Controller], object]]] = [
    ("malformed subnet", errors.InvalidConfig, lambda c: c.create_network("x", ipam=IPAMConfig(subnet="10.1.2.3/33"))),
    ("host bits", errors.InvalidConfig, lambda c: c.create_network("x", ipam=IPAMConfig(subnet="10.1.2.3/24"))),
    (
        "gateway outside",
        errors.InvalidConfig,
        lambda c: c.create_network("x", ipam=IPAMConfig(subnet="10.1.0.0/24", gateway="10.2.0.1")),
    ),
    ("overlap", errors.PoolOverlap, lambda c: c.create_network("x", ipam=IPAMConfig(subnet="10.50.0.0/24"))),
    ("duplicate", errors.AlreadyExists, lambda c: c.create_network("base")),
    ("unknown driver", errors.DriverNotFound, lambda c: c.create_network("x", driver="nope")),
    ("unknown option", errors.InvalidConfig, lambda c: c.create_network("x", options={"colour": "blue"})),
    ("bridge name too long", errors.InvalidConfig, lambda c: c.create_network("x", options={"bridge_name": "b" * 16})),
    ("bad name", errors.InvalidConfig, lambda c: c.create_network("no spaces")),
    ("bad mtu", errors.InvalidConfig, lambda c: c.create_network("x", options={"mtu": 10})),
    (
        "port published twice",
        errors.PortInUse,
        lambda c: c.network("base").create_endpoint("e2", ports=[PortBinding(container_port=1, host_port=8080)]),
    ),
    (
        "port held by a host program",
        errors.PortInUse,
        lambda c: c.network("base").create_endpoint("e2", ports=[PortBinding(container_port=1, host_port=9999)]),
    ),
    (
        "address taken",
        errors.AddressInUse,
        lambda c: c.network("base").create_endpoint("e2", ip="10.50.0.2"),
    ),
    ("duplicate endpoint", errors.AlreadyExists, lambda c: c.network("base").create_endpoint("e1")),
    ("duplicate sandbox", errors.AlreadyExists, lambda c: c.create_sandbox("s1")),
    ("network with endpoints", errors.ActiveEndpoints, lambda c: c.network("base").delete()),
    ("predefined network", errors.Forbidden, lambda c: c.network("bridge").delete()),
    ("unknown network", errors.NetworkNotFound, lambda c: c.network("ghost")),
    ("sandbox on unknown network", errors.NetworkNotFound, lambda c: c.create_sandbox("s9", network="ghost")),
    ("bad port", errors.InvalidConfig, lambda c: PortBinding(container_port=70000)),
    ("bad protocol", errors.InvalidConfig, lambda c: PortBinding(container_port=80, protocol="sctp")),
]


@pytest.mark.parametrize(("case", "error", "call"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_and_leaves_nothing(
    controller: Controller,
    processes: Callable[[subprocess.Popen[Any]], subprocess.Popen[Any]],
    case: str,
    error: type[errors.CNMError],
    call: Callable[[Controller], object],
) -> None:
    net = controller.create_network("base", ipam=IPAMConfig(subnet="10.50.0.0/24"))
    sb = controller.create_sandbox("s1")
    ep = net.create_endpoint("e1", ports=[PortBinding(container_port=80, host_port=8080)])
    ep.join(sb)

    class HostNs:
        def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
            return subprocess.Popen(["nsenter", f"--net={controller.host_netns.path}", "--", *argv], **kwargs)

    processes(serve(HostNs(), "tcp", 9999))  # type: ignore[arg-type]
    before = snapshot(controller)
    with pytest.raises(error) as info:
        call(controller)
    assert str(info.value), "every error says what failed"
    assert snapshot(controller) == before, f"{case}: something was left behind"
    sb.delete()
    ep.delete()
    net.delete()


def test_state_survives_reopening_the_state_dir(host_netns: NetNS, outside: Outside, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    with Controller(state_dir=state, host_netns=host_netns) as ctl:
        net = ctl.create_network("keep", ipam=IPAMConfig(subnet="10.60.0.0/24"))
        sb = ctl.create_sandbox("k1", network="keep", ports=[PortBinding(container_port=80)])
        before = {
            "networks": [(n.name, n.id, str(n.subnet)) for n in ctl.networks()],
            "sandboxes": [(s.name, s.id, s.netns_path) for s in ctl.sandboxes()],
            "endpoint": (net.endpoint("k1").ip, net.endpoint("k1").mac, net.endpoint("k1").ports),
        }
        assert sb.netns.exists()
    with Controller(state_dir=state, host_netns=host_netns) as ctl:
        net = ctl.network("keep")
        after = {
            "networks": [(n.name, n.id, str(n.subnet)) for n in ctl.networks()],
            "sandboxes": [(s.name, s.id, s.netns_path) for s in ctl.sandboxes()],
            "endpoint": (net.endpoint("k1").ip, net.endpoint("k1").mac, net.endpoint("k1").ports),
        }
        assert after == before
        # Allocations were restored: the next address and the same host port are taken.
        e2 = net.create_endpoint("k2")
        assert str(e2.ip) == "10.60.0.3"
        port = net.endpoint("k1").ports[0].host_port
        with pytest.raises(errors.PortInUse):
            net.create_endpoint("k3", ports=[PortBinding(container_port=80, host_port=port)])
        assert ping(ctl.sandbox("k1"), "10.60.0.1")
        e2.delete()
        ctl.sandbox("k1").delete()
        net.delete()


def test_two_controllers_in_one_process_never_see_each_other(
    netns_factory: Callable[[str], NetNS], tmp_path: Path
) -> None:
    ns_a, ns_b = netns_factory("ha"), netns_factory("hb")
    with (
        # iptables: the rules are read with iptables-legacy-save (nftables' per-owner tables: test_firewall_nftables).
        Controller(state_dir=str(tmp_path / "a"), host_netns=ns_a, firewall="iptables") as a,
        Controller(state_dir=str(tmp_path / "b"), host_netns=ns_b, firewall="iptables") as b,
    ):
        rules_b = iptables_save(ns_b)
        links_b = host_links(ns_b)
        net = a.create_network("only-a", ipam=IPAMConfig(subnet="10.70.0.0/24"))
        sb = a.create_sandbox("sa", network="only-a", ports=[PortBinding(container_port=80, host_port=8080)])
        assert iptables_save(ns_b) == rules_b
        assert host_links(ns_b) == links_b
        assert [n.name for n in b.networks()] == ["bridge", "host", "none"]
        # The same subnet and host port are free in the other host.
        net_b = b.create_network("only-b", ipam=IPAMConfig(subnet="10.70.0.0/24"))
        sb_b = b.create_sandbox("sb", network="only-b", ports=[PortBinding(container_port=80, host_port=8080)])
        assert "10.70.0.0/24" not in iptables_save(ns_a).replace("-s 10.70.0.0/24 ! -o cnm-" + net.id[:11], "").replace(
            "-s 10.70.0.0/24 ! -o cnm-" + net_b.id[:11], "<other>"
        )
        for s in (sb, sb_b):
            s.delete()
        net.delete()
        net_b.delete()


def owned_lines(ns: NetNS, owner: str) -> list[str]:
    """The rules tagged as ``owner``'s."""
    return [line for line in iptables_save(ns).splitlines() if f"cnm:{owner}:" in line]


def owned_links(ns: NetNS, owner: str) -> list[str]:
    with ns.netlink() as nl:
        return sorted(link.name for link in links.list_links(nl) if link.alias == f"cnm:{owner}")


def test_two_state_dirs_on_one_host_namespace_leave_each_other_alone(
    host_netns: NetNS,
    outside: Outside,
    tmp_path: Path,
    processes: Callable[[subprocess.Popen[Any]], subprocess.Popen[Any]],
) -> None:
    state_a, state_b = str(tmp_path / "a"), str(tmp_path / "b")
    with Controller(state_dir=state_a, host_netns=host_netns, firewall="iptables") as a:  # owned_lines reads iptables
        net_a = a.create_network("app", ipam=IPAMConfig(subnet="10.71.0.0/24"))
        web = a.create_sandbox("web", network="app", ports=[PortBinding(container_port=80, host_port=8080)])
        db = a.create_sandbox("db", network="app")
        server = processes(serve(web, "tcp", 80))
        links_a, rules_a = owned_links(host_netns, a.owner_id), owned_lines(host_netns, a.owner_id)
        assert {"cnm0", f"cnm-{net_a.id[:11]}"} < set(links_a)
        assert len(links_a) == 4  # 2 bridges, 2 veths
        # The second controller opens (predefined networks too) and reconciles: the first's objects stay.
        with Controller(state_dir=state_b, host_netns=host_netns, firewall="iptables") as b:
            assert b.owner_id != a.owner_id
            bridge_b = b.network("bridge")
            assert bridge_b.options["bridge_name"] == "cnm0-" + b.owner_id[:10]
            assert bridge_b.subnet != a.network("bridge").subnet
            net_b = b.create_network("other", ipam=IPAMConfig(subnet="10.72.0.0/24"))
            sb_b = b.create_sandbox("b1", network="other", ports=[PortBinding(container_port=80, host_port=8081)])
            links_b, rules_b = owned_links(host_netns, b.owner_id), owned_lines(host_netns, b.owner_id)
            assert len(links_b) == 3  # 2 bridges, 1 veth
            assert rules_b
            for ctl in (b, a, b):
                assert not ctl.reconcile().actions
            assert owned_links(host_netns, a.owner_id) == links_a
            assert owned_lines(host_netns, a.owner_id) == rules_a
            assert owned_links(host_netns, b.owner_id) == links_b
            assert owned_lines(host_netns, b.owner_id) == rules_b
            assert ping(db, str(net_a.endpoint("web").ip))
            assert probe(outside, "tcp", str(outside.host_address), 8080) is not None
            # Deleting one controller's networks and cleaning up all its rules leaves the other's.
            sb_b.delete()
            net_b.delete()
            b.firewall.cleanup()
            assert owned_lines(host_netns, b.owner_id) == []
            assert owned_lines(host_netns, a.owner_id) == rules_a
        assert probe(outside, "tcp", str(outside.host_address), 8080) is not None
        server.terminate()
        server.wait()
        for sb in (web, db):
            sb.delete()
        net_a.delete()


def test_deleting_everything_leaves_nothing(
    controller: Controller, outside: Outside, processes: Callable[[subprocess.Popen[Any]], subprocess.Popen[Any]]
) -> None:
    before = snapshot(controller)
    net = controller.create_network("tmp", ipam=IPAMConfig(subnet="10.80.0.0/24"), options={"icc": False})
    sandboxes = [
        controller.create_sandbox(f"t{i}", network="tmp", ports=[PortBinding(container_port=80)]) for i in range(3)
    ]
    server = processes(serve(sandboxes[0], "tcp", 80))
    port = net.endpoint("t0").ports[0].host_port
    assert port is not None
    assert probe(outside, "tcp", str(outside.host_address), port.start) is not None
    server.terminate()
    server.wait()
    for s in sandboxes:
        s.delete()
    net.delete()
    assert settled(lambda: snapshot(controller), lambda now: now == before) == before


@pytest.fixture
def iptables_controller(tmp_path: Path, host_netns: NetNS) -> Iterator[Controller]:
    """A Controller on the iptables backend, whose Docker layout the golden file holds."""
    state_dir = str(tmp_path / "state")
    ctl = Controller(state_dir=state_dir, host_netns=host_netns, firewall="iptables")
    try:
        yield ctl
    finally:
        ctl.close()
        unmount_sandboxes(state_dir)


def test_firewall_layout_golden(iptables_controller: Controller) -> None:
    controller = iptables_controller
    base = iptables_save(controller.host_netns)
    net = controller.create_network("web", ipam=IPAMConfig(subnet="10.90.0.0/24"), options={"icc": False})
    inner = controller.create_network("back", ipam=IPAMConfig(subnet="10.91.0.0/24"), internal=True)
    sb = controller.create_sandbox(
        "w1",
        network="web",
        ports=[
            PortBinding(container_port=80, host_port=8080),
            PortBinding(container_port="5000-5002", host_port="15000-15002", protocol="udp"),
        ],
    )
    check_golden("web_and_internal", normalise(iptables_save(controller.host_netns), controller))
    sb.delete()
    inner.delete()
    net.delete()
    assert iptables_save(controller.host_netns) == base


def test_default_pools_skip_host_routes_and_ephemeral_range_is_configurable(
    host_netns: NetNS, outside: Outside, tmp_path: Path
) -> None:
    from cnm.kernel import addresses

    with host_netns.netlink() as nl:
        addresses.add_address(nl, "uplink0", ipaddress.IPv4Interface("172.17.5.1/24"))
    with Controller(state_dir=str(tmp_path / "s"), host_netns=host_netns, ephemeral_ports="40000-40001") as ctl:
        # 172.17.0.0/16 overlaps a host address, so the default bridge takes the next pool.
        assert str(ctl.network("bridge").subnet) == "172.18.0.0/16"
        net = ctl.create_network("auto")
        assert str(net.subnet) == "172.19.0.0/16"
        e1 = net.create_endpoint("e1", ports=[PortBinding(container_port=80)])
        e2 = net.create_endpoint("e2", ports=[PortBinding(container_port=80)])
        assert {e1.ports[0].host_port, e2.ports[0].host_port} == {PortRange(40000, 40000), PortRange(40001, 40001)}
        with pytest.raises(errors.Exhausted):
            net.create_endpoint("e3", ports=[PortBinding(container_port=80)])
        e1.delete()
        e2.delete()
        net.delete()
