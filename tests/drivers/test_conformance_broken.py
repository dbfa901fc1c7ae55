"""The kit catches broken drivers, and says which rule broke and how to fix it.

:class:`VethDriver` is a small correct driver (a bridge per network, a veth per
endpoint) that passes the rules the broken ones fail; each broken driver
changes one thing: it leaks a veth at leave, its delete_network is not
idempotent, or it does not undo a half-done join.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable
from typing import ClassVar

import pytest

from cnm.driverapi import (
    Capabilities,
    Driver,
    DriverContext,
    EndpointInfo,
    JoinResult,
    NetworkInfo,
    NetworkRequest,
    SandboxInfo,
)
from cnm.errors import InvalidConfig, KernelError
from cnm.kernel import addresses, links
from cnm.testing.conformance import ConformanceFailure, Report

pytestmark = pytest.mark.kernel

CheckDriver = Callable[..., Report]


class VethDriver:
    """A bridge ``cnk-<id>`` per network with the gateway on it; a veth ``cnkv<id>`` per endpoint."""

    name: ClassVar[str] = "veth-test"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, context: DriverContext) -> None:
        self.host = context.host_netns

    @staticmethod
    def bridge(network: NetworkInfo) -> str:
        return "cnk-" + network.id[:11]

    @staticmethod
    def veth(endpoint: EndpointInfo) -> str:
        return "cnkv" + endpoint.id[:11]

    def validate_network(self, network: NetworkRequest) -> dict[str, object]:
        if network.options:
            raise InvalidConfig(f"veth-test takes no options; drop {', '.join(sorted(network.options))}")
        return {}

    def create_network(self, network: NetworkInfo) -> None:
        with self.host.netlink() as nl:
            links.ensure_bridge(nl, self.bridge(network), up=True)
            gateway = network.ipv4[0].gateway
            if gateway is not None:
                addresses.add_address(nl, self.bridge(network), gateway)

    def delete_network(self, network: NetworkInfo) -> None:
        with self.host.netlink() as nl:
            links.delete_link(nl, self.bridge(network))

    def create_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Nothing until join."""

    def delete_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        with self.host.netlink() as nl:
            links.delete_link(nl, self.veth(endpoint))

    def join(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo, ifname: str) -> JoinResult:
        with self.host.netlink() as nl:
            links.add_veth(nl, self.veth(endpoint), ifname, sandbox.netns, master=self.bridge(network))
        gateway = network.ipv4[0].gateway
        return JoinResult(interface=ifname, gateway=None if gateway is None else ipaddress.IPv4Address(gateway.ip))

    def leave(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo) -> None:
        with self.host.netlink() as nl:
            links.delete_link(nl, self.veth(endpoint))


class LeakyVethDriver(VethDriver):
    """Forgets the veth at leave (and so does delete_endpoint)."""

    def leave(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo) -> None:
        """Removes nothing: the veth stays."""

    def delete_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Removes nothing either."""


class StrictDeleteDriver(VethDriver):
    """delete_network raises when the bridge is already gone."""

    def delete_network(self, network: NetworkInfo) -> None:
        with self.host.netlink() as nl:
            if not links.delete_link(nl, self.bridge(network)):
                raise KernelError(f"bridge {self.bridge(network)} does not exist", errno.ENODEV)


class HalfJoinDriver(VethDriver):
    """Joins in two steps (a per-endpoint bridge, then the veth) and does not undo the first when the second fails."""

    @staticmethod
    def port_bridge(endpoint: EndpointInfo) -> str:
        return "cnkq" + endpoint.id[:11]

    def join(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo, ifname: str) -> JoinResult:
        with self.host.netlink() as nl:
            links.ensure_bridge(nl, self.port_bridge(endpoint), up=True)
            links.add_veth(nl, self.veth(endpoint), ifname, sandbox.netns, master=self.port_bridge(endpoint))
        return JoinResult(interface=ifname)

    def leave(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo) -> None:
        with self.host.netlink() as nl:
            links.delete_link(nl, self.veth(endpoint))
            links.delete_link(nl, self.port_bridge(endpoint))


_: type[Driver] = VethDriver


def test_a_correct_small_driver_passes(driver_conformance: CheckDriver) -> None:
    report = driver_conformance(VethDriver, rules=["join-leave", "repeat-delete", "rollback-join", "connectivity"])
    assert report.passed
    assert [r.rule for r in report.results] == ["join-leave", "repeat-delete", "rollback-join", "connectivity"]


def test_a_driver_that_leaks_a_veth_fails_join_leave_and_no_leaks(driver_conformance: CheckDriver) -> None:
    with pytest.raises(ConformanceFailure) as caught:
        driver_conformance(LeakyVethDriver, rules=["join-leave", "no-leaks"])
    assert caught.value.broken_rules() == ["join-leave", "no-leaks"]
    join_leave, no_leaks = (str(f) for f in caught.value.failures)
    assert "driver 'veth-test' breaks rule 'join-leave'" in join_leave
    assert "after leave, what join made is still there" in join_leave
    assert "in the sandbox: link eth0 (veth) left behind" in join_leave
    assert "in the host namespace: link cnkv" in join_leave
    assert "(veth) left behind" in join_leave
    assert "how to fix: make leave delete every link join created" in join_leave
    assert "breaks rule 'no-leaks'" in no_leaks
    assert "after two networks, three endpoints and three sandboxes were deleted" in no_leaks
    assert "link cnkv" in no_leaks


def test_a_driver_whose_delete_is_not_idempotent_fails_repeat_delete(driver_conformance: CheckDriver) -> None:
    with pytest.raises(ConformanceFailure) as caught:
        driver_conformance(StrictDeleteDriver, rules=["network-lifecycle", "repeat-delete"])
    assert caught.value.broken_rules() == ["repeat-delete"]
    message = str(caught.value.failures[0])
    assert "breaks rule 'repeat-delete'" in message
    assert "delete_network repeated after a successful delete raised KernelError: bridge cnk-" in message
    assert "how to fix: treat 'not found' as success" in message


def test_a_driver_that_does_not_undo_a_half_done_join_fails_rollback_join(driver_conformance: CheckDriver) -> None:
    with pytest.raises(ConformanceFailure) as caught:
        driver_conformance(HalfJoinDriver, rules=["join-leave", "rollback-join"])
    assert caught.value.broken_rules() == ["rollback-join"]
    message = str(caught.value.failures[0])
    assert "breaks rule 'rollback-join'" in message
    assert "with eth0 already taken in the sandbox, the failed join left in the host namespace: link cnkq" in message
    assert "(bridge) left behind" in message
    assert "how to fix: undo the steps join already did before re-raising" in message


def test_the_kit_refuses_unknown_rules() -> None:
    from cnm.testing.conformance import check_driver

    with pytest.raises(InvalidConfig, match="unknown conformance rule"):
        check_driver(VethDriver, rules=["no-such-rule"])
