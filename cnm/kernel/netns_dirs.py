"""The directories that hold namespace mounts: /run/netns and each state_dir's ``netns``.

A namespace stays alive while its nsfs file is bind-mounted somewhere. For those mounts to be
seen by every process (``ip netns``, other controllers, a process started later) the directory
holding them must be a shared mount point, as iproute2 makes /run/netns; and a directory
shadowed by a later mount on top of it (a fresh /run/netns mount after cnm made namespaces
under the old one) must be uncovered again. These helpers do that, idempotently and under a
per-directory lock, for :func:`cnm.kernel.netns.create` and for reconcile.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import threading
from collections.abc import Iterator

import attrs

from cnm.kernel._syscalls import MNT_DETACH, MS_BIND, MS_PRIVATE, MS_REC, MS_SHARED, check, libc

__all__ = ["NETNS_RUN_DIR", "clear_shadowed", "prepare_directory", "release_directory"]

log = logging.getLogger(__name__)

NETNS_RUN_DIR = "/run/netns"
"""Where iproute2 (``ip netns``) keeps named namespaces."""


@attrs.frozen
class _Mount:
    """One line of /proc/self/mountinfo."""

    id: int
    parent: int
    dev: str
    root: str
    point: str
    fstype: str


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mountinfo() -> list[_Mount]:
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            after = fields.index("-")
            mounts.append(
                _Mount(
                    int(fields[0]),
                    int(fields[1]),
                    fields[2],
                    _unescape(fields[3]),
                    _unescape(fields[4]),
                    fields[after + 1],
                )
            )
    return mounts


def _stack(mounts: list[_Mount], directory: str) -> list[_Mount]:
    """The mounts at ``directory``, bottom first (each one covers the one before)."""
    at = {m.id: m for m in mounts if m.point == directory}
    bottom = [m for m in at.values() if m.parent not in at]
    stack: list[_Mount] = []
    while bottom:
        stack.append(bottom[0])
        bottom = [m for m in at.values() if m.parent == stack[-1].id]
    return stack


def _is_self_bind(mounts: list[_Mount], mount: _Mount) -> bool:
    """True for a bind mount of a directory onto itself (iproute2's and ours), not a file system of its own."""
    parent = next((m for m in mounts if m.id == mount.parent), None)
    if parent is None or parent.dev != mount.dev:
        return False
    return os.path.normpath(os.path.join(parent.root, os.path.relpath(mount.point, parent.point))) == mount.root


_prepared: set[tuple[int, str]] = set()
_prepared_lock = threading.Lock()


def _key(directory: str) -> tuple[int, str]:
    return (os.stat("/proc/self/ns/mnt").st_ino, directory)


@contextlib.contextmanager
def _directory_lock(directory: str) -> Iterator[None]:
    # flock on the directory itself: no lock file that ``ip netns list`` or a
    # listing of the directory would take for a namespace. Locks of separate
    # opens exclude each other, across threads and processes alike.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _namespaces_at(mounts: list[_Mount], directory: str, parent: int | None = None) -> list[_Mount]:
    prefix = directory + "/"
    return [
        m
        for m in mounts
        if m.fstype == "nsfs"
        and m.point.startswith(prefix)
        and "/" not in m.point[len(prefix) :]
        and (parent is None or m.parent == parent)
    ]


def _hold(held: dict[str, int], mount: _Mount) -> None:
    """Keep the namespace mounted at ``mount`` alive through an open file, the first one of each name."""
    name = os.path.basename(mount.point)
    if name not in held:
        held[name] = os.open(mount.point, os.O_RDONLY | os.O_CLOEXEC)


def _share(directory: str, held: dict[str, int]) -> None:
    """Make ``directory`` a shared mount of itself and mount every ``held`` namespace in it; locks held."""
    mounts = _mountinfo()
    try:
        if not _stack(mounts, directory):
            # Namespaces already mounted in the plain directory would end up
            # under the new mount: take them out and put them back on top.
            for mount in _namespaces_at(mounts, directory):
                _hold(held, mount)
                libc.umount2(mount.point.encode(), MNT_DETACH)
            check(
                libc.mount(directory.encode(), directory.encode(), b"none", MS_BIND, None),
                f"bind-mount {directory} onto itself",
            )
            if directory != NETNS_RUN_DIR:
                # A peer group of its own: else every namespace mounted here is
                # copied into the parent mount's peers, under this mount, where
                # it looks like a shadowed one. /run/netns stays as iproute2
                # makes it, seen by the mount namespaces that follow its parent.
                check(
                    libc.mount(b"none", directory.encode(), None, MS_PRIVATE, None),
                    f"make {directory} a private mount",
                )
        check(
            libc.mount(b"none", directory.encode(), None, MS_SHARED | MS_REC, None),
            f"make {directory} a shared mount",
        )
    finally:
        for name, fd in held.items():
            path = os.path.join(directory, name)
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
            check(
                libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), b"none", MS_BIND, None),
                f"bind-mount network namespace at {path}",
            )


