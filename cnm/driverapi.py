"""The driver contract: what a network driver implements, and what it is given.

A driver is a class that satisfies :class:`Driver` and is registered under the
entry-point group ``cnm.drivers``; the built-in drivers are found exactly the
same way. The controller constructs it once with a :class:`DriverContext`
(the host namespace, the firewall, a state directory) and then calls the CNM
verbs, passing everything a call needs (:class:`NetworkInfo`,
:class:`EndpointInfo`, :class:`SandboxInfo`): a driver needs no store of its
own, and every verb must be idempotent, since a verb may be repeated after a
crash. Deletes succeed when the object is already gone.

Optional abilities are separate small protocols, checked with ``isinstance``:
:class:`PortPublisher` (published ports), :class:`Linker` (legacy links'
firewall rules) and :class:`Reconciler` (repair after a crash or a reboot,
firewall re-application, garbage collection). A driver that publishes ports
through the firewall implements :class:`PortPublisher` (and its share of
``Reconciler.firewall_rules``) with :class:`PortPublishing`.

A minimal driver (the built-in null driver is the example to copy)::

    class NullDriver:
        name = "null"
        capabilities = Capabilities()

        def __init__(self, context: DriverContext) -> None: ...
        def validate_network(self, network: NetworkRequest) -> dict[str, object]: return {}
        def create_network(self, network: NetworkInfo) -> None: ...
        def delete_network(self, network: NetworkInfo) -> None: ...
        def create_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None: ...
        def delete_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None: ...
        def join(self, network, endpoint, sandbox, ifname) -> JoinResult: return JoinResult()
        def leave(self, network, endpoint, sandbox) -> None: ...
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Literal, Protocol, runtime_checkable

import attrs

from cnm.firewallapi import Firewall, FirewallNetwork, LinkRule, NetworkRules, PortMapping, port_mappings
from cnm.kernel import conntrack
from cnm.kernel.netns import NetNS
from cnm.steps import NO_OBSERVER, StepObserver
from cnm.types import IPAddress, PortBinding, TransportProtocol

__all__ = [
    "Capabilities",
    "Driver",
    "DriverContext",
    "EndpointInfo",
    "IPAMData",
    "JoinResult",
    "LinkInfo",
    "Linker",
    "NetworkInfo",
    "NetworkRequest",
    "PortPublisher",
    "PortPublishing",
    "Reconciler",
    "SandboxInfo",
    "StaticRoute",
    "owner_mark",
]


def owner_mark(owner: str) -> str:
    """The mark of a controller's kernel objects, e.g. a link's alias: ``cnm:<owner>``."""
    return f"cnm:{owner}"


@attrs.frozen(kw_only=True)
class Capabilities:
    """What a driver declares about itself.

    Attributes:
        scope: ``"local"`` (networks live on one host) or ``"global"``.
        needs_address: whether endpoints get an IP address from the IPAM.
            False for drivers whose sandboxes use no addresses of their own (null, host).
        needs_sandbox_netns: whether joined sandboxes need a namespace of their
            own; False for the host driver, whose sandboxes share the host's.
        on_host_lan: whether a network's subnet is a LAN the host is already on
            (macvlan, ipvlan: sandboxes appear on the parent interface's own
            network). Such a subnet is expected to overlap the host's addresses
            and routes; for every other driver that overlap is refused, since the
            network's bridge would take the host's own traffic away.
        exclusive: a sandbox on a network of this driver can be on no other network
            at the same time (the null driver's ``none``: loopback only, as Docker's
            ``--net none`` refuses ``network connect``).
    """

    scope: Literal["local", "global"] = "local"
    needs_address: bool = True
    needs_sandbox_netns: bool = True
    on_host_lan: bool = False
    exclusive: bool = False


@attrs.frozen(kw_only=True)
class DriverContext:
    """What the controller hands a driver when it constructs it.

    Attributes:
        host_netns: the namespace the controller treats as the host; every host-side
            kernel object of the driver goes there.
        firewall: the firewall backend bound to ``host_netns``.
        state_dir: a directory private to this driver, for files it must keep.
        owner: the controller's owner id (12 hex digits, see ``Controller.owner_id``).
            Several controllers may share one host namespace: mark every kernel
            object, OVS row and rule you make with it; garbage-collect only
            objects carrying it.
        observer: the controller's step observer (``Controller(observer=...)``).
            Pass it to every :class:`cnm.steps.Steps` and :class:`cnm.steps.Teardown`
            the driver runs, so that its steps are seen with the core's (the crash
            tests' kill switch, the benchmarks' step timer, the conformance kit).
    """

    host_netns: NetNS
    firewall: Firewall
    state_dir: str
    owner: str = ""
    observer: StepObserver = NO_OBSERVER


@attrs.frozen(kw_only=True)
class IPAMData:
    """One address pool of a network, as the driver sees it.

    Attributes:
        pool: the subnet.
        gateway: the gateway with the subnet's prefix length, or None.
        aux_addresses: reserved addresses by name.
    """

    pool: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None
    aux_addresses: Mapping[str, IPAddress] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class NetworkRequest:
    """A network about to be created, for :meth:`Driver.validate_network`."""

    name: str
    options: Mapping[str, object]
    internal: bool = False
    predefined: bool = False


@attrs.frozen(kw_only=True)
class NetworkInfo:
    """A network, as passed to every verb.

    Attributes:
        id: 64 hex digits, unique.
        name: the user's name for it.
        options: the options as :meth:`Driver.validate_network` returned them.
        ipv4: the IPv4 pools (one, for now); empty for drivers that need no address.
        internal: no traffic may leave the network.
    """

    id: str
    name: str
    options: Mapping[str, object]
    ipv4: tuple[IPAMData, ...] = ()
    internal: bool = False


@attrs.frozen(kw_only=True)
class EndpointInfo:
    """An endpoint, as passed to the endpoint verbs.

    Attributes:
        id: 64 hex digits, unique.
        name: the user's name for it.
        network_id: the network it belongs to.
        address: its IPv4 address with the subnet's prefix length, or None.
        mac: its MAC address (``02:42:`` and the address bytes, as Docker does), or None.
        ports: its published ports, resolved (host ports chosen).
    """

    id: str
    name: str
    network_id: str
    address: ipaddress.IPv4Interface | None = None
    mac: str | None = None
    ports: tuple[PortBinding, ...] = ()


@attrs.frozen(kw_only=True)
class SandboxInfo:
    """A sandbox, as passed to :meth:`Driver.join` and :meth:`Driver.leave`.

    Attributes:
        closing: True when the sandbox is being deleted and its namespace is
            unmounted right after the leave. A driver may then leave the
            interfaces inside it to the kernel, which destroys them with the
            namespace, instead of deleting each one (a veth delete waits for
            RCU grace periods, about 25 ms). It must still cut them off from
            the network at once: something else, such as a process still
            running in the sandbox, may keep the namespace alive.
    """

    id: str
    name: str
    netns: NetNS
    closing: bool = False


@attrs.frozen(kw_only=True)
class StaticRoute:
    """A route the controller adds in the sandbox after a join."""

    destination: ipaddress.IPv4Network
    next_hop: ipaddress.IPv4Address | None = None


@attrs.frozen(kw_only=True)
class JoinResult:
    """What a driver reports back from :meth:`Driver.join`.

    Attributes:
        interface: the interface the driver made inside the sandbox (named as it
            was asked), or None when it made none. The controller puts the
            endpoint's address on it and brings it up.
        gateway: the default gateway this network offers, or None (internal networks).
        routes: extra routes for the sandbox.
    """

    interface: str | None = None
    gateway: ipaddress.IPv4Address | None = None
    routes: tuple[StaticRoute, ...] = ()


@runtime_checkable
class Driver(Protocol):
    """The CNM verbs every network driver implements.

    ``name`` and ``capabilities`` are class attributes. The constructor takes a
    :class:`DriverContext`.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def validate_network(self, network: NetworkRequest) -> dict[str, object]:
        """Check the options before anything is created and return them normalised.

        The result must be JSON-serialisable; it is stored and comes back as
        :attr:`NetworkInfo.options`. Raise :class:`cnm.errors.InvalidConfig`
        naming the bad option and the accepted ones.
        """

    def create_network(self, network: NetworkInfo) -> None:
        """Create the network's host-side objects (bridge, rules...)."""

    def delete_network(self, network: NetworkInfo) -> None:
        """Remove what :meth:`create_network` made; succeed if it is gone."""

    def create_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Prepare an endpoint; may validate it (e.g. refuse ports it cannot publish)."""

    def delete_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Remove what :meth:`create_endpoint` made; succeed if it is gone."""

    def join(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo, ifname: str) -> JoinResult:
        """Connect the endpoint to the sandbox, making interface ``ifname`` inside it if the driver uses one."""

    def leave(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo) -> None:
        """Undo :meth:`join`; succeed when the interface or the sandbox is already gone."""


