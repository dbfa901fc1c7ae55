"""The firewall contract: what drivers ask of a packet filter, and how a backend is chosen.

A driver describes a network (:class:`FirewallNetwork`), its published ports
(:class:`PortMapping`, made from bindings by :func:`port_mappings`) and legacy
links (:class:`LinkRule`); a backend (:class:`Firewall`) turns them into rules
in the controller's host namespace.

A backend is a class registered under the entry-point group ``cnm.firewalls``;
the built-in ones are found exactly the same way (``iptables``:
:class:`cnm.firewall.iptables.IptablesFirewall`, Docker's legacy xtables
layout; ``nftables``: :class:`cnm.firewall.nftables.NftablesFirewall`, one
table per controller; ``none``: :class:`cnm.firewall.none.NoFirewall`, which
writes nothing; ``recording``: :class:`cnm.firewall.recording.RecordingFirewall`,
which only remembers, for tests). The class is called as
``Backend(host_netns, owner=owner)`` (:class:`FirewallFactory`) and returns a
:class:`ClosableFirewall`; :func:`open_firewall` does that by name.

Every rule a backend writes is tagged as cnm's and as its controller's: a
backend is constructed per owner (the controller's ``owner_id``), and
:meth:`Firewall.cleanup` and :meth:`Firewall.reapply` find exactly that
owner's rules, leaving other controllers' rules on the same host namespace
and everything not cnm's alone.

A third-party backend installs like a driver::

    [project.entry-points."cnm.firewalls"]
    mine = "my_package:MyFirewall"
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Collection, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias, runtime_checkable

import attrs

from cnm.errors import CNMError, InvalidConfig, KernelError
from cnm.types import PortBinding, PortRange, TransportProtocol

if TYPE_CHECKING:
    from cnm.kernel.netns import NetNS

__all__ = [
    "AUTO",
    "AUTO_KEEPS",
    "AUTO_PREFERENCE",
    "BACKENDS",
    "ENTRY_POINT_GROUP",
    "GATEWAY_MODES",
    "BackendName",
    "ClosableFirewall",
    "Firewall",
    "FirewallFactory",
    "FirewallNetwork",
    "GatewayMode",
    "LinkRule",
    "NetworkRules",
    "PortMapping",
    "ProbingFirewall",
    "backend_names",
    "load_backend",
    "open_firewall",
    "port_mappings",
]

log = logging.getLogger(__name__)

#: The entry-point group firewall backends register under, built-in ones included.
ENTRY_POINT_GROUP = "cnm.firewalls"

#: How traffic from outside reaches a network's sandboxes (Docker 28's ``gateway_mode_ipv4``):
#: ``nat`` (the default) lets in only published ports' DNATed flows and replies, and drops
#: everything else routed to a sandbox's address; ``nat-unprotected`` accepts traffic routed
#: straight to a sandbox's address on every port; ``routed`` has no NAT at all (no DNAT, no
#: masquerade: the driver turns it off) and accepts, routed straight to a sandbox's address, only
#: its published container ports and ICMP, dropping the rest. docs/security.md.
GatewayMode: TypeAlias = Literal["nat", "nat-unprotected", "routed"]
GATEWAY_MODES: tuple[GatewayMode, ...] = ("nat", "nat-unprotected", "routed")


@attrs.frozen(kw_only=True)
class FirewallNetwork:
    """One network as the firewall sees it.

    Attributes:
        id: the network id; rules are tagged with its first 12 characters.
        interface: the host-side interface the network's traffic crosses (the bridge).
        subnet: the network's IPv4 subnet.
        icc: whether endpoints on this network may talk to each other.
        masquerade: whether traffic leaving the host from this subnet is masqueraded.
        internal: whether traffic may not leave the network at all.
        gateway_mode: whether traffic routed straight to a sandbox's address from outside the
            bridge is dropped (``nat``), accepted (``nat-unprotected``), or accepted only on the
            published container ports and for ICMP (``routed``, which also DNATs nothing).
        trusted_interfaces: host interfaces whose traffic may reach the sandboxes' addresses
            directly even in ``nat`` mode (Docker's ``trusted_host_interfaces``).
        owner: the owner id of the controller whose network it is; drivers
            leave it empty and the backend fills in its own.
    """

    id: str
    interface: str
    subnet: ipaddress.IPv4Network
    icc: bool = True
    masquerade: bool = True
    internal: bool = False
    gateway_mode: GatewayMode = "nat"
    trusted_interfaces: tuple[str, ...] = ()
    owner: str = ""

    @property
    def protected(self) -> bool:
        """Whether traffic routed to a sandbox's address from outside is dropped unless a rule lets it in.

        True but for ``nat-unprotected``: ``nat`` lets in DNATed flows, ``routed`` published container ports and ICMP.
        """
        return self.gateway_mode != "nat-unprotected"

    @property
    def routed(self) -> bool:
        """Whether the network NATs nothing: published ports open the container port at the sandbox's address."""
        return self.gateway_mode == "routed"

    @property
    def tag(self) -> str:
        """The tag every rule of this network carries: ``cnm:<owner>:<id[:12]>`` (``cnm:<id[:12]>`` if no owner)."""
        return f"cnm:{self.owner}:{self.id[:12]}" if self.owner else f"cnm:{self.id[:12]}"


@attrs.frozen(kw_only=True, order=True)
class PortMapping:
    """A published port, resolved: which host port goes to which container address.

    ``host_port`` and ``container_port`` have equal length, or ``container_port``
    is a single port that every host port of the range maps to.
    """

    protocol: TransportProtocol
    host_port: PortRange
    container_ip: ipaddress.IPv4Address
    container_port: PortRange
    host_ip: ipaddress.IPv4Address | None = None


def port_mappings(
    container: ipaddress.IPv4Interface | None, ports: Sequence[PortBinding], *, owner: str
) -> list[PortMapping]:
    """The mappings of an endpoint's resolved port bindings; none without an IPv4 address.

    An unspecified host address (``0.0.0.0``) means every address, as no address does.

    Raises:
        InvalidConfig: a binding has no host port chosen yet (resolve it first).
    """
    if container is None:
        return []
    mappings = []
    for port in ports:
        if port.host_port is None:
            raise InvalidConfig(f"port {port} of {owner} has no host port resolved; allocate it first")
        host_ip = port.host_ip if isinstance(port.host_ip, ipaddress.IPv4Address) else None
        mappings.append(
            PortMapping(
                protocol=port.protocol,
                host_port=port.host_port,
                host_ip=None if host_ip is None or host_ip.is_unspecified else host_ip,
                container_ip=container.ip,
                container_port=port.container_port,
            )
        )
    return mappings


@attrs.frozen(kw_only=True, order=True)
class LinkRule:
    """A legacy link on an icc=false network: ``source`` may reach ``target`` on ``ports``."""

    source_ip: ipaddress.IPv4Address
    target_ip: ipaddress.IPv4Address
    ports: tuple[tuple[TransportProtocol, int], ...]


@attrs.frozen(kw_only=True)
class NetworkRules:
    """Everything one network needs in the firewall, for :meth:`Firewall.reapply`."""

    network: FirewallNetwork
    ports: tuple[PortMapping, ...] = ()
    links: tuple[LinkRule, ...] = ()


@runtime_checkable
class Firewall(Protocol):
    """A packet-filter backend bound to one host namespace and one owner (a controller's ``owner_id``).

    Several controllers may share a host namespace, each with its own backend
    instance; a backend touches only its owner's rules, and removes what the
    owners share (chains, jumps from builtin chains) only when no owner's
    rules remain.

    Every method is one atomic change (one commit per table); adding what is
    already there and removing what is already gone both succeed.

    ``name`` is the backend's name (its entry point's, for an installed
    backend; a class attribute will do), which the controller records in its
    store and inspect output shows.
    """

    @property
    def name(self) -> str:
        """The backend's name, e.g. ``"nftables"``."""
        ...

    def setup_network(self, network: FirewallNetwork) -> None:
        """Install the network-level rules: forwarding, isolation, NAT, icc, internal."""

    def teardown_network(self, network: FirewallNetwork) -> None:
        """Remove every rule of the network, its ports and links included."""

    def add_ports(self, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
        """Publish ports: a DNAT each, and what lets the network's sandboxes reach their own published ports."""

    def remove_ports(self, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
        """Withdraw published ports."""

    def add_link(self, network: FirewallNetwork, link: LinkRule) -> None:
        """Allow a legacy link's ports through on an icc=false network."""

    def remove_link(self, network: FirewallNetwork, link: LinkRule) -> None:
        """Withdraw a legacy link's rules."""

    def reapply(self, networks: Sequence[NetworkRules]) -> None:
        """Rebuild every cnm rule from this description, dropping any other cnm rule."""

    def cleanup(self, keep: Collection[str] = ()) -> int:
        """Remove every rule of this owner whose network id is not in ``keep``; return how many.

        With ``keep`` empty and no other owner's rules left, cnm's chains go too.
        """


@runtime_checkable
class ClosableFirewall(Firewall, Protocol):
    """A firewall that holds something to release (a worker process): what :func:`open_firewall` returns."""

    def close(self) -> None:
        """Release what the backend holds; rules stay as they are."""


@runtime_checkable
class ProbingFirewall(ClosableFirewall, Protocol):
    """A backend that ``"auto"`` can ask before choosing it (both kernel backends are; optional for others)."""

    def holds_rules(self) -> bool:
        """Whether the host namespace already holds rules of this backend's owner; reads only, changes nothing."""
        ...

    def check(self) -> None:
        """Raise :class:`cnm.errors.KernelError` saying why, if this backend cannot work in its host namespace."""
        ...


@runtime_checkable
class FirewallFactory(Protocol):
    """What an entry point of ``cnm.firewalls`` names: usually the backend class itself."""

    def __call__(self, host_netns: NetNS, *, owner: str) -> ClosableFirewall:
        """The backend for ``host_netns``, writing and removing only the rules of ``owner``."""
        ...


#: The names of the built-in backends (each an entry point of ``cnm.firewalls``).
BackendName: TypeAlias = Literal["iptables", "nftables", "none"]
BACKENDS: tuple[BackendName, ...] = ("iptables", "nftables", "none")

#: The name that lets :func:`open_firewall` choose (the default everywhere).
AUTO = "auto"
#: What ``"auto"`` prefers, first usable wins, when nothing already holds this owner's rules.
AUTO_PREFERENCE: tuple[BackendName, ...] = ("nftables", "iptables")
#: The backends whose existing rules ``"auto"`` keeps, asked in this order: legacy iptables first.
AUTO_KEEPS: tuple[BackendName, ...] = ("iptables", "nftables")


def backend_names() -> list[str]:
    """The installed backends' names (the entry points of ``cnm.firewalls``), sorted."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def load_backend(name: str) -> FirewallFactory:
    """The factory (usually the class) of the installed backend called ``name``.

    Raises:
        InvalidConfig: no backend of that name is installed, or it cannot be loaded
            (e.g. a library it needs is missing); the message says which are installed.
    """
    found = list(entry_points(group=ENTRY_POINT_GROUP, name=name))
    if not found:
        raise InvalidConfig(
            f"no firewall backend named {name!r}; installed backends: {', '.join(backend_names()) or 'none'}. "
            f"Install one that registers under the {ENTRY_POINT_GROUP!r} entry point"
            + ("" if backend_names() else " (none at all: reinstall cnm-net, e.g. ./run setup)")
        )
    try:
        factory: FirewallFactory = found[0].load()
    except ImportError as exc:
        raise InvalidConfig(
            f"the firewall backend {name!r} ({found[0].value}) cannot be loaded: {exc}; install what it needs"
        ) from exc
    return factory


def open_firewall(
    name: str, host_netns: NetNS, *, owner: str = "default", recorded: str | None = None, look: bool = True
) -> ClosableFirewall:
    """The firewall backend called ``name`` for ``host_netns``, or the one ``"auto"`` chooses.

    ``owner`` is the controller's owner id: it names the nftables backend's
    table (``inet cnm_<owner>``) and is in the iptables backend's rule tags
    (``cnm:<owner>:<network>``); each backend touches only its owner's rules.

    ``"auto"`` chooses, and logs which and why:

    1. ``recorded``, the backend the controller's store records for its
       state_dir, if any: an installation keeps its backend until it is
       migrated by naming another one;
    2. else a backend that already holds this owner's rules in
       ``host_netns`` (legacy iptables first; skipped with ``look=False``,
       for a state_dir that never had a network);
    3. else the first of nftables, iptables that can work there (the python
       ``nftables`` module loads and the kernel takes an nf_tables table).

    The result's ``name`` says which backend it is.

    Raises:
        InvalidConfig: an unknown name, a backend that cannot be loaded, an owner
            the backend cannot take, or an object that is no :class:`ClosableFirewall`.
        KernelError: ``"auto"`` found no backend that works in ``host_netns``.
    """
    if name != AUTO:
        return _open(name, host_netns, owner)
    if recorded is not None:
        log.info("firewall backend %s: the store records it for this state_dir (auto)", recorded)
        return _open(recorded, host_netns, owner)
    if look:
        for keep in AUTO_KEEPS:
            firewall = _probe(keep, host_netns, owner)
            if firewall is not None and _holds_rules(firewall):
                log.info("firewall backend %s: the host namespace holds this controller's %s rules (auto)", keep, keep)
                return firewall
            if firewall is not None:
                firewall.close()
    refused: list[str] = []
    for candidate in AUTO_PREFERENCE:
        firewall = _probe(candidate, host_netns, owner)
        if firewall is None:
            refused.append(f"{candidate}: not installed")
            continue
        try:
            firewall.check()
        except CNMError as exc:
            firewall.close()
            refused.append(f"{candidate}: {exc}")
            continue
        why = f"{'; '.join(refused)}; so " if refused else ""
        log.info("firewall backend %s: %s%s works here (auto)", candidate, why, candidate)
        return firewall
    raise KernelError(
        f"no firewall backend works in {host_netns.path} ({'; '.join(refused)}); "
        "fix one of them, or choose firewall='none' and manage the host's firewall yourself"
    )


def _open(name: str, host_netns: NetNS, owner: str) -> ClosableFirewall:
    firewall = load_backend(name)(host_netns, owner=owner)
    if not isinstance(firewall, ClosableFirewall):
        raise InvalidConfig(
            f"the firewall backend {name!r} made {firewall!r}, which does not implement "
            "cnm.firewallapi.ClosableFirewall; fix its class"
        )
    return firewall


def _probe(name: str, host_netns: NetNS, owner: str) -> ProbingFirewall | None:
    """The backend ``name`` if it is installed, loads and can be asked; None otherwise."""
    try:
        firewall = _open(name, host_netns, owner)
    except InvalidConfig as exc:
        log.debug("auto firewall: %s is unusable: %s", name, exc)
        return None
    if isinstance(firewall, ProbingFirewall):
        return firewall
    firewall.close()
    return None


def _holds_rules(firewall: ProbingFirewall) -> bool:
    try:
        return firewall.holds_rules()
    except CNMError as exc:  # a backend that cannot even be read here holds no rules here
        log.debug("auto firewall: %s cannot look for rules: %s", firewall.name, exc)
        return False
