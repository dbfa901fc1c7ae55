"""map_netlink_errors: which errors it tolerates, which it translates, which it passes on."""

from __future__ import annotations

import errno

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from cnm.errors import KernelError
from cnm.kernel.errors import map_netlink_errors


def test_a_tolerated_errno_ends_the_block_and_is_reported() -> None:
    reached = False
    with map_netlink_errors("add thing", ok=(errno.EEXIST,)) as exists:
        raise NetlinkError(errno.EEXIST, "File exists")
        reached = True  # pragma: no cover - the raise above ends the block
    assert exists
    assert exists.errno == errno.EEXIST
    assert not reached


def test_success_reports_nothing_tolerated() -> None:
    with map_netlink_errors("add thing", ok=(errno.EEXIST,)) as exists:
        pass
    assert not exists
    assert exists.errno is None


def test_other_errnos_become_kernel_errors_naming_the_operation() -> None:
    with (
        pytest.raises(KernelError, match="add thing in ns1 failed: permission denied") as info,
        map_netlink_errors("add thing in ns1", ok=(errno.EEXIST,)),
    ):
        raise NetlinkError(errno.EPERM, "Operation not permitted")
    assert info.value.errno == errno.EPERM


def test_os_errors_are_tolerated_or_translated_the_same_way() -> None:
    with map_netlink_errors("ioctl", ok=(errno.ENODEV,)) as gone:
        raise OSError(errno.ENODEV, "No such device")
    assert gone
    with (
        pytest.raises(KernelError, match="ioctl failed: the device is busy"),
        map_netlink_errors("ioctl", ok=(errno.ENODEV,)),
    ):
        raise OSError(errno.EBUSY, "busy")


def test_a_kernel_error_from_inside_passes_unchanged_even_if_its_errno_is_ok() -> None:
    inner = KernelError("link x does not exist in ns1", errno.ENODEV)
    with pytest.raises(KernelError) as info, map_netlink_errors("set x", ok=(errno.ENODEV,)):
        raise inner
    assert info.value is inner
