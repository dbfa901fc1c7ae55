"""The native nftables firewall backend, on the official libnftables JSON API.

:class:`NftablesFirewall` writes the same behaviour as the iptables backend
into one table per controller, ``table inet cnm_<owner>``
(:mod:`cnm.firewall._nftables_rules` holds the layout). Each call is one
libnftables JSON batch, which the kernel applies as one transaction: all of it
or nothing. Published ports and legacy links are elements of the network's maps
and sets, so publishing a port never rewrites a rule.

libnftables acts in the network namespace of the calling thread, so, as with
python-iptables, every call goes to a long-lived worker process
(:class:`cnm.kernel.worker.Worker`) that entered the host namespace once.
The Python bindings are Debian's ``python3-nftables`` (``./run setup`` makes
the venv see that one module); they are imported in the worker only, on first
use. The ``nft`` binary is never run.

Another table's dropping forward chain (Docker's iptables-nft ``FORWARD``,
firewalld) gets two accept rules per network, commented with the owner and the
network, in the same batch (:mod:`cnm.firewall._nftables_coexist`); teardown
and cleanup delete exactly those.

Every call is idempotent. libnftables 1.0.6 has no ``destroy`` (delete if
present), so a removal adds what it removes first, in the same transaction:
adding what exists changes nothing, and the delete then always finds it.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Collection, Sequence
from typing import Any, cast

from cnm.errors import KernelError
from cnm.firewall._nftables_coexist import (
    ForeignChain,
    accept_rules,
    candidates,
    delete_ours,
    foreign_chain,
    foreign_tag,
    owner_prefix,
)
from cnm.firewall._nftables_rules import (
    FAMILY,
    SHARED_TAG,
    Command,
    base_objects,
    base_rules,
    bridge_element,
    link_elements,
    network_objects,
    network_rules,
    network_set_names,
    port_elements,
    table_name,
)
from cnm.firewallapi import Firewall, FirewallNetwork, LinkRule, NetworkRules, PortMapping
from cnm.kernel.netns import NetNS
from cnm.kernel.worker import Request, Worker

__all__ = ["REPLY_TIMEOUT", "NftablesFirewall"]

log = logging.getLogger(__name__)

#: Seconds a call may take before its worker is taken as wedged and replaced.
REPLY_TIMEOUT = 60.0
_TAG_PREFIX = "cnm:"
_INSTALL_HINT = "install the libnftables Python bindings (Debian: apt-get install python3-nftables; ./run setup)"


def _load_nftables() -> Any:
    """Import the libnftables bindings, saying how to install them when they are missing."""
    try:
        import nftables  # noqa: PLC0415 - imported on first use, in the worker: it loads libnftables
    except ImportError as exc:
        raise KernelError(f"the nftables firewall backend cannot load libnftables ({exc}); {_INSTALL_HINT}") from exc
    return nftables


def _delete(kind: str, body: dict[str, Any]) -> list[Command]:
    """Delete ``body`` whether or not it exists (added first, in the same transaction)."""
    return [{"add": {kind: body}}, {"delete": {kind: body}}]


class _Server:
    """The worker's side: one libnftables context, made inside the namespace."""

    def __init__(self, table: str) -> None:
        nftables = _load_nftables()
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(True)
        self._table = table
        self._owner = table.removeprefix("cnm_")

    def __call__(self, request: Any) -> object:
        """Run one request: read what it needs, then send one batch."""
        if not isinstance(request, Request):
            raise KernelError(f"the nftables worker got a request it does not know: {request!r}")
        operation = getattr(self, f"_op_{request.method}", None)
        if operation is None:
            raise KernelError(f"the nftables worker got a request it does not know: {request.method}")
        return operation(request.what, *request.args)

    # -- libnftables --------------------------------------------------------------------------
    def _batch(self, what: str, commands: list[Command]) -> None:
        if not commands:
            return
        rc, _, error = self._nft.json_cmd({"nftables": commands})
        if rc != 0:
            raise KernelError(f"{what} failed: libnftables: {error.strip() or f'error {rc}'}")

    def _exists(self, what: str) -> bool:
        rc, output, error = self._nft.json_cmd({"nftables": [{"list": {"tables": None}}]})
        if rc != 0:
            raise KernelError(f"{what} failed: cannot list nftables tables: {error.strip()}")
        tables = _parsed(output)
        return any(t.get("table", {}).get("name") == self._table and t["table"]["family"] == FAMILY for t in tables)

    def _rules(self, what: str) -> list[dict[str, Any]] | None:
        """The rules of cnm's table with their handles, None if there is no table."""
        if not self._exists(what):
            return None
        command = {"list": {"table": {"family": FAMILY, "name": self._table}}}
        rc, output, error = self._nft.json_cmd({"nftables": [command]})
        if rc != 0:
            raise KernelError(f"{what} failed: cannot list table {FAMILY} {self._table}: {error.strip()}")
        return [item["rule"] for item in _parsed(output) if "rule" in item]

    def _delete_rules(self, rules: list[dict[str, Any]], doomed: Collection[str | None]) -> list[Command]:
        ref = {"family": FAMILY, "table": self._table}
        return [
            {"delete": {"rule": {**ref, "chain": rule["chain"], "handle": rule["handle"]}}}
            for rule in rules
            if rule.get("comment") in doomed
        ]

    def _foreign(self, what: str) -> list[ForeignChain]:
        """The forward base chains of other tables, with cnm's rules in them (lists chains, then each one's rules)."""
        rc, output, error = self._nft.json_cmd({"nftables": [{"list": {"chains": None}}]})
        if rc != 0:
            raise KernelError(f"{what} failed: cannot list nftables chains: {error.strip()}")
        found = []
        for ref in candidates(item["chain"] for item in _parsed(output) if "chain" in item):
            rc, output, error = self._nft.json_cmd({"nftables": [{"list": {"chain": ref}}]})
            if rc != 0:
                where = f"{ref['family']} {ref['table']} {ref['name']}"
                raise KernelError(f"{what} failed: cannot list chain {where}: {error.strip()}")
            items = _parsed(output)
            chain = next(item["chain"] for item in items if "chain" in item)
            found.append(foreign_chain(chain, [item["rule"] for item in items if "rule" in item]))
        return found

    def _let_through(self, foreign: list[ForeignChain], network: FirewallNetwork) -> list[Command]:
        """The network's rules in every dropping chain of another table (after any stale ones go)."""
        commands = delete_ours(foreign, {foreign_tag(self._owner, network)})
        for chain in foreign:
            if chain.drops:
                commands += accept_rules(chain, self._owner, network)
        return commands

    def _network_setup(self, network: FirewallNetwork, guarded: bool = False) -> list[Command]:
        return [
            *network_objects(self._table, network),
            *network_rules(self._table, network, guarded=guarded),
            {"add": {"element": bridge_element(self._table, network)}},
        ]

    def _base(self, rules: list[dict[str, Any]] | None) -> list[Command]:
        commands = base_objects(self._table)
        if rules is None or not any(rule.get("comment") == SHARED_TAG for rule in rules):
            commands += base_rules(self._table)
        return commands

    def _network_teardown(self, key: str, interface: str | None) -> list[Command]:
        ref = {"family": FAMILY, "table": self._table}
        commands: list[Command] = []
        for name in network_set_names(key):  # the caller keeps only those present
            commands += [{"delete": {"set" if name.startswith(("hairpin", "links")) else "map": {**ref, "name": name}}}]
        if interface is not None:
            commands += _delete("element", {**ref, "name": "bridges", "elem": [interface]})
        return commands

    def _present_sets(self, what: str) -> set[str]:
        """The names of the sets and maps in cnm's table (listed without their elements' rules)."""
        names = set()
        for kind in ("sets", "maps"):
            rc, output, error = self._nft.json_cmd({"nftables": [{"list": {kind: {"family": FAMILY}}}]})
            if rc != 0:
                raise KernelError(f"{what} failed: cannot list {kind}: {error.strip()}")
            for item in _parsed(output):
                body = item.get("set") or item.get("map")
                if body is not None and body.get("table") == self._table:
                    names.add(body["name"])
        return names

    # -- the operations -----------------------------------------------------------------------
    def _op_holds_rules(self, what: str) -> bool:
        return self._exists(what)

    def _op_check(self, what: str) -> None:
        # A table made and deleted in one transaction: the kernel's nf_tables must take it; nothing stays.
        probe = {"family": FAMILY, "name": f"{self._table}_probe"}
        self._batch(what, [{"add": {"table": probe}}, {"delete": {"table": probe}}])

    def _op_setup_network(self, what: str, network: FirewallNetwork) -> None:
        rules = self._rules(what)
        foreign = self._foreign(what)
        guarded = any(chain.drops for chain in foreign)
        # The network's rules are replaced whole, in the same transaction: a part found is never left in a wrong order.
        stale = self._delete_rules(rules or [], {network.tag})
        commands = [*self._base(rules), *stale, *self._network_setup(network, guarded)]
        self._batch(what, commands + self._let_through(foreign, network))

    def _op_teardown_network(self, what: str, network: FirewallNetwork) -> None:
        rules = self._rules(what)
        commands = delete_ours(self._foreign(what), {foreign_tag(self._owner, network)})
        if rules is not None:
            present = self._present_sets(what)
            key = network.id[:12]
            commands += [*base_objects(self._table), *self._delete_rules(rules, {network.tag})]
            commands += [
                c for c in self._network_teardown(key, network.interface) if _names(c) in present | {"bridges"}
            ]
        self._batch(what, commands)

    def _op_add_ports(self, what: str, network: FirewallNetwork, ports: tuple[PortMapping, ...]) -> None:
        elements = port_elements(self._table, network, ports)
        if elements:
            commands = [*base_objects(self._table), *network_objects(self._table, network)]
            self._batch(what, commands + [{"add": {"element": body}} for body in elements])

    def _op_remove_ports(self, what: str, network: FirewallNetwork, ports: tuple[PortMapping, ...]) -> None:
        self._withdraw(what, network, port_elements(self._table, network, ports))

    def _op_add_link(self, what: str, network: FirewallNetwork, link: LinkRule) -> None:
        elements = link_elements(self._table, network, link)
        commands = [*base_objects(self._table), *network_objects(self._table, network)]
        self._batch(what, commands + [{"add": {"element": body}} for body in elements])

    def _op_remove_link(self, what: str, network: FirewallNetwork, link: LinkRule) -> None:
        self._withdraw(what, network, link_elements(self._table, network, link))

    def _withdraw(self, what: str, network: FirewallNetwork, elements: list[dict[str, Any]]) -> None:
        """Delete ``elements`` from the network's sets and maps, if cnm's table exists at all.

        Listing tables fills libnftables' whole cache, elements included (10 ms at 1000 published
        ports), so the table is not looked for first: without ``add table``, the batch fails when
        there is no table, and only then is its absence checked.
        """
        if not elements:
            return
        commands = list(network_objects(self._table, network))
        for body in elements:
            commands += _delete("element", body)
        try:
            self._batch(what, commands)
        except KernelError:
            if self._exists(what):
                raise

    def _op_reapply(self, what: str, networks: tuple[NetworkRules, ...]) -> None:
        # The whole table, rebuilt in one transaction: no moment without rules, nothing stale kept.
        table = {"family": FAMILY, "name": self._table}
        foreign = self._foreign(what)
        guarded = any(chain.drops for chain in foreign)
        commands = [*_delete("table", table), *base_objects(self._table), *base_rules(self._table)]
        commands += delete_ours(foreign, owner_prefix(self._owner))
        for item in networks:
            commands += self._network_setup(item.network, guarded)
            commands += [c for chain in foreign if chain.drops for c in accept_rules(chain, self._owner, item.network)]
            commands += [{"add": {"element": body}} for body in port_elements(self._table, item.network, item.ports)]
            for link in item.links:
                commands += [{"add": {"element": b}} for b in link_elements(self._table, item.network, link)]
        self._batch(what, commands)

    def _op_cleanup(self, what: str, kept: frozenset[str]) -> int:
        rules = self._rules(what)
        foreign = self._foreign(what)
        prefix = owner_prefix(self._owner)
        # In other tables, the rules of this owner's networks not kept (``cnm:<owner>:<key>``).
        kept_there = {prefix + tag.removeprefix(_TAG_PREFIX) for tag in kept}
        gone = {c for chain in foreign for _, c in chain.ours if c.startswith(prefix) and c not in kept_there}
        theirs = delete_ours(foreign, gone)
        if rules is None:
            self._batch(what, theirs)
            return len(theirs)
        if not kept:
            self._batch(what, [*theirs, *_delete("table", {"family": FAMILY, "name": self._table})])
            return len(rules) + len(theirs)
        doomed = {r["comment"] for r in rules if str(r.get("comment", "")).startswith(_TAG_PREFIX)} - kept
        present = self._present_sets(what)
        commands = [*theirs, *self._delete_rules(rules, doomed)]
        for tag in doomed:
            commands += [
                c
                for c in self._network_teardown(tag.removeprefix(_TAG_PREFIX), _interface_of(rules, tag))
                if _names(c) in present | {"bridges"}
            ]
        self._batch(what, commands)
        return sum(1 for r in rules if r.get("comment") in doomed) + len(theirs)


