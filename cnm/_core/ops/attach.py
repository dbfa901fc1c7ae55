"""Joining an endpoint to a sandbox and leaving it again (internal).

A join records the intent (the endpoint ``creating`` in its sandbox), has the
driver make the interface, configures it in the sandbox, publishes the ports,
then settles the record and refreshes the sandbox's default route and hosts
file; every step is undone if a later one fails. A leave goes the other way and
goes on past failures (:class:`cnm.steps.Teardown`).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging

import attrs

from cnm._core import records as rec
from cnm._core import views
from cnm._core.ops.legacy_links import drop_links
from cnm._core.ops.names import sync_network
from cnm._core.ops.refresh import refresh_files, update_gateway
from cnm._core.runtime import Runtime
from cnm._core.sandbox_os import SandboxNetwork
from cnm.driverapi import JoinResult, PortPublisher
from cnm.errors import AlreadyConnected, EndpointJoined, InvalidConfig, NotFound
from cnm.steps import Concurrent, Steps, Teardown

__all__ = ["check_join", "join", "leave", "lock_endpoint", "save"]

log = logging.getLogger(__name__)


def save(rt: Runtime, record: rec.EndpointRecord) -> rec.EndpointRecord:
    """Store an endpoint record as it is now; the record."""
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


def check_join(rt: Runtime, sandbox: rec.SandboxRecord, network: rec.NetworkRecord, *, host_stack: bool) -> None:
    """Refuse a join the sandbox's mode does not allow, as ``docker network connect`` does.

    Args:
        rt: the controller's runtime.
        sandbox: the sandbox about to be joined.
        network: the endpoint's network.
        host_stack: the network's driver gives the host's own stack (needs no
            namespace of the sandbox's own: the host driver).

    Raises:
        InvalidConfig: a sharer joins anything; a host-mode sandbox joins a
            network that needs its own namespace, or a second network; a
            private one joins the host network; ``none`` is combined with others.
    """
    if sandbox.mode == rec.CONTAINER:
        owner = rt.state.get(rec.SandboxRecord, sandbox.shares or "").name
        raise InvalidConfig(
            f"sandbox {sandbox.name!r} uses the namespace of sandbox {owner!r}; connect {owner!r} to "
            f"{network.name!r} instead"
        )
    joined = [rt.state.get(rec.NetworkRecord, e.network_id) for e in rt.state.endpoints_of_sandbox(sandbox.id)]
    if sandbox.mode == rec.HOST and (not host_stack or joined):
        raise InvalidConfig(
            f"sandbox {sandbox.name!r} uses the host's own stack; it cannot join network {network.name!r}"
        )
    if sandbox.mode != rec.HOST and host_stack:
        raise InvalidConfig(
            f"network {network.name!r} gives the host's own stack; only a sandbox created with "
            f"network={network.name!r} can be on it"
        )
    exclusive = [n for n in (network, *joined) if rt.driver(n).capabilities.exclusive]
    if joined and exclusive:
        raise InvalidConfig(
            f"sandbox {sandbox.name!r} cannot be on network {exclusive[0].name!r} and on others at once: its driver "
            f"{exclusive[0].driver!r} makes exclusive networks (as the null network 'none' is); disconnect it first"
        )


def join(rt: Runtime, endpoint: rec.EndpointRecord, sandbox: rec.SandboxRecord, *, ifname: str | None = None) -> None:
    """Join ``endpoint`` to ``sandbox``: driver join, address, routes, published ports, hosts file.

    ``ifname`` is the interface name to use, for a rejoin that keeps the one
    the endpoint had; the next free ethN by default.
    """
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
        # Looked up among the sandbox's few endpoints, not the network's (thousands: one record read each).
        connected = [e.name for e in rt.state.endpoints_of_sandbox(sandbox.id) if e.network_id == network.id]
        if connected:
            raise AlreadyConnected(
                f"sandbox {sandbox.name!r} is already connected to network {network.name!r} through endpoint "
                f"{connected[0]!r}; leave that endpoint first, or join {endpoint.name!r} to another sandbox"
            )
        drv = rt.driver(network)
        check_join(rt, sandbox, network, host_stack=not drv.capabilities.needs_sandbox_netns)
        ifname = ifname or _next_ifname(rt, sandbox)
        seq = sandbox.join_counter + 1
        joining = attrs.evolve(endpoint, sandbox_id=sandbox.id, ifname=ifname, join_seq=seq, status=rec.CREATING)
        unjoined = attrs.evolve(joining, sandbox_id=None, ifname=None, gateway=None, join_seq=0, status=rec.READY)
        counted = attrs.evolve(sandbox, join_counter=seq)
        with (
            Steps(f"join endpoint {endpoint.name} to sandbox {sandbox.name}", rt.observer) as steps,
            contextlib.ExitStack() as opened,
        ):
            hold = bool(joining.ports) and isinstance(drv, PortPublisher)
            steps.run(
                "record join", lambda: _record_join(rt, joining, counted, hold=hold), undo=lambda: save(rt, unjoined)
            )
            steps.done("hold host ports", lambda: rt.ports.unhold(joining.id))
            endpoint, sandbox = joining, counted
            net_info, ep_info, sb_info = (
                views.network_info(network),
                views.endpoint_info(endpoint),
                rt.sandbox_info(sandbox),
            )
            result = steps.run(
                "driver join",
                lambda: drv.join(net_info, ep_info, sb_info, ifname),
                undo=lambda: drv.leave(net_info, ep_info, sb_info),
            )
            publisher = drv if ep_info.ports and isinstance(drv, PortPublisher) else None
            # A round trip to the firewall's worker: let it overlap the interface set-up.
            publishing = (
                None
                if publisher is None
                else steps.concurrently("publish ports", lambda: publisher.publish_ports(net_info, ep_info))
            )
            stack = None  # one socket in the sandbox, for the interface and the default route
            try:
                if result.interface is not None:
                    stack = opened.enter_context(rt.sandbox_os.network(sandbox.netns_path))
                    steps.run("configure interface", functools.partial(_configure, stack, endpoint, result))
            finally:
                publish_error = None if publishing is None else publishing.wait()
                if publisher is not None and publish_error is None:
                    steps.done("publish ports", lambda: publisher.unpublish_ports(net_info, ep_info))
            if publish_error is not None:
                raise publish_error
            gateway = None if result.gateway is None else str(result.gateway)
            # A driver that makes no interface (null, host) leaves the name free.
            joined = attrs.evolve(
                endpoint, gateway=gateway, ifname=None if result.interface is None else ifname, status=rec.READY
            )
            endpoint = steps.run("record joined", lambda: save(rt, joined))
            steps.run("default route", functools.partial(update_gateway, rt, sandbox, stack))
            steps.run("hosts file", functools.partial(refresh_files, rt, sandbox))
            # The resolver serves the new names before join returns.
            steps.run("names", functools.partial(sync_network, rt, network))
    log.info("joined endpoint %s to sandbox %s as %s", endpoint.name, sandbox.name, ifname)


def _record_join(rt: Runtime, endpoint: rec.EndpointRecord, sandbox: rec.SandboxRecord, *, hold: bool) -> None:
    with rt.state.transaction() as tx:
        tx.put(endpoint)
        tx.put(sandbox)
        if hold:
            # While published, the host ports are held by sockets: no other program can bind them.
            # In this transaction, so the holder records are written with the join's.
            rt.ports.hold(endpoint.id)


def _record_left(rt: Runtime, endpoint: rec.EndpointRecord, *, unhold: bool) -> None:
    with rt.state.transaction():  # one transaction: the record and the holder records
        save(rt, endpoint)
        if unhold:
            rt.ports.unhold(endpoint.id)


def _configure(stack: SandboxNetwork, endpoint: rec.EndpointRecord, result: JoinResult) -> None:
    address = None if endpoint.address is None else ipaddress.IPv4Interface(endpoint.address)
    routes = [(route.destination, route.next_hop) for route in result.routes]
    stack.configure_interface(result.interface or "", address, routes)


def lock_endpoint(rt: Runtime, endpoint: rec.EndpointRecord, held: contextlib.ExitStack) -> rec.EndpointRecord | None:
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
    with contextlib.ExitStack() as held:
        current = lock_endpoint(rt, endpoint, held)
        if current is None or current.sandbox_id is None:
            return
        endpoint = current
        network = rt.state.get(rec.NetworkRecord, endpoint.network_id)
        sandbox = rt.state.get(rec.SandboxRecord, current.sandbox_id)
        drv = rt.driver(network)
        if not keep_links:
            # Before the status changes: a link stands only while both ends are joined.
            drop_links(rt, sandbox.id, network.id)
        operation = f"leave endpoint {endpoint.name} from sandbox {sandbox.name}"
        leaving = attrs.evolve(endpoint, status=rec.DELETING)
        with Steps(operation, rt.observer) as steps:
            endpoint = steps.run("record leave", lambda: save(rt, leaving))
        net_info, ep_info, sb_info = (
            views.network_info(network),
            views.endpoint_info(endpoint),
            rt.sandbox_info(sandbox),
        )
        # The firewall round trip overlaps the driver's leave; both are idempotent, so a crash
        # between them leaves a DELETING record that reconcile finishes.
        unpublishing = (
            Concurrent(operation, "unpublish ports", lambda: drv.unpublish_ports(net_info, ep_info), rt.observer)
            if ep_info.ports and isinstance(drv, PortPublisher)
            else None
        )
        # Both steps are tried and both failures reported: the firewall rules and the interface are separate leaks.
        with Teardown(operation, rt.observer) as teardown:
            try:
                teardown.run("driver leave", lambda: drv.leave(net_info, ep_info, sb_info))
            finally:
                unpublish_error = None if unpublishing is None else unpublishing.wait()
            if isinstance(unpublish_error, Exception):
                teardown.add(unpublish_error)
            elif unpublish_error is not None:
                raise unpublish_error
        left = attrs.evolve(endpoint, sandbox_id=None, ifname=None, gateway=None, join_seq=0, status=rec.READY)
        with Steps(operation, rt.observer) as steps:
            steps.run("record left", lambda: _record_left(rt, left, unhold=bool(ep_info.ports)))
            steps.run("names", functools.partial(sync_network, rt, network))
            if refresh and not sb_info.closing:
                # A closing sandbox's routes and files go with its namespace and directory.
                steps.run("default route", functools.partial(update_gateway, rt, sandbox))
                steps.run("hosts file", functools.partial(refresh_files, rt, sandbox))
    log.info("endpoint %s left sandbox %s", endpoint.name, sandbox.name)
