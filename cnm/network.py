"""Networks: a group of endpoints that can talk to each other directly."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from cnm._core import records as rec
from cnm._core import views
from cnm._core.records import new_id, now, validate_name
from cnm._core.runtime import Runtime
from cnm._handle import Handle
from cnm.driverapi import NetworkRequest
from cnm.errors import ActiveEndpoints, AlreadyExists, Forbidden, InvalidConfig, PoolOverlap
from cnm.ipam.pools import overlaps
from cnm.kernel import addresses, links, routes
from cnm.steps import Steps
from cnm.store import KeyTaken
from cnm.types import IPAMConfig, IPNetwork, PortBinding

if TYPE_CHECKING:
    from cnm.endpoint import Endpoint

__all__ = ["Network"]

log = logging.getLogger(__name__)


class Network(Handle[rec.NetworkRecord]):
    """A CNM network. Get one from :meth:`cnm.Controller.create_network` or :meth:`cnm.Controller.network`.

    The object is a handle: its properties read the controller's store, so
    they are current even when another handle or process changed the network.
    """

    def __repr__(self) -> str:
        return f"<Network {self.name} driver={self.driver} id={self.id[:12]}>"

    @property
    def name(self) -> str:
        """The network's name."""
        return self._record.name

    @property
    def driver(self) -> str:
        """The name of the network's driver."""
        return self._record.driver

    @property
    def internal(self) -> bool:
        """True if traffic may not leave the network."""
        return self._record.internal

    @property
    def subnet(self) -> ipaddress.IPv4Network | None:
        """The network's IPv4 subnet, or None for drivers without addresses."""
        s = self._record.subnet
        return None if s is None else ipaddress.IPv4Network(s)

    @property
    def gateway(self) -> ipaddress.IPv4Address | None:
        """The gateway address, or None."""
        g = self._record.gateway
        return None if g is None else ipaddress.IPv4Address(g)

    @property
    def options(self) -> Mapping[str, Any]:
        """The driver options, normalised by the driver."""
        return dict(self._record.options)

    @property
    def labels(self) -> Mapping[str, str]:
        """The user's labels."""
        return dict(self._record.labels)

    def endpoints(self) -> list[Endpoint]:
        """The network's endpoints, in name order."""
        from cnm.endpoint import Endpoint

        return [Endpoint(self._rt, r) for r in self._rt.state.endpoints_of_network(self.id)]

    def endpoint(self, ref: str) -> Endpoint:
        """An endpoint of this network by name or id; :class:`cnm.errors.EndpointNotFound` if absent."""
        from cnm.endpoint import Endpoint

        return Endpoint(self._rt, self._rt.state.get(rec.EndpointRecord, ref, network_id=self.id))

    def create_endpoint(
        self,
        name: str,
        *,
        ports: Sequence[PortBinding] = (),
        ip: str | ipaddress.IPv4Address | None = None,
        exposed: Sequence[object] = (),
    ) -> Endpoint:
        """Create an endpoint on this network, with an address and its published ports.

        Args:
            name: unique within the network.
            ports: ports to publish once the endpoint joins a sandbox.
            ip: a specific address to take instead of the next free one.
            exposed: ports exposed without publishing (``"3306/tcp"``), as
                ``--expose``; they are what a legacy link to the sandbox allows.

        Raises:
            AlreadyExists: an endpoint of that name exists on the network.
            AddressInUse: ``ip`` is taken.
            PortInUse: an explicit host port is taken.
            Exhausted: no free address or host port is left.
            InvalidConfig: bad ports or address, or ports on a driver that cannot publish them.
        """
        from cnm.endpoint import create_endpoint

        return create_endpoint(self._rt, self._rt.state.reload(self._record), name, ports=ports, ip=ip, exposed=exposed)

    def inspect(self) -> dict[str, Any]:
        """The network as ``docker network inspect`` prints it (one object, not a list).

        Name, Id, Created, Scope, Driver, EnableIPv6, IPAM, Internal, Attachable,
        Ingress, ConfigFrom, ConfigOnly, Containers (by sandbox id), Options
        (as given at creation) and Labels, with Docker's quirks; see :mod:`cnm._inspect`.
        """
        from cnm._core import inspect as _inspect
        from cnm.errors import NotFound

        record = self._rt.state.reload(self._record)
        endpoints = self._rt.state.endpoints_of_network(record.id)
        sandboxes = {s.id: s for s in self._rt.state.list(rec.SandboxRecord)}
        try:
            scope = self._rt.driver(record).capabilities.scope
        except NotFound:  # the driver was uninstalled; the network is still worth showing
            scope = "local"
        return _inspect.network(record, endpoints, sandboxes, scope=scope)

    def delete(self) -> None:
        """Delete the network. Succeeds if it is already gone.

        Raises:
            ActiveEndpoints: it still has endpoints; delete them first.
            Forbidden: it is a predefined network.
        """
        delete_network(self._rt, self._record)


