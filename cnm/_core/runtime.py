"""What the operations of one controller are given (internal).

:class:`Runtime` bundles the controller's services (the typed state over its
store, the IPAM, the port allocator, the driver registry, the locks, the
sandbox OS, the firewall, the step observer and the host namespace) so that
operations receive them as one argument; nothing in the core is global, and a
unit test builds one from in-memory parts (:mod:`cnm.testing.fakes`).
"""

from __future__ import annotations

import os

import attrs

from cnm._core import records as rec
from cnm._core.locks import StateLocks
from cnm._core.sandbox_os import SandboxOS
from cnm._core.state import State
from cnm.driverapi import Driver, SandboxInfo
from cnm.firewallapi import Firewall
from cnm.ipamapi import Ipam
from cnm.kernel.netns import NetNS
from cnm.portmapper import PortAllocator
from cnm.registry import DriverRegistry
from cnm.steps import NO_OBSERVER, StepObserver

__all__ = ["Runtime"]


@attrs.define(kw_only=True)
class Runtime:
    """The services of one controller, shared by its operations and handles."""

    state_dir: str
    host_netns: NetNS
    state: State
    ipam: Ipam
    ports: PortAllocator
    registry: DriverRegistry
    locks: StateLocks
    sandbox_os: SandboxOS
    firewall: Firewall
    observer: StepObserver = NO_OBSERVER

    def driver(self, network: rec.NetworkRecord) -> Driver:
        """The network's driver."""
        return self.registry.get(network.driver)

    @property
    def netns_dir(self) -> str:
        """Where the controller's sandbox namespaces are mounted: ``<state_dir>/netns``."""
        return os.path.join(self.state_dir, "netns")

    def owns_netns(self, sandbox: rec.SandboxRecord) -> bool:
        """True if the sandbox's namespace is its own (private mode) and this controller's to change or remove.

        Belt and braces: whatever the record says, only a namespace file under
        the controller's own netns directory is ever modified or removed.
        """
        path = os.path.abspath(sandbox.netns_path)
        return (
            sandbox.mode == rec.PRIVATE
            and os.path.dirname(path) == self.netns_dir
            and path != os.path.abspath(self.host_netns.path)
        )

    def sandbox_info(self, sandbox: rec.SandboxRecord) -> SandboxInfo:
        """What a driver is told about a sandbox."""
        return SandboxInfo(
            id=sandbox.id,
            name=sandbox.name,
            netns=NetNS(sandbox.netns_path),
            # Exactly when delete_sandbox unmounts the namespace after the leaves.
            closing=sandbox.status == rec.DELETING and self.owns_netns(sandbox),
        )
