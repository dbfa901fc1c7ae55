"""pytest fixtures: throwaway namespaces, a controller inside them, tracked processes.

Every namespace is created under /run/netns with a ``cnmt-`` prefix and a
random part, and removed at teardown; a controller's sandbox namespaces are
unmounted. Tests never touch the machine's root namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

from cnm.controller import Controller
from cnm.kernel import addresses, links, netns
from cnm.kernel.netns import NetNS
from cnm.testing import namespace_prefix
from cnm.testing.conformance import driver_conformance

__all__ = ["Outside", "controller", "driver_conformance", "host_netns", "netns_factory", "outside", "processes"]

OUTSIDE_ADDRESS = ipaddress.IPv4Interface("192.0.2.2/24")
HOST_UPLINK_ADDRESS = ipaddress.IPv4Interface("192.0.2.1/24")


@attrs.frozen
class Outside:
    """An "outside host": a namespace linked to the host namespace by a veth.

    Attributes:
        netns: the outside namespace.
        address: its address on the link (192.0.2.2).
        host_address: the host namespace's address on the link (192.0.2.1).
    """

    netns: NetNS
    address: ipaddress.IPv4Address
    host_address: ipaddress.IPv4Address

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command in the outside namespace."""
        return subprocess.run(["nsenter", f"--net={self.netns.path}", "--", *argv], **kwargs)  # noqa: PLW1510

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command in the outside namespace."""
        return subprocess.Popen(["nsenter", f"--net={self.netns.path}", "--", *argv], **kwargs)


@pytest.fixture
def netns_factory() -> Iterator[Callable[[str], NetNS]]:
    """Make named namespaces ``cnmt-<pid>-<random>-<label>``; all are removed at teardown."""
    made: list[NetNS] = []
    prefix = namespace_prefix() + secrets.token_hex(3)

    def make(label: str) -> NetNS:
        ns = netns.create(os.path.join(netns.NETNS_RUN_DIR, f"{prefix}-{label}"))
        made.append(ns)
        with ns.netlink() as nl:
            links.set_link(nl, "lo", up=True)
        return ns

    yield make
    for ns in reversed(made):
        netns.remove(ns.path)


@pytest.fixture
def host_netns(netns_factory: Callable[[str], NetNS]) -> NetNS:
    """A throwaway namespace that plays the host."""
    return netns_factory("h")


@pytest.fixture
def outside(host_netns: NetNS, netns_factory: Callable[[str], NetNS]) -> Outside:
    """An outside namespace linked to ``host_netns`` (192.0.2.1 on the host side, 192.0.2.2 outside)."""
    ns = netns_factory("o")
    with host_netns.netlink() as nl:
        links.add_veth(nl, "uplink0", "eth0", ns)
        addresses.add_address(nl, "uplink0", HOST_UPLINK_ADDRESS)
    with ns.netlink() as nl:
        addresses.add_address(nl, "eth0", OUTSIDE_ADDRESS)
        links.set_link(nl, "eth0", up=True)
    return Outside(ns, OUTSIDE_ADDRESS.ip, HOST_UPLINK_ADDRESS.ip)


def _unmount_sandboxes(state_dir: str) -> None:
    directory = os.path.join(state_dir, "netns")
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            netns.remove(os.path.join(directory, name))


@pytest.fixture
def controller(tmp_path: Any, host_netns: NetNS) -> Iterator[Controller]:
    """A Controller whose state_dir is the test's temp dir and whose host is ``host_netns``."""
    state_dir = str(tmp_path / "state")
    ctl = Controller(state_dir=state_dir, host_netns=host_netns)
    try:
        yield ctl
    finally:
        ctl.close()
        _unmount_sandboxes(state_dir)


@pytest.fixture
def processes() -> Iterator[Callable[[subprocess.Popen[Any]], subprocess.Popen[Any]]]:
    """Track processes a test starts; each is ended by PID at teardown."""
    started: list[subprocess.Popen[Any]] = []

    def track(proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        started.append(proc)
        return proc

    yield track
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
