"""Which chains of other tables cnm's nftables backend lets its bridges through, and with what (pure logic)."""

from __future__ import annotations

import ipaddress

from cnm.firewall._nftables_coexist import accept_rules, candidates, delete_ours, foreign_chain
from cnm.firewallapi import FirewallNetwork


def test_a_chain_drops_by_policy_or_by_a_drop_or_reject_rule_of_its_own() -> None:
    chains = [
        {"family": "inet", "table": "firewalld", "name": "filter_FORWARD", "hook": "forward", "policy": "accept"},
        {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "policy": "drop"},
        {"family": "inet", "table": "cnm_0123", "name": "isolation", "hook": "forward", "policy": "accept"},
        {"family": "ip", "table": "filter", "name": "INPUT", "hook": "input", "policy": "drop"},
        {"family": "ip6", "table": "filter", "name": "FORWARD", "hook": "forward", "policy": "drop"},
    ]
    assert [c["table"] + " " + c["name"] for c in candidates(chains)] == ["firewalld filter_FORWARD", "filter FORWARD"]
    reject = {"expr": [{"reject": {"type": "icmpx", "expr": "admin-prohibited"}}], "handle": 9}
    assert foreign_chain(chains[0], [reject]).drops
    assert not foreign_chain(chains[0], [{"expr": [{"accept": None}], "handle": 3}]).drops
    mine = {"expr": [{"drop": None}], "handle": 4, "comment": "cnm:o:k"}  # cnm's rules never count
    chain = foreign_chain(chains[0], [mine])
    assert not chain.drops
    assert chain.ours == ((4, "cnm:o:k"),)
    assert foreign_chain(chains[1], []).drops
    net = FirewallNetwork(id="a1" * 32, interface="br-a", subnet=ipaddress.IPv4Network("10.0.0.0/24"))
    assert [r["insert"]["rule"]["comment"] for r in accept_rules(chain, "o", net)] == ["cnm:o:a1a1a1a1a1a1"] * 2
    assert delete_ours([chain], "cnm:o:") == [
        {"delete": {"rule": {"family": "inet", "table": "firewalld", "chain": "filter_FORWARD", "handle": 4}}}
    ]
    assert delete_ours([chain], {"cnm:p:k"}) == []
