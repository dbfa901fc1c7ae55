"""A driver that only records, for the plugin's unit tests (pure logic: no kernel)."""

from __future__ import annotations

import ipaddress
from typing import ClassVar

from cnm.driverapi import (
    Capabilities,
    DriverContext,
    EndpointInfo,
    JoinResult,
    NetworkInfo,
    NetworkRequest,
    SandboxInfo,
    StaticRoute,
)
from cnm.errors import AlreadyExists, InvalidConfig


class NoPortsDriver:
    """Keeps the "kernel" as sets: networks made, interfaces made, ports published.

    It refuses the option ``dk.fail`` as the captured test plugin did, and
    gives the static route the captured plugin gave (198.51.100.0/24 via the gateway).
    """

    name: ClassVar[str] = "fake"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, context: DriverContext | None = None) -> None:
        self.calls: list[tuple[str, object]] = []
        self.networks: set[str] = set()
        self.interfaces: dict[str, str] = {}  # ifname -> endpoint id
        self.published: dict[str, tuple[object, ...]] = {}
        self.fail_on: str | None = None

    def _call(self, verb: str, arg: object) -> None:
        self.calls.append((verb, arg))
        if self.fail_on == verb:
            raise InvalidConfig(f"fake: {verb} refused for the test")

    def verbs(self) -> list[str]:
        return [verb for verb, _ in self.calls]

    def validate_network(self, network: NetworkRequest) -> dict[str, object]:
        self._call("validate_network", network)
        if "dk.fail" in network.options:
            raise InvalidConfig("unknown fake option 'dk.fail'; known options: dk.opt")
        return dict(network.options)

    def create_network(self, network: NetworkInfo) -> None:
        self._call("create_network", network)
        if network.id in self.networks:
            raise AlreadyExists(f"network {network.id} exists")
        self.networks.add(network.id)

    def delete_network(self, network: NetworkInfo) -> None:
        self._call("delete_network", network)
        self.networks.discard(network.id)

    def create_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        self._call("create_endpoint", endpoint)

    def delete_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        self._call("delete_endpoint", endpoint)

    def join(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo, ifname: str) -> JoinResult:
        self._call("join", (endpoint, sandbox, ifname))
        if ifname in self.interfaces:
            raise AlreadyExists(f"interface {ifname} exists")
        self.interfaces[ifname] = endpoint.id
        gateway = network.ipv4[0].gateway
        assert gateway is not None
        return JoinResult(
            interface=ifname,
            gateway=ipaddress.IPv4Address(gateway.ip),
            routes=(
                StaticRoute(
                    destination=ipaddress.IPv4Network("198.51.100.0/24"), next_hop=ipaddress.IPv4Address(gateway.ip)
                ),
            ),
        )

    def leave(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo) -> None:
        self._call("leave", endpoint)
        for name, owner in list(self.interfaces.items()):
            if owner == endpoint.id:
                del self.interfaces[name]


class FakeDriver(NoPortsDriver):
    """The same, able to publish ports."""

    def publish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        self._call("publish_ports", endpoint)
        self.published[endpoint.id] = endpoint.ports

    def unpublish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        self._call("unpublish_ports", endpoint)
        self.published.pop(endpoint.id, None)
