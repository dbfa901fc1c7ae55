"""python-iptables (libiptc) inside the worker: the import, the xtables lock, and one table's raw entries.

:class:`Table` wraps one libiptc handle with helpers that work on raw entries
(``iptc_check_entry``, comment scans) so that no chain is parsed into
python-iptables ``Rule`` objects. Everything here runs only inside the
iptables backend's worker process (:mod:`cnm.firewall._iptables_session`):
python-iptables keeps process-wide state bound to the namespace where it was
first used (pitfalls B4).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from cnm.errors import CNMError, KernelError
from cnm.firewall._iptables_rules import RuleSpec, TableName

__all__ = ["LOCK_TIMEOUT", "Table", "iptc_errors", "load_iptc", "xtables_lock"]

log = logging.getLogger(__name__)

#: Seconds to wait for the xtables lock before giving up.
LOCK_TIMEOUT = 10.0

# struct xt_entry_match: u16 match_size, char name[29], u8 revision, then the data.
_MATCH_HEADER = struct.Struct("=H29sB")
_COMMENT_LEN = 256  # XT_MAX_COMMENT_LEN
# Built entries kept by a worker between requests; past this the cache starts over, so that a
# long-lived worker does not keep the rules of every container it ever saw.
_BUILT_CACHE_LIMIT = 4096


def load_iptc() -> Any:
    """Import python-iptables once, without letting it run ldconfig."""
    if "XTABLES_LIBDIR" not in os.environ:
        # Without it, importing iptc runs "ldconfig -N -v" to find the extensions (pitfalls B6).
        found = sorted(glob.glob("/usr/lib/*/xtables")) + sorted(glob.glob("/usr/lib*/xtables"))
        if found:
            os.environ["XTABLES_LIBDIR"] = found[0]
    try:
        # Imported on first use (each line noqa PLC0415): importing iptc loads kernel modules and C libraries.
        import iptc  # noqa: PLC0415
        import iptc.ip4tc  # noqa: PLC0415
        import iptc.xtables  # noqa: PLC0415
    except Exception as exc:  # any import failure (missing C library, no extensions dir) makes the backend unusable
        raise KernelError(
            f"python-iptables cannot be loaded ({type(exc).__name__}: {exc}); "
            "install libiptc/libxtables and set XTABLES_LIBDIR to the xtables extension directory"
        ) from exc
    return iptc


@contextlib.contextmanager
def iptc_errors(what: str) -> Iterator[None]:
    """The one place where python-iptables errors become :class:`KernelError`."""
    import iptc.xtables  # noqa: PLC0415 - only ever entered in the worker, after load_iptc

    try:
        yield
    except CNMError:
        raise
    except (iptc.IPTCError, iptc.xtables.XTablesError, ValueError) as exc:
        raise KernelError(f"{what} failed: {exc}") from exc


@contextlib.contextmanager
def xtables_lock(path: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
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


class Table:
    """One table inside the worker: a libiptc handle per request, raw-entry helpers around python-iptables."""

    def __init__(self, iptc: Any, name: TableName) -> None:
        self.name = name
        self.dirty = False
        self._iptc = iptc
        # Bypass Table's process-wide cache: this worker owns its handle and its refreshes (pitfalls B4, B5).
        table = object.__new__(iptc.Table)
        with iptc_errors(f"read the {name} table"):
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
        with iptc_errors(f"read the {self.name} table"):
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
            with iptc_errors(f"create chain {chain} in table {self.name}"):
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
            with iptc_errors(f"flush chain {chain} in table {self.name}"):
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
            with iptc_errors(f"delete chain {chain} in table {self.name}"):
                self._table.delete_chain(chain)
        return removed

    # -- rules by value ---------------------------------------------------------
    def _build(self, spec: RuleSpec) -> tuple[Any, Any]:
        """The libiptc entry and match mask of ``spec``, built once per worker."""
        built = self._built.get(spec)
        if built is not None:
            return built[0], built[1]
        with iptc_errors(f"build rule {spec} in table {self.name}"):
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
        with iptc_errors(f"insert rule {spec} at {position + 1} in table {self.name}"):
            self._table.insert_entry(spec.chain, entry, position)
        self.dirty = True

    def append(self, spec: RuleSpec) -> None:
        entry, _ = self._build(spec)
        with iptc_errors(f"append rule {spec} in table {self.name}"):
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
            with iptc_errors(f"commit table {self.name}"):
                self._table.commit()
