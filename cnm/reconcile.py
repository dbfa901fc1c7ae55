"""Deprecated since 0.2: the reconcile report moved; this module re-exports it with a DeprecationWarning until 0.3.

Import instead:

* ``ReconcileReport`` from :mod:`cnm.types`
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from cnm import types as _types

if TYPE_CHECKING:
    from cnm.types import ReconcileReport

__all__ = ["ReconcileReport"]

_MOVED: dict[str, Any] = {
    "ReconcileReport": _types,
}


def __getattr__(name: str) -> Any:
    """The moved name, with a DeprecationWarning saying where it lives now."""
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"{__name__}.{name} is deprecated: import {name} from {home.__name__} ({__name__} goes in 0.3)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(home, name)
