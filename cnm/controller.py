"""The Controller: the entry point that owns a state_dir and a host namespace."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from cnm._core import records as rec
from cnm._core.firewall_choice import choose_firewall
from cnm._core.locks import StateLocks
from cnm._core.ops import networks, sandboxes
from cnm._core.reconcile import reapply_firewall, reconcile
from cnm._core.runtime import Runtime
from cnm._core.sandbox_os import SandboxOS
from cnm._core.state import State
from cnm._core.state_dir import prepare_state_dir
from cnm.driverapi import DriverContext, owner_mark
from cnm.errors import NotFound
from cnm.firewallapi import ClosableFirewall, Firewall
from cnm.handles import Network, Sandbox
from cnm.ipamapi import Ipam, open_ipam
from cnm.kernel.netns import NetNS
from cnm.kernel.sandbox_os import KernelSandboxOS
from cnm.portmapper import PortAllocator, read_ephemeral_range
from cnm.registry import DriverRegistry
from cnm.steps import NO_OBSERVER, StepObserver
from cnm.store import KeyTaken, SqliteStore, Store
from cnm.types import IPAMConfig, PortBinding, PortRange, ReconcileReport

__all__ = ["DEFAULT_BRIDGE", "Controller", "default_bridge_name"]

log = logging.getLogger(__name__)

DEFAULT_BRIDGE = "cnm0"
"""The device name of the predefined ``bridge`` network (Docker's docker0)."""

DEFAULT_BRIDGE_OPTIONS: Mapping[str, object] = {
    "com.docker.network.bridge.default_bridge": "true",
    "com.docker.network.bridge.enable_icc": "true",
    "com.docker.network.bridge.enable_ip_masquerade": "true",
    "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
    "com.docker.network.bridge.name": DEFAULT_BRIDGE,
    "com.docker.network.driver.mtu": "1500",
}
"""The options the predefined ``bridge`` is created with: the list dockerd passes for docker0,
which is what ``docker network inspect bridge`` shows."""


def default_bridge_name(owner: str, taken_by_other: bool) -> str:
    """The predefined ``bridge`` network's device: ``cnm0``, or ``cnm0-<owner[:10]>`` if another controller has it."""
    return f"{DEFAULT_BRIDGE}-{owner[:10]}" if taken_by_other else DEFAULT_BRIDGE


def _owner_id(state: State) -> str:
    """The state_dir's owner id: made at its first open, read back on every later one."""
    while True:
        with state.transaction() as tx:
            found = tx.owner_id()
        if found is not None:
            return found
        try:
            with state.transaction() as tx:
                # Insert-if-absent: of two processes opening a fresh state_dir at once, one id wins for both.
                tx.claim_owner_id(secrets.token_hex(6))
        except KeyTaken:
            pass


class Controller:
    """Creates and finds networks and sandboxes; owns the store and the host namespace.

    Args:
        state_dir: where the store (SQLite), sandbox namespaces and files live.
            Created if missing. Several processes may share one.
        host_netns: the namespace this controller treats as the host: a name
            under /run/netns, a path, a :class:`~cnm.kernel.netns.NetNS`, or None
            for the calling process's own. Every kernel object of this controller
            and its drivers lives there.
        store: the :class:`~cnm.store.Store` that keeps every record; by default a
            :class:`~cnm.store.SqliteStore` in ``state_dir`` (``cnm.db``).
        ipam: the address manager: a :class:`cnm.ipamapi.Ipam`, or the name of an
            installed one (:func:`cnm.ipamapi.open_ipam`, opened on ``store``); by
            default ``"default"``, :class:`~cnm.ipam.LocalIpam`. It must keep its state
            in ``store``: the controller calls it inside its own transactions.
        sandbox_os: the OS side of sandboxes (namespaces, interface configuration,
            default routes, the hosts/resolv.conf/hostname files, host queries); by
            default :class:`~cnm.kernel.sandbox_os.KernelSandboxOS` for ``host_netns``.
            :class:`cnm.testing.fakes.FakeSandboxOS` keeps all of it in memory.
        firewall: the firewall backend: a :class:`~cnm.firewallapi.Firewall`, or the name of
            an installed one (``"auto"``, the default; ``"nftables"``; ``"iptables"``;
            ``"none"``, which writes no rules), opened in ``host_netns`` for this
            controller's ``owner_id`` (:func:`cnm.firewallapi.open_firewall`). ``"auto"``
            keeps the backend the store records, else one that already holds this
            controller's rules, else takes nftables where it works and iptables where
            not. The choice is recorded in the store; opening with a different backend
            than recorded migrates the rules (docs/firewall.md). A backend object given
            here should be constructed for that owner (open once to learn it).
        observer: a :class:`cnm.steps.StepObserver` that sees every named step of
            every operation, the drivers' own included (they get it as
            ``DriverContext.observer``); none by default.
        registry: the driver registry; by default drivers come from the
            ``cnm.drivers`` entry points.
        predefined: create Docker's predefined networks ``bridge``, ``none`` and ``host``.
        ephemeral_ports: where host ports for bindings without one come from, e.g.
            ``"49153-65535"``; by default the host namespace's
            ``net.ipv4.ip_local_port_range``, as Docker does.
        reconcile: run :meth:`reconcile` when opening.

    Attributes:
        owner_id: this state_dir's identity, 12 hex digits made at its first
            open and kept in its store. Every bridge, veth, OVS row and
            firewall rule the controller makes carries it, and reconcile,
            garbage collection and cleanup touch only what carries it, so
            controllers with different state_dirs can share a host namespace.
    """

    def __init__(
        self,
        state_dir: str = "/var/lib/cnm",
        host_netns: str | NetNS | None = None,
        *,
        store: Store | None = None,
        ipam: Ipam | str | None = None,
        sandbox_os: SandboxOS | None = None,
        firewall: Firewall | str | None = "auto",
        observer: StepObserver | None = None,
        registry: DriverRegistry | None = None,
        predefined: bool = True,
        ephemeral_ports: str | PortRange | None = None,
        reconcile: bool = True,
    ) -> None:
        if host_netns is None:
            host = NetNS.current()
        elif isinstance(host_netns, NetNS):
            host = host_netns
        else:
            host = NetNS.named(host_netns)
        if not host.exists():
            raise NotFound(f"host namespace {host.path} does not exist; create it first (ip netns add NAME)")
        # Made 0700, or refused when another user could change what it holds (docs/security.md).
        self.state_dir = prepare_state_dir(state_dir)
        self.host_netns = host
        store = store if store is not None else SqliteStore(os.path.join(self.state_dir, "cnm.db"))
        self.observer: StepObserver = observer or NO_OBSERVER
        state = State(store)
        self.owner_id: str = _owner_id(state)
        # The firewall: chosen ("auto"), recorded in the store, migrated on a change (cnm._core.firewall_choice).
        # One this controller opened is this controller's to close (it runs a worker process).
        choice = choose_firewall(firewall, host, state, self.owner_id)
        self._own_firewall: ClosableFirewall | None = choice.own
        self.firewall: Firewall = choice.firewall
        self.registry = registry or DriverRegistry(self._driver_context)
        self._rt = Runtime(
            state_dir=self.state_dir,
            host_netns=host,
            state=state,
            ipam=open_ipam(ipam or "default", store) if ipam is None or isinstance(ipam, str) else ipam,
            ports=PortAllocator(
                store, host, read_ephemeral_range(host) if ephemeral_ports is None else PortRange.parse(ephemeral_ports)
            ),
            registry=self.registry,
            locks=StateLocks(self.state_dir),
            sandbox_os=sandbox_os if sandbox_os is not None else KernelSandboxOS(host),
            firewall=self.firewall,
            observer=self.observer,
        )
        if predefined:
            self._ensure_predefined()
        if reconcile:
            report = self.reconcile()
            if report:
                log.warning("reconciled state_dir %s on open:\n%s", self.state_dir, report)
        try:
            choice.finish(self.reapply_firewall)  # records the backend; a migration writes the new rules
        except BaseException:
            self.close()  # the migration stays pending in the store: the next open finishes it
            raise

    def _driver_context(self, name: str) -> DriverContext:
        path = os.path.join(self.state_dir, "drivers", name)
        os.makedirs(path, exist_ok=True)
        return DriverContext(
            host_netns=self.host_netns,
            firewall=self.firewall,
            state_dir=path,
            owner=self.owner_id,
            observer=self.observer,
        )

    def _ensure_predefined(self) -> None:
        wanted: list[tuple[str, str, Mapping[str, object]]] = [
            ("none", "null", {}),
            ("host", "host", {}),
            (rec.DEFAULT_NETWORK, "bridge", self._default_bridge_options()),
        ]
        installed = self.registry.names()
        if all(n in self._network_names() for n, d, _ in wanted if d in installed):
            return
        # Exclusive, and checked again: two processes opening a fresh state_dir must not both create them.
        with self._rt.locks.everything():
            existing = self._network_names()
            for name, driver, options in wanted:
                if name not in existing and driver in installed:
                    networks.create_network(
                        self._rt,
                        name,
                        driver=driver,
                        ipam=None,
                        options=options,
                        internal=False,
                        labels=None,
                        predefined=True,
                    )

    def _default_bridge_options(self) -> Mapping[str, object]:
        # cnm0 unless another controller on this host namespace has it: then a device named from our owner id.
        alias = self._rt.sandbox_os.host_link_alias(DEFAULT_BRIDGE)
        taken = alias is not None and alias != owner_mark(self.owner_id)
        name = default_bridge_name(self.owner_id, taken)
        if taken:
            log.info("%s belongs to another controller; the predefined bridge network uses %s", DEFAULT_BRIDGE, name)
        return {**DEFAULT_BRIDGE_OPTIONS, "com.docker.network.bridge.name": name}

    def _network_names(self) -> set[str]:
        return {n.name for n in self._rt.state.list(rec.NetworkRecord)}

    def close(self) -> None:
        """Close the sockets holding published host ports, the store connection and the firewall's worker process.

        Kernel state stays as it is; the next controller opened on this state_dir holds the ports again.
        """
        self._rt.ports.close()
        self._rt.state.store.close()
        if self._own_firewall is not None:
            self._own_firewall.close()

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
            AlreadyExists: a network of that name exists.
            DriverNotFound: no such driver is installed.
            InvalidConfig: a malformed address, name or option.
            PoolOverlap: the subnet overlaps another network's.
            Exhausted: no free default pool is left.
            KernelError: the kernel refused a step.

        On any error nothing is left behind.
        """
        record = networks.create_network(
            self._rt, name, driver=driver, ipam=ipam, options=options, internal=internal, labels=labels
        )
        return Network(self._rt, record)

    def networks(self) -> list[Network]:
        """Every network, in name order."""
        records = sorted(self._rt.state.list(rec.NetworkRecord), key=lambda r: r.name)
        return [Network(self._rt, r) for r in records]

    def network(self, ref: str) -> Network:
        """A network by name, id or unique id prefix; :class:`cnm.errors.NetworkNotFound` if none."""
        return Network(self._rt, self._rt.state.get(rec.NetworkRecord, ref))

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
        exposed: Sequence[object] = (),
        links: Sequence[tuple[str, str]] = (),
        aliases: Sequence[str] = (),
    ) -> Sandbox:
        """Create a sandbox, and with ``network`` connect it in one call, as ``docker run --net`` does.

        Args:
            name: unique among this controller's sandboxes.
            hostname: what processes inside see; the name by default (the
                host's hostname in host mode).
            network: one of Docker's modes:

                * a network name or id (``"bridge"``, a user network): a fresh
                  namespace joined to it through an endpoint named after the
                  sandbox, which the sandbox owns (deleted with it, joined or not);
                * ``"none"``: a fresh namespace with loopback only, joined to
                  the ``none`` network (an endpoint with no address);
                * ``"host"`` (any network whose driver gives the host's stack):
                  no namespace of its own; processes run in the controller's host
                  namespace, with copies of the host's hosts and resolv.conf;
                * ``"container:<name>"``: the namespace, hosts and resolv.conf
                  files and hostname of another sandbox; that sandbox cannot be
                  deleted while this one exists;
                * ``None``: a fresh namespace with loopback only and no endpoint,
                  for the lower-level CNM calls.
            ports: ports to publish through the sandbox's endpoint (bridge-like
                networks only).
            dns: nameservers for resolv.conf, replacing the host's (not in container mode).
            dns_search: search domains for resolv.conf.
            dns_options: options for resolv.conf.
            exposed: ports the sandbox exposes without publishing them
                (``["3306/tcp", "5432/udp"]``), as ``--expose``.
            links: legacy links ``(target, alias)`` to sandboxes on ``network``,
                as ``--link target:alias``; see :meth:`Sandbox.link`.
            aliases: network-scoped aliases of the sandbox on ``network``, as
                ``--network-alias``: names the other sandboxes there resolve
                (user-defined networks; see docs/dns.md). On such a network
                the sandbox's name and hostname resolve anyway, and its
                resolv.conf names cnm's resolver, with ``dns`` as its upstreams.

        Raises:
            NotFound: the network or the sandbox to share does not exist.
            InvalidConfig: an option the mode cannot honour (ports on none, host
                or container; hostname or dns in container mode).
            AlreadyExists: a sandbox of that name exists.
            Conflict: a link alias is taken, or the shared sandbox cannot be shared.
            Exhausted: no free address or host port is left.
            PortInUse: an explicit host port is taken.
            KernelError: the kernel refused a step.

        On any error nothing is left behind.
        """
        record = sandboxes.create_sandbox(
            self._rt,
            name,
            hostname=hostname,
            network=network,
            ports=ports,
            dns=dns,
            dns_search=dns_search,
            dns_options=dns_options,
            exposed=exposed,
            links=links,
            aliases=aliases,
        )
        return Sandbox(self._rt, record)

    def sandboxes(self) -> list[Sandbox]:
        """Every sandbox, in name order."""
        records = sorted(self._rt.state.list(rec.SandboxRecord), key=lambda r: r.name)
        return [Sandbox(self._rt, r) for r in records]

    def sandbox(self, ref: str) -> Sandbox:
        """A sandbox by name, id or unique id prefix; :class:`cnm.errors.SandboxNotFound` if none."""
        return Sandbox(self._rt, self._rt.state.get(rec.SandboxRecord, ref))

    # --- repair ----------------------------------------------------------------
    def reconcile(self) -> ReconcileReport:
        """Make the kernel and the store agree again, after a crash or a host reboot.

        Finishes or undoes interrupted operations; marks sandboxes whose
        namespace is gone as dead and releases their endpoints; re-creates
        networks whose host objects vanished; removes kernel objects that carry
        this controller's owner id but are unknown to the store; releases allocations nobody owns; and
        rebuilds the firewall. Runs when a Controller opens, unless
        ``reconcile=False``. Safe to run at any time.
        """
        return reconcile(self._rt)

    def info(self) -> dict[str, Any]:
        """The controller as ``docker info`` shows a daemon's networking: its id, state_dir, host and firewall.

        ``FirewallBackend`` is shaped as Docker 28's (``Driver``, ``Info`` pairs);
        with ``none`` its ``Info`` says that cnm writes no rules, so forwarding,
        NAT and published ports work only as far as the host's own firewall lets them.
        """
        name = str(getattr(self.firewall, "name", type(self.firewall).__name__))
        notes: list[list[str]] = []
        if name == "none":
            notes.append(
                [
                    "Rules",
                    "none: cnm writes no firewall rules; forwarding, NAT and published ports "
                    "depend on the host's own firewall",
                ]
            )
        return {
            "ID": self.owner_id,
            "StateDir": self.state_dir,
            "HostNetns": self.host_netns.path,
            "FirewallBackend": {"Driver": name, "Info": notes},
        }

    def reapply_firewall(self) -> None:
        """Rebuild this controller's firewall rules from the store, e.g. after ``iptables -F`` or a firewall reload.

        Rules that are not this controller's (not cnm's, or another controller's) are never touched.
        """
        reapply_firewall(self._rt)
