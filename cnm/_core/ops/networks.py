"""Creating and deleting networks: the name and the IPAM pool with the record, then the driver (internal)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import attrs

from cnm._core import records as rec
from cnm._core import views
from cnm._core.records import new_id, now, validate_name
from cnm._core.runtime import Runtime
from cnm.driverapi import NetworkRequest
from cnm.errors import ActiveEndpoints, AlreadyExists, Forbidden, InvalidConfig, PoolOverlap
from cnm.ipam.pools import overlaps
from cnm.steps import Steps
from cnm.store import KeyTaken
from cnm.types import IPAMConfig, IPNetwork

__all__ = ["create_network", "delete_network", "free_network", "host_exclusions"]

log = logging.getLogger(__name__)


def host_exclusions(rt: Runtime) -> list[IPNetwork]:
    """The host namespace's addresses and routes, which default pools must avoid."""
    return [network for network, _ in rt.sandbox_os.host_networks()]


def _refuse_host_overlap(rt: Runtime, subnet: IPNetwork) -> None:
    """Refuse an explicit subnet over the host's own networks: routing it to a bridge would cut the host off.

    Subnets this controller has handed out already are left to the IPAM's own
    overlap check: they are its networks' bridges, and it names the network.
    """
    ours = [pool.subnet for pool in rt.ipam.pools()]
    for network, what in rt.sandbox_os.host_networks():
        if overlaps(subnet, network) and not any(overlaps(network, pool) for pool in ours):
            raise PoolOverlap(
                f"subnet {subnet} overlaps the host's {what}; a network there would take that traffic away "
                "from the host. Pick a subnet outside it, or leave subnet unset to get a free default pool"
            )


def _check_subnet(subnet: IPNetwork) -> None:
    """Refuse at creation the subnets no network of this release can work with."""
    if subnet.version != 4:
        raise InvalidConfig(f"subnet {subnet} is IPv6; IPv6 subnets are not supported yet, give an IPv4 subnet")
    if subnet.prefixlen > _LONGEST_PREFIX:
        raise InvalidConfig(
            f"subnet {subnet} is a /{subnet.prefixlen}: it has no room for a gateway and an endpoint; "
            f"use a /{_LONGEST_PREFIX} or shorter prefix"
        )


# As Docker: a network needs its gateway and at least one endpoint beside the
# network and broadcast addresses, so /30 is the smallest subnet that works.
_LONGEST_PREFIX = 30


def create_network(
    rt: Runtime,
    name: str,
    *,
    driver: str,
    ipam: IPAMConfig | None,
    options: Mapping[str, object] | None,
    internal: bool,
    labels: Mapping[str, str] | None,
    predefined: bool = False,
) -> rec.NetworkRecord:
    """Create a network: validate, allocate its pool, then have the driver build it."""
    validate_name(name, "network")
    ipam = ipam or IPAMConfig()
    drv = rt.registry.get(driver)
    if not isinstance(internal, bool):
        raise InvalidConfig(f"internal must be True or False, not {internal!r}")
    user_options = dict(options or {})
    normalised = drv.validate_network(
        NetworkRequest(name=name, options=user_options, internal=internal, predefined=predefined)
    )
    exclude: list[IPNetwork] = []
    if drv.capabilities.needs_address and ipam.subnet is None:
        exclude = host_exclusions(rt)
    elif drv.capabilities.needs_address and ipam.subnet is not None:
        _check_subnet(ipam.subnet)
        if not drv.capabilities.on_host_lan:
            _refuse_host_overlap(rt, ipam.subnet)
    network_id = new_id()
    with rt.locks.operation(networks=[network_id]), Steps(f"create network {name}", rt.observer) as steps:
        draft = rec.NetworkRecord(
            id=network_id,
            name=name,
            driver=driver,
            options=dict(normalised),
            internal=internal,
            labels=dict(labels or {}),
            created=now(),
            predefined=predefined,
            user_options=user_options,
            user_gateway=ipam.gateway is not None,
            status=rec.CREATING,
        )
        needs_address = drv.capabilities.needs_address
        record = steps.run(
            "allocate",
            lambda: _allocate_network(rt, draft, ipam, exclude, needs_address=needs_address),
            undo=lambda: free_network(rt, record),
        )
        info = views.network_info(record)
        steps.run("driver create_network", lambda: drv.create_network(info), undo=lambda: drv.delete_network(info))
        record = steps.run("record ready", lambda: _set_status(rt, record, rec.READY))
    log.info("created network %s (%s, driver %s, subnet %s)", name, network_id[:12], driver, record.subnet)
    return record


