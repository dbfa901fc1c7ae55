"""The step engine: multi-step operations as named steps, each with its undo.

cnm's core and its drivers, built-in or third-party, write every operation
that changes more than one thing the same way::

    with Steps(f"create network {name}", observer) as steps:
        steps.run("create bridge", lambda: make_bridge(), undo=lambda: delete_bridge())
        steps.run("install rules", lambda: fw.setup(net), undo=lambda: fw.teardown(net))
    # leaving the block normally forgets the undos; an exception undoes the
    # finished steps newest first and goes on

and every teardown goes on past failures and reports them all at the end::

    with Teardown(f"delete network {name}", observer) as teardown:
        teardown.run("remove rules", lambda: fw.teardown(net))
        teardown.run("delete bridge", lambda: delete_bridge())
    # raises cnm.errors.TeardownIncomplete holding every failure, if any

A :class:`StepObserver` sees each step start, finish or fail. It is how tools
look inside an operation without patching any module: the crash tests' kill
switch (:mod:`cnm.testing`), the benchmarks' step timer and the driver
conformance kit. Observers are passed in (``Controller(observer=...)``, and
to drivers through :class:`cnm.driverapi.DriverContext`); there is no global
registry.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Protocol, TypeVar, runtime_checkable

from cnm.errors import TeardownIncomplete

__all__ = ["NO_OBSERVER", "Concurrent", "ObserverGroup", "StepObserver", "Steps", "Teardown"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@runtime_checkable
class StepObserver(Protocol):
    """Sees the steps of operations as they run.

    Called in the thread that runs the step, synchronously: an observer that
    blocks, blocks the step. An exception an observer raises propagates as the
    step's own would (the crash tests' kill switch relies on that to stop an
    operation between two steps).
    """

    def step_started(self, operation: str, step: str) -> None:
        """``step`` of ``operation`` is about to run."""

    def step_finished(self, operation: str, step: str, seconds: float) -> None:
        """``step`` of ``operation`` finished after ``seconds``."""

    def step_failed(self, operation: str, step: str, error: BaseException) -> None:
        """``step`` of ``operation`` raised ``error``."""


class _NoObserver:
    """Sees nothing; the default."""

    def step_started(self, operation: str, step: str) -> None:
        """Do nothing."""

    def step_finished(self, operation: str, step: str, seconds: float) -> None:
        """Do nothing."""

    def step_failed(self, operation: str, step: str, error: BaseException) -> None:
        """Do nothing."""


NO_OBSERVER: StepObserver = _NoObserver()
"""The observer that sees nothing, used when none is given."""


class ObserverGroup:
    """Several observers as one, called in the order given."""

    def __init__(self, observers: Sequence[StepObserver]) -> None:
        self.observers = tuple(observers)

    def step_started(self, operation: str, step: str) -> None:
        """Tell every observer."""
        for observer in self.observers:
            observer.step_started(operation, step)

    def step_finished(self, operation: str, step: str, seconds: float) -> None:
        """Tell every observer."""
        for observer in self.observers:
            observer.step_finished(operation, step, seconds)

    def step_failed(self, operation: str, step: str, error: BaseException) -> None:
        """Tell every observer."""
        for observer in self.observers:
            observer.step_failed(operation, step, error)


def _observed(observer: StepObserver, operation: str, step: str, do: Callable[[], T]) -> T:
    observer.step_started(operation, step)
    start = time.perf_counter()
    try:
        result = do()
    except BaseException as exc:
        observer.step_failed(operation, step, exc)
        raise
    observer.step_finished(operation, step, time.perf_counter() - start)
    return result


class Steps:
    """A setup operation: named steps whose undos run, newest first, if a later step fails.

    Args:
        operation: what the whole operation does, e.g. ``"create network net1"``;
            it appears in logs, error notes and observer calls.
        observer: who sees the steps; none by default.

    An undo that itself fails is logged and added to the original error as a
    note, and the remaining undos still run: the caller always gets the error
    that started the unwinding.
    """

    def __init__(self, operation: str, observer: StepObserver | None = None) -> None:
        self.operation = operation
        self.observer = observer or NO_OBSERVER
        self._undo: list[tuple[str, Callable[[], object]]] = []

    def run(self, step: str, do: Callable[[], T], *, undo: Callable[[], object] | None = None) -> T:
        """Run ``do`` as ``step``; if it succeeds and ``undo`` is given, remember it for a later failure.

        Returns:
            What ``do`` returned.

        Raises:
            Whatever ``do`` raised, with a note naming the step and the operation.
        """
        try:
            result = _observed(self.observer, self.operation, step, do)
        except BaseException as exc:
            exc.add_note(f"in step {step!r} of {self.operation}")
            raise
        if undo is not None:
            self._undo.append((step, undo))
        return result

    def done(self, step: str, undo: Callable[[], object]) -> None:
        """Record that ``step`` was done by other means, and how to undo it."""
        self._undo.append((step, undo))

    def concurrently(self, step: str, do: Callable[[], object]) -> Concurrent:
        """Start ``step`` in a helper thread while the caller goes on; see :class:`Concurrent`."""
        return Concurrent(self.operation, step, do, self.observer)

    def __enter__(self) -> Steps:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self._undo.clear()
            return
        if self._undo:
            log.warning("%s failed (%s); undoing %d finished step(s)", self.operation, exc, len(self._undo))
        while self._undo:
            step, undo = self._undo.pop()
            try:
                _observed(self.observer, self.operation, f"undo {step}", undo)
            except Exception as undo_exc:  # noqa: BLE001 - keep undoing; reported on the original error
                log.error("%s: undoing step %r failed: %s", self.operation, step, undo_exc)
                exc.add_note(f"while undoing {step!r} of {self.operation}: {undo_exc!r}")


class Teardown:
    """A best-effort teardown: every step is tried; the failures are raised together at the end.

    Args:
        operation: what is being torn down, e.g. ``"delete network net1"``.
        observer: who sees the steps; none by default.

    Leaving the block raises :class:`cnm.errors.TeardownIncomplete` with every
    failed step's error (each with a note naming its step), unless all
    succeeded. If the block itself raises, that error propagates with the
    failed steps added as notes.
    """

    def __init__(self, operation: str, observer: StepObserver | None = None) -> None:
        self.operation = operation
        self.observer = observer or NO_OBSERVER
        self.errors: list[Exception] = []

    def run(self, step: str, do: Callable[[], object]) -> bool:
        """Run ``do`` as ``step``; record its error instead of raising it.

        Returns:
            True if the step succeeded.
        """
        try:
            _observed(self.observer, self.operation, step, do)
        except Exception as exc:  # noqa: BLE001 - collected, raised together by __exit__
            exc.add_note(f"in step {step!r} of {self.operation}")
            log.warning("%s: step %r failed: %s", self.operation, step, exc)
            self.errors.append(exc)
            return False
        return True

    def add(self, error: Exception) -> None:
        """Record a failure found outside :meth:`run` (e.g. a nested teardown's)."""
        self.errors.append(error)

    def __enter__(self) -> Teardown:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            for error in self.errors:
                exc.add_note(f"also, during {self.operation}: {error!r}")
            return
        if self.errors:
            raise TeardownIncomplete(self.operation, self.errors)


class Concurrent:
    """A step run in a helper thread while the caller does the next one.

    For a step that mostly waits on another process (the firewall worker), so
    that its wait overlaps the caller's own kernel calls. :meth:`wait` joins the
    thread and returns the step's error, if any, for the caller to raise or,
    when the caller is failing already, to report beside its own.
    """

    def __init__(
        self, operation: str, step: str, do: Callable[[], object], observer: StepObserver | None = None
    ) -> None:
        self.operation = operation
        self.step = step
        self._error: BaseException | None = None
        watcher = observer or NO_OBSERVER

        def run() -> None:
            try:
                _observed(watcher, operation, step, do)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller by wait()
                exc.add_note(f"in step {step!r} of {operation}")
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"cnm-{step}")
        self._thread.start()

    def wait(self) -> BaseException | None:
        """Wait for the step; its error, or None if it succeeded."""
        self._thread.join()
        return self._error
