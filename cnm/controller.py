"""The Controller: the entry point that owns a state_dir and a host namespace."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from cnm import _records as rec
from cnm._runtime import Runtime, StateLock
from cnm.driverapi import DriverContext
from cnm.errors import InvalidConfig, NotFound
from cnm.firewall import Firewall
from cnm.firewall.iptables import IptablesFirewall
from cnm.ipam import LocalIpam
from cnm.kernel.netns import NetNS
from cnm.network import Network, create_network
from cnm.portmapper import PortAllocator, read_ephemeral_range
from cnm.registry import DriverRegistry
from cnm.sandbox import Sandbox, create_sandbox
from cnm.store import SqliteStore
from cnm.types import IPAMConfig, PortBinding

__all__ = ["DEFAULT_BRIDGE", "Controller"]

log = logging.getLogger(__name__)

DEFAULT_BRIDGE = "cnm0"
"""The device name of the predefined ``bridge`` network (Docker's docker0)."""


class Controller:
    """Creates and finds networks and sandboxes; owns the store and the host namespace.

    Args:
        state_dir: where the store (SQLite), sandbox namespaces and files live.
            Created if missing. Several processes may share one.
        host_netns: the namespace this controller treats as the host: a name
            under /run/netns, a path, a :class:`~cnm.kernel.netns.NetNS`, or None
            for the calling process's own. Every kernel object of this controller
            and its drivers lives there.
        firewall: the firewall backend; python-iptables in ``host_netns`` by default.
        registry: the driver registry; by default drivers come from the
            ``cnm.drivers`` entry points.
        predefined: create Docker's predefined networks ``bridge``, ``none`` and ``host``.
    """

    def __init__(
        self,
        state_dir: str = "/var/lib/cnm",
        host_netns: str | NetNS | None = None,
        *,
        firewall: Firewall | None = None,
        registry: DriverRegistry | None = None,
        predefined: bool = True,
    ) -> None:
        if host_netns is None:
            host = NetNS.current()
        elif isinstance(host_netns, NetNS):
            host = host_netns
        else:
            host = NetNS.named(host_netns)
        if not host.exists():
            raise NotFound(f"host namespace {host.path} does not exist; create it first (ip netns add NAME)")
        self.state_dir = os.path.abspath(state_dir)
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        self.host_netns = host
        self.firewall: Firewall = firewall or IptablesFirewall(host)
        store = SqliteStore(os.path.join(self.state_dir, "cnm.db"))
        self.registry = registry or DriverRegistry(self._driver_context)
        self._rt = Runtime(
            state_dir=self.state_dir,
            host_netns=host,
            store=store,
            ipam=LocalIpam(store),
            ports=PortAllocator(store, host, read_ephemeral_range(host)),
            registry=self.registry,
            lock=StateLock(os.path.join(self.state_dir, "lock")),
        )
        if predefined:
            self._ensure_predefined()

    def _driver_context(self, name: str) -> DriverContext:
        path = os.path.join(self.state_dir, "drivers", name)
        os.makedirs(path, exist_ok=True)
        return DriverContext(host_netns=self.host_netns, firewall=self.firewall, state_dir=path)

    def _ensure_predefined(self) -> None:
        with self._rt.lock:
            existing = {n.name for n in self._rt.list_records("network", rec.NetworkRecord)}
            wanted: list[tuple[str, str, Mapping[str, object]]] = [
                ("none", "null", {}),
                ("host", "host", {}),
                ("bridge", "bridge", {"bridge_name": DEFAULT_BRIDGE, "default_bridge": True}),
            ]
            for name, driver, options in wanted:
                if name not in existing and driver in self.registry.names():
                    create_network(
                        self._rt,
                        name,
                        driver=driver,
                        ipam=None,
                        options=options,
                        internal=False,
                        labels=None,
                        predefined=True,
                    )

    def close(self) -> None:
        """Release the store connection. Kernel state stays as it is."""
        self._rt.store.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- networks ------------------------------------------------------------
    def create_network(
        self,
        name: str,
        driver: str = "bridge",
        *,
        ipam: IPAMConfig | None = None,
        options: Mapping[str, object] | None = None,
        internal: bool = False,
        labels: Mapping[str, str] | None = None,
    ) -> Network:
        """Create a network, as ``docker network create`` does.

        Args:
            name: unique among this controller's networks.
            driver: an installed driver (``bridge``, ``null``, ``host``, or a third-party one).
            ipam: subnet, gateway, ip_range and aux addresses; a free default pool if omitted.
            options: driver options, e.g. ``{"icc": False, "mtu": 1400}`` for the bridge driver.
            internal: if True, nothing leaves the network (no gateway, no NAT).
            labels: free-form metadata.

        Raises:
            AlreadyExists, DriverNotFound, InvalidConfig, PoolOverlap, Exhausted, KernelError.
            On any error nothing is left behind.
        """
        return create_network(
            self._rt, name, driver=driver, ipam=ipam, options=options, internal=internal, labels=labels
        )

    def networks(self) -> list[Network]:
        """Every network, in name order."""
        records = sorted(self._rt.list_records("network", rec.NetworkRecord), key=lambda r: r.name)
        return [Network(self._rt, r) for r in records]

    def network(self, ref: str) -> Network:
        """A network by name, id or unique id prefix; :class:`cnm.errors.NetworkNotFound` if none."""
        return Network(self._rt, self._rt.network_record(ref))

    # --- sandboxes -----------------------------------------------------------
    def create_sandbox(
        self,
        name: str,
        *,
        hostname: str | None = None,
        network: str | None = None,
        ports: Sequence[PortBinding] = (),
        dns: Sequence[str] = (),
        dns_search: Sequence[str] = (),
        dns_options: Sequence[str] = (),
    ) -> Sandbox:
        """Create a sandbox, and with ``network`` connect it in one call (``docker run --net``).

        Args:
            name: unique among this controller's sandboxes.
            hostname: what processes inside see; the name by default.
            network: a network to connect to right away, through an endpoint named
                after the sandbox that the sandbox owns (deleted with it).
                ``None`` leaves the sandbox with loopback only.
            ports: ports to publish through that endpoint.
            dns, dns_search, dns_options: resolv.conf overrides.
        """
        from cnm.endpoint import create_endpoint, join

        if ports and network is None:
            raise InvalidConfig("ports need a network to publish them on; add network=")
        with self._rt.lock:
            sandbox = create_sandbox(
                self._rt, name, hostname=hostname, dns=dns, dns_search=dns_search, dns_options=dns_options
            )
            if network is None:
                return sandbox
            try:
                net = self._rt.network_record(network)
                endpoint = create_endpoint(self._rt, net, name, ports=ports, owned_by_sandbox=True)
                try:
                    join(self._rt, endpoint._record, sandbox._record)
                except BaseException:
                    endpoint.delete()
                    raise
            except BaseException:
                sandbox.delete()
                raise
            return sandbox

    def sandboxes(self) -> list[Sandbox]:
        """Every sandbox, in name order."""
        records = sorted(self._rt.list_records("sandbox", rec.SandboxRecord), key=lambda r: r.name)
        return [Sandbox(self._rt, r) for r in records]

    def sandbox(self, ref: str) -> Sandbox:
        """A sandbox by name, id or unique id prefix; :class:`cnm.errors.SandboxNotFound` if none."""
        return Sandbox(self._rt, self._rt.sandbox_record(ref))
