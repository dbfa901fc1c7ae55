"""Shared fixtures: every kernel test gets its own throwaway namespaces.

Nothing here touches the machine's root namespace: host and outside
namespaces are created per test with unique names and removed afterwards, and
a test that leaves a namespace behind fails.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from cnm.testing import namespace_prefix

pytest_plugins = ["cnm.testing.fixtures", "cnm.testing.ovs"]


def _root_namespaces() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


@pytest.fixture(autouse=True)
def _no_leaked_namespaces(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a kernel test that leaves a named namespace of its own behind."""
    if request.node.get_closest_marker("kernel") is None:
        yield
        return
    before = _root_namespaces()
    yield
    leaked = {name for name in _root_namespaces() - before if name.startswith(namespace_prefix())}
    for name in leaked:
        subprocess.run(["ip", "netns", "del", name], check=False)
    assert not leaked, f"test leaked network namespaces: {sorted(leaked)}"


def _mounts_under(directory: str, *, nsfs: bool) -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if (line.split()[2] == "nsfs") == nsfs]
    prefix = directory.rstrip("/") + "/"
    return [p for p in points if p.startswith(prefix)]


@pytest.fixture(autouse=True)
def _no_leaked_sandbox_mounts(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a sandbox namespace mounted under its temp dir (and unmount it)."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    # Asked for before the test, so tmp_path is torn down after this check, not before.
    tmp = str(request.getfixturevalue("tmp_path"))
    yield
    leaked = _mounts_under(tmp, nsfs=True)
    for point in leaked:
        subprocess.run(["umount", "-l", point], check=False)
    # A namespace directory stays a mount of itself once used (as /run/netns
    # does after iproute2's set-up): no leak, but taken off with the temp dir.
    for point in reversed(_mounts_under(tmp, nsfs=False)):
        subprocess.run(["umount", "-l", point], check=False)
    assert not leaked, f"test left sandbox namespaces mounted: {leaked}"


@pytest.fixture
def unique() -> str:
    """A short random suffix for names that must not clash between tests."""
    return secrets.token_hex(3)
