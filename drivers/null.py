"""The null driver (network ``none``): the sandbox keeps loopback only.

It is also the smallest complete driver, and the example to start from when
writing one: every verb is present, each does nothing, and each is idempotent.
"""

from __future__ import annotations

from typing import ClassVar

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
from cnm.errors import InvalidConfig

__all__ = ["NullDriver"]


class NullDriver:
    """Endpoints on a null network give their sandbox no interface and no address."""

    name: ClassVar[str] = "null"
    capabilities: ClassVar[Capabilities] = Capabilities(needs_address=False, exclusive=True)

    def __init__(self, context: DriverContext) -> None:
        self._context = context

    def validate_network(self, network: NetworkRequest) -> dict[str, object]:
        """Accept no options."""
        if network.options:
            raise InvalidConfig(f"the null driver takes no options; drop {', '.join(sorted(network.options))}")
        return {}

    def create_network(self, network: NetworkInfo) -> None:
        """Nothing to create."""

    def delete_network(self, network: NetworkInfo) -> None:
        """Nothing to delete."""

    def create_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Nothing to prepare."""

    def delete_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Nothing to remove."""

    def join(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo, ifname: str) -> JoinResult:
        """Make no interface: the sandbox keeps loopback only."""
        return JoinResult()

    def leave(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo) -> None:
        """Nothing to undo."""


_: type[Driver] = NullDriver
