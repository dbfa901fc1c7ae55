"""Endpoints: what joins a sandbox to a network."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from cnm._core import records as rec
from cnm._core import views
from cnm._core.records import new_id, now, validate_name
from cnm._core.runtime import Runtime
from cnm._core.views import mac_for
from cnm._handle import Handle
from cnm.driverapi import JoinResult, PortPublisher
from cnm.errors import AlreadyConnected, AlreadyExists, EndpointJoined, InvalidConfig, NotFound
from cnm.kernel import addresses, links, routes
from cnm.kernel.netns import Netlink
from cnm.steps import Concurrent, Steps, Teardown
from cnm.store import KeyTaken
from cnm.types import PortBinding, parse_address

if TYPE_CHECKING:
    from cnm.network import Network
    from cnm.sandbox import Sandbox

__all__ = ["Endpoint"]

log = logging.getLogger(__name__)


class Endpoint(Handle[rec.EndpointRecord]):
    """A CNM endpoint: belongs to one network, joined to at most one sandbox."""

    def __repr__(self) -> str:
        return f"<Endpoint {self.name} ip={self._record.address} id={self.id[:12]}>"

    @property
    def name(self) -> str:
        """The endpoint's name, unique within its network."""
        return self._record.name

    @property
    def network(self) -> Network:
        """The network the endpoint belongs to."""
        from cnm.network import Network

        return Network(self._rt, self._rt.state.get(rec.NetworkRecord, self._record.network_id))

    @property
    def ip(self) -> ipaddress.IPv4Address | None:
        """The endpoint's address, or None for drivers without addresses."""
        a = self._record.address
        return None if a is None else ipaddress.IPv4Interface(a).ip

    @property
    def ip_interface(self) -> ipaddress.IPv4Interface | None:
        """The address with the network's prefix length."""
        a = self._record.address
        return None if a is None else ipaddress.IPv4Interface(a)

    @property
    def mac(self) -> str | None:
        """The endpoint's MAC address."""
        return self._record.mac

    @property
    def ports(self) -> tuple[PortBinding, ...]:
        """The published ports, resolved: host ports and addresses filled in."""
        return rec.ports_from_json(self._record.ports)

    @property
    def exposed(self) -> tuple[str, ...]:
        """The ports exposed through this endpoint (``"3306/tcp"``); its published ports are exposed too."""
        return tuple(self._record.exposed)

    @property
    def sandbox(self) -> Sandbox | None:
        """The sandbox the endpoint is joined to, or None."""
        from cnm.sandbox import Sandbox

        sid = self._current().sandbox_id
        return None if sid is None else Sandbox(self._rt, self._rt.state.get(rec.SandboxRecord, sid))

    @property
    def ifname(self) -> str | None:
        """The interface name inside the sandbox (eth0, eth1, ...) while joined."""
        return self._current().ifname

    def inspect(self) -> dict[str, Any]:
        """The endpoint as an entry of ``docker inspect``'s ``NetworkSettings.Networks``.

        ``NetworkID``, ``EndpointID``, ``Gateway``, ``IPAddress``,
        ``IPPrefixLen``, ``MacAddress`` and Docker's other keys (empty ones for IPv6).
        """
        from cnm._core import inspect as _inspect

        record = self._current()
        return _inspect.endpoint_settings(self._rt.state.get(rec.NetworkRecord, record.network_id), record)

    def join(self, sandbox: Sandbox) -> None:
        """Connect the endpoint to ``sandbox``: an interface ethN appears inside it.

        Raises:
            EndpointJoined: it is already joined to a sandbox (leave first).
            AlreadyConnected: another endpoint of the same network is joined to ``sandbox``.
        """
        join(self._rt, self._current(), sandbox._current())
        self._current()

    def leave(self) -> None:
        """Disconnect the endpoint from its sandbox. Succeeds if it is not joined.

        Raises:
            TeardownIncomplete: the driver's leave or the withdrawal of the published
                ports failed (both are tried; each failure is in the group). Retry,
                or run :meth:`cnm.Controller.reconcile`.
        """
        leave(self._rt, self._current())
        self._current()

    def delete(self) -> None:
        """Delete the endpoint, leaving its sandbox first. Succeeds if it is already gone."""
        delete_endpoint(self._rt, self._record)


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
) -> Endpoint:
    """Create an endpoint: reserve its name, address and host ports, then tell the driver.

    ``owner_sandbox_id`` names the sandbox that creates it for itself; it is
    deleted with that sandbox, joined or not.
    """
    from cnm.links import parse_exposed

    validate_name(name, "endpoint")
    exposed_ports = parse_exposed(exposed)
    drv = rt.driver(network)
    if ports and not isinstance(drv, PortPublisher):
        raise InvalidConfig(f"driver {network.driver!r} of network {network.name!r} cannot publish ports; drop ports=")
    if ports and network.internal:
        raise InvalidConfig(f"network {network.name!r} is internal: published ports could never be reached")
    wanted_ip = None if ip is None else parse_address(ip, "endpoint ip")
    if wanted_ip is not None and not drv.capabilities.needs_address:
        raise InvalidConfig(f"driver {network.driver!r} gives no addresses; drop ip=")
    endpoint_id = new_id()
    with rt.locks.operation(networks=[network.id]), Steps(f"create endpoint {name}") as undo:
        draft = rec.EndpointRecord(
            id=endpoint_id,
            name=name,
            network_id=network.id,
            requested_ports=rec.ports_to_json(list(ports)),
            owned_by_sandbox=owned_by_sandbox or owner_sandbox_id is not None,
            owner_sandbox_id=owner_sandbox_id,
            exposed=exposed_ports,
            created=now(),
            status=rec.CREATING,
        )
        record = _allocate_endpoint(rt, network, draft, ports, wanted_ip, needs_address=drv.capabilities.needs_address)
        undo.done("allocate", lambda: _free_endpoint(rt, record))
        net_info, ep_info = views.network_info(network), views.endpoint_info(record)
        drv.create_endpoint(net_info, ep_info)
        undo.done("driver create_endpoint", lambda: drv.delete_endpoint(net_info, ep_info))
        record = _save(rt, attrs.evolve(record, status=rec.READY))
    log.info("created endpoint %s on %s (%s)", name, network.name, record.address)
    return Endpoint(rt, record)


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


