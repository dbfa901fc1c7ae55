"""The rows cnm reads and writes: Bridge, Port and Interface as typed values, PortSpec, and their decoders."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from cnm.ovsdb._jsonrpc import Json

__all__ = ["Bridge", "Interface", "Port", "PortSpec", "decode_bridge", "decode_interface", "decode_port", "to_map"]


def to_map(values: Mapping[str, str]) -> list[Json]:
    """``values`` as an OVSDB map."""
    return ["map", [[str(k), str(v)] for k, v in values.items()]]


def _from_map(value: Json) -> dict[str, str]:
    return {str(k): str(v) for k, v in value[1]}


def _from_set(value: Json) -> list[Json]:
    """An OVSDB set as a list; a set of one may come bare."""
    if isinstance(value, list) and value and value[0] == "set":
        return list(value[1])
    return [value]


def _uuids(value: Json) -> tuple[str, ...]:
    return tuple(str(item[1]) for item in _from_set(value))


def _optional_int(value: Json) -> int | None:
    items = _from_set(value)
    return int(items[0]) if items else None


def _optional_str(value: Json) -> str | None:
    items = _from_set(value)
    return str(items[0]) if items else None


@attrs.frozen(kw_only=True)
class Bridge:
    """A row of the Bridge table.

    Attributes:
        uuid: the row's id.
        name: the bridge (and its LOCAL port's netdev).
        datapath_type: ``system`` (kernel datapath, also written as empty) or ``netdev`` (userspace).
        ports: the uuids of its Port rows.
        external_ids: free-form keys; cnm's rows carry ``cnm-*`` keys.
    """

    uuid: str
    name: str
    datapath_type: str
    ports: tuple[str, ...]
    external_ids: Mapping[str, str]


@attrs.frozen(kw_only=True)
class Port:
    """A row of the Port table.

    Attributes:
        uuid: the row's id.
        name: the port's name.
        tag: its VLAN (an access port), or None (a trunk).
        interfaces: the uuids of its Interface rows.
        external_ids: free-form keys; cnm's rows carry ``cnm-*`` keys.
    """

    uuid: str
    name: str
    tag: int | None
    interfaces: tuple[str, ...]
    external_ids: Mapping[str, str]


@attrs.frozen(kw_only=True)
class Interface:
    """A row of the Interface table.

    Attributes:
        uuid: the row's id.
        name: the netdev (or tunnel) name.
        type: empty for a system netdev, or ``internal``, ``vxlan``, ``gre``...
        options: type-specific settings (``remote_ip``, ``key``...).
        external_ids: free-form keys.
        ofport: the OpenFlow port number once ovs-vswitchd opened it; -1 when it failed.
        error: why ovs-vswitchd could not open it, or None.
    """

    uuid: str
    name: str
    type: str
    options: Mapping[str, str]
    external_ids: Mapping[str, str]
    ofport: int | None
    error: str | None


@attrs.frozen(kw_only=True)
class PortSpec:
    """A port to add: one Port row with one Interface row of the same name.

    Attributes:
        name: the port's and the interface's name.
        type: the interface type: empty for an existing netdev (a veth end), or
            ``internal``, ``vxlan``, ``gre``.
        options: the interface's options, e.g. ``{"remote_ip": "192.0.2.2", "key": "42"}``.
        tag: the VLAN of an access port, or None.
        mtu: the MTU asked for the interface (``mtu_request``), or None.
        external_ids: set on both rows, so cleanup can find them.
        protected: the Port's ``protected`` flag: the bridge's NORMAL forwarding
            never passes traffic from one protected port to another (split
            horizon, e.g. between the tunnels of a full mesh).
    """

    name: str
    type: str = ""
    options: Mapping[str, str] = attrs.field(factory=dict)
    tag: int | None = None
    mtu: int | None = None
    external_ids: Mapping[str, str] = attrs.field(factory=dict)
    protected: bool = False


def decode_bridge(row: Mapping[str, Json]) -> Bridge:
    """A row of the Bridge table, as a select returns it."""
    return Bridge(
        uuid=str(row["_uuid"][1]),
        name=str(row["name"]),
        datapath_type=str(row.get("datapath_type", "")),
        ports=_uuids(row.get("ports", ["set", []])),
        external_ids=_from_map(row.get("external_ids", ["map", []])),
    )


def decode_port(row: Mapping[str, Json]) -> Port:
    """A row of the Port table, as a select returns it."""
    return Port(
        uuid=str(row["_uuid"][1]),
        name=str(row["name"]),
        tag=_optional_int(row.get("tag", ["set", []])),
        interfaces=_uuids(row.get("interfaces", ["set", []])),
        external_ids=_from_map(row.get("external_ids", ["map", []])),
    )


def decode_interface(row: Mapping[str, Json]) -> Interface:
    """A row of the Interface table, as a select returns it."""
    return Interface(
        uuid=str(row["_uuid"][1]),
        name=str(row["name"]),
        type=str(row.get("type", "")),
        options=_from_map(row.get("options", ["map", []])),
        external_ids=_from_map(row.get("external_ids", ["map", []])),
        ofport=_optional_int(row.get("ofport", ["set", []])),
        error=_optional_str(row.get("error", ["set", []])),
    )
