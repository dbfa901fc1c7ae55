"""The one place where netlink and OS errors become :mod:`cnm.errors` exceptions."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

from pyroute2.netlink.exceptions import NetlinkError

from cnm.errors import KernelError

__all__ = ["map_netlink_errors"]

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


@contextlib.contextmanager
def map_netlink_errors(what: str) -> Iterator[None]:
    """Turn a NetlinkError or OSError raised inside the block into KernelError.

    Args:
        what: the operation, named for the message ("create veth cnm1a2b in ns h1").
    """
    try:
        yield
    except NetlinkError as exc:
        code = int(exc.code)
        hint = _HINTS.get(code, exc.args[1] if len(exc.args) > 1 else "netlink error")
        raise KernelError(f"{what} failed: {hint}", code) from exc
    except OSError as exc:
        if isinstance(exc, KernelError):
            raise
        hint = _HINTS.get(exc.errno or 0, exc.strerror or str(exc))
        raise KernelError(f"{what} failed: {hint}", exc.errno) from exc
