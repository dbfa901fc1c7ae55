"""The iptables backend's worker side: one request's session over the tables, and the operations it runs.

A :class:`Server` is made inside the worker process once it entered the host
namespace. For each request it takes the xtables lock, opens a
:class:`Session` (each table read afresh on first use: other iptables users
change them between requests), runs the operation, commits each changed table
once and frees it, then releases the lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cnm.errors import KernelError
from cnm.firewall._iptables_rules import (
    CHAINS,
    SHARED_TAG,
    STAGE_1_JUMP,
    TAG_PREFIX,
    Block,
    PortRules,
    TableName,
    base_blocks,
    link_blocks,
    network_blocks,
    network_chain_tag,
    port_chain_blocks,
    port_rules,
)
from cnm.firewall._libiptc import Table, iptc_errors, load_iptc, xtables_lock
from cnm.firewallapi import FirewallNetwork, LinkRule, NetworkRules, PortMapping
from cnm.kernel.worker import Request

__all__ = ["OPERATIONS", "Server", "Session"]

_TABLES: tuple[TableName, ...] = ("filter", "nat", "raw")
_BUILTIN_CHAINS: dict[TableName, tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}


class Session:
    """The work of one request inside the worker: tables read on first use, committed once each."""

    def __init__(self, iptc: Any, cache: dict[TableName, Table]) -> None:
        self._iptc = iptc
        self._cache = cache  # the worker's tables, with their built rules, from earlier requests
        self._tables: dict[TableName, Table] = {}

    def table(self, name: TableName) -> Table:
        table = self._tables.get(name)
        if table is None:
            table = self._cache.get(name)
            if table is None:
                table = self._cache[name] = Table(self._iptc, name)  # read by its constructor
            else:
                table.begin()
            self._tables[name] = table
        return table

    def existing(self, name: TableName) -> Table | None:
        """The table if the namespace has it already; removals never open one.

        A legacy table comes into being in a namespace when first opened, so
        opening it only to find nothing to remove would leave a trace.
        """
        if name not in self._tables and name not in self._cache:  # a legacy table, once there, stays
            try:
                with open("/proc/net/ip_tables_names") as names:
                    if name not in names.read().split():
                        return None
            except FileNotFoundError:
                return None  # no ip_tables module at all: certainly no cnm rules
        return self.table(name)

    def commit(self) -> None:
        for name in _TABLES:  # filter before nat: a packet is never DNATed towards a network not yet open
            if name in self._tables:
                self._tables[name].commit()

    def close(self) -> None:
        for table in self._tables.values():
            table.end()

    # -- placing blocks ---------------------------------------------------------
    def ensure_base(self, name: TableName) -> Table:
        """Create cnm's chains of table ``name`` and their shared jumps and tails, once per request."""
        table = self.table(name)
        if not table.base_ensured:
            table.base_ensured = True  # set first: placing the base blocks comes back here
            for chain in CHAINS[name]:
                table.ensure_chain(chain)
            for block in base_blocks(name):
                self._place(table, block)
        return table

    def place(self, blocks: Iterable[Block]) -> None:
        for block in blocks:
            self._place(self.ensure_base(block.table), block)

    def _place(self, table: Table, block: Block) -> None:
        rules = block.rules
        for chain in {block.chain, *(spec.target for spec in rules)}:
            if network_chain_tag(chain) is not None:
                table.ensure_chain(chain)  # a network's own chain comes with its first rule or jump
        if block.where == "append":
            for spec in rules:
                if not table.contains(spec):
                    table.append(spec)
            return
        present = [table.contains(spec) for spec in rules]
        if all(present):
            return
        # A block is kept whole and in order: drop the part that survived, insert it all again.
        for spec, found in zip(rules, present, strict=True):
            if found:
                table.delete(spec)
        position = 0
        if block.where == "after-first":
            found_at = table.position_of(block.chain, STAGE_1_JUMP.target, STAGE_1_JUMP.comment)
            position = 0 if found_at is None else found_at + 1
        for offset, spec in enumerate(rules):
            table.insert(spec, position + offset)

    def publish(self, network: FirewallNetwork, ports: Iterable[PortMapping]) -> None:
        """Add each port's rules (DNAT and hairpin, or a routed network's ACCEPT) unless its main rule is there."""
        rules = _port_rules(network, ports)
        if not rules:
            return
        # The jumps first: they create the network's chains, and are cheap checks when present.
        self.place(port_chain_blocks(network))
        for port in rules:
            table = self.table(port.table)
            if not table.contains(port.main):
                if port.hairpin is not None:
                    table.append(port.hairpin)  # even if an equal one is there: that one belongs to another port
                table.append(port.main)

    def withdraw(self, network: FirewallNetwork, ports: Iterable[PortMapping]) -> None:
        """Remove each port's main rule, and one copy of its hairpin rule with it."""
        rules = _port_rules(network, ports)
        table = self.existing(rules[0].table) if rules else None  # one network's ports share a table
        if table is None:
            return
        for port in rules:
            if table.delete(port.main) and port.hairpin is not None:
                table.delete(port.hairpin)

    def remove(self, blocks: Iterable[Block]) -> None:
        for block in blocks:
            table = self.existing(block.table)
            if table is not None:
                for spec in block.rules:
                    table.delete(spec)

    def remove_network_chains(self, doomed: Callable[[str], bool]) -> int:
        """Flush and delete the networks' own chains whose network's id[:12] satisfies ``doomed``; count the rules.

        Run after the jumps into them are gone (they are tagged rules of the same network).
        """
        removed = 0
        for name in _TABLES:
            table = self.existing(name)
            if table is not None:
                chains = [c for c in table.chain_names() if (key := _chain_key(c)) is not None and doomed(key)]
                removed += table.flush_and_delete(chains)
        return removed

    def tagged_keys(self, prefix: str) -> set[str]:
        """The network ids[:12] that rules tagged ``<prefix><id[:12]>`` name, in any chain cnm writes to."""
        keys = set()
        for name in _TABLES:
            table = self.existing(name)
            if table is not None:
                for chain in CHAINS[name] + _BUILTIN_CHAINS[name]:
                    if table.has_chain(chain):
                        keys |= {c.removeprefix(prefix) for c in table.comments(chain) if c and c.startswith(prefix)}
        return keys

    def any_network_rule(self) -> bool:
        """True if any owner's network rule is left in cnm's chains or the builtin ones."""
        return bool(self.tagged_keys(TAG_PREFIX))

    def remove_tagged(self, doomed: Callable[[str | None], bool], *, builtin: bool) -> int:
        """Delete the rules whose comment satisfies ``doomed`` from cnm's chains (and the builtin ones)."""
        removed = 0
        for name in _TABLES:
            table = self.existing(name)
            if table is None:
                continue
            chains = CHAINS[name] + (_BUILTIN_CHAINS[name] if builtin else ())
            for chain in chains:
                removed += table.delete_where(chain, doomed)
        return removed


