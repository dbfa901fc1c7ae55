"""The typed repository over the store: the one owner of the core's schema (internal).

Every kind and index key of the core is spelled here and nowhere else:

=================  ==================================  ===========================================
kind               key                                 holds
=================  ==================================  ===========================================
network            network id                          :class:`~cnm._core.records.NetworkRecord`
network.name       name                                ``{"id": network id}``
endpoint           endpoint id                         :class:`~cnm._core.records.EndpointRecord`
endpoint.name      ``<network id>/<name>``             ``{"id": endpoint id}`` (a network's endpoints)
sandbox            sandbox id                          :class:`~cnm._core.records.SandboxRecord`
sandbox.name       name                                ``{"id": sandbox id}``
sandbox.endpoint   ``<sandbox id>/<endpoint id>``      the endpoints joined to a sandbox
sandbox.owned      ``<sandbox id>/<endpoint id>``      the endpoints a sandbox made for itself
sandbox.sharer     ``<owner id>/<sharer id>``          the sandboxes sharing a namespace
link               link id                             :class:`~cnm._core.records.LinkRecord`
link.alias         ``<source id>/<alias>``             ``{"id": link id}``
link.end           ``<sandbox id>/<link id>``          a sandbox's links, from or to it
controller         ``owner``                           ``{"id": the state_dir's owner id}``
controller         ``firewall``                        ``{"name": backend, "previous": [old, ...]}``
=================  ==================================  ===========================================

The IPAM (``ipam.*``) and the port allocator (``ports.*``) keep their own kinds in the
same store, and join the caller's transaction (see :mod:`cnm.ipamapi`).

:class:`State` opens transactions; a :class:`StateTx` is the typed view of one. Callers
group their reads and writes in ``with state.transaction() as tx:``; the one-shot
helpers of :class:`State` open their own (which join an open one of the same thread).
Indexes are kept in step by :meth:`StateTx.add`, :meth:`StateTx.put` and
:meth:`StateTx.remove`, so no caller writes an index itself.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import Iterator
from typing import Final, TypeVar

from cnm._core import records as rec
from cnm._core.records import EndpointRecord, LinkRecord, NetworkRecord, SandboxRecord
from cnm.errors import EndpointNotFound, NetworkNotFound, NotFound, SandboxNotFound
from cnm.store import Store, Transaction

__all__ = ["R", "State", "StateTx"]

log = logging.getLogger(__name__)

R = TypeVar("R", NetworkRecord, EndpointRecord, SandboxRecord, LinkRecord)
"""Any one of the core's record types."""

_KIND: Final[dict[type[object], str]] = {
    NetworkRecord: "network",
    EndpointRecord: "endpoint",
    SandboxRecord: "sandbox",
    LinkRecord: "link",
}
_NETWORK_NAME: Final = "network.name"
_ENDPOINT_NAME: Final = "endpoint.name"
_SANDBOX_NAME: Final = "sandbox.name"
_SANDBOX_ENDPOINT: Final = "sandbox.endpoint"
_SANDBOX_OWNED: Final = "sandbox.owned"
_SANDBOX_SHARER: Final = "sandbox.sharer"
_LINK_ALIAS: Final = "link.alias"
_LINK_END: Final = "link.end"
_CONTROLLER: Final = "controller"
_OWNER: Final = "owner"
_FIREWALL: Final = "firewall"

_NOT_FOUND: Final[dict[type[object], tuple[type[NotFound], str]]] = {
    NetworkRecord: (NetworkNotFound, "see Controller.networks()"),
    EndpointRecord: (EndpointNotFound, "see Network.endpoints()"),
    SandboxRecord: (SandboxNotFound, "see Controller.sandboxes()"),
    LinkRecord: (NotFound, "see Sandbox.links()"),
}


