"""Exclusive ("self") time per named step, for the benchmarks' per-step breakdowns.

Shared by ``bench_cnm.py`` (cnm's steps in its worker) and ``bench_firewall.py`` (the firewall
worker's phases). Timers are wrapped around functions from the outside; nothing in cnm changes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

#: Prefix of a step run in a helper thread, alongside the main thread's steps.
OVERLAPPED = "in a helper thread, overlapping the others: "


class StepTimer:
    """Exclusive time per named step: a step's time excludes the timed steps inside it.

    With ``single_thread=False``, a step timed in a thread other than the main one overlaps the
    main thread's steps: it is recorded under ``OVERLAPPED + name`` and not subtracted from
    anything. With ``single_thread=True`` every step counts as the main thread's (for a process
    that does all its work in one thread, whichever it is).
    """

    def __init__(self, *, single_thread: bool = False) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[float] = []
        self._main = None if single_thread else threading.main_thread()

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Time the block as step ``name``."""
        start = time.perf_counter()
        if self._main is not None and threading.current_thread() is not self._main:
            try:
                yield
            finally:
                self.seconds[OVERLAPPED + name] += time.perf_counter() - start
                self.calls[OVERLAPPED + name] += 1
            return
        self._stack.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            children = self._stack.pop()
            self.seconds[name] += elapsed - children
            self.calls[name] += 1
            if self._stack:
                self._stack[-1] += elapsed

    def wrap(self, owner: Any, attr: str, name: str | Callable[[Any], str]) -> None:
        """Time every call of ``owner.attr``; a callable ``name`` gets the call's first argument."""
        original = getattr(owner, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.timed(name(args[0]) if callable(name) else name):
                return original(*args, **kwargs)

        setattr(owner, attr, wrapper)

    def wrap_cm(self, owner: Any, attr: str, enter: str, leave: str, only_outer: Callable[[Any], bool]) -> None:
        """Time a context manager's enter and exit, not its body."""
        original = getattr(owner, attr)
        timer = self

        @contextlib.contextmanager
        def wrapper(self_: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            outer = only_outer(self_)
            cm = original(self_, *args, **kwargs)
            with timer.timed(enter) if outer else contextlib.nullcontext():
                value = cm.__enter__()
            try:
                yield value
            except BaseException as exc:
                with timer.timed(leave) if outer else contextlib.nullcontext():
                    suppressed = cm.__exit__(type(exc), exc, exc.__traceback__)
                if not suppressed:
                    raise
            else:
                with timer.timed(leave) if outer else contextlib.nullcontext():
                    cm.__exit__(None, None, None)

        setattr(owner, attr, wrapper)

    def take(self) -> dict[str, tuple[float, int]]:
        """The steps timed since the last take, as (seconds, calls); the counters restart."""
        out = {k: (self.seconds[k], self.calls[k]) for k in self.seconds}
        self.seconds.clear()
        self.calls.clear()
        return out
