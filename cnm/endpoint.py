"""Deprecated since 0.2: the Endpoint handle moved: the old names resolve, with a DeprecationWarning, until 0.3.

Import instead:

* ``Endpoint`` from :mod:`cnm.handles`
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnm._deprecation import moved_names

if TYPE_CHECKING:
    from cnm.handles import Endpoint

__all__ = ["Endpoint"]

__getattr__ = moved_names(
    __name__,
    {
        "Endpoint": "cnm.handles",
    },
)
