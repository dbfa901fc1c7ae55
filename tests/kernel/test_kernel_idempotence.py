"""The kernel helpers' "already so" answers, against a real kernel in a throwaway namespace.

Each ``ensure``/``add`` tolerates what exists and each ``delete`` what is gone,
through :func:`cnm.kernel.errors.map_netlink_errors`'s ``ok``; any other errno
is a KernelError that names the operation.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable

import pytest

from cnm.errors import KernelError
from cnm.kernel.addresses import add_address, delete_address, list_addresses
from cnm.kernel.links import add_veth, delete_link, ensure_bridge, get_link, is_up, link_index, set_down_if_exists
from cnm.kernel.netns import NetNS
from cnm.kernel.routes import add_route, delete_route, list_routes

pytestmark = pytest.mark.kernel


def test_twice_is_once_and_gone_is_fine(netns_factory: Callable[[str], NetNS]) -> None:
    ns = netns_factory("k")
    address = ipaddress.ip_interface("198.51.100.1/24")
    destination = ipaddress.ip_network("203.0.113.0/24")
    gateway = ipaddress.ip_address("198.51.100.254")
    with ns.netlink() as nl:
        assert get_link(nl, "kbr0") is None
        assert link_index(nl, "kbr0") is None
        assert is_up(nl, "kbr0") is None
        ensure_bridge(nl, "kbr0")
        ensure_bridge(nl, "kbr0")
        add_address(nl, "kbr0", address)
        add_address(nl, "kbr0", address)
        assert list_addresses(nl, "kbr0").count(address) == 1
        add_route(nl, destination, gateway=gateway, ifname="kbr0")
        add_route(nl, destination, gateway=gateway, ifname="kbr0")
        assert [r.destination for r in list_routes(nl)].count(destination) == 1

        assert delete_route(nl, destination) is True
        assert delete_route(nl, destination) is False
        assert delete_address(nl, "kbr0", address) is True
        assert delete_address(nl, "kbr0", address) is False
        assert set_down_if_exists(nl, "kbr0") is True
        assert delete_link(nl, "kbr0") is True
        assert delete_link(nl, "kbr0") is False
        assert set_down_if_exists(nl, "kbr0") is False
        assert delete_address(nl, "kbr0", address) is False


def test_an_untolerated_errno_names_the_operation(netns_factory: Callable[[str], NetNS]) -> None:
    ns = netns_factory("k")
    with ns.netlink() as nl:
        ensure_bridge(nl, "kbr1", up=False)
        # A gateway on no connected subnet: the kernel answers ENETUNREACH, which nothing tolerates.
        with pytest.raises(KernelError, match=r"add route 203\.0\.113\.0/24 via 192\.0\.2\.9 dev kbr1") as info:
            add_route(
                nl,
                ipaddress.ip_network("203.0.113.0/24"),
                gateway=ipaddress.ip_address("192.0.2.9"),
                ifname="kbr1",
            )
        assert info.value.errno == errno.ENETUNREACH
        delete_link(nl, "kbr1")


def test_a_bridge_keeps_its_address_when_its_lowest_port_goes(netns_factory: Callable[[str], NetNS]) -> None:
    # Left to the kernel, a bridge's address is its lowest port's, and changes when that port is
    # deleted: sandboxes' neighbour entries for the gateway would then go stale (Docker sets one too).
    host, sandbox = netns_factory("kh"), netns_factory("ks")
    with host.netlink() as nl:
        bridge = ensure_bridge(nl, "kbr2")
        first = bridge.mac
        for index, mac in enumerate(["02:00:00:00:00:01", "02:00:00:00:00:02"]):
            add_veth(nl, f"kv{index}", f"kp{index}", sandbox, peer_mac=None, master="kbr2")
            nl.ipr.link("set", index=link_index(nl, f"kv{index}"), address=mac)
        assert get_link(nl, "kbr2").mac == first  # type: ignore[union-attr]
        delete_link(nl, "kv0")
        assert get_link(nl, "kbr2").mac == first  # type: ignore[union-attr]
        delete_link(nl, "kbr2")
        delete_link(nl, "kv1")
