"""Deprecated since 0.2: the Endpoint handle moved; this module re-exports it with a DeprecationWarning until 0.3.

Import instead:

* ``Endpoint`` from :mod:`cnm.handles`
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from cnm import handles as _handles

if TYPE_CHECKING:
    from cnm.handles import Endpoint

__all__ = ["Endpoint"]

_MOVED: dict[str, Any] = {
    "Endpoint": _handles,
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
