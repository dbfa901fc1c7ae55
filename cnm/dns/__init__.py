"""Name resolution between sandboxes: the resolver adapter.

A resolver process runs in the controller's host namespace, listens on the
gateway address of every DNS-enabled network, and answers each sandbox with
the names of the networks it is on, forwarding the rest upstream
(docs/dns.md). This package knows nothing of the core: it takes networks and
entries as values (:mod:`cnm.dns.config`), writes them atomically, and starts,
reloads, checks and stops the process (:mod:`cnm.dns.process`). The server
itself is :mod:`cnm.dns.server` (answers: :mod:`cnm.dns.answer`).
"""

from cnm.dns.config import ConfigDir, Entry, NetworkDNS
from cnm.dns.process import Resolver

__all__ = ["ConfigDir", "Entry", "NetworkDNS", "Resolver"]
