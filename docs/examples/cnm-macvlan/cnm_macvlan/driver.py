"""The macvlan driver: each endpoint is a macvlan link on a host interface, born inside its sandbox.

Sandboxes on a macvlan network sit directly on the parent interface's LAN
with their own MAC and IP address: no bridge, no NAT, no host-side link per
endpoint. As with Docker's macvlan driver, the host itself cannot reach the
sandboxes through the parent (the kernel does not pass traffic between a
macvlan link and its parent).

Written only against cnm's public driver API (cnm.driverapi, cnm.errors,
cnm.kernel), exactly as cnm's built-in drivers are.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Mapping
from typing import ClassVar

import attrs

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
from cnm.kernel import links

__all__ = ["MacvlanDriver", "MacvlanOptions"]

log = logging.getLogger(__name__)

MODES = ("bridge", "private", "vepa")
"""The macvlan modes that let a parent carry many endpoints (passthru allows only one)."""


def _mode(value: object) -> str:
    if value not in MODES:
        raise InvalidConfig(f"macvlan mode {value!r} is not supported; use one of {', '.join(MODES)}")
    return str(value)


def _mtu(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise InvalidConfig(f"macvlan mtu {value!r} is not a number; give e.g. 1500")
    mtu = int(value)
    if not 68 <= mtu <= 65535:
        raise InvalidConfig(f"macvlan mtu {mtu} is out of range; use 68-65535")
    return mtu


@attrs.frozen(kw_only=True)
class MacvlanOptions:
    """A macvlan network's options, validated.

    Attributes:
        parent: the host interface the endpoints' macvlan links sit on (required).
        mode: ``bridge`` (endpoints on one parent reach each other; the default),
            ``private`` or ``vepa``.
        mtu: the endpoints' MTU; the parent's by default.
    """

    parent: str = attrs.field(validator=lambda _, __, value: links.check_ifname(value, "macvlan parent"))
    mode: str = attrs.field(default="bridge", converter=_mode)
    mtu: int | None = attrs.field(default=None, converter=_mtu)

    KNOWN: ClassVar[tuple[str, ...]] = ("parent", "mode", "mtu")

    @classmethod
    def parse(cls, options: Mapping[str, object]) -> MacvlanOptions:
        """Parse user options; refuse unknown ones and a missing parent."""
        unknown = sorted(set(options) - set(cls.KNOWN))
        if unknown:
            raise InvalidConfig(
                f"unknown macvlan option(s) {', '.join(map(repr, unknown))}; known options: {', '.join(cls.KNOWN)}"
            )
        parent = options.get("parent")
        if not isinstance(parent, str) or not parent:
            raise InvalidConfig("the macvlan driver needs a parent: options={'parent': 'eth0'} (a host interface)")
        return cls(parent=parent, mode=options.get("mode", "bridge"), mtu=options.get("mtu"))

    def to_json(self) -> dict[str, object]:
        """The options as stored with the network."""
        return {"parent": self.parent, "mode": self.mode, "mtu": self.mtu}


def endpoint_mac(endpoint: EndpointInfo) -> str:
    """The endpoint's MAC: the controller's, or a locally administered one derived from its id.

    leave finds the endpoint's link by this MAC, so it needs no state of its own.
    """
    if endpoint.mac is not None:
        return endpoint.mac.lower()
    digest = hashlib.sha256(endpoint.id.encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


class MacvlanDriver:
    """Endpoints are macvlan links on the network's parent interface, created inside their sandbox."""

    name: ClassVar[str] = "macvlan"
    # Its networks are the parent's LAN: the subnet overlaps the host's own on purpose.
    capabilities: ClassVar[Capabilities] = Capabilities(on_host_lan=True)

    def __init__(self, context: DriverContext) -> None:
        self._host = context.host_netns

    def _require_parent(self, parent: str) -> None:
        with self._host.netlink() as nl:
            if links.get_link(nl, parent) is None:
                raise InvalidConfig(
                    f"macvlan parent {parent!r} does not exist in the host namespace {self._host.name}; "
                    "give an existing interface as options={'parent': ...}"
                )

    def validate_network(self, network: NetworkRequest) -> dict[str, object]:
        """Parse the options and check that the parent exists."""
        options = MacvlanOptions.parse(network.options)
        self._require_parent(options.parent)
        return options.to_json()

    def create_network(self, network: NetworkInfo) -> None:
        """Nothing to build on the host; the parent must still be there and an address pool given."""
        if not network.ipv4:
            raise InvalidConfig(f"network {network.name!r} has no address pool; the macvlan driver needs one")
        self._require_parent(MacvlanOptions.parse(network.options).parent)

    def delete_network(self, network: NetworkInfo) -> None:
        """Nothing to remove: the parent is the user's, and endpoints' links go at leave."""

    def create_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Check the endpoint has an address; its link is made at join."""
        if endpoint.address is None:
            raise InvalidConfig(f"endpoint {endpoint.name!r} has no address; the macvlan driver needs one")

    def delete_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Nothing to remove: the link lives in the sandbox and goes at leave (or with the sandbox)."""

    def join(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo, ifname: str) -> JoinResult:
        """Create the macvlan link on the parent, born inside the sandbox as ``ifname``.

        One netlink request: it either makes the link or fails leaving nothing.
        """
        options = MacvlanOptions.parse(network.options)
        with self._host.netlink() as nl:
            links.add_macvlan(
                nl,
                ifname,
                options.parent,
                sandbox.netns,
                mode=options.mode,
                mac=endpoint_mac(endpoint),
                mtu=options.mtu,
            )
        gateway = network.ipv4[0].gateway
        log.info("macvlan %s on %s joined to sandbox %s", ifname, options.parent, sandbox.name)
        return JoinResult(
            interface=ifname,
            gateway=None if network.internal or gateway is None else ipaddress.IPv4Address(gateway.ip),
        )

    def leave(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo) -> None:
        """Delete the endpoint's link (found by its MAC); succeed if it or the sandbox is gone."""
        if not sandbox.netns.exists():
            return
        mac = endpoint_mac(endpoint)
        with sandbox.netns.netlink() as nl:
            for link in links.list_links(nl):
                if link.kind == "macvlan" and (link.mac or "").lower() == mac:
                    links.delete_link(nl, link.name)


_: type[Driver] = MacvlanDriver
