"""The bridge driver's options, parsed and validated before anything is created."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import attrs

from cnm.errors import InvalidConfig
from cnm.kernel.links import check_ifname

__all__ = ["BridgeOptions"]

# Docker's long option names, accepted as aliases of the short ones.
_ALIASES = {
    "com.docker.network.bridge.name": "bridge_name",
    "com.docker.network.bridge.enable_icc": "icc",
    "com.docker.network.bridge.enable_ip_masquerade": "masquerade",
    "com.docker.network.driver.mtu": "mtu",
    "com.docker.network.bridge.host_binding_ipv4": "host_binding_ipv4",
    "com.docker.network.bridge.default_bridge": "default_bridge",
}


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise InvalidConfig(f"bridge option value {value!r} is not a boolean; use true or false")


def _mtu(value: object) -> int:
    try:
        mtu = int(str(value))
    except ValueError as exc:
        raise InvalidConfig(f"bridge option mtu={value!r} is not a number") from exc
    if not 68 <= mtu <= 65535:
        raise InvalidConfig(f"bridge option mtu={mtu} is out of range; use 68-65535")
    return mtu


def _bridge_name(value: object) -> str | None:
    if value is None or value == "":
        return None
    return check_ifname(str(value), "bridge_name")


def _host_ip(value: object) -> str | None:
    if value is None or value == "":
        return None
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError as exc:
        raise InvalidConfig(f"bridge option host_binding_ipv4={value!r} is not an IPv4 address") from exc


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
    """

    bridge_name: str | None = attrs.field(default=None, converter=_bridge_name)
    icc: bool = attrs.field(default=True, converter=_bool)
    masquerade: bool = attrs.field(default=True, converter=_bool)
    mtu: int = attrs.field(default=1500, converter=_mtu)
    host_binding_ipv4: str | None = attrs.field(default=None, converter=_host_ip)
    default_bridge: bool = attrs.field(default=False, converter=_bool)

    @classmethod
    def parse(cls, options: Mapping[str, object]) -> BridgeOptions:
        """Parse user options (short names or Docker's long ones); refuse unknown ones."""
        known = {a.name for a in attrs.fields(cls)}
        values: dict[str, object] = {}
        for key, value in options.items():
            name = _ALIASES.get(key, key)
            if name not in known:
                raise InvalidConfig(f"unknown bridge option {key!r}; known options: {', '.join(sorted(known))}")
            values[name] = value
        return cls(**values)  # the converters validate each value

    def to_json(self) -> dict[str, object]:
        """The options as stored with the network."""
        return attrs.asdict(self)
