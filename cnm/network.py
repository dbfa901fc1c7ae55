"""Deprecated since 0.2: the Network handle moved; this module re-exports it with a DeprecationWarning until 0.3.

Import instead:

* ``Network`` from :mod:`cnm.handles`
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from cnm import handles as _handles

if TYPE_CHECKING:
    from cnm.handles import Network

__all__ = ["Network"]

_MOVED: dict[str, Any] = {
    "Network": _handles,
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