def _free_endpoint(rt: Runtime, record: rec.EndpointRecord) -> None:
    with rt.state.transaction() as tx:
        network = tx.get(rec.NetworkRecord, record.network_id)
        if record.address is not None and network is not None and network.pool_id:
            rt.ipam.release_address(network.pool_id, ipaddress.IPv4Interface(record.address).ip)
        rt.ports.release(record.id)
        tx.remove(record)


def _save(rt: Runtime, record: rec.EndpointRecord) -> rec.EndpointRecord:
    return rt.state.put(record)


def _next_ifname(rt: Runtime, sandbox: rec.SandboxRecord) -> str:
    # One past the highest index in use, so names follow join order even after
    # a leave (eth0 leaves, the next join is eth2 next to eth1), as Docker's are.
    used = [
        int(e.ifname[3:])
        for e in rt.state.endpoints_of_sandbox(sandbox.id)
        if e.ifname and e.ifname.startswith("eth") and e.ifname[3:].isdigit()
    ]
    return f"eth{max(used, default=-1) + 1}"


def join(rt: Runtime, endpoint: rec.EndpointRecord, sandbox: rec.SandboxRecord, *, ifname: str | None = None) -> None:
    """Join ``endpoint`` to ``sandbox``: driver join, address, routes, published ports, hosts file.

    ``ifname`` is the interface name to use, for a rejoin that keeps the one
    the endpoint had; the next free ethN by default.
    """
    from cnm.sandbox import check_join, refresh_files, update_gateway

    with rt.locks.operation(sandboxes=[sandbox.id], networks=[endpoint.network_id]):
        endpoint = rt.state.reload(endpoint)
        sandbox = rt.state.reload(sandbox)
        if endpoint.sandbox_id is not None:
            if endpoint.sandbox_id == sandbox.id:
                return
            other = rt.state.get(rec.SandboxRecord, endpoint.sandbox_id).name
            raise EndpointJoined(f"endpoint {endpoint.name!r} is already joined to sandbox {other!r}; leave it first")
        network = rt.state.get(rec.NetworkRecord, endpoint.network_id)
        # Docker's rule: one endpoint per network per sandbox; a second would be two interfaces on one subnet.
        connected = [e.name for e in rt.state.endpoints_of_network(network.id) if e.sandbox_id == sandbox.id]
        if connected:
            raise AlreadyConnected(
                f"sandbox {sandbox.name!r} is already connected to network {network.name!r} through endpoint "
                f"{connected[0]!r}; leave that endpoint first, or join {endpoint.name!r} to another sandbox"
            )
        drv = rt.driver(network)
        check_join(rt, sandbox, network, host_stack=not drv.capabilities.needs_sandbox_netns)
        ifname = ifname or _next_ifname(rt, sandbox)
        seq = sandbox.join_counter + 1
        with (
            Steps(f"join endpoint {endpoint.name} to sandbox {sandbox.name}") as undo,
            contextlib.ExitStack() as sockets,
        ):
            with rt.state.transaction() as tx:
                endpoint = attrs.evolve(
                    endpoint, sandbox_id=sandbox.id, ifname=ifname, join_seq=seq, status=rec.CREATING
                )
                tx.put(endpoint)
                sandbox = attrs.evolve(sandbox, join_counter=seq)
                tx.put(sandbox)
            undo.done(
                "record join",
                lambda: _save(
                    rt, attrs.evolve(endpoint, sandbox_id=None, ifname=None, gateway=None, join_seq=0, status=rec.READY)
                ),
            )
            net_info, ep_info, sb_info = (
                views.network_info(network),
                views.endpoint_info(endpoint),
                rt.sandbox_info(sandbox),
            )
            result = drv.join(net_info, ep_info, sb_info, ifname)
            undo.done("driver join", lambda: drv.leave(net_info, ep_info, sb_info))
            publisher = drv if ep_info.ports and isinstance(drv, PortPublisher) else None
            # A round trip to the firewall's worker: let it overlap the interface set-up.
            publishing = (
                None
                if publisher is None
                else Concurrent(
                    f"join endpoint {endpoint.name}",
                    "publish ports",
                    lambda: publisher.publish_ports(net_info, ep_info),
                )
            )
            nl = None  # one socket in the sandbox, for the interface and the default route
            try:
                if result.interface is not None:
                    nl = sockets.enter_context(sb_info.netns.netlink())
                    _configure_interface(nl, endpoint, result.interface, result)
            finally:
                publish_error = None if publishing is None else publishing.wait()
                if publisher is not None and publish_error is None:
                    undo.done("publish ports", lambda: publisher.unpublish_ports(net_info, ep_info))
            if publish_error is not None:
                raise publish_error
            gateway = None if result.gateway is None else str(result.gateway)
            # A driver that makes no interface (null, host) leaves the name free.
            endpoint = _save(
                rt,
                attrs.evolve(
                    endpoint, gateway=gateway, ifname=None if result.interface is None else ifname, status=rec.READY
                ),
            )
            update_gateway(rt, sandbox, nl)
            refresh_files(rt, sandbox)
    log.info("joined endpoint %s to sandbox %s as %s", endpoint.name, sandbox.name, ifname)


