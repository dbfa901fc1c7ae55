"""The controller's firewall: which backend, recorded in the store, and migrating from another one.

The backend a state_dir uses is recorded in its store (kind ``controller``,
key ``firewall``: ``{"name": ..., "previous": [...]}``; :mod:`cnm._core.state`). Opening a state_dir
with a different backend than recorded migrates it in one go: the record names
the new backend with the old ones under ``previous`` before the new one writes
anything; then the old backends' rules of this owner are removed (each old
backend opened and asked to :meth:`~cnm.firewallapi.Firewall.cleanup`), the new
one's are written (``reapply``), and the new name alone is recorded. A
migration cut short by a crash is finished by the next open, whatever backend
that one asks for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from cnm._core.records import NetworkRecord
from cnm._core.state import State
from cnm.errors import CNMError
from cnm.firewallapi import AUTO, AUTO_KEEPS, ClosableFirewall, Firewall, ProbingFirewall, open_firewall
from cnm.kernel.netns import NetNS

__all__ = ["FirewallChoice", "choose_firewall", "recorded_firewall"]

log = logging.getLogger(__name__)

_KIND, _KEY = "controller", "firewall"


@attrs.frozen(kw_only=True)
class _Record:
    name: str
    previous: tuple[str, ...] = ()


# -- the store, through the state's typed accessors -----------------------------------------------
def recorded_firewall(state: State) -> _Record | None:
    """The backend the store records for its state_dir, with any migration not yet finished."""
    with state.transaction() as tx:
        found = tx.firewall_backend()
    return None if found is None else _Record(name=found[0], previous=found[1])


def _record(state: State, name: str, previous: tuple[str, ...] = ()) -> None:
    with state.transaction() as tx:
        tx.record_firewall_backend(name, previous)


def _has_networks(state: State) -> bool:
    with state.transaction() as tx:
        return bool(tx.list(NetworkRecord))


@attrs.define
class FirewallChoice:
    """The firewall a controller opened, and the migration it still has to finish.

    Attributes:
        firewall: the backend in use.
        own: the same object when the controller opened it (and must close it), else None.
        name: the backend's name, as recorded.
        stale: the backends whose rules of this owner are to be removed (a migration), in that order.
    """

    firewall: Firewall
    own: ClosableFirewall | None
    name: str
    stale: tuple[str, ...]
    _state: State
    _host: NetNS
    _owner: str

    def finish(self, reapply: Callable[[], None]) -> None:
        """Record the backend; when migrating, first remove the old backends' rules and write the new one's.

        Raises:
            CNMError: the new backend's rules could not be written (the record
                keeps the migration pending: the next open tries again).
        """
        if not self.stale:
            recorded = recorded_firewall(self._state)
            if recorded is None or recorded.name != self.name:
                _record(self._state, self.name)
            return
        removed = sum(self._clean(old) for old in self.stale)
        reapply()
        _record(self._state, self.name)
        log.warning(
            "migrated the firewall of %s from %s to %s: removed %d rules of the old backend, wrote the new one's",
            self._owner,
            ", ".join(self.stale),
            self.name,
            removed,
        )

    def _clean(self, old: str) -> int:
        try:
            firewall = open_firewall(old, self._host, owner=self._owner)
        except CNMError as exc:
            log.warning(
                "cannot open the old firewall backend %s to remove its rules (%s); remove them by hand", old, exc
            )
            return 0
        try:
            return firewall.cleanup()
        finally:
            firewall.close()


def choose_firewall(spec: Firewall | str | None, host: NetNS, state: State, owner: str) -> FirewallChoice:
    """Open (or take) the controller's firewall and work out what a migration must remove.

    ``spec`` is a backend name, ``"auto"`` (also for None) or a backend object.
    No rule is changed yet: a migration is only recorded as pending (the new
    name, and the old ones under ``previous``); :meth:`FirewallChoice.finish`
    removes the old rules, writes the new ones and records the new name alone.
    """
    recorded = recorded_firewall(state)
    look = _has_networks(state)  # a state_dir that never had a network has no rules anywhere
    own: ClosableFirewall | None = None
    firewall: Firewall
    if spec is None or isinstance(spec, str):
        firewall = own = open_firewall(
            spec or AUTO, host, owner=owner, recorded=None if recorded is None else recorded.name, look=look
        )
    else:
        firewall = spec
    name = str(getattr(firewall, "name", type(firewall).__name__))
    if recorded is not None:
        stale = [n for n in (recorded.name, *recorded.previous) if n != name]
    elif look:
        stale = [n for n in AUTO_KEEPS if n != name and _holds_rules(n, host, owner)]
    else:
        stale = []
    stale = list(dict.fromkeys(stale))
    if stale:
        log.warning("firewall backend %s for %s, which used %s: migrating", name, owner, ", ".join(stale))
        # Before the new backend writes anything: a crash from here on is finished by the next open.
        _record(state, name, tuple(stale))
    return FirewallChoice(
        firewall=firewall,
        own=own,
        name=name,
        stale=tuple(stale),
        state=state,
        host=host,
        owner=owner,
    )


def _holds_rules(name: str, host: NetNS, owner: str) -> bool:
    """Whether backend ``name`` holds rules of ``owner`` in ``host`` (False if it cannot even be asked)."""
    try:
        firewall = open_firewall(name, host, owner=owner)
    except CNMError:
        return False
    try:
        return isinstance(firewall, ProbingFirewall) and firewall.holds_rules()
    except CNMError:
        return False
    finally:
        firewall.close()
