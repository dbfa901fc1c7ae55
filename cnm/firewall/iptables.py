"""The python-iptables (libiptc, legacy xtables) firewall backend, in Docker's layout.

:class:`IptablesFirewall` writes Docker's ``--userland-proxy=false`` rule layout
(cnm runs no userland proxy) with cnm's own chains, described in
:mod:`cnm.firewall._iptables_rules`, slimmed where a published port's cost is
concerned: libiptc reads and the kernel replaces a whole table on every change,
at about a microsecond per rule and per match, so a port adds two bare rules to
the nat table and none to filter (docs/firewall.md).

Every public method is one request to a long-lived worker process
(:class:`cnm.kernel.worker.Worker`), one per :class:`IptablesFirewall`, forked
on first use, that entered the namespace once. For each request the worker takes
the xtables lock, reads each table it needs afresh (other iptables users change
them between requests), changes it, commits it once and frees it, then releases
the lock. python-iptables keeps process-wide state bound to the namespace where
it was first used (pitfalls B4), so it is never imported outside such a worker.
What the worker keeps between requests is what costs and never goes stale:
python-iptables with its loaded extensions, and the libiptc entries built from
rule specs (a rule's bytes do not depend on the table's contents).

Rules are handled as raw libiptc entries wherever possible: presence is asked of
libiptc (``iptc_check_entry``) and scans read only each entry's comment, so no
chain is parsed into python-iptables ``Rule`` objects; a thousand published
ports cost a thousand memcmp's in C, not a thousand Python objects. Publishing
and withdrawing ports never scan at all: what remains of their cost is the
kernel's (``benchmarks/bench_firewall.py``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import glob
import logging
import os
import struct
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any, cast

import attrs

from cnm.errors import CNMError, KernelError
from cnm.firewall._iptables_rules import (
    CHAINS,
    SHARED_TAG,
    STAGE_1_JUMP,
    TAG_PREFIX,
    Block,
    PortRules,
    RuleSpec,
    TableName,
    base_blocks,
    link_blocks,
    network_blocks,
    network_chain_tag,
    network_chains,
    port_chain_blocks,
    port_rules,
)
from cnm.firewallapi import Firewall, FirewallNetwork, LinkRule, NetworkRules, PortMapping
from cnm.kernel.netns import NetNS
from cnm.kernel.worker import Request, Worker

__all__ = ["DEFAULT_LOCK_PATH", "LOCK_TIMEOUT", "REPLY_TIMEOUT", "IptablesFirewall"]

log = logging.getLogger(__name__)

#: The lock every xtables-legacy user takes (iptables ``-w``); ``XTABLES_LOCKFILE`` overrides it.
DEFAULT_LOCK_PATH = "/run/xtables.lock"
#: Seconds to wait for the xtables lock before giving up.
LOCK_TIMEOUT = 10.0
#: Seconds a call may take once it holds the lock before its worker is taken as wedged and replaced.
REPLY_TIMEOUT = 60.0

_TABLES: tuple[TableName, ...] = ("filter", "nat")
_BUILTIN_CHAINS: dict[TableName, tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}
# struct xt_entry_match: u16 match_size, char name[29], u8 revision, then the data.
_MATCH_HEADER = struct.Struct("=H29sB")
_COMMENT_LEN = 256  # XT_MAX_COMMENT_LEN
# Built entries kept by a worker between requests; past this the cache starts over, so that a
# long-lived worker does not keep the rules of every container it ever saw.
_BUILT_CACHE_LIMIT = 4096


def _load_iptc() -> Any:
    """Import python-iptables once, without letting it run ldconfig."""
    if "XTABLES_LIBDIR" not in os.environ:
        # Without it, importing iptc runs "ldconfig -N -v" to find the extensions (pitfalls B6).
        found = sorted(glob.glob("/usr/lib/*/xtables")) + sorted(glob.glob("/usr/lib*/xtables"))
        if found:
            os.environ["XTABLES_LIBDIR"] = found[0]
    try:
        import iptc  # imported on first use: importing it loads kernel modules and C libraries
        import iptc.ip4tc
        import iptc.xtables
    except Exception as exc:  # any import failure (missing C library, no extensions dir) makes the backend unusable
        raise KernelError(
            f"python-iptables cannot be loaded ({type(exc).__name__}: {exc}); "
            "install libiptc/libxtables and set XTABLES_LIBDIR to the xtables extension directory"
        ) from exc
    return iptc


@contextlib.contextmanager
def _iptc_errors(what: str) -> Iterator[None]:
    """The one place where python-iptables errors become :class:`KernelError`."""
    import iptc.xtables  # only ever entered in the worker, after _load_iptc

    try:
        yield
    except CNMError:
        raise
    except (iptc.IPTCError, iptc.xtables.XTablesError, ValueError) as exc:
        raise KernelError(f"{what} failed: {exc}") from exc


@contextlib.contextmanager
def _xtables_lock(path: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the xtables lock: libiptc takes none, and a commit replaces the whole table (pitfalls B3)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise KernelError(f"cannot open the xtables lock {path}: {exc.strerror}", exc.errno) from exc
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise KernelError(
                        f"the xtables lock {path} is still held by another process after {timeout:g} s; "
                        "is an iptables command or another firewall manager stuck?",
                        errno.ETIMEDOUT,
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


class _Table:
    """One table inside the worker: a libiptc handle per request, raw-entry helpers around python-iptables."""

    def __init__(self, iptc: Any, name: TableName) -> None:
        self.name = name
        self.dirty = False
        self._iptc = iptc
        # Bypass Table's process-wide cache: this worker owns its handle and its refreshes (pitfalls B4, B5).
        table = object.__new__(iptc.Table)
        with _iptc_errors(f"read the {name} table"):
            table._init(name, False)  # the only way to get an uncached handle
        self._table = table

        class _Rule(iptc.Rule):  # type: ignore[misc]
            # python-iptables decides whether a target is a chain by asking Rule.tables, which opens
            # the process-wide cached Table of every table (five iptc_init calls per rule) and cannot
            # see a chain this request created but has not committed yet; answer from our own handle.
            @property
            def tables(self) -> list[Any]:
                return [table]

        self._rule_class = _Rule
        self._lib = iptc.ip4tc._libiptc  # iptc_check_entry is not wrapped by python-iptables
        self._errno = iptc.ip4tc._get_errno_loc
        self._entry_size = iptc.xtables.xt_align(ctypes.sizeof(iptc.ip4tc.ipt_entry))
        # The Rule is kept with its entry: its match and target buffers must outlive every use of the entry.
        self._built: dict[RuleSpec, tuple[Any, Any, Any]] = {}
        self.base_ensured = False

    def begin(self) -> None:
        """Read the table afresh for a new request: whatever another iptables user did since is seen."""
        if len(self._built) > _BUILT_CACHE_LIMIT:
            self._built.clear()  # between requests: no entry of the cache is in use
        with _iptc_errors(f"read the {self.name} table"):
            self._table.refresh()  # autocommit is off: only reads, never commits what an earlier request left
        self.dirty = False
        self.base_ensured = False

    def end(self) -> None:
        """Free the handle (and any change not committed): nothing of the table outlives its request."""
        self._table.close()
        self.dirty = False

    # -- chains -----------------------------------------------------------------
    def has_chain(self, chain: str) -> bool:
        return bool(self._table.is_chain(chain))

    def ensure_chain(self, chain: str) -> None:
        if not self.has_chain(chain):
            with _iptc_errors(f"create chain {chain} in table {self.name}"):
                self._table.create_chain(chain)
            self.dirty = True

    def chain_names(self) -> list[str]:
        """Every chain of the table, builtin ones included."""
        names = []
        chain = self._lib.iptc_first_chain(self._table._handle)
        while chain:
            names.append(chain.decode())
            chain = self._lib.iptc_next_chain(self._table._handle)
        return names

    def rule_count(self, chain: str) -> int:
        """How many rules ``chain`` holds, read without looking into any of them."""
        table, count = self._table, 0
        entry = table.first_rule(chain)
        while entry:
            entry, count = table.next_rule(entry), count + 1
        return count

    def flush_and_delete(self, chains: Sequence[str]) -> int:
        """Flush every chain of ``chains`` that exists, then delete the unreferenced ones; count the rules."""
        present = [c for c in chains if self.has_chain(c)]
        removed = 0
        for chain in present:
            removed += self.rule_count(chain)
            with _iptc_errors(f"flush chain {chain} in table {self.name}"):
                self._table.flush_entries(chain)
            self.dirty = True
        for chain in present:
            refs = ctypes.c_uint(0)
            handle = self._table._handle
            self._lib.iptc_get_references(ctypes.byref(refs), chain.encode(), handle)
            if refs.value:
                log.warning(
                    "keeping chain %s in table %s: %d rules not cnm's still jump to it", chain, self.name, refs.value
                )
                continue
            with _iptc_errors(f"delete chain {chain} in table {self.name}"):
                self._table.delete_chain(chain)
        return removed

    # -- rules by value ---------------------------------------------------------
    def _build(self, spec: RuleSpec) -> tuple[Any, Any]:
        """The libiptc entry and match mask of ``spec``, built once per worker."""
        built = self._built.get(spec)
        if built is not None:
            return built[0], built[1]
        with _iptc_errors(f"build rule {spec} in table {self.name}"):
            rule = self._rule_class()
            for attr, value in (
                ("src", spec.source),
                ("dst", spec.destination),
                ("in_interface", spec.in_interface),
                ("out_interface", spec.out_interface),
                ("protocol", spec.protocol),
            ):
                if value is not None:
                    setattr(rule, attr, value)
            for module, options in spec.all_matches:
                match = rule.create_match(module)
                for option, value in options:
                    match.set_parameter(option, value)
            target = rule.create_target(spec.target)
            for option, value in spec.target_options:
                target.set_parameter(option, value)
            rule.final_check()
            entry, mask = rule.rule, rule.mask
            if not entry:
                raise ValueError("python-iptables produced an empty entry")
        self._built[spec] = (entry, mask, rule)
        return entry, mask

    def contains(self, spec: RuleSpec) -> bool:
        if not self.has_chain(spec.chain):
            return False
        entry, mask = self._build(spec)
        return bool(self._lib.iptc_check_entry(spec.chain.encode(), entry, mask, self._table._handle))

    def insert(self, spec: RuleSpec, position: int) -> None:
        entry, _ = self._build(spec)
        with _iptc_errors(f"insert rule {spec} at {position + 1} in table {self.name}"):
            self._table.insert_entry(spec.chain, entry, position)
        self.dirty = True

    def append(self, spec: RuleSpec) -> None:
        entry, _ = self._build(spec)
        with _iptc_errors(f"append rule {spec} in table {self.name}"):
            self._table.append_entry(spec.chain, entry)
        self.dirty = True

    def delete(self, spec: RuleSpec) -> bool:
        """Delete the first rule equal to ``spec``; False when there is none."""
        if not self.has_chain(spec.chain):
            return False
        entry, mask = self._build(spec)
        handle = self._table._handle
        if self._lib.iptc_delete_entry(spec.chain.encode(), entry, mask, handle) == 1:
            self.dirty = True
            return True
        code = self._errno()[0]
        if code == errno.ENOENT:
            return False
        raise KernelError(f"delete rule {spec} in table {self.name} failed: {self._table.strerror()}", code)

    # -- rules by scanning ------------------------------------------------------
    def _comment(self, entry: Any) -> str | None:
        raw = ctypes.string_at(ctypes.addressof(entry), entry.target_offset)
        offset = self._entry_size
        while offset + _MATCH_HEADER.size <= len(raw):
            size, name, _ = _MATCH_HEADER.unpack_from(raw, offset)
            if size == 0:
                break
            if name.split(b"\0", 1)[0] == b"comment":  # the name is not zero-padded: garbage follows the NUL
                start = offset + _MATCH_HEADER.size
                return raw[start : start + _COMMENT_LEN].split(b"\0", 1)[0].decode(errors="replace")
            offset += size
        return None

    def comments(self, chain: str) -> list[str | None]:
        """The comment of every rule of ``chain``, by position; reads no rule into Python objects."""
        if not self.has_chain(chain):
            return []
        result: list[str | None] = []
        table = self._table
        entry = table.first_rule(chain)
        while entry:
            result.append(self._comment(entry))
            entry = table.next_rule(entry)
        return result

    def position_of(self, chain: str, target: str, comment: str | None) -> int | None:
        """Index of the first rule of ``chain`` jumping to ``target`` with ``comment``."""
        table = self._table
        entry, index = table.first_rule(chain), 0
        while entry:
            if self._comment(entry) == comment and (table.get_target(entry) or b"").decode() == target:
                return index
            entry, index = table.next_rule(entry), index + 1
        return None

    def delete_where(self, chain: str, doomed: Callable[[str | None], bool]) -> int:
        """Delete every rule of ``chain`` whose comment satisfies ``doomed``; return how many."""
        positions = [i for i, comment in enumerate(self.comments(chain)) if doomed(comment)]
        for position in reversed(positions):  # from the end, so earlier positions stay valid
            if self._lib.iptc_delete_num_entry(chain.encode(), position, self._table._handle) != 1:
                raise KernelError(
                    f"delete rule {position + 1} of chain {chain} in table {self.name} failed: "
                    f"{self._table.strerror()}",
                    self._errno()[0],
                )
        if positions:
            self.dirty = True
        return len(positions)

    def commit(self) -> None:
        if self.dirty:
            with _iptc_errors(f"commit table {self.name}"):
                self._table.commit()


class _Session:
    """The work of one request inside the worker: tables read on first use, committed once each."""

    def __init__(self, iptc: Any, cache: dict[TableName, _Table]) -> None:
        self._iptc = iptc
        self._cache = cache  # the worker's tables, with their built rules, from earlier requests
        self._tables: dict[TableName, _Table] = {}

    def table(self, name: TableName) -> _Table:
        table = self._tables.get(name)
        if table is None:
            table = self._cache.get(name)
            if table is None:
                table = self._cache[name] = _Table(self._iptc, name)  # read by its constructor
            else:
                table.begin()
            self._tables[name] = table
        return table

    def existing(self, name: TableName) -> _Table | None:
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
    def ensure_base(self, name: TableName) -> _Table:
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

    def _place(self, table: _Table, block: Block) -> None:
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
        """Add each port's DNAT and hairpin rules unless its DNAT is there already."""
        rules = _port_rules(network, ports)
        if not rules:
            return
        # The jumps first: they create the network's chains, and are cheap checks when present.
        self.place(port_chain_blocks(network))
        table = self.table("nat")
        for port in rules:
            if not table.contains(port.dnat):
                table.append(port.hairpin)  # even if an equal one is there: that one belongs to another port
                table.append(port.dnat)

    def withdraw(self, network: FirewallNetwork, ports: Iterable[PortMapping]) -> None:
        """Remove each port's DNAT, and one copy of its hairpin rule with it."""
        rules = _port_rules(network, ports)
        table = self.existing("nat") if rules else None
        if table is None:
            return
        for port in rules:
            if table.delete(port.dnat):
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
def _setup_network(session: _Session, network: FirewallNetwork) -> None:
    session.place(network_blocks(network))