def _configure_interface(nl: Netlink, endpoint: rec.EndpointRecord, interface: str, result: JoinResult) -> None:
    if endpoint.address is not None:
        addresses.add_address(nl, interface, ipaddress.IPv4Interface(endpoint.address))
    links.set_link(nl, interface, up=True)
    for route in result.routes:
        routes.add_route(nl, route.destination, gateway=route.next_hop, ifname=interface)


def _lock_endpoint(rt: Runtime, endpoint: rec.EndpointRecord, held: contextlib.ExitStack) -> rec.EndpointRecord | None:
    """Lock an endpoint's sandbox (if joined) and network, in that order; the record as it is then.

    The sandbox must be known before its lock is taken, and may change while
    the lock is awaited (another thread joined or left): then try again.
    """
    while True:
        try:
            before: rec.EndpointRecord = rt.state.reload(endpoint)
        except NotFound:
            return None
        attempt = contextlib.ExitStack()
        attempt.enter_context(rt.locks.operation(sandboxes=[before.sandbox_id], networks=[before.network_id]))
        try:
            now_: rec.EndpointRecord = rt.state.reload(endpoint)
        except NotFound:
            attempt.close()
            return None
        if now_.sandbox_id == before.sandbox_id:
            held.push(attempt)
            return now_
        attempt.close()


