"""The pieces of a throwaway test world: namespaces, an outside host, processes ended by PID.

Shared by the pytest fixtures, the conformance kit and the demo, so that all
three build the same world the same way and clean it up the same way.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import attrs

from cnm.kernel import addresses, links, netns
from cnm.kernel.netns import NetNS

__all__ = [
    "HOST_UPLINK_ADDRESS",
    "OUTSIDE_ADDRESS",
    "TEARDOWN_GRACE",
    "Outside",
    "firewall_rules",
    "flush_firewall",
    "iptables_save",
    "link_outside",
    "nft_state",
    "settled",
    "stop_process",
    "throwaway_namespaces",
    "unmount_sandboxes",
]

OUTSIDE_ADDRESS = ipaddress.IPv4Interface("192.0.2.2/24")
"""The outside host's address on its link to the host namespace."""
HOST_UPLINK_ADDRESS = ipaddress.IPv4Interface("192.0.2.1/24")
"""The host namespace's address on that link (its ``uplink0``)."""

TEARDOWN_GRACE = 2.0
"""Seconds the kernel may take to destroy an unmounted namespace and the veths whose other end
was inside. It does so asynchronously, usually within 50 ms of the last holder letting go."""

_T = TypeVar("_T")


def settled(probe: Callable[[], _T], done: Callable[[_T], bool], timeout: float = TEARDOWN_GRACE) -> _T:
    """``probe()``'s value once ``done`` accepts it, or its last value after ``timeout`` seconds.

    For checks that follow a sandbox delete: the delete returns when the
    sandbox is cut off, and the kernel removes what went with its namespace
    moments later.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


@attrs.frozen
class Outside:
    """An "outside host": a namespace linked to the host namespace by a veth.

    Attributes:
        netns: the outside namespace.
        address: its address on the link (192.0.2.2).
        host_address: the host namespace's address on the link (192.0.2.1).
    """

    netns: NetNS
    address: ipaddress.IPv4Address
    host_address: ipaddress.IPv4Address

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command in the outside namespace."""
        return subprocess.run(["nsenter", f"--net={self.netns.path}", "--", *argv], **kwargs)  # noqa: PLW1510

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command in the outside namespace."""
        return subprocess.Popen(["nsenter", f"--net={self.netns.path}", "--", *argv], **kwargs)


@contextlib.contextmanager
def throwaway_namespaces(prefix: str) -> Iterator[Callable[[str], NetNS]]:
    """Yield ``make(label)``, which creates ``/run/netns/<prefix><random>-<label>`` with loopback up.

    Every namespace made is removed on exit, whatever happened.
    """
    made: list[NetNS] = []
    stem = prefix + secrets.token_hex(3)

    def make(label: str) -> NetNS:
        ns = netns.create(os.path.join(netns.NETNS_RUN_DIR, f"{stem}-{label}"))
        made.append(ns)
        with ns.netlink() as nl:
            links.set_link(nl, "lo", up=True)
        return ns

    try:
        yield make
    finally:
        for ns in reversed(made):
            netns.remove(ns.path)


def link_outside(host: NetNS, outside: NetNS) -> Outside:
    """Join ``outside`` to ``host`` with a veth: ``uplink0`` (192.0.2.1) in the host, eth0 (192.0.2.2) outside."""
    with host.netlink() as nl:
        links.add_veth(nl, "uplink0", "eth0", outside)
        addresses.add_address(nl, "uplink0", HOST_UPLINK_ADDRESS)
    with outside.netlink() as nl:
        addresses.add_address(nl, "eth0", OUTSIDE_ADDRESS)
        links.set_link(nl, "eth0", up=True)
    return Outside(outside, OUTSIDE_ADDRESS.ip, HOST_UPLINK_ADDRESS.ip)


def unmount_sandboxes(state_dir: str) -> None:
    """Unmount every sandbox namespace a controller left in ``state_dir``."""
    directory = os.path.join(state_dir, "netns")
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            netns.remove(os.path.join(directory, name))


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """End one process by its PID (terminate, then kill if it lingers) and close its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def nft_state(ns: NetNS) -> str:
    """The namespace's nftables ruleset as sorted JSON lines: no handles, elements in order.

    Two rulesets that differ only in the order things were added (an nftables
    listing follows creation order and hash order) give the same text. Runs
    the ``nft`` binary, as only tests may.
    """
    out = subprocess.run(
        ["nsenter", f"--net={ns.path}", "--", "nft", "-j", "list", "ruleset"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = []
    for item in json.loads(out or '{"nftables": []}')["nftables"]:
        for body in item.values():
            if isinstance(body, dict):
                body.pop("handle", None)
                if isinstance(body.get("elem"), list):
                    body["elem"] = sorted(body["elem"], key=lambda e: json.dumps(e, sort_keys=True))
        if "metainfo" not in item:
            lines.append(json.dumps(item, sort_keys=True))
    return "".join(line + "\n" for line in sorted(lines))


def iptables_save(ns: NetNS) -> str:
    """The namespace's legacy iptables rules (``iptables-legacy-save``), without comments and counters."""
    out = subprocess.run(
        ["nsenter", f"--net={ns.path}", "--", "iptables-legacy-save"], capture_output=True, text=True, check=True
    ).stdout
    return "".join(re.sub(r" \[\d+:\d+\]$", "", line) + "\n" for line in out.splitlines() if not line.startswith("#"))


def firewall_rules(ns: NetNS, backend: str) -> str:
    """The rules firewall ``backend`` ("iptables" or "nftables") keeps in ``ns``, as comparable text."""
    return nft_state(ns) if backend == "nftables" else iptables_save(ns)


def flush_firewall(ns: NetNS, backend: str) -> None:
    """Remove every rule of ``backend``'s kind from ``ns``, as someone's ``iptables -F`` or ``nft flush ruleset``."""
    argvs = (
        [["nft", "flush", "ruleset"]]
        if backend == "nftables"
        else [["iptables-legacy", "-t", table, "-F"] for table in ("filter", "nat")]
    )
    for argv in argvs:
        subprocess.run(["nsenter", f"--net={ns.path}", "--", *argv], check=True)
