"""Deprecated since 0.2: legacy links moved; this module re-exports its names with a DeprecationWarning until 0.3.

Import instead:

* ``ExposedPort`` from :mod:`cnm.legacy_links`
* ``Link`` from :mod:`cnm.handles`
* ``hosts_names`` from :mod:`cnm.legacy_links`
* ``link_env`` from :mod:`cnm.legacy_links`
* ``parse_exposed`` from :mod:`cnm.legacy_links`
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from cnm import handles as _handles
from cnm import legacy_links as _legacy_links

if TYPE_CHECKING:
    from cnm.handles import Link
    from cnm.legacy_links import ExposedPort, hosts_names, link_env, parse_exposed

__all__ = ["ExposedPort", "Link", "hosts_names", "link_env", "parse_exposed"]

_MOVED: dict[str, Any] = {
    "ExposedPort": _legacy_links,
    "Link": _handles,
    "hosts_names": _legacy_links,
    "link_env": _legacy_links,
    "parse_exposed": _legacy_links,
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