@runtime_checkable
class PortPublisher(Protocol):
    """A driver that can publish an endpoint's ports on the host (DNAT)."""

    def publish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Make ``endpoint.ports`` reachable through the host; called after join."""

    def unpublish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Withdraw ``endpoint.ports``; called before leave; idempotent."""


class PortPublishing:
    """Published ports through the firewall, for any driver whose endpoints have an address behind a host interface.

    The bridge and OVS drivers use it; so can a third-party driver. It turns
    an endpoint's resolved ports into the firewall's :class:`~cnm.firewall.PortMapping`
    list, DNATs them on publish and withdraws them on unpublish, and on both
    forgets the host's UDP conntrack entries for those host ports
    (:func:`cnm.kernel.conntrack.flush_udp_flows`): an entry made before the
    DNAT existed, or for a deleted endpoint, would otherwise keep a client's
    datagrams going where they went before.

    Args:
        context: the driver's context (its host namespace and firewall).
        firewall_network: how the firewall sees a network (the driver's own method).

    Example::

        self._ports = PortPublishing(context, self.firewall_network)

        def publish_ports(self, network, endpoint):
            self._ports.publish(network, endpoint)

        def unpublish_ports(self, network, endpoint):
            self._ports.unpublish(network, endpoint)
    """

    def __init__(self, context: DriverContext, firewall_network: Callable[[NetworkInfo], FirewallNetwork]) -> None:
        self._host = context.host_netns
        self._firewall = context.firewall
        self._firewall_network = firewall_network

    @staticmethod
    def mappings(endpoint: EndpointInfo) -> list[PortMapping]:
        """The firewall's mappings of ``endpoint``'s published ports; none without an address."""
        return port_mappings(endpoint.address, endpoint.ports, owner=f"endpoint {endpoint.name!r}")

    def publish(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """DNAT the endpoint's host ports to it; then forget UDP flows its ports had before."""
        mappings = self.mappings(endpoint)
        self._firewall.add_ports(self._firewall_network(network), mappings)
        # After the DNAT: a datagram arriving between flush and DNAT would make a new, wrong entry.
        self._flush_udp(mappings)

    def unpublish(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Withdraw the endpoint's DNAT rules and forget its UDP flows; idempotent."""
        mappings = self.mappings(endpoint)
        self._firewall.remove_ports(self._firewall_network(network), mappings)
        self._flush_udp(mappings)

    def rules(self, network: NetworkInfo, endpoints: Sequence[EndpointInfo]) -> NetworkRules:
        """The network's rules with the published ports of ``endpoints`` (for ``Reconciler.firewall_rules``)."""
        ports = tuple(m for e in endpoints for m in self.mappings(e))
        return NetworkRules(network=self._firewall_network(network), ports=ports)

    def _flush_udp(self, mappings: Sequence[PortMapping]) -> None:
        keys = [(m.host_ip, port) for m in mappings if m.protocol == "udp" for port in m.host_port]
        conntrack.flush_udp_flows(self._host, keys)


@attrs.frozen(kw_only=True)
class LinkInfo:
    """A legacy link between two endpoints of one network, as passed to :class:`Linker`.

    Attributes:
        source_ip: the address of the linking sandbox's endpoint.
        target_ip: the address of the linked-to sandbox's endpoint.
        ports: the target's exposed ports as ``(protocol, port)``, lowest first,
            tcp before udp on the same number.
        alias: the name the source knows the target by.
    """

    source_ip: ipaddress.IPv4Address
    target_ip: ipaddress.IPv4Address
    ports: tuple[tuple[TransportProtocol, int], ...] = ()
    alias: str = ""


@runtime_checkable
class Linker(Protocol):
    """A driver whose networks can block traffic between endpoints and let legacy links through.

    The controller keeps the links themselves (environment, hosts lines); the
    driver only says what its network must allow, e.g. the bridge driver's
    ACCEPT pairs on an icc=false network, and nothing when icc is on.
    """

    def add_link(self, network: NetworkInfo, link: LinkInfo) -> None:
        """Let ``link.source_ip`` reach ``link.target_ip`` on ``link.ports``; idempotent."""

    def remove_link(self, network: NetworkInfo, link: LinkInfo) -> None:
        """Withdraw what :meth:`add_link` allowed; succeed if it is gone."""

    def link_rules(self, network: NetworkInfo, links: Sequence[LinkInfo]) -> tuple[LinkRule, ...]:
        """The firewall rules ``links`` need, for :meth:`cnm.Controller.reapply_firewall`."""


@runtime_checkable
class Reconciler(Protocol):
    """A driver that can repair its host-side state from the controller's store.

    :meth:`cnm.Controller.reconcile` calls these after a crash or a reboot, and
    :meth:`cnm.Controller.reapply_firewall` after someone flushed the firewall.
    """

    def restore_network(self, network: NetworkInfo) -> bool:
        """Re-create whatever of the network's host-side objects is missing (not its rules).

        Returns:
            True if something had to be re-created.
        """

    def firewall_rules(self, network: NetworkInfo, endpoints: Sequence[EndpointInfo]) -> NetworkRules | None:
        """Every firewall rule the network needs, given its joined endpoints; None if it needs none."""

    def endpoint_intact(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo) -> bool:
        """Whether a joined endpoint's kernel objects are all still there."""

    def collect_garbage(self, networks: Sequence[NetworkInfo], joined: Sequence[EndpointInfo]) -> list[str]:
        """Remove host objects this driver made that belong to none of ``networks`` or ``joined``.

        Only objects recognisably the driver's own (by name prefix, tag or
        external id) may be touched. Returns a description of each removal.
        """
