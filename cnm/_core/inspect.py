"""``inspect()`` views of networks, endpoints and sandboxes, shaped as Docker prints them (internal).

Pure functions of stored records, so their shape can be checked against
Docker's captured JSON without a kernel. Docker's quirks are kept on purpose,
since tools written against ``docker network inspect`` read these keys:

* ``Options`` shows only the options the network was created with, as
  strings (the predefined ``bridge`` is created with Docker's full list);
* ``IPAM.Options`` is ``null`` for predefined networks and ``{}`` for others;
* ``IPAM.Config`` has a ``Gateway`` key only when the gateway was asked for;
* ``Containers`` is keyed by sandbox id, or ``ep-<endpoint id>`` for an
  endpoint not joined to any sandbox;
* there is no IPv6: its keys are present and empty.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from cnm._core import records as rec

__all__ = ["endpoint_settings", "network", "sandbox"]


def _time(created: str) -> str:
    # Docker prints UTC as "...Z"; the store keeps Python's "+00:00" form.
    return created[: -len("+00:00")] + "Z" if created.endswith("+00:00") else created


def _option(value: object) -> str:
    # Docker's options are map[string]string; booleans print as Go prints them.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _ipam_config(net: rec.NetworkRecord) -> list[dict[str, Any]]:
    if net.subnet is None:
        return []
    config: dict[str, Any] = {"Subnet": net.subnet}
    if net.ip_range is not None:
        config["IPRange"] = net.ip_range
    if net.user_gateway and net.gateway is not None:
        config["Gateway"] = net.gateway
    if net.aux_addresses:
        config["AuxiliaryAddresses"] = dict(net.aux_addresses)
    return [config]


def network(
    net: rec.NetworkRecord,
    endpoints: Sequence[rec.EndpointRecord],
    sandboxes: Mapping[str, rec.SandboxRecord],
    *,
    scope: str = "local",
) -> dict[str, Any]:
    """``docker network inspect``'s object for ``net``.

    Args:
        net: the network.
        endpoints: its endpoints.
        sandboxes: the sandboxes they are joined to, by id (for their names).
        scope: the driver's scope.
    """
    containers: dict[str, dict[str, str]] = {}
    for ep in endpoints:
        joined = sandboxes.get(ep.sandbox_id) if ep.sandbox_id is not None else None
        key = joined.id if joined is not None else "ep-" + ep.id
        containers[key] = {
            "Name": joined.name if joined is not None else ep.name,
            "EndpointID": ep.id,
            "MacAddress": ep.mac or "",
            "IPv4Address": ep.address or "",
            "IPv6Address": "",
        }
    return {
        "Name": net.name,
        "Id": net.id,
        "Created": _time(net.created),
        "Scope": scope,
        "Driver": net.driver,
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": None if net.predefined else {}, "Config": _ipam_config(net)},
        "Internal": net.internal,
        "Attachable": False,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": dict(sorted(containers.items())),
        "Options": {k: _option(v) for k, v in sorted(net.user_options.items())},
        "Labels": dict(net.labels),
    }


def endpoint_settings(net: rec.NetworkRecord, ep: rec.EndpointRecord) -> dict[str, Any]:
    """The endpoint as one entry of a container's ``NetworkSettings.Networks``."""
    address = None if ep.address is None else ipaddress.IPv4Interface(ep.address)
    return {
        "IPAMConfig": None,
        "Links": None,
        # Docker's: null on the default bridge, else the network aliases then the short id.
        "Aliases": None if net.predefined else [*ep.aliases, (ep.sandbox_id or ep.id)[:12]],
        "NetworkID": net.id,
        "EndpointID": ep.id,
        "Gateway": ep.gateway or "",
        "IPAddress": "" if address is None else str(address.ip),
        "IPPrefixLen": 0 if address is None else address.network.prefixlen,
        "IPv6Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "MacAddress": ep.mac or "",
        "DriverOpts": None,
    }


