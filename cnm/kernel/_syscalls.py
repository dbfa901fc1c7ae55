"""The few libc calls the namespace helpers make, and their flags.

ctypes rather than a package: unshare, setns, mount and umount2 are four calls, and the
os module has none of them on Python 3.11.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from cnm.errors import KernelError

__all__ = ["CLONE_NEWNET", "MNT_DETACH", "MS_BIND", "MS_PRIVATE", "MS_REC", "MS_SHARED", "check", "libc"]

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 2

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
"""The C library, with errno kept for :func:`check`."""


def check(result: int, what: str) -> None:
    """Raise :class:`~cnm.errors.KernelError` naming ``what`` when a libc call returned non-zero."""
    if result != 0:
        err = ctypes.get_errno()
        raise KernelError(f"{what} failed: {os.strerror(err)}", err)