def _allocate_network(
    rt: Runtime, draft: rec.NetworkRecord, ipam: IPAMConfig, exclude: Sequence[IPNetwork], *, needs_address: bool
) -> rec.NetworkRecord:
    """Reserve the name, the pool, the gateway and aux addresses, and store the record: one transaction."""
    with rt.state.transaction() as tx:
        try:
            tx.add(draft)
        except KeyTaken as exc:
            raise AlreadyExists(f"network {draft.name!r} already exists; pick another name or delete it first") from exc
        record = draft
        if needs_address:
            pool = rt.ipam.request_pool(subnet=ipam.subnet, ip_range=ipam.ip_range, exclude=exclude, owner=draft.name)
            gateway = rt.ipam.request_address(pool.id, ipam.gateway, owner=f"{draft.name} gateway")
            aux: dict[str, str] = {}
            for aux_name, addr in ipam.aux_addresses.items():
                rt.ipam.request_address(pool.id, addr, owner=f"{draft.name} aux {aux_name}")
                aux[aux_name] = str(addr)
            record = attrs.evolve(
                draft,
                subnet=str(pool.subnet),
                gateway=str(gateway),
                ip_range=None if pool.ip_range is None else str(pool.ip_range),
                aux_addresses=aux,
                pool_id=pool.id,
            )
        elif ipam.subnet is not None:
            raise InvalidConfig(f"driver {draft.driver!r} gives no addresses; drop the ipam config")
        tx.put(record)
    return record


def free_network(rt: Runtime, record: rec.NetworkRecord) -> None:
    """Release a network's pool and forget its record (the driver is not told)."""
    with rt.state.transaction() as tx:
        if record.pool_id is not None:
            rt.ipam.release_pool(record.pool_id)
        tx.remove(record)


def _set_status(rt: Runtime, record: rec.NetworkRecord, status: str) -> rec.NetworkRecord:
    return rt.state.put(attrs.evolve(record, status=status))


def delete_network(rt: Runtime, record: rec.NetworkRecord, *, force_predefined: bool = False) -> None:
    """Delete a network: refuse while endpoints exist; the driver removes its objects, then the store forgets it."""
    with rt.locks.operation(networks=[record.id]), Steps(f"delete network {record.name}", rt.observer) as steps:
        marked = steps.run("record delete", lambda: _mark_deleting(rt, record, force_predefined=force_predefined))
        if marked is None:
            return
        drv, info = rt.driver(marked), views.network_info(marked)
        steps.run("driver delete_network", lambda: drv.delete_network(info))
        steps.run("free", lambda: free_network(rt, marked))
    log.info("deleted network %s (%s)", marked.name, marked.id[:12])


def _mark_deleting(rt: Runtime, record: rec.NetworkRecord, *, force_predefined: bool) -> rec.NetworkRecord | None:
    """The network marked deleting, checked in the same transaction; None if it is gone."""
    with rt.state.transaction() as tx:
        current = tx.get(rec.NetworkRecord, record.id)
        if current is None:
            return None
        if current.predefined and not force_predefined:
            raise Forbidden(f"network {current.name!r} is predefined and cannot be deleted")
        members = tx.endpoint_names(current.id)
        if members:
            raise ActiveEndpoints(
                f"network {current.name!r} still has endpoints {', '.join(sorted(members))}; delete them first"
            )
        return _set_status(rt, current, rec.DELETING)
