"""Shared fixtures: every kernel test gets its own throwaway namespaces.

Nothing here touches the machine's root namespace: host and outside
namespaces are created per test with unique names and removed afterwards, and
a test that leaves a namespace behind fails.
"""

from __future__ import annotations

import getpass
import os
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnm.testing import namespace_prefix

pytest_plugins = ["cnm.testing.fixtures", "cnm.testing.ovs"]


def _root_namespaces() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def _alive(pid: str) -> bool:
    return pid.isdigit() and os.path.exists(f"/proc/{pid}")


def _dead_sessions_dirs(root: Path) -> list[Path]:
    """pytest's numbered temp dirs whose session is over: no ``.lock`` with a live pid (pytest's own rule)."""
    dead = []
    for entry in root.glob("*") if root.is_dir() else []:
        lock = entry / ".lock"
        if entry.name.startswith("garbage-") or not lock.exists() or not _alive(lock.read_text().strip()):
            dead.append(entry)
    return dead


@pytest.fixture(scope="session", autouse=True)
def _sweep_what_killed_test_processes_left() -> None:
    """Remove what a test process killed from outside (SIGKILL, a ``timeout`` wrapper) could not clean up.

    Teardown cannot run in a killed process, so each session starts by removing the named namespaces
    of test processes that no longer exist (``cnmt-<pid>-``) and the namespace mounts left in the temp
    dirs of pytest sessions that are over. A live session's are never touched.
    """
    for name in _root_namespaces():
        if name.startswith("cnmt-") and not _alive(name.split("-")[1]):
            subprocess.run(["ip", "netns", "del", name], check=False)
    for directory in _dead_sessions_dirs(Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"):
        # Namespaces first, then the directories that are mounts of themselves, deepest first.
        for point in _mounts_under(str(directory), nsfs=True) + sorted(
            _mounts_under(str(directory), nsfs=False), reverse=True
        ):
            subprocess.run(["umount", "-l", point], check=False)


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
