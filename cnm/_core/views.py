"""What drivers are told: the driver API's views of stored records (internal)."""

from __future__ import annotations

import ipaddress

from cnm._core import records as rec
from cnm.driverapi import EndpointInfo, IPAMData, NetworkInfo

__all__ = ["endpoint_info", "mac_for", "network_info"]


def network_info(network: rec.NetworkRecord) -> NetworkInfo:
    """What a driver is told about a network."""
    ipv4: tuple[IPAMData, ...] = ()
    if network.subnet is not None:
        pool = ipaddress.ip_network(network.subnet)
        ipv4 = (
            IPAMData(
                pool=pool,
                gateway=network.gateway_interface,
                aux_addresses={k: ipaddress.ip_address(v) for k, v in network.aux_addresses.items()},
            ),
        )
    return NetworkInfo(id=network.id, name=network.name, options=network.options, ipv4=ipv4, internal=network.internal)


def endpoint_info(endpoint: rec.EndpointRecord) -> EndpointInfo:
    """What a driver is told about an endpoint."""
    return EndpointInfo(
        id=endpoint.id,
        name=endpoint.name,
        network_id=endpoint.network_id,
        address=None if endpoint.address is None else ipaddress.IPv4Interface(endpoint.address),
        mac=endpoint.mac,
        ports=rec.ports_from_json(endpoint.ports),
    )


def mac_for(address: ipaddress.IPv4Address) -> str:
    """Docker's MAC for an IPv4 address: 02:42 followed by the four address bytes."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.packed)
