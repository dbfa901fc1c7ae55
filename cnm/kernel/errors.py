"""The one place where netlink and OS errors become :mod:`cnm.errors` exceptions."""

from __future__ import annotations

import errno
from collections.abc import Collection
from contextlib import AbstractContextManager
from types import TracebackType

import attrs
from pyroute2.netlink.exceptions import NetlinkError

from cnm.errors import KernelError

__all__ = ["Tolerated", "map_netlink_errors"]

_HINTS = {
    errno.EEXIST: "it already exists",
    errno.ENODEV: "the device does not exist",
    errno.ENOENT: "it does not exist",
    errno.EPERM: "permission denied; cnm needs root (CAP_NET_ADMIN)",
    errno.EACCES: "permission denied; cnm needs root (CAP_NET_ADMIN)",
    errno.EBUSY: "the device is busy",
    errno.EINVAL: "the kernel refused the arguments",
    errno.ERANGE: "a value is out of range (MTU?)",
    errno.EOPNOTSUPP: "this kernel does not support it",
}


@attrs.define
class Tolerated:
    """What :func:`map_netlink_errors` swallowed: the tolerated errno, or None if the block succeeded.

    It is true when an error was tolerated, so ``if outcome:`` reads "if it was
    already so". Mutable only because the block's outcome is known after it ran.
    """

    errno: int | None = None

    def __bool__(self) -> bool:
        return self.errno is not None


class _Mapping:
    """The context manager :func:`map_netlink_errors` returns.

    A class rather than ``contextlib.contextmanager`` so that ``__exit__`` is
    typed ``-> bool``: type checkers then know the block may end early (a
    tolerated error) and do not call the code after it unreachable.
    """

    def __init__(self, what: str, ok: Collection[int]) -> None:
        self._what = what
        self._ok = frozenset(ok)
        self._outcome = Tolerated()

    def __enter__(self) -> Tolerated:
        return self._outcome

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if isinstance(exc, NetlinkError):
            code = int(exc.code)
            if code in self._ok:
                self._outcome.errno = code
                return True
            hint = _HINTS.get(code, exc.args[1] if len(exc.args) > 1 else "netlink error")
            raise KernelError(f"{self._what} failed: {hint}", code) from exc
        if isinstance(exc, OSError) and not isinstance(exc, KernelError):
            if exc.errno is not None and exc.errno in self._ok:
                self._outcome.errno = exc.errno
                return True
            hint = _HINTS.get(exc.errno or 0, exc.strerror or str(exc))
            raise KernelError(f"{self._what} failed: {hint}", exc.errno) from exc
        return False


def map_netlink_errors(what: str, ok: Collection[int] = ()) -> AbstractContextManager[Tolerated, bool]:
    """Turn a NetlinkError or OSError raised inside the block into KernelError, or tolerate it.

    An error whose errno is in ``ok`` ends the block quietly and is recorded in
    the yielded :class:`Tolerated` (``with map_netlink_errors(..., ok=(errno.EEXIST,))
    as exists: ...``, then ``if exists:``). A :class:`~cnm.errors.KernelError`
    raised inside (already named by cnm) passes through unchanged and is never
    tolerated.

    Args:
        what: the operation, named for the message ("create veth cnm1a2b in ns h1").
        ok: errnos that mean "already as asked" (EEXIST on add, ENODEV on delete).
    """
    return _Mapping(what, ok)
