"""The typed repository (cnm._core.state): names, indexes and lookups kept in step, on a MemoryStore."""

from __future__ import annotations

import attrs
import pytest

from cnm._core import records as rec
from cnm._core.state import State
from cnm.errors import EndpointNotFound, NetworkNotFound, NotFound, SandboxNotFound
from cnm.store import KeyTaken, MemoryStore

NET = rec.NetworkRecord(id="a" * 64, name="net1", driver="bridge")
SB = rec.SandboxRecord(id="b" * 64, name="sb1", hostname="sb1", netns_path="/x/ns", files_dir="/x/files")


def _endpoint(name: str, n: int, **kw: object) -> rec.EndpointRecord:
    return rec.EndpointRecord(id=f"{n:064x}", name=name, network_id=NET.id, **kw)  # type: ignore[arg-type]


@pytest.fixture
def state() -> State:
    s = State(MemoryStore())
    with s.transaction() as tx:
        tx.add(NET)
        tx.add(SB)
    return s


def test_get_by_id_name_and_unique_prefix(state: State) -> None:
    assert state.get(rec.NetworkRecord, "net1") == NET
    assert state.get(rec.NetworkRecord, NET.id) == NET
    assert state.get(rec.NetworkRecord, "aaaaaa") == NET
    with pytest.raises(NetworkNotFound, match=r"Controller\.networks"):
        state.get(rec.NetworkRecord, "aaaaa")  # too short to be a prefix
    with pytest.raises(SandboxNotFound):
        state.get(rec.SandboxRecord, "nope")


def test_names_are_unique_per_kind_and_endpoint_names_per_network(state: State) -> None:
    with pytest.raises(KeyTaken), state.transaction() as tx:
        tx.add(attrs.evolve(NET, id="c" * 64))
    ep = _endpoint("e1", 1)
    with state.transaction() as tx:
        tx.add(ep)
        tx.add(rec.EndpointRecord(id=f"{2:064x}", name="e1", network_id="d" * 64))  # another network: fine
    assert state.get(rec.EndpointRecord, "e1", network_id=NET.id) == ep
    with pytest.raises(EndpointNotFound):
        state.get(rec.EndpointRecord, "e1", network_id="e" * 64)


def test_a_join_moves_the_sandbox_index_and_remove_drops_every_entry(state: State) -> None:
    ep = _endpoint("e1", 1, owner_sandbox_id=SB.id)
    with state.transaction() as tx:
        tx.add(ep)
    assert state.endpoints_of_sandbox(SB.id) == []
    assert state.endpoints_owned_by(SB.id) == [ep]
    joined = state.put(attrs.evolve(ep, sandbox_id=SB.id, join_seq=1))
    assert state.endpoints_of_sandbox(SB.id) == [joined]
    left = state.put(attrs.evolve(joined, sandbox_id=None))
    assert state.endpoints_of_sandbox(SB.id) == []
    state.put(attrs.evolve(left, sandbox_id=SB.id))
    state.remove(left)  # the stored record is joined; its index entry goes too
    assert state.endpoints_of_sandbox(SB.id) == []
    assert state.endpoints_owned_by(SB.id) == []
    assert state.endpoints_of_network(NET.id) == []
    with state.transaction() as tx:
        tx.add(ep)  # the name is free again


def test_reload_and_sharers_and_links(state: State) -> None:
    sharer = rec.SandboxRecord(
        id="c" * 64, name="sh", hostname="sb1", netns_path="/x/ns", files_dir="/x/files", shares=SB.id
    )
    link = rec.LinkRecord(
        id="d" * 64, source_id=sharer.id, target_id=SB.id, alias="db", network_id=NET.id, source_ip="1", target_ip="2"
    )
    with state.transaction() as tx:
        tx.add(sharer)
        tx.add(link)
    assert state.sharers_of(SB.id) == [sharer]
    assert state.links_of(SB.id) == state.links_of(sharer.id) == [link]
    assert state.link_by_alias(sharer.id, "db") == link
    state.remove(link)
    assert state.links_of(SB.id) == []
    assert state.link_by_alias(sharer.id, "db") is None
    state.remove(sharer)
    assert state.sharers_of(SB.id) == []
    with pytest.raises(NotFound, match="sandbox 'sh' no longer exists"):
        state.reload(sharer)
    assert state.reload(SB) == SB


def test_the_owner_id_is_claimed_once() -> None:
    state = State(MemoryStore())
    with state.transaction() as tx:
        assert tx.owner_id() is None
        tx.claim_owner_id("abc")
    with pytest.raises(KeyTaken), state.transaction() as tx:
        tx.claim_owner_id("def")
    with state.transaction() as tx:
        assert tx.owner_id() == "abc"
