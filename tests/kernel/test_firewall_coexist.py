"""The nftables backend beside other firewalls that drop forwarded traffic, with real packets.

Each test's throwaway host namespace first gets another firewall: Docker's real
iptables-nft rules (``golden/coexist/docker.iptables-nft``, FORWARD policy
DROP, loaded with ``iptables-nft-restore``) or a firewalld-like table (``table
inet firewalld``: forward and input base chains with policy drop). cnm's
sandboxes must still reach each other, go out masqueraded and be reached on a
published port from an outside namespace; a connection routed straight to a
sandbox's address stays dropped; ``iptables-nft`` can still list its table;
after cnm leaves, the other firewall is what it was (``nft -s list ruleset``
compared, cnm's table left out); and a ``flush ruleset`` followed by the other
firewall's reload is repaired by ``reapply_firewall()``.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cnm import Controller, IPAMConfig, PortBinding
from cnm.kernel.netns import NetNS
from cnm.testing.hosts import Outside, unmount_sandboxes
from cnm.testing.traffic import ping, probe, serve

pytestmark = pytest.mark.kernel

DOCKER_RULES = (Path(__file__).parent / "golden" / "coexist" / "docker.iptables-nft").read_text()
FIREWALLD = """table inet firewalld {
\tchain filter_INPUT {
\t\ttype filter hook input priority filter + 10; policy drop;
\t\tct state established,related accept
\t\tiifname "lo" accept
\t\ttcp dport 22 accept
\t}

\tchain filter_FORWARD {
\t\ttype filter hook forward priority filter + 10; policy drop;
\t\tct state established,related accept
\t\tct state invalid drop
\t}
}
"""
Track = Callable[[subprocess.Popen[Any]], subprocess.Popen[Any]]


def _in(ns: NetNS, *argv: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns.name, *argv], input=stdin, capture_output=True, text=True, check=True
    ).stdout


def load(ns: NetNS, which: str) -> None:
    """Load the other firewall ``which`` ("docker" or "firewalld") into ``ns``, as it would at its start."""
    if which == "docker":
        _in(ns, "iptables-nft-restore", stdin=DOCKER_RULES)
    else:
        _in(ns, "nft", "-f", "-", stdin=FIREWALLD)


def others(ns: NetNS) -> str:
    """``nft -s list ruleset`` (no counters, no handles) with cnm's tables left out."""
    return re.sub(r"(?ms)^table inet cnm_\w+ \{\n.*?^\}\n", "", _in(ns, "nft", "-s", "list", "ruleset"))


@pytest.fixture
def ctl(tmp_path: Any, host_netns: NetNS) -> Iterator[Controller]:
    state_dir = str(tmp_path / "state")
    controller = Controller(state_dir=state_dir, host_netns=host_netns, firewall="nftables", predefined=False)
    try:
        yield controller
    finally:
        controller.close()
        unmount_sandboxes(state_dir)


def _works(ctl: Controller, outside: Outside, port: int) -> None:
    """Forwarding between sandboxes, MASQUERADE outwards and the published port from outside."""
    net = ctl.network("web")
    a_ip = str(net.endpoint("a").ip)
    b = ctl.sandbox("b")
    assert probe(b, "tcp", a_ip, 80) == str(net.endpoint("b").ip)
    assert probe(ctl.sandbox("a"), "tcp", str(outside.address), 7003) == str(outside.host_address)
    assert probe(outside, "tcp", str(outside.host_address), port) == str(outside.address)
    # Routed straight to the sandbox, not DNATed: the other firewall dropped it, and cnm still does.
    assert probe(outside, "tcp", a_ip, 80, timeout=1) is None


