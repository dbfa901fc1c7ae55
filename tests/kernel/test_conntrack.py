"""cnm.kernel.conntrack.flush_udp_flows deletes exactly the UDP entries of the keys it is given.

The entries are made with conntrack-tools (``conntrack -I``) in a throwaway
namespace and listed with ``conntrack -L``: another program's view of the table.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Callable

import pytest

from cnm.kernel.conntrack import flush_udp_flows
from cnm.kernel.netns import NetNS

pytestmark = pytest.mark.kernel


def conntrack(ns: NetNS, *args: str) -> str:
    result = subprocess.run(
        ["nsenter", f"--net={ns.path}", "--", "conntrack", *args], capture_output=True, text=True, check=True
    )
    return result.stdout


def insert(ns: NetNS, proto: str, dst: str, dport: int) -> None:
    extra = ["--state", "ESTABLISHED"] if proto == "tcp" else []
    conntrack(
        ns,
        "-I",
        "-p",
        proto,
        "-s",
        "192.0.2.2",
        "-d",
        dst,
        "--sport",
        "40000",
        "--dport",
        str(dport),
        "-t",
        "60",
        *extra,
    )


def entries(ns: NetNS) -> set[tuple[str, str, str]]:
    found = set()
    for line in conntrack(ns, "-L").splitlines():
        fields: dict[str, str] = {}
        for name, _, value in (f.partition("=") for f in line.split() if "=" in f):
            fields.setdefault(name, value)  # the original direction comes first
        found.add((line.split()[0], fields["dst"], fields["dport"]))
    return found


def test_only_the_given_udp_ports_and_addresses_are_flushed(netns_factory: Callable[[str], NetNS]) -> None:
    ns = netns_factory("ct")
    for proto, dst, dport in [
        ("udp", "10.0.0.1", 53),
        ("udp", "10.0.0.2", 53),
        ("udp", "10.0.0.1", 54),
        ("udp", "10.0.0.1", 55),
        ("tcp", "10.0.0.1", 53),
    ]:
        insert(ns, proto, dst, dport)
    # One host address: the same port on another address keeps its flow.
    assert flush_udp_flows(ns, [(ipaddress.IPv4Address("10.0.0.1"), 53)]) == 1
    assert entries(ns) == {
        ("udp", "10.0.0.2", "53"),
        ("udp", "10.0.0.1", "54"),
        ("udp", "10.0.0.1", "55"),
        ("tcp", "10.0.0.1", "53"),
    }
    # Any address (a binding without host_ip); TCP connections are never touched.
    assert flush_udp_flows(ns, [(None, 53), (None, 54)]) == 2
    assert entries(ns) == {("udp", "10.0.0.1", "55"), ("tcp", "10.0.0.1", "53")}
    assert flush_udp_flows(ns, [(None, 53)]) == 0
    assert flush_udp_flows(ns, []) == 0
