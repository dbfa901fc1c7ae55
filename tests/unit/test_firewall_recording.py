"""RecordingFirewall: the kernel-free Firewall for unit tests and driver authors."""

from __future__ import annotations

import ipaddress

import attrs
import pytest

from cnm.firewall._iptables_rules import link_blocks, network_blocks, network_chain_tag, network_chains, port_rules
from cnm.firewall.recording import Call, RecordingFirewall
from cnm.firewallapi import Firewall, FirewallNetwork, LinkRule, NetworkRules, PortMapping
from cnm.types import PortRange

NET = FirewallNetwork(id="a" * 64, interface="br-a", subnet=ipaddress.IPv4Network("172.28.0.0/16"))
OTHER = FirewallNetwork(id="b" * 64, interface="br-b", subnet=ipaddress.IPv4Network("172.29.0.0/16"), icc=False)
PORT = PortMapping(
    protocol="tcp",
    host_port=PortRange(8080, 8080),
    container_ip=ipaddress.IPv4Address("172.28.0.2"),
    container_port=PortRange(80, 80),
)
LINK = LinkRule(
    source_ip=ipaddress.IPv4Address("172.29.0.3"),
    target_ip=ipaddress.IPv4Address("172.29.0.2"),
    ports=(("tcp", 3306),),
)


def test_satisfies_the_firewall_protocol() -> None:
    assert isinstance(RecordingFirewall(), Firewall)


def test_records_calls_and_state() -> None:
    fw = RecordingFirewall()
    fw.setup_network(NET)
    fw.add_ports(NET, [PORT])
    fw.add_ports(NET, [PORT])
    fw.setup_network(OTHER)
    fw.add_link(OTHER, LINK)
    assert fw.methods == ["setup_network", "add_ports", "add_ports", "setup_network", "add_link"]
    assert fw.calls[1] == Call("add_ports", (NET, (PORT,)))
    assert fw.ports[NET.id] == {PORT}
    assert fw.links[OTHER.id] == {LINK}
    fw.remove_ports(NET, [PORT])
    fw.remove_ports(NET, [PORT])
    fw.remove_link(OTHER, LINK)
    assert fw.ports[NET.id] == set()
    assert fw.links[OTHER.id] == set()
    fw.teardown_network(NET)
    fw.teardown_network(NET)
    assert set(fw.networks) == {OTHER.id}


def test_cleanup_and_reapply() -> None:
    fw = RecordingFirewall()
    fw.reapply([NetworkRules(network=NET, ports=(PORT,)), NetworkRules(network=OTHER, links=(LINK,))])
    assert fw.cleanup(keep=[NET.id[:12]]) == 2  # OTHER and its link
    assert set(fw.networks) == {NET.id}
    assert fw.cleanup() == 2  # NET and its port
    assert fw.networks == {}


def test_injected_failure_is_raised_and_recorded() -> None:
    fw = RecordingFirewall()
    fw.fail_on.add("add_ports")
    with pytest.raises(RuntimeError):
        fw.add_ports(NET, [PORT])
    assert fw.methods == ["add_ports"]
    assert NET.id not in fw.ports


def test_layout_spells_rules_like_iptables_save() -> None:
    forward = network_blocks(NET)[0]
    assert str(forward.rules[2]) == "-A CNM-FORWARD -i br-a ! -o br-a -m comment --comment cnm:aaaaaaaaaaaa -j ACCEPT"
    rules = port_rules(NET, PORT)
    assert rules is not None
    assert (
        str(rules.main) == "-A CNM-DNAT-aaaaaaaaaaaa -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.28.0.2:80"
    )
    assert str(rules.hairpin) == "-A CNM-HAIRPIN-aaaaaaaaaaaa -s 172.28.0.2/32 -d 172.28.0.2/32 -p tcp -j MASQUERADE"
    internal = FirewallNetwork(id="c" * 64, interface="br-c", subnet=NET.subnet, internal=True)
    assert port_rules(internal, PORT) is None
    assert link_blocks(NET, LINK) == ()  # icc=true: nothing is dropped, nothing to allow
    assert len(link_blocks(OTHER, LINK)[0].rules) == 2


def test_publishing_touches_only_the_nat_table() -> None:
    # The filter side of every published port is the network's one conntrack ACCEPT; after it, the drop
    # of everything else routed into the bridge (gateway mode nat).
    accepts = [b for b in network_blocks(NET) if b.table == "filter" and b.chain == "CNM"]
    assert [str(r) for b in accepts for r in b.rules] == [
        "-A CNM ! -i br-a -o br-a -m conntrack --ctstate DNAT -m comment --comment cnm:aaaaaaaaaaaa -j ACCEPT",
        "-A CNM ! -i br-a -o br-a -m comment --comment cnm:aaaaaaaaaaaa -j DROP",
    ]
    rules = port_rules(NET, PORT)
    assert rules is not None
    assert {network_chain_tag(r.chain) for r in (rules.main, rules.hairpin)} == {NET.tag}
    assert set(network_chains(NET)) == {rules.main.chain, rules.hairpin.chain}
    assert network_chain_tag("CNM-POSTROUTING") is None
    assert network_chain_tag("CNM-DNAT-short") is None


def test_routed_network_accepts_published_container_ports_and_icmp_and_dnats_nothing() -> None:
    routed = attrs.evolve(NET, gateway_mode="routed", masquerade=False)
    accepts = [b for b in network_blocks(routed) if b.table == "filter" and b.chain == "CNM"]
    assert [str(r) for b in accepts for r in b.rules] == [
        "-A CNM ! -i br-a -o br-a -p icmp -m comment --comment cnm:aaaaaaaaaaaa -j ACCEPT",
        "-A CNM ! -i br-a -o br-a -m comment --comment cnm:aaaaaaaaaaaa -j CNM-ROUTED-aaaaaaaaaaaa",
        "-A CNM ! -i br-a -o br-a -m comment --comment cnm:aaaaaaaaaaaa -j DROP",
    ]
    assert not [b for b in network_blocks(routed) if b.table == "nat"]  # no DNAT, no masquerade
    assert network_chains(routed) == ("CNM-ROUTED-aaaaaaaaaaaa",)
    assert network_chain_tag("CNM-ROUTED-aaaaaaaaaaaa") == routed.tag
    rules = port_rules(routed, PORT)  # 8080 -> 80: the host port is not used
    assert rules is not None
    assert rules.table == "filter"
    assert rules.hairpin is None
    assert str(rules.main) == "-A CNM-ROUTED-aaaaaaaaaaaa -d 172.28.0.2/32 -p tcp -m tcp --dport 80 -j ACCEPT"
