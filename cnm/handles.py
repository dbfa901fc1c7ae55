"""The public handles: Network, Endpoint, Sandbox and Link.

A handle names one object of a controller's store and delegates every change
to the core's operations (:mod:`cnm._core.ops`); its properties read the
record, so they are current even when another handle or process changed the
object. The four classes refer to each other (``Network.endpoints()`` gives
Endpoints, ``Endpoint.network`` a Network ...), which is why they share this
one module: nothing here imports anything that imports it back.

Get them from :class:`cnm.Controller` (``create_network``, ``network``,
``create_sandbox``, ``sandbox``) and from each other; do not construct them.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from cnm._core import inspect as _inspect
from cnm._core import records as rec
from cnm._core.handle import Handle
from cnm._core.ops import attach, endpoints, legacy_links, networks, refresh, sandboxes
from cnm.errors import NotFound
from cnm.kernel.netns import NetNS
from cnm.kernel.process import command_in
from cnm.legacy_links import as_ports, link_env
from cnm.types import PortBinding

__all__ = ["Endpoint", "Link", "Network", "Sandbox"]


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

        return [Endpoint(self._rt, r) for r in self._rt.state.endpoints_of_network(self.id)]

    def endpoint(self, ref: str) -> Endpoint:
        """An endpoint of this network by name or id; :class:`cnm.errors.EndpointNotFound` if absent."""

        return Endpoint(self._rt, self._rt.state.get(rec.EndpointRecord, ref, network_id=self.id))

    def create_endpoint(
        self,
        name: str,
        *,
        ports: Sequence[PortBinding] = (),
        ip: str | ipaddress.IPv4Address | None = None,
        exposed: Sequence[object] = (),
        aliases: Sequence[str] = (),
    ) -> Endpoint:
        """Create an endpoint on this network, with an address and its published ports.

        Args:
            name: unique within the network.
            ports: ports to publish once the endpoint joins a sandbox.
            ip: a specific address to take instead of the next free one.
            exposed: ports exposed without publishing (``"3306/tcp"``), as
                ``--expose``; they are what a legacy link to the sandbox allows.
            aliases: network-scoped aliases (``--network-alias``): names that
                other sandboxes on this network resolve to the endpoint's
                address once it is joined, besides the sandbox's name and
                hostname (docs/dns.md). Several endpoints may share one
                (round-robin). User-defined networks only.

        Raises:
            AlreadyExists: an endpoint of that name exists on the network.
            AddressInUse: ``ip`` is taken.
            PortInUse: an explicit host port is taken.
            Exhausted: no free address or host port is left.
            InvalidConfig: bad ports or address, or ports on a driver that cannot publish them;
                an alias that is not a DNS name, or aliases on a network without names.
        """

        record = endpoints.create_endpoint(
            self._rt, self._rt.state.reload(self._record), name, ports=ports, ip=ip, exposed=exposed, aliases=aliases
        )
        return Endpoint(self._rt, record)

    def inspect(self) -> dict[str, Any]:
        """The network as ``docker network inspect`` prints it (one object, not a list).

        Name, Id, Created, Scope, Driver, EnableIPv6, IPAM, Internal, Attachable,
        Ingress, ConfigFrom, ConfigOnly, Containers (by sandbox id), Options
        (as given at creation) and Labels, with Docker's quirks; see :mod:`cnm._core.inspect`.
        """

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
        networks.delete_network(self._rt, self._record)


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
    def aliases(self) -> tuple[str, ...]:
        """Its network-scoped aliases (lowercase), resolvable on its network while it is joined."""
        return tuple(self._record.aliases)

    @property
    def sandbox(self) -> Sandbox | None:
        """The sandbox the endpoint is joined to, or None."""

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

        record = self._current()
        return _inspect.endpoint_settings(self._rt.state.get(rec.NetworkRecord, record.network_id), record)

    def join(self, sandbox: Sandbox) -> None:
        """Connect the endpoint to ``sandbox``: an interface ethN appears inside it.

        Raises:
            EndpointJoined: it is already joined to a sandbox (leave first).
            AlreadyConnected: another endpoint of the same network is joined to ``sandbox``.
        """
        attach.join(self._rt, self._current(), sandbox._current())
        self._current()

    def leave(self) -> None:
        """Disconnect the endpoint from its sandbox. Succeeds if it is not joined.

        Raises:
            TeardownIncomplete: the driver's leave or the withdrawal of the published
                ports failed (both are tried; each failure is in the group). Retry,
                or run :meth:`cnm.Controller.reconcile`.
        """
        attach.leave(self._rt, self._current())
        self._current()

    def delete(self) -> None:
        """Delete the endpoint, leaving its sandbox first. Succeeds if it is already gone."""
        endpoints.delete_endpoint(self._rt, self._record)


class Sandbox(Handle[rec.SandboxRecord]):
    """A CNM sandbox: a network namespace with loopback up and its own hosts/resolv.conf files."""

    def __repr__(self) -> str:
        return f"<Sandbox {self.name} id={self.id[:12]}>"

    @property
    def name(self) -> str:
        """The sandbox's name."""
        return self._record.name

    @property
    def hostname(self) -> str:
        """The hostname processes in the sandbox see."""
        return self._record.hostname

    @property
    def mode(self) -> str:
        """Whose namespace the sandbox uses: ``"private"``, ``"host"`` or ``"container"``."""
        return self._record.mode

    @property
    def network_mode(self) -> str:
        """What ``network=`` asked for at creation, as Docker's ``HostConfig.NetworkMode``.

        A network name, ``"host"``, ``"container:<owner id>"``, or ``""`` when
        the sandbox was created without a network.
        """
        return self._record.network_mode

    @property
    def shares(self) -> Sandbox | None:
        """In container mode, the sandbox whose namespace and files this one uses; else None."""
        owner = self._record.shares
        return None if owner is None else Sandbox(self._rt, self._rt.state.get(rec.SandboxRecord, owner))

    def sharers(self) -> list[Sandbox]:
        """The sandboxes created with ``network="container:<this one>"``, in name order."""
        return [Sandbox(self._rt, r) for r in self._rt.state.sharers_of(self.id)]

    @property
    def netns(self) -> NetNS:
        """The sandbox's network namespace (the host's in host mode, the owner's in container mode)."""
        return NetNS(self._record.netns_path)

    @property
    def netns_path(self) -> str:
        """The path of the namespace file (usable with ``nsenter --net=PATH``)."""
        return self._record.netns_path

    @property
    def hosts_path(self) -> str:
        """The sandbox's /etc/hosts file."""
        return os.path.join(self._record.files_dir, "hosts")

    @property
    def resolv_conf_path(self) -> str:
        """The sandbox's /etc/resolv.conf file."""
        return os.path.join(self._record.files_dir, "resolv.conf")

    @property
    def hostname_path(self) -> str:
        """The sandbox's /etc/hostname file."""
        return os.path.join(self._record.files_dir, "hostname")

    def endpoints(self) -> list[Endpoint]:
        """The endpoints joined to the sandbox, in join order."""

        return [Endpoint(self._rt, r) for r in self._rt.state.endpoints_of_sandbox(self.id)]

    @property
    def exposed(self) -> tuple[str, ...]:
        """The ports the sandbox exposes (``--expose``), e.g. ``("3306/tcp",)``; published ones not included."""
        return tuple(self._record.exposed)

    # --- legacy links ------------------------------------------------------------
    def link(self, target: str, alias: str, *, network: str | None = None) -> Link:
        """Link to the sandbox ``target`` under ``alias``, as ``docker run --link target:alias`` does.

        This sandbox's /etc/hosts gets ``IP<TAB>alias target-hostname
        target-name``, :meth:`link_env` gets Docker's variables, and on a
        network that drops traffic between endpoints (bridge with icc off) this
        sandbox may reach the target's exposed ports, and nothing else of it.

        Args:
            target: the sandbox to link to, by name or id.
            alias: the name this sandbox knows it by (``DB`` in ``DB_PORT``).
            network: the network to meet on; needed only when the two share several.

        Raises:
            SandboxNotFound: ``target`` does not exist.
            InvalidConfig: the two share no network (or several, and none was
                named); a sandbox in host or container mode; a link to itself.
            AlreadyExists: this sandbox already has a link named ``alias``.
        """
        return Link(self._rt, legacy_links.create_link(self._rt, self._current(), target, alias, network=network))

    def unlink(self, alias: str) -> None:
        """Remove the link named ``alias``: its variables, hosts line and rules. Succeeds if there is none."""
        link = self._rt.state.link_by_alias(self.id, alias)
        if link is not None:
            legacy_links.remove_link(self._rt, link)

    def links(self) -> list[Link]:
        """The links this sandbox made, oldest first."""
        return [Link(self._rt, r) for r in refresh.links_from(self._rt, self.id)]

    def link_env(self) -> dict[str, str]:
        """The environment variables of all this sandbox's links, as Docker sets them.

        See :func:`cnm.legacy_links.link_env`; pass ``link_env=True`` to :meth:`run` or
        :meth:`popen` to give them to a process.
        """
        return legacy_links.sandbox_env(self._rt, self._current())

    def _with_link_env(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        # Docker's order: link variables over the inherited environment, the caller's own env over both.
        if not kwargs.pop("link_env", False):
            return kwargs
        base = kwargs.get("env")
        linked = self.link_env()
        kwargs["env"] = {**os.environ, **linked} if base is None else {**linked, **base}
        return kwargs

    def command(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` in the sandbox (its namespace, hostname and files)."""
        files = {
            "/etc/hosts": self.hosts_path,
            "/etc/resolv.conf": self.resolv_conf_path,
            "/etc/hostname": self.hostname_path,
        }
        return command_in(self.netns, argv, files=files, hostname=self.hostname)

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command inside the sandbox; takes :func:`subprocess.run`'s keywords.

        The process sees the sandbox's interfaces, its hostname, and its
        /etc/hosts and /etc/resolv.conf. With ``link_env=True`` its environment
        also holds the variables of the sandbox's links (:meth:`link_env`);
        variables given in ``env`` win over them.
        """
        kwargs = self._with_link_env(kwargs)
        return subprocess.run(self.command(argv), **kwargs)  # noqa: PLW1510 - caller's choice

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command inside the sandbox; takes :class:`subprocess.Popen`'s keywords and ``link_env``."""
        kwargs = self._with_link_env(kwargs)
        return subprocess.Popen(self.command(argv), **kwargs)

    def inspect(self) -> dict[str, Any]:
        """The sandbox as ``docker inspect`` shows a container's networking.

        ``Id``, ``Name``, ``Created``, the files' paths, ``HostConfig.NetworkMode``
        and the DNS settings, ``Config.Hostname``, and ``NetworkSettings`` with
        one entry per joined network under ``Networks`` (empty in container
        mode, whose ``SandboxID`` and ``SandboxKey`` are empty, as Docker's are).
        """
        record = self._current()
        state = self._rt.state
        joined = [(state.get(rec.NetworkRecord, e.network_id), e) for e in state.endpoints_of_sandbox(record.id)]
        return _inspect.sandbox(
            record,
            joined,
            hosts_path=self.hosts_path,
            resolv_conf_path=self.resolv_conf_path,
            hostname_path=self.hostname_path,
            links=legacy_links.inspect_links(self._rt, record),
        )

    def delete(self) -> None:
        """Delete the sandbox: leave every joined endpoint, then remove the namespace and files.

        Endpoints it joined stay; those it created itself (``network=``) are
        deleted, joined or not, with their addresses and host ports. Deleting what is
        already gone succeeds. A host-mode sandbox never removes the host's
        namespace; a container-mode sandbox removes nothing of its owner's.

        Interfaces inside the namespace are cut off at once and go with it:
        the kernel destroys them moments after the delete returns. Stop the
        sandbox's processes first; one left running keeps the namespace and
        its cut-off interfaces alive until it ends or :meth:`Controller.reconcile`
        removes them. Their addresses are free at once either way.

        Raises:
            Conflict: other sandboxes share this one's namespace (container mode);
                delete them first.
        """
        sandboxes.delete_sandbox(self._rt, self._record)


# --- the public handle ------------------------------------------------------------------
class Link(Handle[rec.LinkRecord]):
    """A legacy link from one sandbox to another; get one from :meth:`Sandbox.link`."""

    def __repr__(self) -> str:
        return f"<Link {self.name} -> {self.target_ip}>"

    @property
    def alias(self) -> str:
        """The name the source knows the target by."""
        return self._record.alias

    @property
    def name(self) -> str:
        """Docker's link name, ``/<source>/<alias>``."""
        return f"/{self._source().name}/{self.alias}"

    @property
    def source(self) -> Sandbox:
        """The sandbox that made the link."""

        return Sandbox(self._rt, self._source())

    @property
    def target(self) -> Sandbox:
        """The sandbox linked to."""

        return Sandbox(self._rt, self._rt.state.get(rec.SandboxRecord, self._record.target_id))

    @property
    def network(self) -> Network:
        """The network the two sandboxes meet on."""

        return Network(self._rt, self._rt.state.get(rec.NetworkRecord, self._record.network_id))

    @property
    def target_ip(self) -> ipaddress.IPv4Address:
        """The target's address on the link's network."""
        return ipaddress.IPv4Address(self._record.target_ip)

    @property
    def ports(self) -> tuple[str, ...]:
        """The target's exposed ports the link covers, e.g. ``("3306/tcp", "5432/udp")``."""
        return tuple(self._record.ports)

    def env(self) -> dict[str, str]:
        """This link's environment variables (see :func:`link_env`)."""
        return link_env(self._source().name, self.alias, self._record.target_ip, as_ports(self._record.ports))

    def delete(self) -> None:
        """Remove the link: its environment, hosts line and rules. Succeeds if it is gone."""
        legacy_links.remove_link(self._rt, self._record)

    def _source(self) -> rec.SandboxRecord:
        return self._rt.state.get(rec.SandboxRecord, self._record.source_id)
