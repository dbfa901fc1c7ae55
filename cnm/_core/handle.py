"""The base of the public handles (:mod:`cnm.handles`): a handle on one stored record (internal)."""

from __future__ import annotations

import contextlib
from typing import Generic

from cnm._core.runtime import Runtime
from cnm._core.state import R
from cnm.errors import NotFound

__all__ = ["Handle"]


class Handle(Generic[R]):
    """A handle on a record of the controller's store.

    Two handles on the same object compare equal. Handles are cheap: create
    as many as needed; :meth:`_current` re-reads the record when an answer
    must reflect changes made through other handles or processes.
    """

    def __init__(self, runtime: Runtime, record: R) -> None:
        self._rt = runtime
        self._record: R = record

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and isinstance(other, Handle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _current(self) -> R:
        """The record as stored now (the last known one if the object is gone)."""
        with contextlib.suppress(NotFound):
            self._record = self._rt.state.reload(self._record)
        return self._record

    @property
    def id(self) -> str:
        """The object's id (64 hex digits)."""
        return self._record.id
