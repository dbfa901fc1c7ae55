"""The kernel layer: thin typed wrappers over pyroute2, each naming its namespace.

Modules: :mod:`~cnm.kernel.netns` (namespaces and work inside them),
:mod:`~cnm.kernel.links`, :mod:`~cnm.kernel.addresses`,
:mod:`~cnm.kernel.routes`, :mod:`~cnm.kernel.sysctl` and
:mod:`~cnm.kernel.process`. Only this package imports pyroute2; drivers use
these helpers like any other part of cnm.
"""

from cnm.kernel.netns import Netlink, NetNS

__all__ = ["NetNS", "Netlink"]