def _close_all(held: dict[str, int]) -> None:
    for fd in held.values():
        os.close(fd)


def prepare_directory(directory: str) -> None:
    """Make ``directory`` a shared mount point of itself, as iproute2 does for /run/netns.

    A namespace bind-mounted into a plain directory is hidden for good when
    someone later bind-mounts the directory onto itself (the first ``ip netns
    add`` on a fresh machine does): its file can then be neither unmounted
    nor unlinked. Doing iproute2's set-up first means iproute2 finds it done
    and mounts nothing over it. Done once per directory and mount namespace;
    concurrent callers, in threads or processes, never stack two mounts. The
    mount stays, as iproute2's does.

    Raises:
        KernelError: when a mount fails.
    """
    directory = os.path.realpath(directory)
    os.makedirs(directory, exist_ok=True)
    key = _key(directory)
    with _prepared_lock:
        if key in _prepared:
            return
        held: dict[str, int] = {}
        with _directory_lock(directory):
            try:
                _share(directory, held)
            finally:
                _close_all(held)
        _prepared.add(key)


def release_directory(directory: str) -> bool:
    """Undo :func:`prepare_directory` for a directory about to be deleted (a throwaway state_dir).

    Its self-mounts are detached when no namespace is mounted in it any more;
    else nothing changes. Never for /run/netns, whose mount others rely on.

    Returns:
        True if a mount was taken off.
    """
    directory = os.path.realpath(directory)
    if directory == NETNS_RUN_DIR or not os.path.isdir(directory):
        return False
    with _prepared_lock, _directory_lock(directory):
        mounts = _mountinfo()
        if _namespaces_at(mounts, directory):
            return False
        released = False
        for mount in reversed(_stack(mounts, directory)):
            if not _is_self_bind(mounts, mount):
                break
            check(libc.umount2(directory.encode(), MNT_DETACH), f"detach the mount of {directory}")
            released = True
        _prepared.discard(_key(directory))
    return released


def clear_shadowed(directory: str) -> list[str]:
    """Bring back namespaces hidden under a later mount of ``directory``, and flatten stacked self-mounts.

    A crash, or an ``ip netns add`` while ``directory`` was a plain directory,
    can leave nsfs mounts hidden under a bind mount of the directory onto
    itself, where they can be neither used nor removed. This detaches every
    self-mount, keeping each namespace alive through an open file, then mounts
    the directory once, shared, and each namespace once more at its own path;
    the caller then deletes those it does not know. Meant for a directory only
    cnm uses (a controller's own), with its users excluded (reconcile holds
    every lock).

    Returns:
        One line per repair; empty when nothing was hidden or stacked.

    Raises:
        KernelError: when a mount fails.
    """
    directory = os.path.realpath(directory)
    if not os.path.isdir(directory):
        return []
    mounts = _mountinfo()
    stack = _stack(mounts, directory)
    if not stack:
        return []
    hidden = sorted({m.point for m in _namespaces_at(mounts, directory) if m.parent != stack[-1].id})
    self_mounts = sum(_is_self_bind(mounts, m) for m in stack)
    if not hidden and self_mounts <= 1:
        return []
    held: dict[str, int] = {}
    with _prepared_lock, _directory_lock(directory):
        try:
            while True:
                mounts = _mountinfo()
                stack = _stack(mounts, directory)
                if not stack or not _is_self_bind(mounts, stack[-1]):
                    break
                for mount in _namespaces_at(mounts, directory, stack[-1].id):
                    _hold(held, mount)
                check(libc.umount2(directory.encode(), MNT_DETACH), f"detach a mount of {directory}")
            _share(directory, held)
        finally:
            _close_all(held)
        _prepared.add(_key(directory))
    repairs = [f"removed {self_mounts - 1} stacked mount(s) of {directory}"] if self_mounts > 1 else []
    return repairs + [f"brought back namespace {path}, hidden under a later mount of {directory}" for path in hidden]
