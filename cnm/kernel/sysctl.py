"""Per-namespace sysctls (``net.ipv4.ip_forward``, ``net.bridge.bridge-nf-call-iptables``, ...).

Network sysctls under /proc/sys/net belong to the namespace of the thread
that opens them, so reads and writes happen in a helper thread inside the
namespace.
"""

from __future__ import annotations

import os

from cnm.errors import KernelError
from cnm.kernel.netns import NetNS

__all__ = ["get_sysctl", "set_sysctl"]


def _path(key: str) -> str:
    # Interface names may contain dots, so only the first parts are split:
    # callers pass "net/ipv4/conf/br.x/route_localnet" style keys for those.
    if "/" in key:
        return os.path.join("/proc/sys", key)
    return os.path.join("/proc/sys", *key.split("."))


def get_sysctl(netns: NetNS, key: str) -> str:
    """Read a sysctl of ``netns``, e.g. ``net.ipv4.ip_forward``."""

    def read() -> str:
        with open(_path(key)) as f:
            return f.read().strip()

    try:
        return netns.in_thread(read)
    except OSError as exc:
        raise KernelError(f"read sysctl {key} in {netns.name} failed: {exc.strerror}", exc.errno) from exc


def set_sysctl(netns: NetNS, key: str, value: str) -> bool:
    """Write a sysctl of ``netns`` unless it already has ``value``; True if changed."""

    def write() -> bool:
        path = _path(key)
        with open(path) as f:
            if f.read().strip() == value:
                return False
        with open(path, "w") as f:
            f.write(value)
        return True

    try:
        return netns.in_thread(write)
    except OSError as exc:
        raise KernelError(f"set sysctl {key}={value} in {netns.name} failed: {exc.strerror}", exc.errno) from exc
