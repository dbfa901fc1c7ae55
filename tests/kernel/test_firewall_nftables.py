"""NftablesFirewall against the real kernel: its table compared with golden listings, and real packets.

Each test gets its own throwaway namespace ("host") holding a table that is not
cnm's (``table inet foreign``), which must survive whatever cnm does. The tests
run the ``nft`` binary to look; the library never does. Set
``CNM_UPDATE_GOLDEN=1`` to rewrite the golden files.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cnm import Controller, IPAMConfig, PortBinding
from cnm.errors import InvalidConfig
from cnm.firewall.nftables import NftablesFirewall
from cnm.firewall.none import NoFirewall
from cnm.firewallapi import Firewall, FirewallNetwork, LinkRule, NetworkRules, open_firewall
from cnm.kernel.netns import NetNS
from cnm.testing.hosts import Outside, unmount_sandboxes
from cnm.testing.traffic import ping, probe, serve
from tests.kernel.firewall_cases import NET_A, NET_B, NET_INTERNAL, NET_NOICC, port

pytestmark = pytest.mark.kernel

GOLDEN = Path(__file__).parent / "golden" / "firewall_nft"
FOREIGN = "table inet foreign {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n}\n"

PORTS_A = (
    port("tcp", "8080", "172.28.0.2", "80"),
    port("udp", "9000-9002", "172.28.0.2", "900-902", host_ip="192.0.2.1"),
    port("tcp", "7000-7001", "172.28.0.3", "70"),
)
PORTS_B = (port("tcp", "8443", "172.29.0.2", "443"),)
PORTS_NOICC = (port("tcp", "8081", "172.30.0.2", "80"),)
LINK = LinkRule(
    source_ip=ipaddress.IPv4Address("172.30.0.3"),
    target_ip=ipaddress.IPv4Address("172.30.0.2"),
    ports=(("tcp", 3306), ("udp", 5432)),
)
EVERYTHING = (
    NetworkRules(network=NET_A, ports=PORTS_A),
    NetworkRules(network=NET_B, ports=PORTS_B),
    NetworkRules(network=NET_NOICC, ports=PORTS_NOICC, links=(LINK,)),
    NetworkRules(network=NET_INTERNAL),
)


def nft(ns: NetNS, *args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", "netns", "exec", ns.name, "nft", *args], capture_output=True, text=True, check=check)
    return result.stdout


def ruleset(ns: NetNS) -> str:
    return nft(ns, "list", "ruleset")


def cnm_table(ns: NetNS, table: str | None = None) -> str:
    """A cnm table of ``ns``; by default the only one (a controller's is named from its owner id)."""
    if table is None:
        tables = re.findall(r"(?m)^table inet (cnm_\w+)$", nft(ns, "list", "tables"))
        if "cnm_default" in tables:  # the fixture's firewall, beside another owner's
            tables = ["cnm_default"]
        assert len(tables) == 1, f"expected one cnm table, found {tables}"
        table = tables[0]
    return nft(ns, "list", "table", "inet", table)


def assert_golden(ns: NetNS, case: str) -> None:
    """Compare cnm's table with ``golden/firewall_nft/<case>.nft``; the foreign table is still there."""
    actual = cnm_table(ns)
    path = GOLDEN / f"{case}.nft"
    if os.environ.get("CNM_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
    assert path.exists(), f"no golden file {path}; run with CNM_UPDATE_GOLDEN=1 to create it"
    assert actual == path.read_text(), f"table differs from {path}"
    assert nft(ns, "list", "table", "inet", "foreign") == FOREIGN


@pytest.fixture
def host(netns_factory: Callable[[str], NetNS]) -> NetNS:
    """A throwaway "host" namespace with one nftables table that is not cnm's."""
    ns = netns_factory("nf")
    subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-f", "-"], input=FOREIGN, text=True, check=True)
    return ns


@pytest.fixture
def fw(host: NetNS) -> Iterator[NftablesFirewall]:
    firewall = NftablesFirewall(host)
    yield firewall
    firewall.close()


def _build_everything(fw: NftablesFirewall) -> None:
    fw.setup_network(NET_A)
    fw.add_ports(NET_A, PORTS_A)
    fw.setup_network(NET_B)
    fw.add_ports(NET_B, PORTS_B)
    fw.setup_network(NET_NOICC)
    fw.add_ports(NET_NOICC, PORTS_NOICC)
    fw.add_link(NET_NOICC, LINK)
    fw.setup_network(NET_INTERNAL)


def test_is_a_firewall(fw: NftablesFirewall) -> None:
    assert isinstance(fw, Firewall)
    assert isinstance(NoFirewall(), Firewall)


def test_one_network_with_published_ports(host: NetNS, fw: NftablesFirewall) -> None:
    fw.setup_network(NET_A)
    fw.add_ports(NET_A, PORTS_A)
    assert_golden(host, "published_ports")


def test_everything_and_setup_is_idempotent(host: NetNS, fw: NftablesFirewall) -> None:
    _build_everything(fw)
    _build_everything(fw)
    assert_golden(host, "everything")


def test_removing_is_idempotent_and_leaves_the_network_as_set_up(host: NetNS, fw: NftablesFirewall) -> None:
    fw.setup_network(NET_NOICC)
    fw.setup_network(NET_A)
    only_networks = cnm_table(host)
    fw.add_ports(NET_NOICC, PORTS_NOICC)
    fw.add_link(NET_NOICC, LINK)
    fw.add_ports(NET_A, [PORTS_A[0]])
    for _ in range(2):
        fw.remove_ports(NET_NOICC, PORTS_NOICC)
        fw.remove_link(NET_NOICC, LINK)
        fw.remove_ports(NET_A, [PORTS_A[0]])
    assert cnm_table(host) == only_networks
    for _ in range(2):
        fw.teardown_network(NET_NOICC)
        fw.teardown_network(NET_A)
    assert_golden(host, "after_teardown")


def test_removing_from_a_namespace_cnm_never_used_writes_nothing(host: NetNS, fw: NftablesFirewall) -> None:
    before = ruleset(host)
    fw.remove_ports(NET_A, PORTS_A)
    fw.remove_link(NET_NOICC, LINK)
    fw.teardown_network(NET_A)
    assert fw.cleanup() == 0
    assert ruleset(host) == before == FOREIGN


def test_teardown_then_cleanup_removes_the_table_and_nothing_else(host: NetNS, fw: NftablesFirewall) -> None:
    _build_everything(fw)
    for network in (NET_A, NET_B, NET_NOICC, NET_INTERNAL):
        fw.teardown_network(network)
    assert_golden(host, "after_teardown")
    assert fw.cleanup() == 2  # the shared jumps in prerouting and output
    assert ruleset(host) == FOREIGN


def test_cleanup_keeps_the_networks_it_is_told_to(host: NetNS, fw: NftablesFirewall) -> None:
    fw.setup_network(NET_A)
    fw.add_ports(NET_A, PORTS_A)
    fw.setup_network(NET_B)
    fw.add_ports(NET_B, PORTS_B)
    assert fw.cleanup(keep=[NET_A.id]) == 13  # B: 1 isolation, 5 forward, 2 published, 4 postrouting, 1 raw
    assert_golden(host, "published_ports")


def test_reapply_repairs_a_deleted_table_and_drops_unknown_networks(host: NetNS, fw: NftablesFirewall) -> None:
    _build_everything(fw)
    stale = FirewallNetwork(id="e5" * 32, interface="br-e5e5e5e5e5e5", subnet=ipaddress.IPv4Network("10.5.0.0/16"))
    fw.setup_network(stale)
    fw.add_ports(stale, (port("tcp", "5555", "10.5.0.2", "55"),))
    fw.reapply(EVERYTHING)
    assert_golden(host, "everything")
    nft(host, "delete", "table", "inet", "cnm_default")  # what `nft flush ruleset` does to cnm's part
    fw.reapply(EVERYTHING)
    assert_golden(host, "everything")


def test_two_owners_keep_to_their_own_tables(host: NetNS, fw: NftablesFirewall) -> None:
    other = NftablesFirewall(host, owner="0123456789ab")
    try:
        fw.setup_network(NET_A)
        fw.add_ports(NET_A, PORTS_A)
        other.setup_network(NET_B)
        other.add_ports(NET_B, PORTS_B)
        other.teardown_network(NET_A)  # not its network: nothing of cnm_default moves
        assert_golden(host, "published_ports")
        assert other.cleanup() > 0
        assert "cnm_0123456789ab" not in ruleset(host)
        assert_golden(host, "published_ports")
    finally:
        other.close()


def test_an_owner_nft_cannot_name_is_refused(host: NetNS) -> None:
    with pytest.raises(InvalidConfig, match="owner"):
        NftablesFirewall(host, owner="Bad-Owner")
    with pytest.raises(InvalidConfig, match="iptables, nftables, none"):
        open_firewall("pf", host)


def test_publishing_one_port_is_an_element_add_at_a_thousand(host: NetNS, fw: NftablesFirewall) -> None:
    fw.setup_network(NET_A)
    fw.add_ports(NET_A, [port("tcp", str(10000 + i), f"172.28.{i // 250}.{i % 250 + 2}", "80") for i in range(1000)])
    rules = cnm_table(host).count("\n")
    extra = port("tcp", "20000", "172.28.9.9", "80")
    fw.add_ports(NET_A, [extra])
    assert "tcp . 20000 : 172.28.9.9" in cnm_table(host)
    fw.remove_ports(NET_A, [extra])
    assert "tcp . 20000" not in cnm_table(host)
    assert nft(host, "list", "chain", "inet", "cnm_default", "published").count("dnat") == 2  # no rule per port
    assert cnm_table(host).count("\n") == rules


# -- real packets ------------------------------------------------------------------------------
Track = Callable[[subprocess.Popen[Any]], subprocess.Popen[Any]]


@pytest.fixture
def nft_controller(tmp_path: Any, host_netns: NetNS) -> Iterator[Controller]:
    state_dir = str(tmp_path / "state")
    ctl = Controller(state_dir=state_dir, host_netns=host_netns, firewall="nftables", predefined=False)
    try:
        yield ctl
    finally:
        ctl.close()
        unmount_sandboxes(state_dir)


def test_none_writes_no_rules(tmp_path: Any, host_netns: NetNS, outside: Outside) -> None:
    state_dir = str(tmp_path / "state")
    with Controller(state_dir=state_dir, host_netns=host_netns, firewall="none", predefined=False) as ctl:
        assert isinstance(ctl.firewall, NoFirewall)
        net = ctl.create_network("n", ipam=IPAMConfig(subnet="172.24.0.0/24"))
        a = ctl.create_sandbox("a", network="n", ports=[PortBinding(container_port=80, host_port=8093)])
        b = ctl.create_sandbox("b", network="n")
        assert ping(b, str(net.endpoint("a").ip))  # the bridge itself needs no rule
        assert nft(host_netns, "list", "ruleset") == ""
        a.delete()
        b.delete()
        net.delete()
    unmount_sandboxes(state_dir)


def test_a_legacy_link_on_an_icc_false_network_opens_only_its_ports(
    nft_controller: Controller, processes: Track
) -> None:
    ctl = nft_controller
    net = ctl.create_network("icc", ipam=IPAMConfig(subnet="172.23.0.0/24"), options={"icc": False})
    db = ctl.create_sandbox("db", network="icc", exposed=["3306/tcp", "5432/udp"])
    other = ctl.create_sandbox("other", network="icc")
    app = ctl.create_sandbox("app", network="icc", links=[("db", "db")])
    db_ip, app_ip = str(net.endpoint("db").ip), str(net.endpoint("app").ip)
    for proto, number in (("tcp", 3306), ("udp", 5432), ("tcp", 8000)):
        processes(serve(db, proto, number))
    assert probe(app, "tcp", db_ip, 3306) == app_ip
    assert probe(app, "udp", db_ip, 5432) == app_ip
    assert probe(app, "tcp", db_ip, 8000, timeout=1) is None  # not an exposed port
    assert probe(other, "tcp", db_ip, 3306, timeout=1) is None  # no link
    assert "172.23.0.3 . 172.23.0.2 . tcp . 3306" in cnm_table(ctl.host_netns).replace(app_ip, "172.23.0.3").replace(
        db_ip, "172.23.0.2"
    )
    app.unlink("db")
    assert probe(app, "tcp", db_ip, 3306, timeout=1) is None
    for s in (app, other, db):
        s.delete()
    net.delete()


def test_reapply_firewall_repairs_a_flushed_ruleset(
    nft_controller: Controller, outside: Outside, processes: Track
) -> None:
    ctl = nft_controller
    net = ctl.create_network("web", ipam=IPAMConfig(subnet="172.22.0.0/24"))
    server = ctl.create_sandbox("srv", network="web", ports=[PortBinding(container_port=80, host_port=8094)])
    processes(serve(server, "tcp", 80))
    address = str(outside.host_address)
    before = cnm_table(ctl.host_netns)
    assert probe(outside, "tcp", address, 8094) == str(outside.address)
    nft(ctl.host_netns, "flush", "ruleset")
    assert probe(outside, "tcp", address, 8094, timeout=1) is None
    ctl.reapply_firewall()
    assert cnm_table(ctl.host_netns) == before
    assert probe(outside, "tcp", address, 8094) == str(outside.address)
    # A second controller on the same state_dir reconciles to the same table.
    with Controller(state_dir=ctl.state_dir, host_netns=ctl.host_netns, firewall="nftables", predefined=False):
        assert cnm_table(ctl.host_netns) == before
    server.delete()
    net.delete()


def test_the_cli_takes_the_backend_from_a_flag_or_the_environment(host_netns: NetNS, tmp_path: Path) -> None:
    def cnm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv = [
            sys.executable,
            "-m",
            "cnm.cli",
            "--state-dir",
            str(tmp_path / "state"),
            "--host-netns",
            host_netns.path,
        ]
        return subprocess.run(
            [*argv, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}, check=False
        )

    created = cnm("--firewall", "nftables", "network", "create", "--subnet", "10.77.0.0/24", "fwnet")
    assert created.returncode == 0, created.stderr
    assert "ip saddr 10.77.0.0/24" in cnm_table(host_netns)
    removed = cnm("network", "rm", "fwnet", env={"CNM_FIREWALL": "nftables"})
    assert removed.returncode == 0, removed.stderr
    assert "10.77.0.0/24" not in cnm_table(host_netns)
    assert cnm("--firewall", "pf", "network", "ls").returncode == 2
