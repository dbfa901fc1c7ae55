"""Contract holes: requests that cannot work are refused up front, and best-effort work reports truthfully."""

from __future__ import annotations

import os
import sqlite3

import pytest

from cnm import Controller, IPAMConfig, errors
from cnm.kernel import links
from cnm.kernel.netns import NetNS
from cnm.testing.hosts import Outside, iptables_save

pytestmark = pytest.mark.kernel


def host_state(ctl: Controller) -> tuple[list[str], str, list[tuple[str, str]]]:
    with ctl.host_netns.netlink() as nl:
        names = sorted(link.name for link in links.list_links(nl))
    with sqlite3.connect(os.path.join(ctl.state_dir, "cnm.db")) as db:
        rows = sorted(db.execute("SELECT kind, key FROM records WHERE kind != 'port.cursor'"))
    return names, iptables_save(ctl.host_netns), rows


def test_subnet_over_the_hosts_uplink_is_refused_and_leaves_nothing(controller: Controller, outside: Outside) -> None:
    before = host_state(controller)
    with pytest.raises(errors.PoolOverlap, match=r"192\.0\.2\.0/25.*192\.0\.2\.1/24 on uplink0") as info:
        controller.create_network("cut", ipam=IPAMConfig(subnet="192.0.2.0/25"))
    assert "Pick a subnet outside it" in str(info.value)
    assert host_state(controller) == before
    with pytest.raises(errors.PoolOverlap, match="uplink0"):
        controller.create_network("wider", ipam=IPAMConfig(subnet="192.0.0.0/16"))
    assert host_state(controller) == before
    net = controller.create_network("fine", ipam=IPAMConfig(subnet="198.51.100.0/24"))
    assert str(net.subnet) == "198.51.100.0/24"
    net.delete()


def test_own_networks_are_named_by_the_pool_check_not_the_host_check(controller: Controller) -> None:
    net = controller.create_network("first", ipam=IPAMConfig(subnet="10.77.0.0/24"))
    with pytest.raises(errors.PoolOverlap, match="'first'"):
        controller.create_network("second", ipam=IPAMConfig(subnet="10.77.0.0/25"))
    net.delete()


@pytest.mark.parametrize(
    ("subnet", "match"),
    [
        ("2001:db8::/64", "IPv6 subnets are not supported yet"),
        ("10.78.0.0/31", r"/31.*use a /30"),
        ("10.78.0.1/32", r"/32.*use a /30"),
    ],
)
def test_subnets_that_cannot_work_are_refused_at_creation(
    controller: Controller, host_netns: NetNS, subnet: str, match: str
) -> None:
    before = host_state(controller)
    with pytest.raises(errors.InvalidConfig, match=match):
        controller.create_network("small", ipam=IPAMConfig(subnet=subnet))
    assert host_state(controller) == before


def test_a_slash_30_works(controller: Controller) -> None:
    net = controller.create_network("tiny", ipam=IPAMConfig(subnet="10.78.0.0/30"))
    sb = controller.create_sandbox("t1", network="tiny")
    assert str(net.gateway) == "10.78.0.1"
    assert str(net.endpoint("t1").ip) == "10.78.0.2"
    sb.delete()
    for ep in net.endpoints():
        ep.delete()
    net.delete()