def _name_key(record: NetworkRecord | EndpointRecord | SandboxRecord | LinkRecord) -> tuple[str, str]:
    """The unique-name index entry of a record: (index kind, key)."""
    if isinstance(record, NetworkRecord):
        return _NETWORK_NAME, record.name
    if isinstance(record, EndpointRecord):
        return _ENDPOINT_NAME, f"{record.network_id}/{record.name}"
    if isinstance(record, SandboxRecord):
        return _SANDBOX_NAME, record.name
    return _LINK_ALIAS, f"{record.source_id}/{record.alias}"


def describe(record: NetworkRecord | EndpointRecord | SandboxRecord | LinkRecord) -> str:
    """``network 'net1'``, ``link 'db'``: how messages name a record."""
    name = record.alias if isinstance(record, LinkRecord) else record.name
    return f"{_KIND[type(record)]} {name!r}"


def _is_hex_prefix(ref: str) -> bool:
    return len(ref) >= 6 and all(c in "0123456789abcdef" for c in ref)


class StateTx:
    """The typed view of one store transaction."""

    def __init__(self, txn: Transaction) -> None:
        self._txn = txn

    # --- records -----------------------------------------------------------
    def get(self, cls: type[R], record_id: str) -> R | None:
        """The record of that id, or None."""
        data = self._txn.get(_KIND[cls], record_id)
        return None if data is None else rec.from_json(cls, data)

    def find(self, cls: type[R], ref: str, *, network_id: str = "") -> R | None:
        """A record by id, by name, or by a unique id prefix of 6 or more hex digits; None if none.

        ``network_id`` scopes an endpoint's name (endpoint names are unique per network)
        and limits the id matches to that network's endpoints.
        """
        kind = _KIND[cls]

        def in_scope(data: dict[str, object]) -> bool:
            return not network_id or data.get("network_id") == network_id

        data = self._txn.get(kind, ref)
        if data is not None and in_scope(data):
            return rec.from_json(cls, data)
        name_kind = {NetworkRecord: _NETWORK_NAME, EndpointRecord: _ENDPOINT_NAME, SandboxRecord: _SANDBOX_NAME}.get(
            cls
        )
        if name_kind is not None:
            named = self._txn.get(name_kind, f"{network_id}/{ref}" if network_id else ref)
            if named is not None:
                return self.get(cls, str(named["id"]))
        if _is_hex_prefix(ref):
            matches = [v for _, v in self._txn.list(kind, ref) if in_scope(v)]
            if len(matches) == 1:
                return rec.from_json(cls, matches[0])
        return None

    def list(self, cls: type[R]) -> builtins.list[R]:
        """Every record of that type, in id order."""
        return [rec.from_json(cls, v) for _, v in self._txn.list(_KIND[cls])]

    def add(self, record: R) -> None:
        """Store a new record: claim its unique name, then write it and its indexes.

        Raises:
            KeyTaken: the name (or alias) is taken; the caller says what to do about it.
        """
        name_kind, name_key = _name_key(record)
        self._txn.insert(name_kind, name_key, {"id": record.id})
        self._txn.insert(_KIND[type(record)], record.id, rec.to_json(record))
        self._index(record)

    def put(self, record: R) -> None:
        """Replace a stored record, keeping its indexes in step (a join moves an endpoint's)."""
        if isinstance(record, EndpointRecord):
            old = self.get(EndpointRecord, record.id)
            if old is not None and old.sandbox_id and old.sandbox_id != record.sandbox_id:
                self._txn.delete(_SANDBOX_ENDPOINT, f"{old.sandbox_id}/{record.id}")
        self._txn.put(_KIND[type(record)], record.id, rec.to_json(record))
        self._index(record)

    def remove(self, record: R) -> None:
        """Forget a record, its name (if still its own) and its index entries; nothing if gone."""
        kind = _KIND[type(record)]
        stored = self.get(type(record), record.id)
        name_kind, name_key = _name_key(record)
        named = self._txn.get(name_kind, name_key)
        if named is not None and named["id"] == record.id:
            self._txn.delete(name_kind, name_key)
        for current in (record, stored):
            if current is not None:
                for index, key in self._index_entries(current):
                    self._txn.delete(index, key)
        self._txn.delete(kind, record.id)

    def _index_entries(
        self, record: NetworkRecord | EndpointRecord | SandboxRecord | LinkRecord
    ) -> builtins.list[tuple[str, str]]:
        if isinstance(record, EndpointRecord):
            entries: builtins.list[tuple[str, str]] = []
            if record.sandbox_id:
                entries.append((_SANDBOX_ENDPOINT, f"{record.sandbox_id}/{record.id}"))
            if record.owner_sandbox_id:
                # Found by the owner's delete even when not joined: it goes with the sandbox either way.
                entries.append((_SANDBOX_OWNED, f"{record.owner_sandbox_id}/{record.id}"))
            return entries
        if isinstance(record, SandboxRecord):
            # Deleting an owner finds its sharers without reading every sandbox.
            return [] if not record.shares else [(_SANDBOX_SHARER, f"{record.shares}/{record.id}")]
        if isinstance(record, LinkRecord):
            # A sandbox's leave or delete reads its own links, not every link.
            return [(_LINK_END, f"{end}/{record.id}") for end in (record.source_id, record.target_id)]
        return []

    def _index(self, record: NetworkRecord | EndpointRecord | SandboxRecord | LinkRecord) -> None:
        for index, key in self._index_entries(record):
            self._txn.put(index, key, {"id": record.id})

    def _indexed(self, cls: type[R], index: str, owner: str) -> builtins.list[R]:
        found = (self.get(cls, str(v["id"])) for _, v in self._txn.list(index, f"{owner}/"))
        return [r for r in found if r is not None]

    # --- index queries -------------------------------------------------------
    def endpoints_of_network(self, network_id: str) -> builtins.list[EndpointRecord]:
        """A network's endpoints, in name order."""
        return self._indexed(EndpointRecord, _ENDPOINT_NAME, network_id)

    def endpoint_names(self, network_id: str) -> builtins.list[str]:
        """The names of a network's endpoints, in name order (without reading the records)."""
        return [key.split("/", 1)[1] for key, _ in self._txn.list(_ENDPOINT_NAME, f"{network_id}/")]

    def endpoints_of_sandbox(self, sandbox_id: str) -> builtins.list[EndpointRecord]:
        """The endpoints joined to a sandbox, in join order."""
        return sorted(self._indexed(EndpointRecord, _SANDBOX_ENDPOINT, sandbox_id), key=lambda e: e.join_seq)

    def endpoints_owned_by(self, sandbox_id: str) -> builtins.list[EndpointRecord]:
        """The endpoints a sandbox created for itself (``create_sandbox(network=...)``), joined or not."""
        return self._indexed(EndpointRecord, _SANDBOX_OWNED, sandbox_id)

    def sharers_of(self, sandbox_id: str) -> builtins.list[SandboxRecord]:
        """The sandboxes sharing ``sandbox_id``'s namespace, in name order."""
        return sorted(self._indexed(SandboxRecord, _SANDBOX_SHARER, sandbox_id), key=lambda s: s.name)

    def links_of(self, sandbox_id: str) -> builtins.list[LinkRecord]:
        """Every link from or to a sandbox, oldest first."""
        return sorted(self._indexed(LinkRecord, _LINK_END, sandbox_id), key=lambda lk: (lk.created, lk.alias))

    def link_by_alias(self, source_id: str, alias: str) -> LinkRecord | None:
        """The link a sandbox made under ``alias``, or None."""
        named = self._txn.get(_LINK_ALIAS, f"{source_id}/{alias}")
        return None if named is None else self.get(LinkRecord, str(named["id"]))

    # --- the controller's own keys ----------------------------------------------
    def owner_id(self) -> str | None:
        """The state_dir's owner id, or None before its first open."""
        found = self._txn.get(_CONTROLLER, _OWNER)
        return None if found is None else str(found["id"])

    def claim_owner_id(self, owner_id: str) -> None:
        """Record the owner id of a fresh state_dir.

        Raises:
            KeyTaken: another process recorded one first; read it with :meth:`owner_id`.
        """
        self._txn.insert(_CONTROLLER, _OWNER, {"id": owner_id})

    def firewall_backend(self) -> tuple[str, tuple[str, ...]] | None:
        """The firewall backend recorded for the state_dir, with those a migration has still to clean; or None."""
        found = self._txn.get(_CONTROLLER, _FIREWALL)
        if found is None:
            return None
        return str(found["name"]), tuple(str(name) for name in found.get("previous", ()))

    def record_firewall_backend(self, name: str, previous: tuple[str, ...] = ()) -> None:
        """Record the state_dir's firewall backend; ``previous``: the old ones whose rules are still to go."""
        self._txn.put(
            _CONTROLLER, _FIREWALL, {"name": name, "previous": list(previous)} if previous else {"name": name}
        )


