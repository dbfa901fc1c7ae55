"""IPv6 kernel helpers against the real kernel, in throwaway namespaces: addresses usable at once
(no DAD wait), link-local addresses left to the kernel, default routes through a forwarding host."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from cnm.errors import KernelError
from cnm.kernel import addresses, links, routes, sysctl
from cnm.kernel.netns import NetNS
from cnm.testing.traffic import ping

pytestmark = pytest.mark.kernel

iface = ipaddress.ip_interface

SUBNET = ipaddress.IPv6Network("fd00:c0de:1::/64")
GATEWAY = iface("fd00:c0de:1::1/64")
OUTSIDE_LINK = ipaddress.IPv6Network("2001:db8:64::/64")


@attrs.frozen
class InNetns:
    """Runs commands in one namespace (a cnm.testing.traffic Runner)."""

    netns: NetNS

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run to completion inside the namespace."""
        return subprocess.run(["nsenter", f"--net={self.netns.path}", "--", *argv], **kwargs)  # noqa: PLW1510

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start inside the namespace."""
        return subprocess.Popen(["nsenter", f"--net={self.netns.path}", "--", *argv], **kwargs)


def _prepare_sandbox(ns: NetNS) -> None:
    # What a sandbox of an IPv6 network gets, as Docker does it: no DAD for anything made in it.
    sysctl.set_accept_dad(ns, "all", accept=False)
    sysctl.set_accept_dad(ns, "default", accept=False)


def _join(host: NetNS, bridge: str, sandbox: NetNS, host_end: str, address: ipaddress.IPv6Interface) -> None:
    """A sandbox interface eth0 on ``bridge`` with ``address``, configured as a sandbox's would be."""
    with host.netlink() as nl:
        links.add_veth(nl, host_end, "eth0", sandbox, master=bridge)
    sysctl.set_ipv6(sandbox, "eth0", enabled=True)
    with sandbox.netlink() as nl:
        addresses.add_address(nl, "eth0", address, nodad=True)
        links.set_link(nl, "eth0", up=True)


def _bridge(host: NetNS, name: str = "br6") -> None:
    with host.netlink() as nl:
        links.ensure_bridge(nl, name)
    sysctl.set_ipv6(host, name, enabled=True)
    with host.netlink() as nl:
        addresses.add_address(nl, name, GATEWAY, nodad=True)


def test_nodad_addresses_are_usable_at_once_over_a_veth(netns_factory: Callable[[str], NetNS]) -> None:
    a, b = netns_factory("a6"), netns_factory("b6")
    with a.netlink() as nl:
        links.add_veth(nl, "v6a", "v6b", b)
    for ns, name, address in ((a, "v6a", "fd00:c0de:9::1/64"), (b, "v6b", "fd00:c0de:9::2/64")):
        sysctl.set_ipv6(ns, name, enabled=True)
        with ns.netlink() as nl:
            addresses.add_address(nl, name, iface(address), nodad=True)
            addresses.add_address(nl, name, iface(address), nodad=True)  # idempotent
            links.set_link(nl, name, up=True)
            assert iface(address) in addresses.list_addresses(nl, name)
            assert iface(address) not in addresses.tentative_addresses(nl, name)
    # No sleep, no waiting for DAD: the first echoes already get answers, both ways.
    assert ping(InNetns(a), "fd00:c0de:9::2")
    assert ping(InNetns(b), "fd00:c0de:9::1")


def test_without_nodad_an_address_stays_tentative_and_unusable(netns_factory: Callable[[str], NetNS]) -> None:
    # The contrast that makes the test above mean something: on a link that is not up yet, DAD has
    # not even started, so the plain address is tentative while the NODAD one is not, and the
    # tentative one cannot be bound.
    ns = netns_factory("t6")
    with ns.netlink() as nl:
        links.ensure_bridge(nl, "brt", up=False)
    sysctl.set_ipv6(ns, "brt", enabled=True)
    with ns.netlink() as nl:
        addresses.add_address(nl, "brt", iface("fd00:c0de:7::1/64"))
        addresses.add_address(nl, "brt", iface("fd00:c0de:7::2/64"), nodad=True)
        assert addresses.tentative_addresses(nl, "brt") == [iface("fd00:c0de:7::1/64")]
        assert addresses.tentative_addresses(nl) == [iface("fd00:c0de:7::1/64")]

    def bind(address: str) -> str:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            try:
                s.bind((address, 0))
            except OSError as exc:
                return str(exc.errno)
            return "bound"

    assert ns.in_thread(lambda: bind("fd00:c0de:7::2")) == "bound"
    assert ns.in_thread(lambda: bind("fd00:c0de:7::1")) == str(99)  # EADDRNOTAVAIL


