"""Deprecated since 0.2: legacy links moved: the old names resolve, with a DeprecationWarning, until 0.3.

Import instead:

* ``ExposedPort`` from :mod:`cnm.legacy_links`
* ``Link`` from :mod:`cnm.handles`
* ``hosts_names`` from :mod:`cnm.legacy_links`
* ``link_env`` from :mod:`cnm.legacy_links`
* ``parse_exposed`` from :mod:`cnm.legacy_links`
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnm._deprecation import moved_names

if TYPE_CHECKING:
    from cnm.handles import Link
    from cnm.legacy_links import ExposedPort, hosts_names, link_env, parse_exposed

__all__ = ["ExposedPort", "Link", "hosts_names", "link_env", "parse_exposed"]

__getattr__ = moved_names(
    __name__,
    {
        "ExposedPort": "cnm.legacy_links",
        "Link": "cnm.handles",
        "hosts_names": "cnm.legacy_links",
        "link_env": "cnm.legacy_links",
        "parse_exposed": "cnm.legacy_links",
    },
)
