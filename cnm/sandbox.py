"""Deprecated since 0.2: the Sandbox handle moved: the old names resolve, with a DeprecationWarning, until 0.3.

Import instead:

* ``HOST_HOSTS`` from :mod:`cnm.etchosts`
* ``Sandbox`` from :mod:`cnm.handles`
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnm._deprecation import moved_names

if TYPE_CHECKING:
    from cnm.etchosts import HOST_HOSTS
    from cnm.handles import Sandbox

__all__ = ["HOST_HOSTS", "Sandbox"]

__getattr__ = moved_names(
    __name__,
    {
        "HOST_HOSTS": "cnm.etchosts",
        "Sandbox": "cnm.handles",
    },
)
