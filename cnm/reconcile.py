"""Deprecated since 0.2: the reconcile report moved: the old names resolve, with a DeprecationWarning, until 0.3.

Import instead:

* ``ReconcileReport`` from :mod:`cnm.types`
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnm._deprecation import moved_names

if TYPE_CHECKING:
    from cnm.types import ReconcileReport

__all__ = ["ReconcileReport"]

__getattr__ = moved_names(
    __name__,
    {
        "ReconcileReport": "cnm.types",
    },
)
