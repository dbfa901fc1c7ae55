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


def sandbox_links(ctl: Controller, name: str) -> list[str]:
    with NetNS(ctl.sandbox(name).netns_path).netlink() as nl:
        return sorted(link.name for link in links.list_links(nl))


def test_a_second_endpoint_of_one_network_cannot_join_the_same_sandbox(controller: Controller) -> None:
    net = controller.create_network("one", ipam=IPAMConfig(subnet="10.79.0.0/24"))
    sb = controller.create_sandbox("s1", network="one")
    second = net.create_endpoint("second")
    before = host_state(controller), sandbox_links(controller, "s1")
    with pytest.raises(errors.AlreadyConnected, match=r"'s1' is already connected to network 'one'.*'s1'"):
        second.join(sb)
    assert (host_state(controller), sandbox_links(controller, "s1")) == before
    assert second.sandbox is None
    other = controller.create_sandbox("s2")
    second.join(other)  # the endpoint itself is fine elsewhere
    other.delete()
    second.delete()
    sb.delete()
    for ep in net.endpoints():
        ep.delete()
    net.delete()


def fail_for(monkeypatch: pytest.MonkeyPatch, driver: object, method: str, endpoint_name: str) -> None:
    """Make ``driver.method`` raise a KernelError for one endpoint only."""
    real = getattr(driver, method)

    def failing(*args: object) -> object:
        if any(getattr(a, "name", None) == endpoint_name for a in args):
            raise errors.KernelError(f"injected {method} failure for {endpoint_name}")
        return real(*args)

    monkeypatch.setattr(driver, method, failing)


def test_reconcile_goes_on_past_a_failed_teardown_and_reports_it(
    controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = controller.create_network("rc", ipam=IPAMConfig(subnet="10.80.0.0/24"))
    a, b = controller.create_sandbox("a", network="rc"), controller.create_sandbox("b", network="rc")
    driver = controller.registry.get("bridge")
    fail_for(monkeypatch, driver, "leave", "a")
    fail_for(monkeypatch, driver, "leave", "b")
    for sb in (a, b):
        with pytest.raises(errors.TeardownIncomplete) as info:
            sb.delete()
        assert isinstance(info.value, errors.CNMError)
        assert isinstance(info.value, ExceptionGroup)
    monkeypatch.undo()
    fail_for(monkeypatch, driver, "leave", "a")  # b's repair now works, a's still fails

    report = controller.reconcile()
    assert "finished deleting sandbox b" in report.actions
    assert "finished deleting sandbox a" not in report.actions, "a failed repair is not reported as done"
    assert [e for e in report.errors if e.startswith("settle sandbox a:")], report
    assert [s.name for s in controller.sandboxes()] == ["a"]

    monkeypatch.undo()
    assert "finished deleting sandbox a" in controller.reconcile().actions
    assert controller.sandboxes() == []
    net.delete()


def test_a_failed_leave_reports_both_the_driver_and_the_unpublish_failure(
    controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cnm import PortBinding

    net = controller.create_network("lv", ipam=IPAMConfig(subnet="10.81.0.0/24"))
    sb = controller.create_sandbox("p1")
    ep = net.create_endpoint("p1", ports=[PortBinding(container_port=80)])
    ep.join(sb)
    driver = controller.registry.get("bridge")
    fail_for(monkeypatch, driver, "leave", "p1")
    fail_for(monkeypatch, driver, "unpublish_ports", "p1")
    with pytest.raises(errors.TeardownIncomplete) as info:
        ep.leave()
    messages = sorted(str(e) for e in info.value.exceptions)
    assert messages == ["injected leave failure for p1", "injected unpublish_ports failure for p1"]
    monkeypatch.undo()
    ep.leave()
    assert ep.sandbox is None
    ep.delete()
    sb.delete()
    net.delete()
