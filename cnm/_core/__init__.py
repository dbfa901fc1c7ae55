"""cnm's private core: what the public handles and the Controller are built on (internal).

Layers, each importing only the ones below it (import-linter contract ``core-layers``):

* :mod:`~cnm._core.reconcile`: bringing the store and the kernel back into agreement;
* :mod:`~cnm._core.ops`: the operations (create, join, leave, link, delete), one job per module;
* :mod:`~cnm._core.runtime`: the services an operation is given (no global state);
* :mod:`~cnm._core.state`, :mod:`~cnm._core.locks`, :mod:`~cnm._core.sandbox_os`,
  :mod:`~cnm._core.views`, :mod:`~cnm._core.inspect`: the typed store schema, the locks,
  the OS interface of a sandbox, the driver views and Docker's inspect shapes;
* :mod:`~cnm._core.records`: the stored form of every object.

Nothing here is public API; drivers never import it (contract ``drivers-public-api-only``).
"""
