"""The host driver (network ``host``): the sandbox uses the host's own network stack.

No interface, address or rule is made: a sandbox in host mode runs in the
controller's host namespace itself.
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

__all__ = ["HostDriver"]


class HostDriver:
    """Endpoints on the host network share the host namespace; there is nothing to build."""

    name: ClassVar[str] = "host"
    capabilities: ClassVar[Capabilities] = Capabilities(needs_address=False, needs_sandbox_netns=False)

    def __init__(self, context: DriverContext) -> None:
        self._context = context

    def validate_network(self, network: NetworkRequest) -> dict[str, object]:
        """Accept no options."""
        if network.options:
            raise InvalidConfig(f"the host driver takes no options; drop {', '.join(sorted(network.options))}")
        return {}

    def create_network(self, network: NetworkInfo) -> None:
        """Nothing to create: the host's stack exists."""

    def delete_network(self, network: NetworkInfo) -> None:
        """Nothing to delete."""

    def create_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Nothing to prepare."""

    def delete_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Nothing to remove."""

    def join(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo, ifname: str) -> JoinResult:
        """Make no interface: the sandbox already sees the host's."""
        return JoinResult()

    def leave(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo) -> None:
        """Nothing to undo."""


_: type[Driver] = HostDriver