def _parsed(output: object) -> list[dict[str, Any]]:
    """The objects of a listing: json_cmd returns it parsed already, cmd as text."""
    if isinstance(output, str):
        output = json.loads(output) if output.strip() else {}
    return cast(list[dict[str, Any]], cast(dict[str, Any], output or {}).get("nftables", []))


def _names(command: Command) -> str:
    (body,) = command.values()
    (inner,) = body.values()
    return cast(str, inner["name"])


def _interface_of(rules: list[dict[str, Any]], tag: str) -> str | None:
    """The bridge of the network tagged ``tag``, read from its isolation rule (``iifname BRIDGE ...``)."""
    for rule in rules:
        if rule.get("comment") == tag and rule["chain"] == "isolation":
            first = rule["expr"][0].get("match", {})
            if first.get("left") == {"meta": {"key": "iifname"}} and isinstance(first.get("right"), str):
                return cast(str, first["right"])
    return None


class NftablesFirewall:
    """A :class:`~cnm.firewallapi.Firewall` on libnftables, in the table ``inet cnm_<owner>`` of one namespace.

    Args:
        netns: the namespace whose nftables cnm manages.
        owner: names the controller's own table (``[0-9a-z_]``, at most 32);
            two controllers on one host namespace use two owners and never
            touch each other's rules.
        reply_timeout: seconds to wait for the worker's answer before taking it
            as wedged, killing it and raising KernelError.

    Example::

        fw = NftablesFirewall(NetNS.named("h1"), owner="default")
        fw.setup_network(FirewallNetwork(id=net_id, interface="br-1", subnet=subnet))
        fw.close()
    """

    name = "nftables"

    def __init__(self, netns: NetNS, *, owner: str = "default", reply_timeout: float = REPLY_TIMEOUT) -> None:
        self._netns = netns
        self.table = table_name(owner)
        self._worker = Worker(
            netns, functools.partial(_Server, self.table), label="nftables firewall", reply_timeout=reply_timeout
        )

    @property
    def netns(self) -> NetNS:
        """The namespace this firewall writes to."""
        return self._netns

    @property
    def _worker_pid(self) -> int | None:
        # For tests: the PID of the worker serving this firewall now, None if none runs.
        return self._worker.pid

    def __repr__(self) -> str:
        return f"NftablesFirewall(netns={self._netns.path!r}, table={FAMILY} {self.table})"

    def close(self) -> None:
        """End the worker process (by PID); a later call starts a new one. Rules stay as they are."""
        self._worker.close()

    def _run(self, what: str, method: str, *args: Any) -> object:
        """Have the worker run ``method`` with ``args`` in one libnftables transaction."""
        return self._worker.run(what, method, *args)

    def holds_rules(self) -> bool:
        """Whether the namespace has this owner's table already (reads, changes nothing)."""
        return bool(self._run(f"look for table {FAMILY} {self.table}", "holds_rules"))

    def check(self) -> None:
        """Raise KernelError saying why if libnftables or the kernel's nf_tables cannot be used here."""
        self._run("check the nftables backend", "check")

    def setup_network(self, network: FirewallNetwork) -> None:
        """Install the network-level rules: forwarding, isolation, NAT, icc, internal."""
        self._run(f"set up nftables firewall for network {network.id[:12]}", "setup_network", network)

    def teardown_network(self, network: FirewallNetwork) -> None:
        """Remove every rule, set and map of the network, its ports and links included."""
        self._run(f"tear down nftables firewall for network {network.id[:12]}", "teardown_network", network)

    def add_ports(self, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
        """Publish ports: elements of the network's DNAT maps and its hairpin set."""
        if ports and not network.internal:
            self._run(f"publish {_describe(ports)} on network {network.id[:12]}", "add_ports", network, tuple(ports))

    def remove_ports(self, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
        """Withdraw published ports (their map elements)."""
        if ports and not network.internal:
            what = f"withdraw {_describe(ports)} on network {network.id[:12]}"
            self._run(what, "remove_ports", network, tuple(ports))

    def add_link(self, network: FirewallNetwork, link: LinkRule) -> None:
        """Allow a legacy link's ports through on an icc=false network (elements of its links set)."""
        if link_elements(self.table, network, link):
            what = f"allow link {link.source_ip} -> {link.target_ip} on network {network.id[:12]}"
            self._run(what, "add_link", network, link)

    def remove_link(self, network: FirewallNetwork, link: LinkRule) -> None:
        """Withdraw a legacy link's elements."""
        if link_elements(self.table, network, link):
            what = f"withdraw link {link.source_ip} -> {link.target_ip} on network {network.id[:12]}"
            self._run(what, "remove_link", network, link)

    def reapply(self, networks: Sequence[NetworkRules]) -> None:
        """Rebuild cnm's table from this description, in one transaction; other tables are left alone."""
        self._run(f"reapply nftables rules of {len(networks)} networks", "reapply", tuple(networks))

    def cleanup(self, keep: Collection[str] = ()) -> int:
        """Remove every rule of networks not in ``keep``; return how many rules went.

        With ``keep`` empty, the whole table goes.
        """
        kept = frozenset(_TAG_PREFIX + network_id[:12] for network_id in keep)
        removed = cast(int, self._run(f"clean up nftables table {self.table}", "cleanup", kept))
        log.info("removed %d cnm nftables rules from %s", removed, self._netns.name)
        return removed


def _describe(ports: Sequence[PortMapping]) -> str:
    shown = ", ".join(f"{p.host_port}/{p.protocol}" for p in ports[:3])
    return f"ports {shown}" + (f" and {len(ports) - 3} more" if len(ports) > 3 else "")


_: type[Firewall] = NftablesFirewall
