"""``NetworkDriver.*``: Docker's remote network driver calls mapped onto one cnm driver.

Docker's libnetwork keeps the model (networks, endpoints, sandboxes, the
addresses its IPAM gave); the plugin keeps only what the cnm driver needs to
be called again with the same values, in a cnm store (:mod:`cnm.plugin.state`).
Every handler is idempotent: a call Docker repeats, or repeats after the
plugin restarted, gets the same answer and changes nothing more; deletes of
what is gone succeed.

One difference from cnm's own controller shapes the join: Docker moves the
interface into the container itself (``InterfaceName.SrcName``, renamed to
``eth0``...), and sets its address, MAC and routes. So the driver is asked to
join the endpoint to a sandbox that is the host namespace, under a name that
is the endpoint's own (``cnmj`` and 11 digits of its id), and Docker takes it
from there.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import threading
from collections.abc import Callable

import attrs

from cnm.driverapi import (
    Driver,
    EndpointInfo,
    IPAMData,
    NetworkInfo,
    PortPublisher,
    Reconciler,
    SandboxInfo,
)
from cnm.driverapi import NetworkRequest as DriverNetworkRequest
from cnm.errors import EndpointNotFound, InvalidConfig, NetworkNotFound
from cnm.firewallapi import Firewall
from cnm.kernel.netns import NetNS
from cnm.plugin import messages as msg
from cnm.plugin import ports as ports_mod
from cnm.plugin.state import ENDPOINT, NETWORK, EndpointRecord, JoinRecord, NetworkRecord, docker_mac, sandbox_ifname
from cnm.steps import StepObserver, Steps, Teardown
from cnm.store import Store, Transaction

__all__ = ["NetworkPlugin", "docker_mac", "sandbox_ifname"]

log = logging.getLogger(__name__)

Route = Callable[[object], dict[str, object]]


def _pools(data: tuple[msg.IPAMData, ...]) -> tuple[IPAMData, ...]:
    pools = []
    for entry in data:
        try:
            pool = ipaddress.ip_network(entry.pool)
            gateway = ipaddress.ip_interface(entry.gateway) if entry.gateway else None
            aux = {name: ipaddress.ip_address(addr.split("/")[0]) for name, addr in entry.aux_addresses.items()}
        except ValueError as exc:
            raise msg.ProtocolError(f"NetworkDriver.CreateNetwork: bad pool {entry}: {exc}") from exc
        pools.append(IPAMData(pool=pool, gateway=gateway, aux_addresses=aux))
    return tuple(pools)


class NetworkPlugin:
    """Serves one cnm driver as Docker's remote network driver.

    Args:
        driver: the cnm driver (from :class:`cnm.registry.DriverRegistry`).
        store: where the plugin's state lives; the same store after a restart
            gives back every network and endpoint.
        host_netns: the namespace Docker's engine runs in: where the driver
            makes the interfaces Docker moves into containers.
        firewall: the driver's firewall; given, :meth:`reconcile` re-applies
            every network's rules (after a reboot they are gone).
        observer: sees every step of every operation.

    :meth:`reconcile` runs when the plugin is made: it undoes what a killed
    plugin left half made and lets the driver repair its host objects.
    """

    implements = "NetworkDriver"

    def __init__(
        self,
        driver: Driver,
        store: Store,
        *,
        host_netns: NetNS,
        firewall: Firewall | None = None,
        observer: StepObserver | None = None,
        reconcile: bool = True,
    ) -> None:
        self.driver = driver
        self._firewall = firewall
        self._store = store
        self._host = host_netns
        self._observer = observer
        # Docker calls concurrently for different containers; the calls are short and each
        # reads and writes several records, so they run one at a time.
        self._lock = threading.RLock()
        if reconcile:
            self.reconcile()

    def routes(self) -> dict[str, Route]:
        """The protocol's methods this plugin answers, by their path without the slash."""
        return {
            "NetworkDriver.GetCapabilities": self.get_capabilities,
            "NetworkDriver.CreateNetwork": self.create_network,
            "NetworkDriver.DeleteNetwork": self.delete_network,
            "NetworkDriver.AllocateNetwork": self.allocate_network,
            "NetworkDriver.FreeNetwork": self.free_network,
            "NetworkDriver.CreateEndpoint": self.create_endpoint,
            "NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "NetworkDriver.EndpointOperInfo": self.endpoint_oper_info,
            "NetworkDriver.Join": self.join,
            "NetworkDriver.Leave": self.leave,
            "NetworkDriver.ProgramExternalConnectivity": self.program_external_connectivity,
            "NetworkDriver.RevokeExternalConnectivity": self.revoke_external_connectivity,
            "NetworkDriver.DiscoverNew": self.discover,
            "NetworkDriver.DiscoverDelete": self.discover,
        }

    # --- helpers ---------------------------------------------------------------------------
    def _steps(self, operation: str) -> Steps:
        return Steps(operation, self._observer)

    def _network(self, txn: Transaction, network_id: str) -> NetworkRecord:
        record = NetworkRecord.load(txn, network_id)
        if record is None or record.state != "ready":
            raise NetworkNotFound(
                f"network {network_id[:12]} is not known to the cnm {self.driver.name} plugin (its state was lost, or "
                "it was created by another plugin); remove it with docker network rm and create it again"
            )
        return record

    def _endpoint(self, txn: Transaction, endpoint_id: str) -> EndpointRecord:
        record = EndpointRecord.load(txn, endpoint_id)
        if record is None:
            raise EndpointNotFound(
                f"endpoint {endpoint_id[:12]} is not known to the cnm {self.driver.name} plugin; "
                "disconnect the container and connect it again"
            )
        return record

    def _save(self, record: NetworkRecord | EndpointRecord) -> None:
        with self._store.transaction() as txn:
            record.save(txn)

    def _forget(self, kind: str, key: str) -> None:
        with self._store.transaction() as txn:
            txn.delete(kind, key)

    def _sandbox(self, sandbox_key: str) -> SandboxInfo:
        name = os.path.basename(sandbox_key) or sandbox_key
        return SandboxInfo(id=name, name=name, netns=self._host)

    # --- capabilities, discovery, global-scope calls ----------------------------------------
    def get_capabilities(self, body: object) -> dict[str, object]:
        """Scope and connectivity scope: the driver's own."""
        scope = self.driver.capabilities.scope
        return {"Scope": scope, "ConnectivityScope": scope}

    def discover(self, body: object) -> dict[str, object]:
        """Node discovery (swarm): nothing to do for a cnm driver."""
        msg.body_of(body, "NetworkDriver.DiscoverNew")
        return {}

    def allocate_network(self, body: object) -> dict[str, object]:
        """Swarm's global-scope allocation: a local cnm driver keeps no cluster-wide state."""
        msg.NetworkRequest.parse(body, "AllocateNetwork")
        return {"Options": {}}

    def free_network(self, body: object) -> dict[str, object]:
        """Swarm's release of :meth:`allocate_network`: nothing was kept."""
        msg.NetworkRequest.parse(body, "FreeNetwork")
        return {}

    # --- networks ------------------------------------------------------------------------------
    def create_network(self, body: object) -> dict[str, object]:
        """Validate the options with the driver and create the network; a repeated create succeeds."""
        req = msg.CreateNetworkRequest.parse(body)
        if req.enable_ipv6 or req.ipv6:
            raise InvalidConfig(
                f"network {req.network_id[:12]} asks for IPv6; the cnm plugin serves IPv4 networks only so far; "
                "create it without --ipv6"
            )
        with self._lock:
            with self._store.transaction() as txn:
                existing = NetworkRecord.load(txn, req.network_id)
            if existing is not None and existing.state == "ready":
                return {}
            if existing is not None:
                self._undo_network(existing)
            options = self.driver.validate_network(
                DriverNetworkRequest(name=req.network_id[:12], options=req.options, internal=req.internal)
            )
            info = NetworkInfo(
                id=req.network_id,
                name=req.network_id[:12],
                options=options,
                ipv4=_pools(req.ipv4),
                internal=req.internal,
            )
            with self._steps(f"create network {info.name}") as steps:
                steps.run(
                    "record the intent",
                    lambda: self._save(NetworkRecord(info=info, state="creating")),
                    undo=lambda: self._forget(NETWORK, info.id),
                )
                steps.run(
                    "create the network", lambda: self.driver.create_network(info), undo=lambda: self._delete(info)
                )
                steps.run("record the network", lambda: self._save(NetworkRecord(info=info)))
        return {}

    def _delete(self, info: NetworkInfo) -> None:
        self.driver.delete_network(info)

    def _undo_network(self, record: NetworkRecord) -> None:
        with Teardown(f"undo the half-made network {record.info.name}", self._observer) as teardown:
            teardown.run("delete the network", lambda: self.driver.delete_network(record.info))
        self._forget(NETWORK, record.info.id)

    def delete_network(self, body: object) -> dict[str, object]:
        """Delete the network; one that is not known (already deleted) succeeds."""
        req = msg.NetworkRequest.parse(body, "DeleteNetwork")
        with self._lock:
            with self._store.transaction() as txn:
                record = NetworkRecord.load(txn, req.network_id)
                endpoints = [key for key, ep in txn.list(ENDPOINT) if ep["network_id"] == req.network_id]
            if record is None:
                return {}
            with Teardown(f"delete network {record.info.name}", self._observer) as teardown:
                for endpoint_id in endpoints:
                    teardown.run(
                        f"delete endpoint {endpoint_id[:12]}", functools.partial(self._drop_endpoint, endpoint_id)
                    )
                teardown.run("delete the network", lambda: self.driver.delete_network(record.info))
            self._forget(NETWORK, record.info.id)
        return {}

    # --- endpoints -----------------------------------------------------------------------------
    def create_endpoint(self, body: object) -> dict[str, object]:
        """Create the endpoint with the address Docker gave; reply with the MAC if Docker gave none."""
        req = msg.CreateEndpointRequest.parse(body)
        if req.interface.address_ipv6:
            raise InvalidConfig(
                f"endpoint {req.endpoint_id[:12]} has an IPv6 address; the cnm plugin serves IPv4 networks only so far"
            )
        with self._lock:
            with self._store.transaction() as txn:
                network = self._network(txn, req.network_id)
                existing = EndpointRecord.load(txn, req.endpoint_id)
            if existing is not None:
                return self._endpoint_reply(req, existing.info)
            try:
                address = ipaddress.IPv4Interface(req.interface.address) if req.interface.address else None
            except ValueError as exc:
                raise msg.ProtocolError(f"NetworkDriver.CreateEndpoint: bad Interface.Address: {exc}") from exc
            mac = req.interface.mac_address or (docker_mac(address) if address is not None else None)
            info = EndpointInfo(
                id=req.endpoint_id, name=req.endpoint_id[:12], network_id=network.info.id, address=address, mac=mac
            )
            with self._steps(f"create endpoint {info.name}") as steps:
                steps.run(
                    "create the endpoint",
                    lambda: self.driver.create_endpoint(network.info, info),
                    undo=lambda: self.driver.delete_endpoint(network.info, info),
                )
                steps.run("record the endpoint", lambda: self._save(EndpointRecord(info=info)))
        return self._endpoint_reply(req, info)

    @staticmethod
    def _endpoint_reply(req: msg.CreateEndpointRequest, info: EndpointInfo) -> dict[str, object]:
        # Only what Docker left empty may be returned: a MAC Docker gave is not sent back.
        mac = "" if req.interface.mac_address or info.mac is None else info.mac
        return {"Interface": msg.EndpointInterface(mac_address=mac).to_json()}

    def delete_endpoint(self, body: object) -> dict[str, object]:
        """Delete the endpoint (leaving and unpublishing first if Docker did not); gone already succeeds."""
        req = msg.EndpointRequest.parse(body, "DeleteEndpoint")
        with self._lock:
            self._drop_endpoint(req.endpoint_id)
        return {}

    def _drop_endpoint(self, endpoint_id: str) -> None:
        with self._store.transaction() as txn:
            record = EndpointRecord.load(txn, endpoint_id)
            network = None if record is None else NetworkRecord.load(txn, record.info.network_id)
        if record is None:
            return
        if network is not None:
            record = self._unpublish(network, record)
            record = self._leave(network, record)
            self.driver.delete_endpoint(network.info, record.info)
        self._forget(ENDPOINT, endpoint_id)

    def endpoint_oper_info(self, body: object) -> dict[str, object]:
        """What ``docker inspect`` may show of the endpoint: the cnm driver, interface and published ports."""
        req = msg.EndpointRequest.parse(body, "EndpointOperInfo")
        with self._store.transaction() as txn:
            record = EndpointRecord.load(txn, req.endpoint_id)
        if record is None:
            return {"Value": {}}
        value: dict[str, object] = {"cnm.driver": self.driver.name}
        if record.join is not None:
            value["cnm.interface"] = record.join.ifname
        if record.info.ports:
            value["cnm.ports"] = [str(p) for p in record.info.ports]
        return {"Value": value}

    # --- join and leave ------------------------------------------------------------------------
    def join(self, body: object) -> dict[str, object]:
        """Have the driver make the endpoint's interface in the host namespace, for Docker to move in."""
        req = msg.JoinRequest.parse(body)
        with self._lock:
            with self._store.transaction() as txn:
                record = self._endpoint(txn, req.endpoint_id)
                network = self._network(txn, record.info.network_id)
            if record.join is not None and record.join.state == "joined" and record.join.sandbox_key == req.sandbox_key:
                return dict(record.join.reply)
            if record.join is not None:
                record = self._leave(network, record)
            ifname = sandbox_ifname(record.info.id)
            sandbox = self._sandbox(req.sandbox_key)
            joining = attrs.evolve(record, join=JoinRecord(sandbox_key=req.sandbox_key, ifname=ifname, state="joining"))
            with self._steps(f"join endpoint {record.info.name}") as steps:
                steps.run("record the intent", lambda: self._save(joining), undo=lambda: self._save(record))
                result = steps.run(
                    "join",
                    lambda: self.driver.join(network.info, record.info, sandbox, ifname),
                    undo=lambda: self.driver.leave(network.info, record.info, sandbox),
                )
                reply = msg.JoinReply(
                    src_name=result.interface or "",
                    gateway="" if result.gateway is None else str(result.gateway),
                    static_routes=tuple(
                        msg.StaticRoute(
                            destination=str(route.destination),
                            route_type=msg.ROUTE_CONNECTED if route.next_hop is None else msg.ROUTE_NEXTHOP,
                            next_hop="" if route.next_hop is None else str(route.next_hop),
                        )
                        for route in result.routes
                    ),
                ).to_json()
                if not result.interface:
                    del reply["InterfaceName"]  # the driver made no interface (null, host): Docker adds none
                join_record = JoinRecord(sandbox_key=req.sandbox_key, ifname=ifname, state="joined", reply=reply)
                joined = attrs.evolve(joining, join=join_record)
                steps.run("record the join", lambda: self._save(joined))
        return reply

    def leave(self, body: object) -> dict[str, object]:
        """Undo the join (Docker has taken the interface back out of the container); not joined succeeds."""
        req = msg.EndpointRequest.parse(body, "Leave")
        with self._lock:
            with self._store.transaction() as txn:
                record = EndpointRecord.load(txn, req.endpoint_id)
                network = None if record is None else NetworkRecord.load(txn, record.info.network_id)
            if record is not None and network is not None:
                self._leave(network, self._unpublish(network, record))
        return {}

    def _leave(self, network: NetworkRecord, record: EndpointRecord) -> EndpointRecord:
        if record.join is None:
            return record
        self.driver.leave(network.info, record.info, self._sandbox(record.join.sandbox_key))
        left = attrs.evolve(record, join=None)
        self._save(left)
        return left

    # --- published ports -----------------------------------------------------------------------
    def program_external_connectivity(self, body: object) -> dict[str, object]:
        """Publish the endpoint's ``-p`` ports through the driver (Docker leaves remote networks' ports to them)."""
        req = msg.EndpointRequest.parse(body, "ProgramExternalConnectivity")
        with self._lock:
            with self._store.transaction() as txn:
                record = self._endpoint(txn, req.endpoint_id)
                network = self._network(txn, record.info.network_id)
            if record.ports_state == "published":
                return {}
            record = self._unpublish(network, record)
            if not req.port_map:
                return {}
            driver = self.driver
            if not isinstance(driver, PortPublisher):
                raise InvalidConfig(
                    f"the cnm {driver.name} driver cannot publish ports; run the container without -p, "
                    "or on a network of a driver that can (bridge)"
                )
            with self._steps(f"publish the ports of endpoint {record.info.name}") as steps:
                ports = steps.run(
                    "reserve host ports",
                    lambda: ports_mod.reserve(self._store, record.info.id, req.port_map),
                    undo=lambda: ports_mod.release(self._store, record.info.id),
                )
                info = attrs.evolve(record.info, ports=ports)
                publishing = attrs.evolve(record, info=info, ports_state="publishing")
                steps.run("record the intent", lambda: self._save(publishing), undo=lambda: self._save(record))
                steps.run(
                    "publish",
                    lambda: driver.publish_ports(network.info, info),
                    undo=lambda: driver.unpublish_ports(network.info, info),
                )
                steps.run("record the ports", lambda: self._save(attrs.evolve(publishing, ports_state="published")))
        return {}

    def revoke_external_connectivity(self, body: object) -> dict[str, object]:
        """Withdraw the published ports; none published succeeds."""
        req = msg.EndpointRequest.parse(body, "RevokeExternalConnectivity")
        with self._lock:
            with self._store.transaction() as txn:
                record = EndpointRecord.load(txn, req.endpoint_id)
                network = None if record is None else NetworkRecord.load(txn, record.info.network_id)
            if record is not None and network is not None:
                self._unpublish(network, record)
        return {}

    def _unpublish(self, network: NetworkRecord, record: EndpointRecord) -> EndpointRecord:
        if not record.ports_state and not record.info.ports:
            return record
        if isinstance(self.driver, PortPublisher) and record.info.ports:
            self.driver.unpublish_ports(network.info, record.info)
        ports_mod.release(self._store, record.info.id)
        done = attrs.evolve(record, info=attrs.evolve(record.info, ports=()), ports_state="")
        self._save(done)
        return done

    # --- after a restart -----------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """Undo what a killed plugin left half made, then let the driver repair its host objects.

        Returns:
            A description of each repair.
        """
        done: list[str] = []
        with self._lock:
            with self._store.transaction() as txn:
                networks = [NetworkRecord.from_record(k, v) for k, v in txn.list(NETWORK)]
                endpoints = [EndpointRecord.from_record(k, v) for k, v in txn.list(ENDPOINT)]
            by_id = {n.info.id: n for n in networks}
            for net in networks:
                if net.state == "creating":
                    self._undo_network(net)
                    done.append(f"undid the half-made network {net.info.name}")
            ready = {k: n for k, n in by_id.items() if n.state == "ready"}
            for stored in endpoints:
                ep = stored
                net_record = ready.get(ep.info.network_id)
                if net_record is None:
                    self._forget(ENDPOINT, ep.info.id)
                    done.append(f"forgot endpoint {ep.info.name} of a network that is gone")
                    continue
                if ep.ports_state == "publishing":
                    ep = self._unpublish(net_record, ep)
                    done.append(f"withdrew the half-published ports of endpoint {ep.info.name}")
                if ep.join is not None and ep.join.state == "joining":
                    ep = self._leave(net_record, ep)
                    done.append(f"undid the half-made join of endpoint {ep.info.name}")
            with self._store.transaction() as txn:
                publishing = {k for k, v in txn.list(ENDPOINT) if v["ports_state"]}
            if ports_mod.release_orphans(self._store, publishing):
                done.append("gave back host ports a killed plugin had reserved for no published endpoint")
            done += self._repair_driver(list(ready.values()))
        for line in done:
            log.info("reconcile: %s", line)
        return done

    def _repair_driver(self, networks: list[NetworkRecord]) -> list[str]:
        driver = self.driver
        if not isinstance(driver, Reconciler):
            return []
        done = []
        with self._store.transaction() as txn:
            endpoints = [EndpointRecord.from_record(k, v) for k, v in txn.list(ENDPOINT)]
        joined = [ep.info for ep in endpoints if ep.join is not None]
        for net in networks:
            if driver.restore_network(net.info):
                done.append(f"re-created the host objects of network {net.info.name}")
        if self._firewall is not None:
            rules = []
            for net in networks:
                members = [ep for ep in joined if ep.network_id == net.info.id]
                network_rules = driver.firewall_rules(net.info, members)
                if network_rules is not None:
                    rules.append(network_rules)
            self._firewall.reapply(rules)
        done += driver.collect_garbage([n.info for n in networks], joined)
        return done
