"""Multi-step operations that undo their done steps when a later step fails."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

__all__ = ["Concurrently", "Rollback"]

log = logging.getLogger(__name__)


class Rollback:
    """Collects the undo of each finished step; runs them in reverse if the block fails.

    Usage::

        with Rollback("create network net1") as rb:
            make_bridge()
            rb.done("make bridge", delete_bridge)
            ...
        # leaving the block normally forgets the undos

    An undo that itself fails is logged and attached to the original error as
    a note; the remaining undos still run.
    """

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self._undo: list[tuple[str, Callable[[], object]]] = []

    def done(self, step: str, undo: Callable[[], object]) -> None:
        """Record that ``step`` finished and how to undo it."""
        self._undo.append((step, undo))

    def __enter__(self) -> Rollback:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self._undo.clear()
            return
        log.warning("%s failed (%s); undoing %d finished step(s)", self.operation, exc, len(self._undo))
        while self._undo:
            step, undo = self._undo.pop()
            try:
                undo()
            except Exception as undo_exc:  # noqa: BLE001 - keep undoing; report below
                log.error("%s: undoing step %r failed: %s", self.operation, step, undo_exc)
                exc.add_note(f"while undoing {step!r} of {self.operation}: {undo_exc!r}")


class Concurrently:
    """Run a step in a helper thread while the caller does the next one.

    For a step that mostly waits on another process (the firewall worker), so
    that its wait overlaps the caller's own kernel calls. :meth:`wait` joins
    the thread and returns the step's error, if any, for the caller to raise
    or, when the caller is failing already, to drop.
    """

    def __init__(self, step: str, fn: Callable[[], object]) -> None:
        self.step = step
        self._error: BaseException | None = None

        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller by wait()
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"cnm-{step}")
        self._thread.start()

    def wait(self) -> BaseException | None:
        """Wait for the step; its error, or None if it succeeded."""
        self._thread.join()
        return self._error
