"""Membership-driven OVS tunnels for one host: register, watch, and turn joins and leaves into set_peers.

This is the glue the controller will own once global networks are wired in
(issue 21, phase 2): the test of four hosts and the demo's mesh chapter use
it. A :class:`MeshMember` registers this host's underlay address in the
network's etcd membership, watches it, and on every join or leave of another
host calls the OVS driver's ``set_peers`` with the addresses of all others.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from cnm.driverapi import NetworkInfo
from cnm.errors import CNMError
from cnm.store.etcd import EtcdStore
from cnm.store.etcd_membership import MemberEvent, MembershipWatch, Registration

__all__ = ["MeshMember", "PeerSetter"]

log = logging.getLogger(__name__)


class PeerSetter(Protocol):
    """A driver whose network's tunnels can follow a set of peers (the OVS driver)."""

    def set_peers(self, network: NetworkInfo, peers: list[str]) -> tuple[list[str], list[str]]:
        """Make the network's tunnels one per peer."""


class MeshMember:
    """One host's membership in a network, with its tunnels following the others'.

    Args:
        store: the etcd store every host shares.
        driver: the host's OVS driver (``controller.registry.get("ovs")``).
        network: the host's copy of the network, as the driver sees it.
        host: this host's name among the members.
        address: this host's underlay address.
        ttl: the membership lease's TTL in seconds.
    """

    def __init__(
        self, store: EtcdStore, driver: PeerSetter, network: NetworkInfo, *, host: str, address: str, ttl: int = 5
    ) -> None:
        self.host = host
        self._driver = driver
        self._network = network
        self._peers: dict[str, str] = {}
        self._lock = threading.Lock()
        #: Errors set_peers raised, for the caller to look at (a watch thread cannot raise them).
        self.errors: list[CNMError] = []
        self.watch = MembershipWatch(store, network.name, self._on_event)
        self.registration: Registration | None = Registration(store, network.name, host, address, ttl=ttl)

    def _on_event(self, event: MemberEvent) -> None:
        with self._lock:
            if event.host == self.host:
                return
            if event.kind == "join":
                self._peers[event.host] = event.address
            else:
                self._peers.pop(event.host, None)
            try:
                self._driver.set_peers(self._network, sorted(self._peers.values()))
            except CNMError as exc:
                log.warning("%s: tunnels to %s not set: %s", self.host, sorted(self._peers.values()), exc)
                self.errors.append(exc)

    def leave(self) -> None:
        """Leave the membership now (revoke the lease); the watch goes on."""
        if self.registration is not None:
            self.registration.close()
            self.registration = None

    def close(self) -> None:
        """Stop watching and leave."""
        self.watch.close()
        self.leave()