def test_sandboxes_on_a_bridge_reach_each_other_and_the_gateway_at_once(
    host_netns: NetNS, netns_factory: Callable[[str], NetNS]
) -> None:
    s1, s2 = netns_factory("s1"), netns_factory("s2")
    _bridge(host_netns)
    with host_netns.netlink() as nl:
        # Before any port joins, the bridge has no carrier: an address added without NODAD would stay
        # tentative until one does and DAD ends; the gateway is usable at once.
        assert GATEWAY not in addresses.tentative_addresses(nl, "br6")
    for ns in (s1, s2):
        _prepare_sandbox(ns)
    _join(host_netns, "br6", s1, "vh1", iface("fd00:c0de:1::2/64"))
    _join(host_netns, "br6", s2, "vh2", iface("fd00:c0de:1::3/64"))
    assert ping(InNetns(s1), "fd00:c0de:1::3")
    assert ping(InNetns(s2), "fd00:c0de:1::2")
    assert ping(InNetns(s1), str(GATEWAY.ip))
    for ns in (s1, s2):
        with ns.netlink() as nl:
            found = addresses.list_addresses(nl, "eth0")
            # The kernel made the link-local address itself, and with accept_dad=0 it is usable at once too.
            link_local = [a for a in found if a.version == 6 and a.ip.is_link_local]
            assert len(link_local) == 1
            assert addresses.tentative_addresses(nl) == []


def test_an_ipv6_default_route_reaches_an_outside_namespace_through_a_forwarding_host(
    host_netns: NetNS, netns_factory: Callable[[str], NetNS]
) -> None:
    sandbox, outside = netns_factory("sb"), netns_factory("out")
    _bridge(host_netns)
    _prepare_sandbox(sandbox)
    _join(host_netns, "br6", sandbox, "vh1", iface("fd00:c0de:1::2/64"))
    host_uplink, outside_address = iface("2001:db8:64::1/64"), iface("2001:db8:64::2/64")
    with host_netns.netlink() as nl:
        links.add_veth(nl, "up6", "eth0", outside)
    sysctl.set_ipv6(host_netns, "up6", enabled=True)
    sysctl.set_ipv6(outside, "eth0", enabled=True)
    with host_netns.netlink() as nl:
        addresses.add_address(nl, "up6", host_uplink, nodad=True)
    with outside.netlink() as nl:
        addresses.add_address(nl, "eth0", outside_address, nodad=True)
        links.set_link(nl, "eth0", up=True)
        # No NAT66 here (that is the firewall's part): the outside host routes the ULA subnet back.
        routes.add_route(nl, SUBNET, gateway=host_uplink.ip, ifname="eth0")
    with sandbox.netlink() as nl:
        assert routes.default_route(nl, 6) is None
        routes.replace_default_route(nl, GATEWAY.ip, "eth0")
        routes.replace_default_route(nl, GATEWAY.ip, "eth0")  # idempotent
        assert routes.default_route(nl, 6) == routes.Route(
            destination=ipaddress.IPv6Network("::/0"), gateway=GATEWAY.ip, ifname="eth0"
        )
        assert routes.default_route(nl, 4) is None

    # Forwarding off: the host does not pass the packets on.
    sysctl.set_sysctl(host_netns, "net/ipv6/conf/all/forwarding", "0")
    assert not ping(InNetns(sandbox), str(outside_address.ip), count=2)
    assert sysctl.enable_ipv6_forwarding(host_netns)
    assert not sysctl.enable_ipv6_forwarding(host_netns)  # already so
    assert sysctl.get_sysctl(host_netns, "net.ipv6.conf.all.forwarding") == "1"
    assert sysctl.get_sysctl(host_netns, "net.ipv6.conf.default.forwarding") == "1"
    assert ping(InNetns(sandbox), str(outside_address.ip))
    assert ping(InNetns(outside), "fd00:c0de:1::2")

    with sandbox.netlink() as nl:
        assert routes.delete_route(nl, ipaddress.IPv6Network("::/0"))
        assert not routes.delete_route(nl, ipaddress.IPv6Network("::/0"))
        assert routes.default_route(nl, 6) is None


def test_ipv6_sysctls_are_idempotent_and_errors_say_what_to_do(netns_factory: Callable[[str], NetNS]) -> None:
    ns = netns_factory("sy")
    with ns.netlink() as nl:
        links.ensure_bridge(nl, "br.dot", up=False)  # a dotted name: the key is split on "/" only
    assert sysctl.set_ipv6(ns, "br.dot", enabled=False)
    assert sysctl.get_sysctl(ns, "net/ipv6/conf/br.dot/disable_ipv6") == "1"
    assert sysctl.set_ipv6(ns, "br.dot", enabled=True)
    assert not sysctl.set_ipv6(ns, "br.dot", enabled=True)
    assert sysctl.set_accept_dad(ns, "br.dot", accept=False)
    assert sysctl.get_sysctl(ns, "net/ipv6/conf/br.dot/accept_dad") == "0"
    with pytest.raises(KernelError, match=r"no nosuch0 there, or IPv6 is disabled in this kernel"):
        sysctl.set_ipv6(ns, "nosuch0", enabled=True)