def host_exclusions(rt: Runtime) -> list[IPNetwork]:
    """The host namespace's addresses and routes, which default pools must avoid."""
    with rt.host_netns.netlink() as nl:
        found: list[IPNetwork] = [a.network for a in addresses.list_addresses(nl) if a.version == 4]
        found += [r.destination for r in routes.list_routes(nl) if r.destination.prefixlen > 0]
    return [n for n in found if not n.is_loopback and not n.is_link_local]


def _host_networks(rt: Runtime) -> list[tuple[IPNetwork, str]]:
    """The host namespace's IPv4 addresses and routes, each with a description naming its interface."""
    found: list[tuple[IPNetwork, str]] = []
    with rt.host_netns.netlink() as nl:
        for link in links.list_links(nl):
            for a in addresses.list_addresses(nl, link.name):
                if a.version == 4:
                    found.append((a.network, f"address {a} on {link.name}"))
        for r in routes.list_routes(nl):
            if r.destination.prefixlen > 0:
                found.append((r.destination, f"route {r.destination} on {r.ifname or 'no interface'}"))
    return [(n, what) for n, what in found if not n.is_loopback and not n.is_link_local]


def _refuse_host_overlap(rt: Runtime, subnet: IPNetwork) -> None:
    """Refuse an explicit subnet over the host's own networks: routing it to a bridge would cut the host off.

    Subnets this controller has handed out already are left to the IPAM's own
    overlap check: they are its networks' bridges, and it names the network.
    """
    ours = [pool.subnet for pool in rt.ipam.pools()]
    for network, what in _host_networks(rt):
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
) -> Network:
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
    with rt.locks.operation(networks=[network_id]), Steps(f"create network {name}") as undo:
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
        record = _allocate_network(rt, draft, ipam, exclude, needs_address=drv.capabilities.needs_address)
        undo.done("allocate", lambda: _free_network(rt, record))
        info = views.network_info(record)
        drv.create_network(info)
        undo.done("driver create_network", lambda: drv.delete_network(info))
        record = _set_status(rt, record, rec.READY)
    log.info("created network %s (%s, driver %s, subnet %s)", name, network_id[:12], driver, record.subnet)
    return Network(rt, record)


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


def _free_network(rt: Runtime, record: rec.NetworkRecord) -> None:
    with rt.state.transaction() as tx:
        if record.pool_id is not None:
            rt.ipam.release_pool(record.pool_id)
        tx.remove(record)


def _set_status(rt: Runtime, record: rec.NetworkRecord, status: str) -> rec.NetworkRecord:
    return rt.state.put(attrs.evolve(record, status=status))


def delete_network(rt: Runtime, record: rec.NetworkRecord, *, force_predefined: bool = False) -> None:
    """Delete a network: refuse while endpoints exist; the driver removes its objects, then the store forgets it."""
    with rt.locks.operation(networks=[record.id]):
        with rt.state.transaction() as tx:
            current = tx.get(rec.NetworkRecord, record.id)
            if current is None:
                return
            record = current
            if record.predefined and not force_predefined:
                raise Forbidden(f"network {record.name!r} is predefined and cannot be deleted")
            members = tx.endpoint_names(record.id)
            if members:
                raise ActiveEndpoints(
                    f"network {record.name!r} still has endpoints {', '.join(sorted(members))}; delete them first"
                )
            record = _set_status(rt, record, rec.DELETING)
        rt.driver(record).delete_network(views.network_info(record))
        _free_network(rt, record)
    log.info("deleted network %s (%s)", record.name, record.id[:12])