def leave(rt: Runtime, endpoint: rec.EndpointRecord, *, keep_links: bool = False, refresh: bool = True) -> None:
    """Leave the endpoint's sandbox: drop its links there, withdraw ports, driver leave, move the route, update files.

    ``keep_links`` keeps the sandbox's links on the network, for a leave that
    is followed at once by a join of the same endpoint (same address).
    ``refresh=False`` leaves the sandbox's default route and files as they
    are, for a leave whose join follows at once and redoes both.
    """
    from cnm.links import drop_links
    from cnm.sandbox import refresh_files, update_gateway

    with contextlib.ExitStack() as held:
        current = _lock_endpoint(rt, endpoint, held)
        if current is None or current.sandbox_id is None:
            return
        endpoint = current
        network = rt.state.get(rec.NetworkRecord, endpoint.network_id)
        sandbox = rt.state.get(rec.SandboxRecord, current.sandbox_id)
        drv = rt.driver(network)
        if not keep_links:
            # Before the status changes: a link stands only while both ends are joined.
            drop_links(rt, sandbox.id, network.id)
        endpoint = _save(rt, attrs.evolve(endpoint, status=rec.DELETING))
        net_info, ep_info, sb_info = (
            views.network_info(network),
            views.endpoint_info(endpoint),
            rt.sandbox_info(sandbox),
        )
        # The firewall round trip overlaps the driver's leave; both are idempotent, so a crash
        # between them leaves a DELETING record that reconcile finishes.
        unpublishing = (
            Concurrent(
                f"leave endpoint {endpoint.name}", "unpublish ports", lambda: drv.unpublish_ports(net_info, ep_info)
            )
            if ep_info.ports and isinstance(drv, PortPublisher)
            else None
        )
        # Both steps are tried and both failures reported: the firewall rules and the interface are separate leaks.
        with Teardown(f"leave endpoint {endpoint.name} from sandbox {sandbox.name}") as teardown:
            try:
                teardown.run("driver leave", lambda: drv.leave(net_info, ep_info, sb_info))
            finally:
                unpublish_error = None if unpublishing is None else unpublishing.wait()
            if isinstance(unpublish_error, Exception):
                unpublish_error.add_note(f"in step 'unpublish ports' of {teardown.operation}")
                teardown.add(unpublish_error)
            elif unpublish_error is not None:
                raise unpublish_error
        _save(rt, attrs.evolve(endpoint, sandbox_id=None, ifname=None, gateway=None, join_seq=0, status=rec.READY))
        if refresh and not sb_info.closing:
            # A closing sandbox's routes and files go with its namespace and directory.
            update_gateway(rt, sandbox)
            refresh_files(rt, sandbox)
    log.info("endpoint %s left sandbox %s", endpoint.name, sandbox.name)


def delete_endpoint(rt: Runtime, endpoint: rec.EndpointRecord) -> None:
    """Delete an endpoint (leaving first), freeing its address and host ports."""
    with contextlib.ExitStack() as held:
        current = _lock_endpoint(rt, endpoint, held)
        if current is None:
            return
        endpoint = current
        if endpoint.sandbox_id is not None:
            leave(rt, endpoint)
            endpoint = rt.state.reload(endpoint)
        network = rt.state.get(rec.NetworkRecord, endpoint.network_id)
        endpoint = _save(rt, attrs.evolve(endpoint, status=rec.DELETING))
        rt.driver(network).delete_endpoint(views.network_info(network), views.endpoint_info(endpoint))
        _free_endpoint(rt, endpoint)
    log.info("deleted endpoint %s", endpoint.name)
