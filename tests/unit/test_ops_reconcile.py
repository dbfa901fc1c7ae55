"""Reconcile's repairs on the record side, against in-memory parts: no root, in milliseconds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from cnm import PortBinding
from cnm._core import records as rec
from cnm.testing.fakes import FakeWorld, fake_controller


@pytest.fixture
def world(tmp_path: Path) -> Iterator[FakeWorld]:
    w = fake_controller(str(tmp_path / "state"))
    w.controller.create_network("n1", driver="fake")
    yield w
    w.controller.close()  # releases the host ports it holds


def test_a_sandbox_whose_namespace_vanished_is_marked_dead_and_its_endpoints_released(world: FakeWorld) -> None:
    w = world
    ctl = w.controller
    sb = ctl.create_sandbox("s1", network="n1", ports=[PortBinding(container_port=80, host_ip="127.0.0.1")])
    w.os.remove_namespace(sb.netns_path)  # what a host reboot does
    report = ctl.reconcile()
    assert "sandbox s1 lost its namespace: marked dead, its endpoints left" in report.actions
    assert ctl.sandbox("s1")._current().status == rec.DEAD
    assert ctl.network("n1").endpoints() == []
    assert ctl._rt.ports.held() == {}
    assert w.driver.published == set()


def test_interrupted_records_are_rolled_back_or_finished(world: FakeWorld) -> None:
    w = world
    ctl = w.controller
    state = ctl._rt.state
    net = ctl.network("n1")._current()
    sb = ctl.create_sandbox("s1")
    ep = ctl.network("n1").create_endpoint("e1")
    ep.join(sb)
    # A crash mid-leave (endpoint deleting, still in its sandbox) and mid-create of a network.
    state.put(attrs.evolve(ep._current(), status=rec.DELETING))
    state.put(attrs.evolve(net, status=rec.CREATING))
    report = ctl.reconcile()
    assert "rolled back network n1" in report.actions
    assert "undid the interrupted join/leave of endpoint e1" not in report.actions  # it went with its network
    assert ctl.networks() == []
    assert w.driver.networks == set()
    assert not ctl.reconcile()


def test_an_interrupted_join_is_undone(world: FakeWorld) -> None:
    w = world
    ctl = w.controller
    sb = ctl.create_sandbox("s1")
    ep = ctl.network("n1").create_endpoint("e1")
    ep.join(sb)
    ctl._rt.state.put(attrs.evolve(ep._current(), status=rec.CREATING))
    report = ctl.reconcile()
    assert "undid the interrupted join/leave of endpoint e1" in report.actions
    assert ep.sandbox is None
    assert w.os.interfaces[sb.netns_path].keys() == {"lo"}


def test_a_lost_interface_is_joined_again_under_its_name(world: FakeWorld) -> None:
    w = world
    ctl = w.controller
    sb = ctl.create_sandbox("s1", network="n1")
    w.os.remove_interface(sb.netns_path, "eth0")
    report = ctl.reconcile()
    assert report.actions == ()  # the fake driver is no Reconciler: nothing to check it against
    assert sb.endpoints()[0].ifname == "eth0"


def test_an_owned_endpoint_whose_sandbox_is_gone_is_deleted_and_orphans_are_collected(world: FakeWorld) -> None:
    w = world
    ctl = w.controller
    sb = ctl.create_sandbox("s1", network="n1")
    sb.endpoints()[0].leave()
    ctl._rt.state.remove(sb._current())  # what an older cnm's delete left
    orphan = os.path.join(ctl.state_dir, "netns", "0123456789ab")
    w.os.create_namespace(orphan)
    report = ctl.reconcile()
    assert "deleted endpoint s1, whose sandbox is gone" in report.actions
    assert f"removed orphaned {orphan}" in report.actions
    assert f"removed orphaned {sb.netns_path}" in report.actions
    assert orphan not in w.os.namespaces
    assert ctl.network("n1").endpoints() == []
    assert not ctl.reconcile()
