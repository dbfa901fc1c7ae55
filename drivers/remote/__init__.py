"""The remote driver: a cnm network served by an existing Docker network plugin.

The reverse of ``cnm plugin serve``: cnm's controller keeps the model (IPAM,
sandboxes, names) and this driver forwards each verb to a plugin over Docker's
remote driver protocol, then does with the replies what dockerd does: it moves
the interface the plugin made (``SrcName``) into the sandbox under the name
cnm asked for, and takes it back out before ``Leave``.

Options: ``plugin=NAME`` (found as Docker finds it: ``/run/docker/plugins/NAME.sock``
or a ``NAME.spec`` file) or ``socket=PATH``; every other option goes to the
plugin as a driver option (Docker's ``com.docker.network.generic``)::

    ctl.create_network("mesh", driver="remote", options={"plugin": "weave", "mtu": "1400"})
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections.abc import Mapping
from typing import ClassVar

from cnm.driverapi import (
    Capabilities,
    Driver,
    DriverContext,
    EndpointInfo,
    JoinResult,
    NetworkInfo,
    NetworkRequest,
    PortPublisher,
    SandboxInfo,
    StaticRoute,
)
from cnm.errors import InvalidConfig, KernelError
from cnm.kernel import links

from .client import RemoteClient, find_socket

__all__ = ["RemoteDriver"]

log = logging.getLogger(__name__)

_PROTOCOLS = {"tcp": 6, "udp": 17}


class RemoteDriver:
    """Forwards the CNM verbs to a Docker network plugin."""

    name: ClassVar[str] = "remote"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, context: DriverContext) -> None:
        self._host = context.host_netns
        self._state_dir = context.state_dir
        self._clients: dict[str, RemoteClient] = {}

    # --- helpers ---------------------------------------------------------------------------
    def _client(self, network: NetworkInfo | Mapping[str, object]) -> RemoteClient:
        options = network.options if isinstance(network, NetworkInfo) else network
        path = str(options["socket"])
        client = self._clients.get(path)
        if client is None:
            client = self._clients[path] = RemoteClient(path)
        return client

    def _join_file(self, endpoint: EndpointInfo) -> str:
        return os.path.join(self._state_dir, f"join-{endpoint.id}.json")

    @staticmethod
    def _port_options(endpoint: EndpointInfo) -> dict[str, object]:
        exposed = [{"Proto": _PROTOCOLS[p.protocol], "Port": port} for p in endpoint.ports for port in p.container_port]
        portmap = []
        for p in endpoint.ports:
            host = p.host_port
            portmap.append(
                {
                    "Proto": _PROTOCOLS[p.protocol],
                    "IP": "",
                    "Port": p.container_port.start,
                    "HostIP": "" if p.host_ip is None or p.host_ip.is_unspecified else str(p.host_ip),
                    "HostPort": 0 if host is None else host.start,
                    "HostPortEnd": 0 if host is None else host.end,
                }
            )
        return {"com.docker.network.endpoint.exposedports": exposed, "com.docker.network.portmap": portmap}

    # --- verbs -------------------------------------------------------------------------------
    def validate_network(self, network: NetworkRequest) -> dict[str, object]:
        """Find the plugin (``plugin=`` or ``socket=``) and check that it is a local network driver."""
        options = dict(network.options)
        plugin, sock = options.pop("plugin", None), options.pop("socket", None)
        if (plugin is None) == (sock is None):
            raise InvalidConfig("the remote driver needs exactly one of the options plugin=NAME and socket=PATH")
        path = str(sock) if sock is not None else find_socket(str(plugin))
        client = RemoteClient(path)
        implements = client.call("Plugin.Activate").get("Implements") or []
        if "NetworkDriver" not in implements:
            raise InvalidConfig(f"the plugin at {path} implements {implements}, not NetworkDriver; choose another")
        scope = client.call("NetworkDriver.GetCapabilities").get("Scope", "local")
        if scope != "local":
            raise InvalidConfig(f"the plugin at {path} is {scope}-scoped; the remote driver serves local plugins only")
        return {"socket": path, "generic": {str(k): str(v) for k, v in options.items()}}

    def create_network(self, network: NetworkInfo) -> None:
        """CreateNetwork with the network's pools; an already-created network is the plugin's to accept."""
        generic: dict[str, object] = dict(network.options.get("generic", {}))  # type: ignore[call-overload]
        if network.internal:
            generic["com.docker.network.internal"] = True
        pools = [
            {
                "AddressSpace": "CnmLocal",
                "Pool": str(p.pool),
                **({"Gateway": str(p.gateway)} if p.gateway is not None else {}),
                **({"AuxAddresses": {k: str(v) for k, v in p.aux_addresses.items()}} if p.aux_addresses else {}),
            }
            for p in network.ipv4
        ]
        self._client(network).call(
            "NetworkDriver.CreateNetwork",
            {
                "NetworkID": network.id,
                "Options": {"com.docker.network.enable_ipv6": False, "com.docker.network.generic": generic},
                "IPv4Data": pools,
                "IPv6Data": [],
            },
            refused=InvalidConfig,  # the protocol has no validation call: a refused create is a refused config
        )

    def delete_network(self, network: NetworkInfo) -> None:
        """DeleteNetwork."""
        self._client(network).call("NetworkDriver.DeleteNetwork", {"NetworkID": network.id})

    def create_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """CreateEndpoint with the address and MAC cnm gave (the plugin may not change them)."""
        reply = self._client(network).call(
            "NetworkDriver.CreateEndpoint",
            {
                "NetworkID": network.id,
                "EndpointID": endpoint.id,
                "Interface": {
                    "Address": "" if endpoint.address is None else str(endpoint.address),
                    "AddressIPv6": "",
                    "MacAddress": endpoint.mac or "",
                },
                "Options": self._port_options(endpoint),
            },
            refused=InvalidConfig,
        )
        iface = reply.get("Interface") or {}
        given = {k for k, v in iface.items() if v}
        if (endpoint.address is not None and "Address" in given) or (endpoint.mac and "MacAddress" in given):
            raise InvalidConfig(f"the plugin at {network.options['socket']} changed endpoint {endpoint.name}'s {given}")

    def delete_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """DeleteEndpoint."""
        self._client(network).call("NetworkDriver.DeleteEndpoint", {"NetworkID": network.id, "EndpointID": endpoint.id})

    def join(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo, ifname: str) -> JoinResult:
        """Join, then move the plugin's interface into the sandbox as ``ifname``, as dockerd does."""
        reply = self._client(network).call(
            "NetworkDriver.Join",
            {
                "NetworkID": network.id,
                "EndpointID": endpoint.id,
                "SandboxKey": sandbox.netns.path,
                "Options": self._port_options(endpoint),
            },
        )
        name = reply.get("InterfaceName") or {}
        src = name.get("SrcName") or ""
        if src:
            try:
                with self._host.netlink() as nl:
                    if links.get_link(nl, src) is None:
                        raise KernelError(
                            f"the plugin at {network.options['socket']} answered Join with {src}, not made"
                        )
                    links.move_link(nl, src, sandbox.netns, new_name=ifname, mac=endpoint.mac)
            except BaseException:
                # As dockerd does when it cannot take the interface: Leave, so the plugin removes it.
                self._client(network).call("NetworkDriver.Leave", {"NetworkID": network.id, "EndpointID": endpoint.id})
                raise
            with open(self._join_file(endpoint), "w") as f:
                json.dump({"src_name": src, "ifname": ifname}, f)
        routes = []
        for route in reply.get("StaticRoutes") or []:
            hop = route.get("NextHop") or ""
            routes.append(
                StaticRoute(
                    destination=ipaddress.IPv4Network(route["Destination"]),
                    next_hop=ipaddress.IPv4Address(hop) if hop and route.get("RouteType", 0) == 0 else None,
                )
            )
        gateway = reply.get("Gateway") or ""
        return JoinResult(
            interface=ifname if src else None,
            gateway=ipaddress.IPv4Address(gateway) if gateway else None,
            routes=tuple(routes),
        )

    def leave(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo) -> None:
        """Take the interface back to the host under the plugin's name, as dockerd does, then Leave."""
        path = self._join_file(endpoint)
        joined: dict[str, str] = {}
        try:
            with open(path) as f:
                joined = json.load(f)
        except FileNotFoundError:
            pass  # nothing was moved in (or a repeated leave)
        if joined and sandbox.netns.exists():
            with sandbox.netns.netlink() as nl:
                if links.get_link(nl, joined["ifname"]) is not None:
                    links.move_link(nl, joined["ifname"], self._host, new_name=joined["src_name"])
        self._client(network).call("NetworkDriver.Leave", {"NetworkID": network.id, "EndpointID": endpoint.id})
        if joined:
            os.unlink(path)

    # --- published ports -----------------------------------------------------------------------
    def publish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """ProgramExternalConnectivity with the ports (the plugin publishes them)."""
        self._client(network).call(
            "NetworkDriver.ProgramExternalConnectivity",
            {"NetworkID": network.id, "EndpointID": endpoint.id, "Options": self._port_options(endpoint)},
            optional=True,
        )

    def unpublish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """RevokeExternalConnectivity."""
        self._client(network).call(
            "NetworkDriver.RevokeExternalConnectivity",
            {"NetworkID": network.id, "EndpointID": endpoint.id},
            optional=True,
        )


_: type[Driver] = RemoteDriver
_publisher: type[PortPublisher] = RemoteDriver
