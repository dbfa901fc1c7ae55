"""Locks on a state_dir: one shared by every operation, one per sandbox and per network (internal).

Every mutating operation holds the state_dir lock *shared*, plus exclusive
locks on the sandboxes and networks it changes; reconciliation and a firewall
re-application hold the state_dir lock *exclusive*, so they never see another
operation half done. Operations on different networks and sandboxes therefore
run side by side, across threads and processes alike.

The locks are ``flock(2)`` locks on files under ``<state_dir>/locks``. Each
acquisition opens its own file description, so two threads of one process
exclude each other just as two processes do. Objects map onto 256 lock files
per kind (by the first two hex digits of their id): the directory stays small,
and two objects that share a file merely take turns.

Deadlock freedom comes from one order, state_dir → sandboxes → networks, each
group sorted; a thread already holding a lock (as strongly) re-enters it for
free, as nested operations do (deleting a sandbox leaves its endpoints).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterable, Iterator

__all__ = ["StateLocks"]


class StateLocks:
    """The locks of one state_dir, for one controller (safe to share between threads)."""

    def __init__(self, state_dir: str) -> None:
        self._state = os.path.join(state_dir, "lock")
        self._turnstile = os.path.join(state_dir, "lock.turnstile")
        self._directory = os.path.join(state_dir, "locks")
        os.makedirs(self._directory, exist_ok=True)
        self._local = threading.local()

    def _held(self) -> dict[str, list[int]]:
        held: dict[str, list[int]] | None = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = {}
        return held

    def _path(self, kind: str, object_id: str) -> str:
        return os.path.join(self._directory, f"{kind}-{object_id[:2]}")

    @contextlib.contextmanager
    def _hold(self, path: str, exclusive: bool) -> Iterator[None]:
        held = self._held()
        entry = held.get(path)  # [mode (LOCK_EX/LOCK_SH), depth]
        if entry is not None:
            if exclusive and entry[0] != fcntl.LOCK_EX:
                raise RuntimeError(f"lock {path} is held shared and cannot be upgraded; take it exclusive first")
            entry[1] += 1
            try:
                yield
            finally:
                entry[1] -= 1
            return
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, mode)
            held[path] = [mode, 1]
            try:
                yield
            finally:
                del held[path]
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _state_lock(self, exclusive: bool) -> Iterator[None]:
        # flock lets new shared holders in while an exclusive one waits, so a steady
        # stream of operations would starve reconcile. A turnstile fixes that: the
        # exclusive taker holds it while it waits; shared takers pass through it first.
        if self._state in self._held():
            with self._hold(self._state, exclusive):
                yield
            return
        with contextlib.ExitStack() as stack:
            with self._hold(self._turnstile, exclusive=True):
                stack.enter_context(self._hold(self._state, exclusive))
            yield

    @contextlib.contextmanager
    def everything(self) -> Iterator[None]:
        """The whole state_dir, exclusively: for reconcile and firewall re-application."""
        with self._state_lock(exclusive=True):
            yield

    @contextlib.contextmanager
    def operation(self, *, sandboxes: Iterable[str | None] = (), networks: Iterable[str | None] = ()) -> Iterator[None]:
        """The state_dir shared, then the sandboxes and the networks exclusively.

        ``None`` entries are skipped, so callers can pass an optional id as is.
        A nested operation may only add locks that come later in the order
        (a network inside a sandbox's operation), or re-enter held ones.
        """
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._state_lock(exclusive=False))
            for kind, ids in (("sandbox", sandboxes), ("network", networks)):
                for path in sorted({self._path(kind, i) for i in ids if i}):
                    stack.enter_context(self._hold(path, exclusive=True))
            yield