def _teardown_network(session: _Session, network: FirewallNetwork) -> None:
    tag, key = network.tag, network.id[:12]
    session.remove_tagged(lambda comment: comment == tag, builtin=False)
    session.remove_network_chains(lambda chain_key: chain_key == key)


def _add_ports(session: _Session, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
    session.publish(network, ports)


def _remove_ports(session: _Session, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
    session.withdraw(network, ports)


def _add_link(session: _Session, network: FirewallNetwork, link: LinkRule) -> None:
    session.place(link_blocks(network, link))


def _remove_link(session: _Session, network: FirewallNetwork, link: LinkRule) -> None:
    session.remove(link_blocks(network, link))


def _reapply(session: _Session, owner: str, networks: Sequence[NetworkRules]) -> None:
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


def _cleanup(session: _Session, owner: str, kept: frozenset[str]) -> int:
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


_OPERATIONS: dict[str, Callable[..., object]] = {
    "setup_network": _setup_network,
    "teardown_network": _teardown_network,
    "add_ports": _add_ports,
    "remove_ports": _remove_ports,
    "add_link": _add_link,
    "remove_link": _remove_link,
    "reapply": _reapply,
    "cleanup": _cleanup,
}


class _Server:
    """The worker's side: python-iptables loaded once, tables and built rules kept between requests."""

    def __init__(self, lock_path: str, lock_timeout: float) -> None:
        self._iptc = _load_iptc()
        self._lock_path = lock_path
        self._lock_timeout = lock_timeout
        self._tables: dict[TableName, _Table] = {}

    def __call__(self, request: Any) -> object:
        """Run one request under the xtables lock, committing once per table it changed."""
        if not isinstance(request, Request) or request.method not in _OPERATIONS:
            raise KernelError(f"the firewall worker got a request it does not know: {request!r}")
        operation = _OPERATIONS[request.method]
        with _xtables_lock(self._lock_path, self._lock_timeout), _iptc_errors(request.what):
            session = _Session(self._iptc, self._tables)
            try:
                result = operation(session, *request.args)
                session.commit()
            finally:
                session.close()
        return result


class IptablesFirewall:
    """A :class:`~cnm.firewallapi.Firewall` on python-iptables, bound to one host namespace.

    The work happens in a worker process inside ``netns``, started on the
    first call and replaced if it dies; :meth:`close` ends it (a later call
    starts a new one). Calls from several threads take turns.

    Args:
        netns: the namespace whose iptables (legacy xtables) cnm manages.
        owner: the controller's owner id; every rule is tagged
            ``cnm:<owner>:<network id[:12]>``, and reapply and cleanup touch
            only rules of this owner.
        lock_path: the xtables lock file; defaults to ``$XTABLES_LOCKFILE`` or
            ``/run/xtables.lock``, the lock ``iptables -w`` takes.
        lock_timeout: seconds to wait for that lock before raising KernelError.
        reply_timeout: seconds to wait for the worker's answer before taking it
            as wedged, killing it and raising KernelError; defaults to
            ``lock_timeout + REPLY_TIMEOUT``.

    Example::

        fw = IptablesFirewall(NetNS.named("h1"))
        fw.setup_network(FirewallNetwork(id=net_id, interface="br-1", subnet=subnet))
        fw.close()
    """

    name = "iptables"

    def __init__(
        self,
        netns: NetNS,
        *,
        owner: str = "",
        lock_path: str | None = None,
        lock_timeout: float = LOCK_TIMEOUT,
        reply_timeout: float | None = None,
    ) -> None:
        self._netns = netns
        self._owner = owner
        self._lock_path = lock_path or os.environ.get("XTABLES_LOCKFILE") or DEFAULT_LOCK_PATH
        self._lock_timeout = lock_timeout
        self._worker = Worker(
            netns,
            functools.partial(_Server, self._lock_path, lock_timeout),
            label="firewall",
            reply_timeout=lock_timeout + REPLY_TIMEOUT if reply_timeout is None else reply_timeout,
        )

    @property
    def netns(self) -> NetNS:
        """The namespace this firewall writes to."""
        return self._netns

    @property
    def _worker_pid(self) -> int | None:
        # For tests: the PID of the worker serving this firewall now, None if none runs.
        return self._worker.pid

    @property
    def owner(self) -> str:
        """The owner id whose rules this firewall writes and removes."""
        return self._owner

    def __repr__(self) -> str:
        return f"IptablesFirewall(netns={self._netns.path!r}, owner={self._owner!r})"

    def _own(self, network: FirewallNetwork) -> FirewallNetwork:
        return attrs.evolve(network, owner=self._owner)

    def close(self) -> None:
        """End the worker process (by PID); a later call starts a new one. Rules stay as they are."""
        self._worker.close()

    def _run(self, what: str, method: str, *args: Any) -> object:
        """Have the worker run ``method`` with ``args`` under the xtables lock, committing once per table."""
        return self._worker.run(what, method, *args)

    def setup_network(self, network: FirewallNetwork) -> None:
        """Install the network-level rules: forwarding, isolation, NAT, icc, internal."""
        network = self._own(network)
        self._run(f"set up firewall for network {network.id[:12]}", "setup_network", network)

    def teardown_network(self, network: FirewallNetwork) -> None:
        """Remove every rule of the network, its ports and links included."""
        network = self._own(network)
        self._run(f"tear down firewall for network {network.id[:12]}", "teardown_network", network)

    def add_ports(self, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
        """Publish ports (DNAT and hairpin masquerade; the network's conntrack ACCEPT lets them in)."""
        network = self._own(network)
        if ports and network_chains(network):  # nothing to publish (none, or an internal network): no round trip
            what = f"publish {_describe(ports)} on network {network.id[:12]}"
            self._run(what, "add_ports", network, tuple(ports))

    def remove_ports(self, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
        """Withdraw published ports."""
        network = self._own(network)
        if ports and network_chains(network):
            what = f"withdraw {_describe(ports)} on network {network.id[:12]}"
            self._run(what, "remove_ports", network, tuple(ports))

    def add_link(self, network: FirewallNetwork, link: LinkRule) -> None:
        """Allow a legacy link's ports through on an icc=false network."""
        network = self._own(network)
        if link_blocks(network, link):
            what = f"link {link.source_ip} -> {link.target_ip} on network {network.id[:12]}"
            self._run(f"allow {what}", "add_link", network, link)

    def remove_link(self, network: FirewallNetwork, link: LinkRule) -> None:
        """Withdraw a legacy link's rules."""
        network = self._own(network)
        if link_blocks(network, link):
            what = f"link {link.source_ip} -> {link.target_ip} on network {network.id[:12]}"
            self._run(f"withdraw {what}", "remove_link", network, link)

    def reapply(self, networks: Sequence[NetworkRules]) -> None:
        """Rebuild every cnm rule from this description, dropping any other cnm rule.

        ``networks`` are given in creation order (the newest last), as setup
        saw them. Everything is rebuilt in one request and committed once per
        table, so there is no moment without rules; rules that are not cnm's
        are left where they are.
        """
        owned = tuple(attrs.evolve(item, network=self._own(item.network)) for item in networks)
        self._run(f"reapply firewall rules of {len(networks)} networks", "reapply", self._owner, owned)

    def cleanup(self, keep: Collection[str] = ()) -> int:
        """Remove every rule of this owner whose network id is not in ``keep``; return how many.

        With ``keep`` empty and no other owner's rules left, cnm's chains and
        shared jumps go too, leaving the tables as they were before cnm came.
        """
        kept = frozenset(network_id[:12] for network_id in keep)
        removed = cast(int, self._run("clean up cnm firewall rules", "cleanup", self._owner, kept))
        log.info("removed %d cnm firewall rules from %s", removed, self._netns.name)
        return removed


def _describe(ports: Sequence[PortMapping]) -> str:
    shown = ", ".join(f"{p.host_port}/{p.protocol}" for p in ports[:3])
    return f"ports {shown}" + (f" and {len(ports) - 3} more" if len(ports) > 3 else "")


_: type[Firewall] = IptablesFirewall