def _exposed(sb: rec.SandboxRecord, joined: Sequence[tuple[rec.NetworkRecord, rec.EndpointRecord]]) -> list[str]:
    # Docker's Config.ExposedPorts: --expose and -p ports, one set for the container.
    exposed = set(sb.exposed)
    for _, ep in joined:
        exposed.update(ep.exposed)
        for binding in rec.ports_from_json(ep.ports):
            exposed.update(f"{port}/{binding.protocol}" for port in binding.container_port)
    return sorted(exposed)  # Go prints map keys sorted


def _ports(
    sb: rec.SandboxRecord, joined: Sequence[tuple[rec.NetworkRecord, rec.EndpointRecord]]
) -> dict[str, list[dict[str, str]] | None]:
    # An exposed port that is not published shows as null, as in Docker.
    ports: dict[str, list[dict[str, str]] | None] = dict.fromkeys(_exposed(sb, joined))
    for _, ep in joined:
        for binding in rec.ports_from_json(ep.ports):
            host = binding.host_port
            for offset, port in enumerate(range(binding.container_port.start, binding.container_port.end + 1)):
                host_port = "" if host is None else str(host.start + offset if len(host) > 1 else host.start)
                key = f"{port}/{binding.protocol}"
                ports[key] = [
                    *(ports.get(key) or []),
                    {"HostIp": str(binding.host_ip or "0.0.0.0"), "HostPort": host_port},
                ]
    return ports


def sandbox(
    sb: rec.SandboxRecord,
    joined: Sequence[tuple[rec.NetworkRecord, rec.EndpointRecord]],
    *,
    hosts_path: str,
    resolv_conf_path: str,
    hostname_path: str,
    links: Sequence[str] = (),
) -> dict[str, Any]:
    """The networking part of ``docker inspect`` for a container, for ``sb``.

    Args:
        sb: the sandbox.
        joined: its endpoints in join order, each with its network.
        hosts_path, resolv_conf_path, hostname_path: the sandbox's files.
        links: its legacy links as Docker lists them, ``/<target>:/<source>/<alias>``.
    """
    shared = sb.mode == rec.CONTAINER
    legacy: dict[str, Any] = {
        "EndpointID": "",
        "Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "IPAddress": "",
        "IPPrefixLen": 0,
        "IPv6Gateway": "",
        "MacAddress": "",
    }
    networks: dict[str, dict[str, Any]] = {}
    for net, ep in joined:
        settings = endpoint_settings(net, ep)
        networks[net.name] = settings
        # Docker fills the top-level fields from the default bridge only.
        if net.predefined and net.name == rec.DEFAULT_NETWORK:
            legacy.update({k: settings[k] for k in legacy})
    config: dict[str, Any] = {"Hostname": sb.hostname}
    exposed = _exposed(sb, joined)
    if exposed:  # Docker omits the key when nothing is exposed
        config["ExposedPorts"] = {port: {} for port in exposed}
    settings_out: dict[str, Any] = {
        "Bridge": "",
        "SandboxID": "" if shared else sb.id,
        "HairpinMode": False,
        "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0,
        "Ports": _ports(sb, joined),
        "SandboxKey": "" if shared else sb.netns_path,
        "SecondaryIPAddresses": None,
        "SecondaryIPv6Addresses": None,
        **legacy,
        "Networks": networks,
    }
    return {
        "Id": sb.id,
        "Created": _time(sb.created),
        "Name": sb.name,
        "ResolvConfPath": resolv_conf_path,
        "HostnamePath": hostname_path,
        "HostsPath": hosts_path,
        "HostConfig": {
            "NetworkMode": sb.network_mode or "default",
            "Dns": list(sb.dns),
            "DnsOptions": list(sb.dns_options),
            "DnsSearch": list(sb.dns_search),
            "Links": list(links) or None,
        },
        "Config": config,
        "NetworkSettings": settings_out,
    }
