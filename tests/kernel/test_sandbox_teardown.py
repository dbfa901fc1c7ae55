"""Deleting a sandbox: the veth is cut off at once and goes with the namespace.

A sandbox delete unmounts the namespace and leaves its veth to the kernel,
which destroys the pair with the namespace, instead of deleting it (about
25 ms of RCU grace periods). These tests show that nothing is lost by that:
the port leaves the bridge at once, the address can be handed out again at
once, and a namespace kept alive by a leftover process changes nothing.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from cnm import Controller, IPAMConfig
from cnm.kernel import links
from cnm.testing.hosts import settled
from cnm.testing.traffic import ping, probe, serve

pytestmark = pytest.mark.kernel

Track = Callable[[subprocess.Popen[Any]], subprocess.Popen[Any]]


def _veth_state(ctl: Controller, name: str) -> bool | None:
    with ctl.host_netns.netlink() as nl:
        return links.is_up(nl, name)


def test_deleted_sandbox_veth_goes_with_its_namespace(controller: Controller) -> None:
    net = controller.create_network("gone", ipam=IPAMConfig(subnet="10.61.0.0/24"))
    sb = controller.create_sandbox("g1", network="gone")
    veth = "cnm" + sb.endpoints()[0].id[:12]
    assert _veth_state(controller, veth) is True
    sb.delete()
    assert settled(lambda: _veth_state(controller, veth), lambda state: state is None) is None
    net.delete()


def test_address_reused_while_a_leftover_process_holds_the_old_namespace(
    controller: Controller, processes: Track
) -> None:
    net = controller.create_network("held", ipam=IPAMConfig(subnet="10.62.0.0/24"))
    peer = controller.create_sandbox("peer", network="held")
    old = controller.create_sandbox("old", network="held")
    address = old.endpoints()[0].ip
    veth = "cnm" + old.endpoints()[0].id[:12]
    # A process left running in the sandbox keeps its namespace (and the veth) alive.
    lingering = processes(serve(old, "tcp", 7000))
    old.delete()
    assert _veth_state(controller, veth) is False, "the leftover veth must be cut off (down) at once"
    assert not ping(peer, str(address)), "the deleted sandbox must be unreachable"

    new = controller.create_sandbox("new", network="held")
    assert new.endpoints()[0].ip == address, "the address is handed out again at once"
    processes(serve(new, "tcp", 7000))
    assert ping(peer, str(address))
    assert probe(peer, "tcp", str(address), 7000) is not None

    report = controller.reconcile()
    assert any(veth in line for line in report.actions), report
    assert _veth_state(controller, veth) is None
    assert probe(peer, "tcp", str(address), 7000) is not None

    lingering.kill()
    lingering.wait()
    new.delete()
    peer.delete()
    net.delete()
