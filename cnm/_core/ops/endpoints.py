"""Creating and deleting endpoints: the name, address and host ports with the record, then the driver (internal)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Sequence

import attrs

from cnm._core import records as rec
from cnm._core import views
from cnm._core.ops.attach import leave, lock_endpoint, save
from cnm._core.ops.names import check_aliases
from cnm._core.records import new_id, now, validate_name
from cnm._core.runtime import Runtime
from cnm._core.views import mac_for
from cnm.driverapi import PortPublisher
from cnm.errors import AlreadyExists, InvalidConfig, NotFound
from cnm.legacy_links import parse_exposed
from cnm.steps import Steps
from cnm.store import KeyTaken
from cnm.types import PortBinding, parse_address

__all__ = ["create_endpoint", "delete_endpoint", "free_endpoint"]

log = logging.getLogger(__name__)


def create_endpoint(
    rt: Runtime,
    network: rec.NetworkRecord,
    name: str,
    *,
    ports: Sequence[PortBinding] = (),
    ip: str | ipaddress.IPv4Address | None = None,
    owned_by_sandbox: bool = False,
    owner_sandbox_id: str | None = None,
    exposed: Sequence[object] = (),
    aliases: Sequence[str] = (),
) -> rec.EndpointRecord:
    """Create an endpoint: reserve its name, address and host ports, then tell the driver.

    ``owner_sandbox_id`` names the sandbox that creates it for itself; it is
    deleted with that sandbox, joined or not.
    """
    validate_name(name, "endpoint")
    exposed_ports = parse_exposed(exposed)
    dns_aliases = check_aliases(rt, network, list(aliases))
    drv = rt.driver(network)
    if ports and not isinstance(drv, PortPublisher):
        raise InvalidConfig(f"driver {network.driver!r} of network {network.name!r} cannot publish ports; drop ports=")
    if ports and network.internal:
        raise InvalidConfig(f"network {network.name!r} is internal: published ports could never be reached")
    wanted_ip = None if ip is None else parse_address(ip, "endpoint ip")
    if wanted_ip is not None and not drv.capabilities.needs_address:
        raise InvalidConfig(f"driver {network.driver!r} gives no addresses; drop ip=")
    endpoint_id = new_id()
    with rt.locks.operation(networks=[network.id]), Steps(f"create endpoint {name}", rt.observer) as steps:
        draft = rec.EndpointRecord(
            id=endpoint_id,
            name=name,
            network_id=network.id,
            requested_ports=rec.ports_to_json(list(ports)),
            owned_by_sandbox=owned_by_sandbox or owner_sandbox_id is not None,
            owner_sandbox_id=owner_sandbox_id,
            exposed=exposed_ports,
            aliases=dns_aliases,
            created=now(),
            status=rec.CREATING,
        )
        needs_address = drv.capabilities.needs_address
        record = steps.run(
            "allocate",
            lambda: _allocate_endpoint(rt, network, draft, ports, wanted_ip, needs_address=needs_address),
            undo=lambda: free_endpoint(rt, record),
        )
        net_info, ep_info = views.network_info(network), views.endpoint_info(record)
        steps.run(
            "driver create_endpoint",
            lambda: drv.create_endpoint(net_info, ep_info),
            undo=lambda: drv.delete_endpoint(net_info, ep_info),
        )
        record = steps.run("record ready", lambda: save(rt, attrs.evolve(record, status=rec.READY)))
    log.info("created endpoint %s on %s (%s)", name, network.name, record.address)
    return record


def _allocate_endpoint(
    rt: Runtime,
    network: rec.NetworkRecord,
    draft: rec.EndpointRecord,
    ports: Sequence[PortBinding],
    wanted_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
    *,
    needs_address: bool,
) -> rec.EndpointRecord:
    """Reserve the name, the address and the host ports, and store the record: one transaction."""
    with rt.state.transaction() as tx:
        if tx.get(rec.NetworkRecord, network.id) is None:
            raise NotFound(f"network {network.name!r} no longer exists")
        try:
            tx.add(draft)
        except KeyTaken as exc:
            raise AlreadyExists(
                f"endpoint {draft.name!r} already exists on network {network.name!r}; pick another name"
            ) from exc
        record = draft
        if needs_address and network.pool_id is not None:
            ip = rt.ipam.request_address(network.pool_id, wanted_ip, owner=draft.name)
            prefix = ipaddress.ip_network(network.subnet or "").prefixlen
            mac = mac_for(ip) if isinstance(ip, ipaddress.IPv4Address) else None
            record = attrs.evolve(record, address=f"{ip}/{prefix}", mac=mac)
        if ports:
            default_ip = network.options.get("host_binding_ipv4")
            resolved = rt.ports.allocate(
                draft.id, ports, None if default_ip is None else parse_address(default_ip), label=draft.name
            )
            record = attrs.evolve(record, ports=rec.ports_to_json(resolved))
        tx.put(record)
    return record


def free_endpoint(rt: Runtime, record: rec.EndpointRecord) -> None:
    """Release an endpoint's address and host ports and forget its record (the driver is not told)."""
    with rt.state.transaction() as tx:
        network = tx.get(rec.NetworkRecord, record.network_id)
        if record.address is not None and network is not None and network.pool_id:
            rt.ipam.release_address(network.pool_id, ipaddress.IPv4Interface(record.address).ip)
        rt.ports.release(record.id)
        tx.remove(record)


def delete_endpoint(rt: Runtime, endpoint: rec.EndpointRecord) -> None:
    """Delete an endpoint (leaving first), freeing its address and host ports."""
    with contextlib.ExitStack() as held:
        current = lock_endpoint(rt, endpoint, held)
        if current is None:
            return
        endpoint = current
        if endpoint.sandbox_id is not None:
            leave(rt, endpoint)
            endpoint = rt.state.reload(endpoint)
        network = rt.state.get(rec.NetworkRecord, endpoint.network_id)
        deleting = attrs.evolve(endpoint, status=rec.DELETING)
        drv = rt.driver(network)
        with Steps(f"delete endpoint {endpoint.name}", rt.observer) as steps:
            endpoint = steps.run("record delete", lambda: save(rt, deleting))
            net_info, ep_info = views.network_info(network), views.endpoint_info(endpoint)
            steps.run("driver delete_endpoint", lambda: drv.delete_endpoint(net_info, ep_info))
            steps.run("free", lambda: free_endpoint(rt, deleting))
    log.info("deleted endpoint %s", endpoint.name)
