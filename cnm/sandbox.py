"""Deprecated since 0.2: the Sandbox handle moved; this module re-exports it with a DeprecationWarning until 0.3.

Import instead:

* ``HOST_HOSTS`` from :mod:`cnm.etchosts`
* ``Sandbox`` from :mod:`cnm.handles`
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from cnm import etchosts as _etchosts
from cnm import handles as _handles

if TYPE_CHECKING:
    from cnm.etchosts import HOST_HOSTS
    from cnm.handles import Sandbox

__all__ = ["HOST_HOSTS", "Sandbox"]

_MOVED: dict[str, Any] = {
    "HOST_HOSTS": _etchosts,
    "Sandbox": _handles,
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