class State:
    """The controller's records, over its :class:`~cnm.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @contextlib.contextmanager
    def transaction(self) -> Iterator[StateTx]:
        """One atomic transaction (joining the thread's open one, if any)."""
        with self.store.transaction() as txn:
            yield StateTx(txn)

    def get(self, cls: type[R], ref: str, *, network_id: str = "") -> R:
        """A record by id, name or unique id prefix.

        Raises:
            NotFound: the matching subclass (NetworkNotFound, ...) if there is none.
        """
        with self.transaction() as tx:
            found = tx.find(cls, ref, network_id=network_id)
        if found is None:
            error, hint = _NOT_FOUND[cls]
            raise error(f"{_KIND[cls]} {ref!r} not found; {hint}")
        return found

    def reload(self, record: R) -> R:
        """The current stored version of ``record``.

        Raises:
            NotFound: it no longer exists.
        """
        with self.transaction() as tx:
            found = tx.get(type(record), record.id)
        if found is None:
            raise NotFound(f"{describe(record)} no longer exists")
        return found

    def list(self, cls: type[R]) -> builtins.list[R]:
        """Every record of that type."""
        with self.transaction() as tx:
            return tx.list(cls)

    def put(self, record: R) -> R:
        """Replace a stored record (indexes kept in step); the record."""
        with self.transaction() as tx:
            tx.put(record)
        return record

    def remove(self, record: R) -> None:
        """Forget a record with its name and indexes."""
        with self.transaction() as tx:
            tx.remove(record)

    def endpoints_of_network(self, network_id: str) -> builtins.list[EndpointRecord]:
        """A network's endpoints, in name order."""
        with self.transaction() as tx:
            return tx.endpoints_of_network(network_id)

    def endpoints_of_sandbox(self, sandbox_id: str) -> builtins.list[EndpointRecord]:
        """The endpoints joined to a sandbox, in join order."""
        with self.transaction() as tx:
            return tx.endpoints_of_sandbox(sandbox_id)

    def endpoints_owned_by(self, sandbox_id: str) -> builtins.list[EndpointRecord]:
        """The endpoints a sandbox created for itself, joined or not."""
        with self.transaction() as tx:
            return tx.endpoints_owned_by(sandbox_id)

    def sharers_of(self, sandbox_id: str) -> builtins.list[SandboxRecord]:
        """The sandboxes sharing ``sandbox_id``'s namespace, in name order."""
        with self.transaction() as tx:
            return tx.sharers_of(sandbox_id)

    def links_of(self, sandbox_id: str) -> builtins.list[LinkRecord]:
        """Every link from or to a sandbox, oldest first."""
        with self.transaction() as tx:
            return tx.links_of(sandbox_id)

    def link_by_alias(self, source_id: str, alias: str) -> LinkRecord | None:
        """The link a sandbox made under ``alias``, or None."""
        with self.transaction() as tx:
            return tx.link_by_alias(source_id, alias)