@pytest.mark.parametrize("other", ["docker", "firewalld"])
def test_sandboxes_work_beside_a_dropping_firewall_which_is_left_as_it_was(
    ctl: Controller, outside: Outside, processes: Track, other: str
) -> None:
    host = ctl.host_netns
    load(host, other)
    before = others(host)
    outside.run(["ip", "route", "add", "172.21.0.0/24", "via", str(outside.host_address)], check=True)
    net = ctl.create_network("web", ipam=IPAMConfig(subnet="172.21.0.0/24"))
    a = ctl.create_sandbox("a", network="web", ports=[PortBinding(container_port=80, host_port=8095)])
    ctl.create_sandbox("b", network="web")
    processes(serve(a, "tcp", 80))
    processes(serve(outside, "tcp", 7003))
    _works(ctl, outside, 8095)

    ours = [line.strip() for line in others(host).splitlines() if "cnm:" in line]
    tag = f"cnm:{ctl.owner_id}:{net.id[:12]}"
    assert [re.sub(r'"cnm-\w+"', "BR", line) for line in ours] == [
        f'iifname BR accept comment "{tag}"',
        f'oifname BR accept comment "{tag}"',
    ]
    if other == "docker":  # iptables-nft (Docker) still reads its table, cnm's two rules included
        listed = _in(host, "iptables-nft", "-S", "FORWARD")
        assert re.search(rf"-A FORWARD -i cnm-\w+ -m comment --comment \"{tag}\" -j ACCEPT", listed), listed

    # Someone flushes everything, then the other firewall comes back: reapply_firewall() repairs cnm's part.
    _in(host, "nft", "flush", "ruleset")
    load(host, other)
    assert probe(outside, "tcp", str(outside.host_address), 8095, timeout=1) is None
    ctl.reapply_firewall()
    _works(ctl, outside, 8095)
    assert [line.strip() for line in others(host).splitlines() if "cnm:" in line] == ours

    for name in ("a", "b"):
        ctl.sandbox(name).delete()
    net.delete()
    assert others(host) == before  # the network's rules went from the other table, and nothing else
    ctl.firewall.cleanup()
    assert others(host) == before == _in(host, "nft", "-s", "list", "ruleset")


def test_cleanup_removes_only_its_own_owners_rules_from_the_other_table(
    ctl: Controller, tmp_path: Any, host_netns: NetNS
) -> None:
    load(host_netns, "firewalld")
    before = others(host_netns)
    ctl.create_network("one", ipam=IPAMConfig(subnet="172.20.1.0/24"))
    kept = ctl.create_network("two", ipam=IPAMConfig(subnet="172.20.2.0/24"))
    second_dir = str(tmp_path / "second")
    with Controller(state_dir=second_dir, host_netns=host_netns, firewall="nftables", predefined=False) as second:
        second.create_network("three", ipam=IPAMConfig(subnet="172.20.3.0/24"))
        assert others(host_netns).count("comment") == 6  # two rules per network, three networks
        # "one": 2 rules in firewalld's chain, 13 in its own table (1 isolation, 5 forward, 2 published,
        # 4 postrouting, 1 raw)
        assert ctl.firewall.cleanup(keep=[kept.id]) == 2 + 13
        foreign = others(host_netns)
        assert f"cnm:{ctl.owner_id}:{kept.id[:12]}" in foreign
        assert f"cnm:{second.owner_id}:" in foreign
        assert foreign.count("comment") == 4
        ctl.firewall.cleanup()
        second.firewall.cleanup()
    unmount_sandboxes(second_dir)
    assert others(host_netns) == before


def test_a_routed_network_beside_a_dropping_firewall_opens_only_its_published_container_ports(
    ctl: Controller, outside: Outside, processes: Track
) -> None:
    # The other table lets the bridge through on cnm's word; cnm's table then keeps routed's semantics.
    load(ctl.host_netns, "firewalld")
    outside.run(["ip", "route", "add", "172.21.1.0/24", "via", str(outside.host_address)], check=True)
    net = ctl.create_network("lab", ipam=IPAMConfig(subnet="172.21.1.0/24"), options={"gateway_mode": "routed"})
    a = ctl.create_sandbox("a", network="lab", ports=[PortBinding(container_port=80, host_port=8096)])
    processes(serve(a, "tcp", 80))
    processes(serve(a, "tcp", 81))
    processes(serve(outside, "tcp", 7004))
    a_ip = str(net.endpoint("a").ip)
    assert probe(outside, "tcp", a_ip, 80) == str(outside.address)
    assert probe(outside, "tcp", a_ip, 81, timeout=1) is None
    assert ping(outside, a_ip)
    assert probe(a, "tcp", str(outside.address), 7004) == a_ip  # no masquerade
    a.delete()
    net.delete()
