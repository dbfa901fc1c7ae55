"""The OVS driver's options, parsed and validated before anything is created."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from typing import Literal

import attrs

from cnm.errors import InvalidConfig
from cnm.options import parse_options, to_bool, to_ifname, to_int, to_ipv4
from cnm.ovsdb import DEFAULT_REMOTE, DEFAULT_TIMEOUT, parse_remote

__all__ = ["SHARED_BRIDGE", "TUNNEL_OVERHEAD", "OvsOptions", "detect_datapath"]

SHARED_BRIDGE = "cnmovs0"
"""The bridge networks with a ``vlan`` share when they name none."""

TUNNEL_OVERHEAD = {"vxlan": 50, "gre": 42}
"""Bytes each encapsulation adds to an IPv4 underlay packet (GRE with a key)."""

_KEY_LIMIT = {"vxlan": 2**24, "gre": 2**32}

_ALIASES = {
    "com.docker.network.driver.mtu": "mtu",
    "com.docker.network.bridge.enable_ip_masquerade": "masquerade",
    "com.docker.network.bridge.host_binding_ipv4": "host_binding_ipv4",
}


def detect_datapath(sys_module: str = "/sys/module/openvswitch") -> Literal["system", "netdev"]:
    """``system`` (the kernel datapath) where the openvswitch module is loaded or built in, else ``netdev``."""
    if os.path.isdir(sys_module):
        return "system"
    try:
        with open("/proc/modules") as f:
            if any(line.split(" ", 1)[0] == "openvswitch" for line in f):
                return "system"
    except OSError:
        pass
    return "netdev"


def _masquerade(value: object) -> bool:
    return to_bool(value, "masquerade")


def _timeout(value: object) -> float:
    try:
        seconds = float(str(value))
    except ValueError as exc:
        raise InvalidConfig(f"ovs option timeout={value!r} is not a number of seconds") from exc
    if not 0 < seconds <= 600:
        raise InvalidConfig(f"ovs option timeout={seconds} is out of range; use 0-600 seconds")
    return seconds


def _remote(value: object) -> str:
    remote = str(value)
    parse_remote(remote)
    return remote


def _bridge_name(value: object) -> str | None:
    return to_ifname(value, "bridge_name")


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[object], str]:
    def convert(value: object) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise InvalidConfig(f"ovs option {name}={value!r} is not one of {', '.join(choices)}")
        return text

    return convert


def _peers(value: object) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise InvalidConfig(f"ovs option peers={value!r} must be a list of IPv4 addresses")
    peers: list[str] = []
    for item in items:
        try:
            peer = str(ipaddress.IPv4Address(str(item).strip()))
        except ValueError as exc:
            raise InvalidConfig(f"ovs option peers: {item!r} is not an IPv4 address") from exc
        if peer in peers:
            raise InvalidConfig(f"ovs option peers names {peer} twice")
        peers.append(peer)
    return tuple(peers)


def _datapath(value: object) -> str:
    return _choice("datapath", ("auto", "system", "netdev"))(value)


def _vlan(value: object) -> int | None:
    return to_int(value, "vlan", 1, 4094)


def _mtu(value: object) -> int | None:
    return to_int(value, "mtu", 68, 65535)


def _host_ip(value: object) -> str | None:
    return to_ipv4(value, "host_binding_ipv4")


def _tunnel(value: object) -> str:
    return _choice("tunnel", tuple(TUNNEL_OVERHEAD))(value)


def _tunnel_key(value: object) -> int | None:
    return to_int(value, "tunnel_key", 0, 2**32 - 1)


def _local_ip(value: object) -> str | None:
    return to_ipv4(value, "local_ip")


@attrs.frozen(kw_only=True)
class OvsOptions:
    """Options of an OVS network.

    Attributes:
        ovsdb: the OVSDB socket, ``unix:/PATH`` or ``tcp:HOST:PORT``.
        timeout: seconds an OVSDB call may take, waiting for ovs-vswitchd included.
        datapath: ``auto`` (kernel where the openvswitch module exists, else userspace),
            ``system`` or ``netdev``; stored resolved.
        bridge_name: the OVS bridge; ``cno-`` and 11 digits of the network id by
            default, or :data:`SHARED_BRIDGE` for a network with a ``vlan``.
        vlan: a VLAN tag (1-4094). Networks with a VLAN share a bridge and are
            kept apart by their tags; the gateway sits on a tagged internal port.
        mtu: the sandboxes' MTU; by default 1500, or the underlay's MTU less the
            tunnel header when there are peers (1500 less it with a tunnel_key
            and no peers yet).
        masquerade: whether traffic leaving the host from the subnet is masqueraded.
        host_binding_ipv4: the default host address of published ports.
        peers: underlay IPv4 addresses of the other hosts of this network; one tunnel each.
        tunnel: ``vxlan`` or ``gre``.
        tunnel_key: the VNI (VXLAN) or key (GRE) of this network, the same on every
            host; required with ``peers``, and for peers set later
            (:meth:`cnm_drivers.ovs.OvsDriver.set_peers`, from a global network's membership).
        local_ip: the underlay source address of the tunnels, if the host has several.
    """

    ovsdb: str = attrs.field(default=DEFAULT_REMOTE, converter=_remote)
    timeout: float = attrs.field(default=DEFAULT_TIMEOUT, converter=_timeout)
    datapath: str = attrs.field(default="auto", converter=_datapath)
    bridge_name: str | None = attrs.field(default=None, converter=_bridge_name)
    vlan: int | None = attrs.field(default=None, converter=_vlan)
    mtu: int | None = attrs.field(default=None, converter=_mtu)
    masquerade: bool = attrs.field(default=True, converter=_masquerade)
    host_binding_ipv4: str | None = attrs.field(default=None, converter=_host_ip)
    peers: tuple[str, ...] = attrs.field(default=(), converter=_peers)
    tunnel: str = attrs.field(default="vxlan", converter=_tunnel)
    tunnel_key: int | None = attrs.field(default=None, converter=_tunnel_key)
    local_ip: str | None = attrs.field(default=None, converter=_local_ip)

    def __attrs_post_init__(self) -> None:
        if self.peers and self.tunnel_key is None:
            raise InvalidConfig(
                "ovs option peers needs tunnel_key: the VNI/key of this network, the same on every host"
            )
        if self.tunnel_key is not None and self.tunnel_key >= _KEY_LIMIT[self.tunnel]:
            raise InvalidConfig(
                f"ovs option tunnel_key={self.tunnel_key} is too big for {self.tunnel}; "
                f"use 0-{_KEY_LIMIT[self.tunnel] - 1}"
            )
        if self.local_ip is not None and self.local_ip in self.peers:
            raise InvalidConfig(f"ovs option local_ip {self.local_ip} is also listed in peers")

    @classmethod
    def parse(cls, options: Mapping[str, object]) -> OvsOptions:
        """Parse user options (short names or Docker's long ones); refuse unknown ones."""
        return parse_options(cls, options, driver="ovs", aliases=_ALIASES)

    @property
    def datapath_type(self) -> str:
        """The Bridge table's datapath_type for this network (``auto`` resolved now)."""
        return detect_datapath() if self.datapath == "auto" else self.datapath

    @property
    def tunnel_overhead(self) -> int:
        """Bytes the tunnel header takes from the underlay MTU (0 for a network without peers or tunnel_key).

        A tunnel_key without peers is a network whose peers come later
        (:meth:`OvsDriver.set_peers`): its MTU leaves room for the header from the start.
        """
        return TUNNEL_OVERHEAD[self.tunnel] if self.peers or self.tunnel_key is not None else 0

    def to_json(self) -> dict[str, object]:
        """The options as stored with the network."""
        values = attrs.asdict(self)
        values["peers"] = list(self.peers)
        return values