def _port_rules(network: FirewallNetwork, ports: Iterable[PortMapping]) -> list[PortRules]:
    return [rules for rules in (port_rules(network, port) for port in ports) if rules is not None]


def _chain_key(chain: str) -> str | None:
    tag = network_chain_tag(chain)
    return None if tag is None else tag.removeprefix(TAG_PREFIX)


def _owner_prefix(owner: str) -> str:
    # The start of every tag of this owner's rules (see FirewallNetwork.tag).
    return f"{TAG_PREFIX}{owner}:" if owner else TAG_PREFIX


# -- the operations, as the worker runs them ------------------------------------------------------
def _setup_network(session: Session, network: FirewallNetwork) -> None:
    session.place(network_blocks(network))


def _teardown_network(session: Session, network: FirewallNetwork) -> None:
    tag, key = network.tag, network.id[:12]
    session.remove_tagged(lambda comment: comment == tag, builtin=False)
    session.remove_network_chains(lambda chain_key: chain_key == key)


def _add_ports(session: Session, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
    session.publish(network, ports)


def _remove_ports(session: Session, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
    session.withdraw(network, ports)


def _add_link(session: Session, network: FirewallNetwork, link: LinkRule) -> None:
    session.place(link_blocks(network, link))


def _remove_link(session: Session, network: FirewallNetwork, link: LinkRule) -> None:
    session.remove(link_blocks(network, link))


def _reapply(session: Session, owner: str, networks: Sequence[NetworkRules]) -> None:
    prefix = _owner_prefix(owner)
    # A network's chains are this owner's if its tagged rules are: the chain names carry no owner.
    owned = session.tagged_keys(prefix) | {item.network.id[:12] for item in networks}
    session.remove_tagged(lambda comment: comment is not None and comment.startswith(prefix), builtin=True)
    session.remove_network_chains(lambda key: key in owned)  # rebuilt below, in the same commit
    for name in _TABLES:
        # Repair the shared jumps of a table cnm already uses, even if no network needs it now.
        table = session.existing(name)
        if table is not None and any(table.has_chain(chain) for chain in CHAINS[name]):
            session.ensure_base(name)
    for item in networks:
        session.place(network_blocks(item.network))
        session.publish(item.network, item.ports)
        session.place(block for link in item.links for block in link_blocks(item.network, link))


def _cleanup(session: Session, owner: str, kept: frozenset[str]) -> int:
    prefix = _owner_prefix(owner)

    def doomed(comment: str | None) -> bool:
        return comment is not None and comment.startswith(prefix) and comment.removeprefix(prefix) not in kept

    owned = session.tagged_keys(prefix) - kept
    removed = session.remove_tagged(doomed, builtin=True)
    removed += session.remove_network_chains(lambda key: key in owned)
    # The shared chains and jumps serve every owner: they go with the last one's rules.
    if not kept and not session.any_network_rule():
        removed += session.remove_tagged(lambda comment: comment == SHARED_TAG, builtin=True)
        for name in _TABLES:
            table = session.existing(name)
            if table is not None:
                removed += table.flush_and_delete(CHAINS[name])
    return removed


def _holds_rules(session: Session, owner: str) -> bool:
    # Reads only tables the namespace has already (Session.existing): asking leaves no trace.
    return bool(session.tagged_keys(_owner_prefix(owner)))


def _check(session: Session) -> None:
    # python-iptables loaded (the server's constructor); the kernel must also give a legacy table.
    session.table("filter")


OPERATIONS: dict[str, Callable[..., object]] = {
    "holds_rules": _holds_rules,
    "check": _check,
    "setup_network": _setup_network,
    "teardown_network": _teardown_network,
    "add_ports": _add_ports,
    "remove_ports": _remove_ports,
    "add_link": _add_link,
    "remove_link": _remove_link,
    "reapply": _reapply,
    "cleanup": _cleanup,
}


class Server:
    """The worker's side: python-iptables loaded once, tables and built rules kept between requests."""

    def __init__(self, lock_path: str, lock_timeout: float) -> None:
        self._iptc = load_iptc()
        self._lock_path = lock_path
        self._lock_timeout = lock_timeout
        self._tables: dict[TableName, Table] = {}

    def __call__(self, request: Any) -> object:
        """Run one request under the xtables lock, committing once per table it changed."""
        if not isinstance(request, Request) or request.method not in OPERATIONS:
            raise KernelError(f"the firewall worker got a request it does not know: {request!r}")
        operation = OPERATIONS[request.method]
        with xtables_lock(self._lock_path, self._lock_timeout), iptc_errors(request.what):
            session = Session(self._iptc, self._tables)
            try:
                result = operation(session, *request.args)
                session.commit()
            finally:
                session.close()
        return result
