"""The bridge driver's options, parsed and validated before anything is created."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from cnm.errors import InvalidConfig
from cnm.firewallapi import GATEWAY_MODES, GatewayMode
from cnm.options import parse_options, to_bool, to_ifname, to_int, to_ipv4

__all__ = ["BridgeOptions"]

# Docker's long option names, accepted as aliases of the short ones.
_ALIASES = {
    "com.docker.network.bridge.name": "bridge_name",
    "com.docker.network.bridge.enable_icc": "icc",
    "com.docker.network.bridge.enable_ip_masquerade": "masquerade",
    "com.docker.network.driver.mtu": "mtu",
    "com.docker.network.bridge.host_binding_ipv4": "host_binding_ipv4",
    "com.docker.network.bridge.default_bridge": "default_bridge",
    "com.docker.network.bridge.gateway_mode_ipv4": "gateway_mode",
    "com.docker.network.bridge.trusted_host_interfaces": "trusted_host_interfaces",
}


def _icc(value: object) -> bool:
    return to_bool(value, "icc")


def _masquerade(value: object) -> bool:
    return to_bool(value, "masquerade")


def _default_bridge(value: object) -> bool:
    return to_bool(value, "default_bridge")


def _mtu(value: object) -> int:
    return to_int(value, "mtu", 68, 65535) or 1500


def _bridge_name(value: object) -> str | None:
    return to_ifname(value, "bridge_name")


def _host_ip(value: object) -> str | None:
    return to_ipv4(value, "host_binding_ipv4")


def _gateway_mode(value: object) -> GatewayMode:
    if value is None or value == "":
        return "nat"
    if value not in GATEWAY_MODES:
        raise InvalidConfig(
            f"bridge option gateway_mode must be one of {', '.join(GATEWAY_MODES)}, not {value!r}; "
            "nat (the default) drops traffic routed straight to a sandbox's address (docs/security.md)"
        )
    return value


def _trusted(value: object) -> tuple[str, ...]:
    # Docker's spelling is one string of names separated by ":"; a list is taken too (JSON, the store).
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        names: list[object] = list(value.split(":"))
    elif isinstance(value, list | tuple):
        names = list(value)
    else:
        raise InvalidConfig(
            f"bridge option trusted_host_interfaces must be interface names separated by ':', not {value!r}"
        )
    checked = []
    for name in names:
        if not isinstance(name, str):
            raise InvalidConfig(f"bridge option trusted_host_interfaces: {name!r} is no interface name")
        ifname = to_ifname(name, "trusted_host_interfaces")
        if ifname is not None:
            checked.append(ifname)
    return tuple(checked)


@attrs.frozen(kw_only=True)
class BridgeOptions:
    """Options of a bridge network.

    Attributes:
        bridge_name: the bridge device; ``cnm-`` and 11 digits of the network id by default.
        icc: whether endpoints on the network may talk to each other.
        masquerade: whether traffic leaving the host from the subnet is masqueraded.
        mtu: the MTU of the bridge and of both ends of every veth.
        host_binding_ipv4: the default host address for published ports without one.
        default_bridge: marks the predefined ``bridge`` network.
        gateway_mode: ``nat`` (default: only published ports and replies get in from outside),
            ``nat-unprotected`` (every port of a sandbox's address is reachable by routing), or
            ``routed`` (as nat-unprotected, and no masquerade); Docker's ``gateway_mode_ipv4``.
        trusted_host_interfaces: host interfaces whose traffic reaches sandbox addresses directly
            even in ``nat`` mode (Docker's option of that name: names separated by ``:``).
    """

    bridge_name: str | None = attrs.field(default=None, converter=_bridge_name)
    icc: bool = attrs.field(default=True, converter=_icc)
    masquerade: bool = attrs.field(default=True, converter=_masquerade)
    mtu: int = attrs.field(default=1500, converter=_mtu)
    host_binding_ipv4: str | None = attrs.field(default=None, converter=_host_ip)
    default_bridge: bool = attrs.field(default=False, converter=_default_bridge)
    gateway_mode: GatewayMode = attrs.field(default="nat", converter=_gateway_mode)
    trusted_host_interfaces: tuple[str, ...] = attrs.field(default=(), converter=_trusted)

    @classmethod
    def parse(cls, options: Mapping[str, object]) -> BridgeOptions:
        """Parse user options (short names or Docker's long ones); refuse unknown ones."""
        return parse_options(cls, options, driver="bridge", aliases=_ALIASES)

    def to_json(self) -> dict[str, object]:
        """The options as stored with the network."""
        return attrs.asdict(self)
