"""The one exception hierarchy of cnm.

Every error cnm raises is a :class:`CNMError`. Classes are grouped by what the
caller can do about them, and each also subclasses the builtin exception a
Python caller would expect::

    CNMError
    ├── NotFound(LookupError)          NetworkNotFound, EndpointNotFound,
    │                                  SandboxNotFound, DriverNotFound
    ├── InvalidConfig(ValueError)      malformed CIDR, name too long, unknown option
    ├── Conflict                       AlreadyExists, ActiveEndpoints, AddressInUse,
    │                                  PortInUse, PoolOverlap, EndpointJoined,
    │                                  AlreadyConnected
    ├── Exhausted                      no free address, subnet or host port
    ├── Forbidden(PermissionError)     e.g. deleting a predefined network
    ├── KernelError(OSError)           a netlink, iptables or OVSDB call failed
    ├── ResolverError(RuntimeError)    the DNS resolver process failed to start, reload or stop
    ├── StoreUnavailable(ConnectionError)
    │                                  the global store (etcd) cannot be reached in time
    ├── TransactionConflict            an optimistic store transaction kept losing to
    │                                  concurrent writers; nothing was written
    └── TeardownIncomplete(ExceptionGroup)
                                       a best-effort teardown went on past failures;
                                       ``.exceptions`` holds every one of them

Messages say what failed and what to do about it.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Sequence

__all__ = [
    "ActiveEndpoints",
    "AddressInUse",
    "AlreadyConnected",
    "AlreadyExists",
    "CNMError",
    "Conflict",
    "DriverNotFound",
    "EndpointJoined",
    "EndpointNotFound",
    "Exhausted",
    "Forbidden",
    "InvalidConfig",
    "KernelError",
    "NetworkNotFound",
    "NotFound",
    "PoolOverlap",
    "PortInUse",
    "ResolverError",
    "SandboxNotFound",
    "StoreUnavailable",
    "TeardownIncomplete",
    "TransactionConflict",
]


class CNMError(Exception):
    """Base class of every error cnm raises."""


class NotFound(CNMError, LookupError):
    """The named object does not exist."""


class NetworkNotFound(NotFound):
    """No network has this name or id."""


class EndpointNotFound(NotFound):
    """No endpoint has this name or id."""


class SandboxNotFound(NotFound):
    """No sandbox has this name or id."""


class DriverNotFound(NotFound):
    """No installed driver has this name."""


class InvalidConfig(CNMError, ValueError):
    """The input is malformed or out of range; nothing was created."""


class Conflict(CNMError):
    """The request clashes with existing state; nothing was created."""


class AlreadyExists(Conflict):
    """An object with this name already exists."""


class ActiveEndpoints(Conflict):
    """The network still has endpoints; delete them first."""


class EndpointJoined(Conflict):
    """The endpoint is already joined to a sandbox."""


class AlreadyConnected(Conflict):
    """The sandbox is already connected to the network through another endpoint."""


class AddressInUse(Conflict):
    """The requested IP address is already allocated."""


class PortInUse(Conflict):
    """The requested host port is already published or bound."""


class PoolOverlap(Conflict):
    """The requested subnet overlaps another network or a host route."""


class Exhausted(CNMError):
    """No free address, subnet or host port is left."""


class Forbidden(CNMError, PermissionError):
    """The operation is not allowed on this object."""


class ResolverError(CNMError, RuntimeError):
    """The DNS resolver process (:mod:`cnm.dns`) did not start, reload or stop as asked."""


class StoreUnavailable(CNMError, ConnectionError):
    """The global store (etcd) did not answer in time; nothing was written."""


class TransactionConflict(CNMError):
    """An optimistic store transaction conflicted with concurrent writers; nothing was written.

    Stores that retry (:class:`cnm.store.etcd.EtcdStore`) raise it only once
    their bounded retries are used up.
    """


class KernelError(CNMError, OSError):
    """A kernel, firewall or OVSDB operation failed.

    ``errno`` holds the kernel's error number when there is one.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.strerror = message
        self._message = message

    def __str__(self) -> str:
        if self.errno is None:
            return self._message
        name = _errno.errorcode.get(self.errno, str(self.errno))
        return f"{self._message} [{name}]"

    def __reduce__(self) -> tuple[type[KernelError], tuple[str, int | None]]:
        # Errors cross process boundaries (NetNS.run_in); keep errno on the way.
        return (type(self), (self._message, self.errno))


class TeardownIncomplete(CNMError, ExceptionGroup):
    """A teardown went on past failed steps and left something behind.

    Deletes, leaves and reconcile's repairs are best effort: every step is
    tried, and the failures are raised together at the end as one
    ``ExceptionGroup`` that is also a :class:`CNMError`, so ``except CNMError``
    and ``except*`` both catch it. ``operation`` names what was being torn
    down; each sub-exception carries a note naming its step. Running the same
    delete again, or :meth:`cnm.Controller.reconcile`, finishes the job.
    """

    operation: str

    def __new__(cls, operation: str, exceptions: Sequence[Exception]) -> TeardownIncomplete:
        steps = len(exceptions)
        message = f"{operation}: {steps} step(s) failed; run it again or Controller.reconcile() to finish"
        self = super().__new__(cls, message, list(exceptions))
        self.operation = operation
        return self

    def __init__(self, operation: str, exceptions: Sequence[Exception]) -> None:
        super().__init__(self.message, list(exceptions))

    def derive(self, excs: Sequence[Exception]) -> TeardownIncomplete:  # type: ignore[override]
        """Keep the class and the operation when ``except*`` splits the group."""
        return TeardownIncomplete(self.operation, excs)

    def __reduce__(self) -> tuple[type[TeardownIncomplete], tuple[str, list[Exception]]]:
        return (type(self), (self.operation, list(self.exceptions)))
