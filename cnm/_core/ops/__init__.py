"""The operations of the core, one job per module (internal).

Each takes the :class:`~cnm._core.runtime.Runtime` and records, never handles, and
imports only the modules below it (import-linter contract ``ops-layers``):

* :mod:`.sandboxes`: create a sandbox in a ``--net`` mode (with its endpoint, join and
  links in one crash-safe call), mark it ready, delete it;
* :mod:`.endpoints` and :mod:`.networks`: create and delete endpoints, and networks;
* :mod:`.attach`: join an endpoint to a sandbox, and leave;
* :mod:`.legacy_links`: make, remove and settle Docker legacy links;
* :mod:`.refresh`: what a sandbox derives from the store (its files, its default route).

Every multi-step operation runs as named :mod:`cnm.steps`, undone on failure.
"""
