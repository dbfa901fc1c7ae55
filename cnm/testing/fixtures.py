"""pytest fixtures: throwaway namespaces, a controller inside them, tracked processes.

Every namespace is created under /run/netns with a ``cnmt-`` prefix and a
random part, and removed at teardown; a controller's sandbox namespaces are
unmounted. Tests never touch the machine's root namespace.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cnm.controller import Controller
from cnm.kernel.netns import NetNS
from cnm.testing import namespace_prefix
from cnm.testing.conformance.pytest_plugin import driver_conformance
from cnm.testing.hosts import Outside, link_outside, stop_process, throwaway_namespaces, unmount_sandboxes

__all__ = [
    "FIREWALL_BACKENDS",
    "controller",
    "driver_conformance",
    "firewall_backend",
    "host_netns",
    "netns_factory",
    "outside",
    "processes",
]

FIREWALL_BACKENDS = ("iptables", "nftables")
"""The firewall backends that write rules: a test asking for ``firewall_backend`` runs on each."""


@pytest.fixture
def netns_factory() -> Iterator[Callable[[str], NetNS]]:
    """Make named namespaces ``cnmt-<pid>-<random>-<label>``; all are removed at teardown."""
    with throwaway_namespaces(namespace_prefix()) as make:
        yield make


@pytest.fixture
def host_netns(netns_factory: Callable[[str], NetNS]) -> NetNS:
    """A throwaway namespace that plays the host."""
    return netns_factory("h")


@pytest.fixture
def outside(host_netns: NetNS, netns_factory: Callable[[str], NetNS]) -> Outside:
    """An outside namespace linked to ``host_netns`` (192.0.2.1 on the host side, 192.0.2.2 outside)."""
    return link_outside(host_netns, netns_factory("o"))


@pytest.fixture(params=FIREWALL_BACKENDS)
def firewall_backend(request: pytest.FixtureRequest) -> str:
    """Each firewall backend in turn; ``controller`` uses it when the test (or its module) asks for it.

    ``pytestmark = pytest.mark.usefixtures("firewall_backend")`` runs a module's tests on every backend.
    """
    return str(request.param)


@pytest.fixture
def controller(request: pytest.FixtureRequest, tmp_path: Any, host_netns: NetNS) -> Iterator[Controller]:
    """A Controller whose state_dir is the test's temp dir and whose host is ``host_netns``.

    Its firewall is ``firewall_backend``'s when the test uses that fixture, the default otherwise.
    """
    state_dir = str(tmp_path / "state")
    backend = request.getfixturevalue("firewall_backend") if "firewall_backend" in request.fixturenames else None
    kwargs: dict[str, Any] = {} if backend is None else {"firewall": backend}
    ctl = Controller(state_dir=state_dir, host_netns=host_netns, **kwargs)
    try:
        yield ctl
    finally:
        ctl.close()
        unmount_sandboxes(state_dir)


@pytest.fixture
def processes() -> Iterator[Callable[[subprocess.Popen[Any]], subprocess.Popen[Any]]]:
    """Track processes a test starts; each is ended by PID at teardown."""
    started: list[subprocess.Popen[Any]] = []

    def track(proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        started.append(proc)
        return proc

    yield track
    for proc in started:
        stop_process(proc)
