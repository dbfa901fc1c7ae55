"""Exclusive ("self") time per named step, for the benchmarks' per-step breakdowns.

Shared by ``bench_cnm.py`` (cnm's steps in its worker) and ``bench_firewall.py`` (the firewall
worker's phases). For cnm, a :class:`StepTimer` is a :class:`cnm.steps.StepObserver`: given as
``Controller(observer=...)``, it times every named step of the core and of the drivers (which
pass the controller's observer to their own steps), with no patching. The firewall worker has no
steps of its own, so ``bench_firewall.py`` still wraps its phases from the outside (:meth:`wrap`).
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
        self._steps = threading.local()  # per thread: [(start, time of timed steps inside)]
        self.enabled = True

    # --- as a cnm.steps.StepObserver ------------------------------------------------------------------
    @staticmethod
    def step_name(operation: str, step: str) -> str:
        """``join endpoint: driver join``: the operation's kind (its first two words, no object names) and the step."""
        return f"{' '.join(operation.split()[:2])}: {step}"

    def _open(self) -> list[list[float]]:
        stack: list[list[float]] | None = getattr(self._steps, "stack", None)
        if stack is None:
            stack = self._steps.stack = []
        return stack

    def step_started(self, operation: str, step: str) -> None:
        """Start the step's clock."""
        if self.enabled:
            self._open().append([time.perf_counter(), 0.0])

    def step_finished(self, operation: str, step: str, seconds: float) -> None:
        """Charge the step its exclusive time: its own, less the timed steps inside it."""
        self._close(self.step_name(operation, step))

    def step_failed(self, operation: str, step: str, error: BaseException) -> None:
        """A failed step is charged like a finished one, under its own name."""
        self._close(self.step_name(operation, step) + " (failed)")

    def _close(self, name: str) -> None:
        stack = self._open()
        if not self.enabled or not stack:
            return
        start, children = stack.pop()
        elapsed = time.perf_counter() - start
        if self._main is not None and threading.current_thread() is not self._main and not stack:
            name = OVERLAPPED + name  # a helper thread's step overlaps the main thread's
        self.seconds[name] += elapsed - children
        self.calls[name] += 1
        if stack:
            stack[-1][1] += elapsed

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
