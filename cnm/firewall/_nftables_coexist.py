"""Letting cnm's traffic through other tables' dropping forward chains: pure data, no library in sight.

An accept in cnm's table never overrides a drop in another table: every base
chain on the forward hook decides on its own, and a drop anywhere is final.
Docker's iptables-nft rules (``table ip filter``, chain ``FORWARD`` with
policy drop) and firewalld (``table inet firewalld``, whose forward chain
rejects what no zone or policy allows) drop what cnm's sandboxes send and
receive. So for each such chain cnm inserts, at its top, two rules per
network::

    iifname "BRIDGE" accept comment "cnm:<owner>:<network id[:12]>"
    oifname "BRIDGE" accept comment "cnm:<owner>:<network id[:12]>"

They use only what ``iptables-nft`` can still list (``-i BRIDGE -m comment
--comment ... -j ACCEPT``), so Docker and ``iptables -S`` keep working on
that table. They hand the decision about a bridge's traffic to cnm's own
table, which then holds, per network, a last ``oifname BRIDGE drop`` in its
forward chain: what cnm does not accept into a bridge (a connection routed
straight to a sandbox's address, not DNATed) stays dropped, as the other
firewall dropped it before (unless the network opted in with gateway mode
``nat-unprotected``; in ``routed`` mode only its published container ports and
ICMP are accepted before that drop: docs/security.md). The comment names the controller's owner and the
network, so teardown and cleanup delete exactly those rules by handle, and
nothing else of the other table changes.

A chain counts as dropping when it is a base chain on the forward hook of an
``ip`` or ``inet`` table that is not a cnm table, with policy drop or a rule
of its own whose verdict is drop or reject.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import attrs

from cnm.firewallapi import FirewallNetwork

__all__ = [
    "ForeignChain",
    "accept_rules",
    "candidates",
    "delete_ours",
    "foreign_chain",
    "foreign_tag",
    "owner_prefix",
]

#: One libnftables JSON command.
Command = dict[str, Any]

_FAMILIES = ("ip", "inet")
_CNM_TABLE_PREFIX = "cnm_"
_KEY = 12


def owner_prefix(owner: str) -> str:
    """What every comment cnm writes into another table starts with, for the controller ``owner``."""
    return f"cnm:{owner}:"


def foreign_tag(owner: str, network: FirewallNetwork) -> str:
    """The comment of the network's rules in other tables: ``cnm:<owner>:<id[:12]>``."""
    return owner_prefix(owner) + network.id[:_KEY]


@attrs.frozen(kw_only=True)
class ForeignChain:
    """A base chain on the forward hook in a table that is not cnm's.

    Attributes:
        family, table, name: where it is.
        drops: whether it drops (policy drop, or a drop or reject rule of its own).
        ours: the handle and comment of every rule in it whose comment starts with ``cnm:``.
    """

    family: str
    table: str
    name: str
    drops: bool
    ours: tuple[tuple[int, str], ...] = ()

    @property
    def ref(self) -> dict[str, str]:
        """The chain as libnftables JSON names a rule's place."""
        return {"family": self.family, "table": self.table, "chain": self.name}


def candidates(chains: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The chains of a ``list chains`` listing that may need cnm's rules: forward base chains not in a cnm table."""
    found = []
    for chain in chains:
        if chain.get("hook") != "forward" or chain.get("family") not in _FAMILIES:
            continue
        if chain["family"] == "inet" and str(chain["table"]).startswith(_CNM_TABLE_PREFIX):
            continue
        found.append({"family": chain["family"], "table": chain["table"], "name": chain["name"]})
    return found


def _verdict_drops(rule: Mapping[str, Any]) -> bool:
    return any("drop" in expr or "reject" in expr for expr in rule.get("expr", ()) if isinstance(expr, dict))


def foreign_chain(chain: Mapping[str, Any], rules: Iterable[Mapping[str, Any]]) -> ForeignChain:
    """One candidate chain, from its listing (``chain`` and its ``rules``)."""
    ours, drops = [], chain.get("policy") == "drop"
    for rule in rules:
        comment = str(rule.get("comment", ""))
        if comment.startswith("cnm:"):
            ours.append((int(rule["handle"]), comment))
        elif _verdict_drops(rule):
            drops = True
    return ForeignChain(family=chain["family"], table=chain["table"], name=chain["name"], drops=drops, ours=tuple(ours))


def accept_rules(chain: ForeignChain, owner: str, network: FirewallNetwork) -> list[Command]:
    """The two rules that let the network's bridge through ``chain``, inserted at its top."""
    tag = foreign_tag(owner, network)
    return [
        {
            "insert": {
                "rule": {
                    **chain.ref,
                    "comment": tag,
                    "expr": [
                        {"match": {"op": "==", "left": {"meta": {"key": direction}}, "right": network.interface}},
                        {"accept": None},
                    ],
                }
            }
        }
        for direction in ("oifname", "iifname")
    ]


def delete_ours(chains: Iterable[ForeignChain], doomed: Collection[str] | str) -> list[Command]:
    """Delete, by handle, the rules of ``chains`` whose comment is in ``doomed`` (or starts with it, given a str)."""

    def hit(comment: str) -> bool:
        return comment.startswith(doomed) if isinstance(doomed, str) else comment in doomed

    return [
        {"delete": {"rule": {**chain.ref, "handle": handle}}}
        for chain in chains
        for handle, comment in chain.ours
        if hit(comment)
    ]
