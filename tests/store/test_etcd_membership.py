"""Membership on a real etcd: join, leave, lease expiry after SIGKILL, a watch surviving a lost member."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys

import pytest

from cnm.store.etcd import EtcdStore
from cnm.store.etcd_membership import MemberEvent, MembershipWatch, Registration, members
from cnm.testing.etcd import EtcdCluster

_WAIT = 30.0


def _watch(store: EtcdStore, network: str) -> tuple[MembershipWatch, queue.Queue[MemberEvent]]:
    events: queue.Queue[MemberEvent] = queue.Queue()
    return MembershipWatch(store, network, events.put), events


def test_join_and_leave_are_delivered(etcd_store: EtcdStore) -> None:
    first = Registration(etcd_store, "mesh", "host-a", "192.0.2.1")
    watch, events = _watch(etcd_store, "mesh")
    try:
        assert events.get(timeout=_WAIT) == MemberEvent("join", "host-a", "192.0.2.1")
        second = Registration(etcd_store, "mesh", "host-b", "192.0.2.2")
        assert events.get(timeout=_WAIT) == MemberEvent("join", "host-b", "192.0.2.2")
        other_network = Registration(etcd_store, "other", "host-c", "192.0.2.3")
        assert members(etcd_store, "mesh") == {"host-a": "192.0.2.1", "host-b": "192.0.2.2"}
        first.close()
        assert events.get(timeout=_WAIT) == MemberEvent("leave", "host-a", "192.0.2.1")
        assert watch.members() == {"host-b": "192.0.2.2"}
        second.close()
        assert events.get(timeout=_WAIT) == MemberEvent("leave", "host-b", "192.0.2.2")
        other_network.close()
        assert members(etcd_store, "mesh") == {}
    finally:
        watch.close()
    assert events.empty()


def test_the_lease_is_kept_alive_past_its_ttl(etcd_store: EtcdStore) -> None:
    registration = Registration(etcd_store, "mesh", "host-a", "192.0.2.1", ttl=4)
    watch, events = _watch(etcd_store, "mesh")
    try:
        assert events.get(timeout=_WAIT).kind == "join"
        # Two TTLs without a leave: the registration's thread renews the lease (every ttl/3).
        with pytest.raises(queue.Empty):
            events.get(timeout=9)
        assert members(etcd_store, "mesh") == {"host-a": "192.0.2.1"}
    finally:
        watch.close()
        registration.close()


_REGISTER = """
import json, sys, threading
from cnm.store.etcd import EtcdStore
from cnm.store.etcd_membership import Registration
endpoints, cluster = json.loads(sys.argv[1])
Registration(EtcdStore(endpoints, cluster=cluster), "mesh", "doomed", "192.0.2.9", ttl=2)
print("registered", flush=True)
threading.Event().wait()
"""


def test_a_sigkilled_host_leaves_when_its_lease_expires(etcd_store: EtcdStore) -> None:
    cluster = etcd_store.root.decode().split("/")[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", _REGISTER, json.dumps([list(etcd_store.client.endpoints), cluster])],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "registered"
        watch, events = _watch(etcd_store, "mesh")
        try:
            assert events.get(timeout=_WAIT) == MemberEvent("join", "doomed", "192.0.2.9")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            # No revoke came: etcd removes the key when the 2 s lease runs out.
            assert events.get(timeout=_WAIT) == MemberEvent("leave", "doomed", "192.0.2.9")
            assert members(etcd_store, "mesh") == {}
        finally:
            watch.close()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_changed_address_is_a_new_join(etcd_store: EtcdStore) -> None:
    watch, events = _watch(etcd_store, "mesh")
    try:
        old = Registration(etcd_store, "mesh", "host-a", "192.0.2.1")
        assert events.get(timeout=_WAIT) == MemberEvent("join", "host-a", "192.0.2.1")
        new = Registration(etcd_store, "mesh", "host-a", "192.0.2.7")
        assert events.get(timeout=_WAIT) == MemberEvent("join", "host-a", "192.0.2.7")
        new.close()
        assert events.get(timeout=_WAIT) == MemberEvent("leave", "host-a", "192.0.2.7")
        old.close()  # its key was already replaced and removed: nothing more happens
    finally:
        watch.close()


def test_watch_and_lease_survive_losing_a_member_of_three(etcd_cluster3: EtcdCluster) -> None:
    store = EtcdStore(etcd_cluster3.endpoints, cluster="c", timeout=2.0)
    registration = Registration(store, "mesh", "host-a", "192.0.2.1", ttl=5)
    watch, events = _watch(store, "mesh")
    try:
        assert events.get(timeout=_WAIT) == MemberEvent("join", "host-a", "192.0.2.1")
        # The watch stream and the keep-alives both go to the first member: kill it.
        etcd_cluster3.members[0].kill()
        second = Registration(store, "mesh", "host-b", "192.0.2.2", ttl=5)
        assert events.get(timeout=_WAIT) == MemberEvent("join", "host-b", "192.0.2.2")
        # More than a TTL later host-a is still there: its keep-alives moved on to a live member.
        with pytest.raises(queue.Empty):
            events.get(timeout=8)
        assert members(store, "mesh") == {"host-a": "192.0.2.1", "host-b": "192.0.2.2"}
        second.close()
        assert events.get(timeout=_WAIT) == MemberEvent("leave", "host-b", "192.0.2.2")
    finally:
        watch.close()
        registration.close()
        store.close()


def test_a_lost_lease_is_registered_again(etcd_store: EtcdStore) -> None:
    registration = Registration(etcd_store, "mesh", "host-a", "192.0.2.1", ttl=2)
    watch, events = _watch(etcd_store, "mesh")
    try:
        assert events.get(timeout=_WAIT) == MemberEvent("join", "host-a", "192.0.2.1")
        lost = registration.lease
        # What etcd does when renewals could not reach it for a whole TTL: the lease and its key go.
        etcd_store.client.revoke(lost)
        assert events.get(timeout=_WAIT) == MemberEvent("leave", "host-a", "192.0.2.1")
        # The next renewal finds the lease gone and registers under a new one.
        assert events.get(timeout=_WAIT) == MemberEvent("join", "host-a", "192.0.2.1")
        assert registration.lease != lost
    finally:
        watch.close()
        registration.close()
    assert members(etcd_store, "mesh") == {}
