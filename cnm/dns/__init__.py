"""Name resolution between sandboxes: the resolver adapter.

A resolver process runs in the controller's host namespace, listens on the
gateway address of every DNS-enabled network, and answers each sandbox with
the names of the networks it is on, forwarding the rest upstream
(docs/dns.md). This package knows nothing of the core: it takes networks and
entries as values (:mod:`cnm.dns.config`), writes them atomically, and starts,
reloads, checks and stops the process (:mod:`cnm.dns.process`). The server
itself is :mod:`cnm.dns.server` (answers: :mod:`cnm.dns.answer`).
"""

import importlib
from typing import TYPE_CHECKING

from cnm.dns.config import ConfigDir, Entry, NetworkDNS

if TYPE_CHECKING:
    from cnm.dns.process import Resolver

__all__ = ["ConfigDir", "Entry", "NetworkDNS", "Resolver"]


def __getattr__(name: str) -> object:
    # The process manager needs cnm.kernel (pyroute2); the server process imports this package
    # too and needs none of it.
    if name == "Resolver":
        return importlib.import_module("cnm.dns.process").Resolver
    raise AttributeError(f"module 'cnm.dns' has no attribute {name!r}")
