"""Per-namespace sysctls (``net.ipv4.ip_forward``, ``net.bridge.bridge-nf-call-iptables``, ...).

Network sysctls under /proc/sys/net belong to the namespace of the thread
that opens them, so reads and writes happen in a helper thread inside the
namespace.

The IPv6 ones are set as Docker's bridge driver and sandbox set them:
``disable_ipv6=0`` on the bridge and on each sandbox interface of an IPv6
network (:func:`set_ipv6`), ``accept_dad=0`` in the sandbox
(:func:`set_accept_dad`), and forwarding on in the host
(:func:`enable_ipv6_forwarding`). Link-local addresses are left to the kernel,
which makes one when IPv6 is enabled on a link that is up.
"""

from __future__ import annotations

import errno
import os

from cnm.errors import KernelError
from cnm.kernel.netns import NetNS

__all__ = ["enable_ipv6_forwarding", "get_sysctl", "set_accept_dad", "set_ipv6", "set_sysctl"]


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


def _set_ipv6_conf(netns: NetNS, ifname: str, key: str, value: str) -> bool:
    # "/" keys: interface names may contain dots.
    try:
        return set_sysctl(netns, f"net/ipv6/conf/{ifname}/{key}", value)
    except KernelError as exc:
        if exc.errno != errno.ENOENT:
            raise
        raise KernelError(
            f"set net.ipv6.conf.{ifname}.{key}={value} in {netns.name} failed: there is no {ifname} there, "
            "or IPv6 is disabled in this kernel (ipv6.disable=1 on its command line); "
            "create the interface first, or boot with IPv6",
            errno.ENOENT,
        ) from exc


def set_ipv6(netns: NetNS, ifname: str, *, enabled: bool) -> bool:
    """Turn IPv6 on or off on one interface (``disable_ipv6``); True if it changed.

    A host whose ``net.ipv6.conf.default.disable_ipv6`` is 1 makes new links
    with IPv6 off, so an IPv6 bridge and every sandbox interface of an IPv6
    network turn it on themselves, before their addresses are added; Docker
    turns it off on interfaces of IPv4-only networks, so no link-local
    address appears there.
    """
    return _set_ipv6_conf(netns, ifname, "disable_ipv6", "0" if enabled else "1")


def set_accept_dad(netns: NetNS, ifname: str, *, accept: bool) -> bool:
    """Turn duplicate address detection on or off for ``ifname`` (or ``all``, ``default``); True if changed.

    The kernel skips detection only where both ``all`` and the interface say
    0, so a sandbox sets ``all`` and ``default`` (inherited by links made in it
    later) to 0: its kernel-made link-local addresses are then usable at once,
    as the ones cnm adds with ``nodad`` are.
    """
    return _set_ipv6_conf(netns, ifname, "accept_dad", "1" if accept else "0")


def enable_ipv6_forwarding(netns: NetNS) -> bool:
    """Forward IPv6 between interfaces of ``netns`` (``all`` and ``default``), as Docker; True if changed.

    Docker's bridge driver sets both when a network has IPv6. With forwarding
    on, the kernel ignores router advertisements on interfaces whose
    ``accept_ra`` is 1 (2 keeps them): a host that takes its IPv6 default route
    from RAs may lose it, which is why this is done only for IPv6 networks.
    """
    changed = _set_ipv6_conf(netns, "default", "forwarding", "1")
    return _set_ipv6_conf(netns, "all", "forwarding", "1") or changed
