"""Deprecated since 0.2: the Network handle moved: the old names resolve, with a DeprecationWarning, until 0.3.

Import instead:

* ``Network`` from :mod:`cnm.handles`
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnm._deprecation import moved_names

if TYPE_CHECKING:
    from cnm.handles import Network

__all__ = ["Network"]

__getattr__ = moved_names(
    __name__,
    {
        "Network": "cnm.handles",
    },
)
