"""In-memory stand-ins for unit tests without root: a sandbox OS and a driver.

:class:`FakeSandboxOS` satisfies the core's sandbox OS interface (what
``Controller(sandbox_os=...)`` takes) and keeps namespaces, interfaces, default
routes, directories and files in dictionaries; :class:`FakeDriver` is a driver
with published ports that makes its interfaces in a :class:`FakeSandboxOS`.
Both record every call in order (``calls``) and can be told to fail at a named
call (``fail_at``), so a test can check the order of an operation's steps and
that a failure at any of them leaves nothing behind.

With :class:`cnm.store.MemoryStore` and :class:`cnm.firewall.recording.RecordingFirewall`
they make a whole controller that runs in milliseconds::

    fake = FakeSandboxOS()
    ctl = Controller(state_dir, store=MemoryStore(), sandbox_os=fake, firewall=RecordingFirewall(),
                     registry=registry_with(FakeDriver, fake), ephemeral_ports="40000-40100")
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import attrs

from cnm.controller import Controller
from cnm.driverapi import (
    Capabilities,
    DriverContext,
    EndpointInfo,
    JoinResult,
    NetworkInfo,
    NetworkRequest,
    SandboxInfo,
)
from cnm.errors import KernelError
from cnm.firewall.recording import RecordingFirewall
from cnm.kernel.netns import NetNS
from cnm.registry import DriverRegistry
from cnm.steps import NO_OBSERVER, StepObserver
from cnm.store import MemoryStore
from cnm.types import IPAddress, IPNetwork

__all__ = [
    "Call",
    "Failures",
    "FakeDriver",
    "FakeInterface",
    "FakeNetwork",
    "FakeSandboxOS",
    "FakeWorld",
    "fake_controller",
]


@attrs.frozen
class Call:
    """One recorded call: its name and its arguments."""

    name: str
    args: tuple[object, ...] = ()


@attrs.define
class FakeInterface:
    """An interface in a fake namespace: its address, whether it is up, its routes."""

    address: ipaddress.IPv4Interface | None = None
    up: bool = False
    routes: list[tuple[IPNetwork, IPAddress | None]] = attrs.field(factory=list)


class Failures:
    """Named calls told to fail: ``fail_at("write_file")`` makes the next such call raise."""

    def __init__(self) -> None:
        self._armed: dict[str, tuple[int, BaseException]] = {}

    def fail_at(self, name: str, *, skip: int = 0, error: BaseException | None = None) -> None:
        """Make call ``name`` fail after ``skip`` more successful ones, with ``error`` (a KernelError by default)."""
        self._armed[name] = (skip, error or KernelError(f"injected failure at {name}"))

    def check(self, name: str) -> None:
        """Raise if ``name`` is armed and its turn has come."""
        armed = self._armed.get(name)
        if armed is None:
            return
        skip, error = armed
        if skip:
            self._armed[name] = (skip - 1, error)
            return
        del self._armed[name]
        raise error


class FakeNetwork:
    """The network stack of one fake namespace (what ``FakeSandboxOS.network`` opens)."""

    def __init__(self, owner: FakeSandboxOS, netns_path: str) -> None:
        self._os = owner
        self._path = netns_path

    @property
    def netns_path(self) -> str:
        """The namespace this session works in."""
        return self._path

    def _interfaces(self) -> dict[str, FakeInterface]:
        found = self._os.interfaces.get(self._path)
        if found is None:
            raise KernelError(f"network namespace {self._path} does not exist")
        return found

    def configure_interface(
        self,
        ifname: str,
        address: ipaddress.IPv4Interface | None,
        routes: Sequence[tuple[IPNetwork, IPAddress | None]] = (),
    ) -> None:
        """Address, up and routes on an interface that must exist."""
        self._os.record("configure_interface", self._path, ifname, address, tuple(routes))
        interface = self._interfaces().get(ifname)
        if interface is None:
            raise KernelError(f"no interface {ifname} in {self._path}")
        interface.address, interface.up, interface.routes = address, True, list(routes)

    def set_default_route(self, gateway: ipaddress.IPv4Address, ifname: str) -> None:
        """Replace the namespace's default route."""
        self._os.record("set_default_route", self._path, gateway, ifname)
        self._interfaces()
        self._os.default_routes[self._path] = (gateway, ifname)

    def clear_default_route(self) -> None:
        """Drop the namespace's default route, if any."""
        self._os.record("clear_default_route", self._path)
        self._interfaces()
        self._os.default_routes.pop(self._path, None)

    def interface_exists(self, ifname: str) -> bool:
        """True if the interface exists in the namespace."""
        self._os.record("interface_exists", self._path, ifname)
        return ifname in self._interfaces()


class FakeSandboxOS:
    """An in-memory sandbox OS: no root, no kernel, every call recorded.

    Args:
        host_networks: what :meth:`host_networks` answers (the host's addresses and routes).
        host_links: the host's interfaces and their aliases, for :meth:`host_link_alias`.
        host_files: the host's files (``/etc/hosts``, ``/etc/resolv.conf``).
        hostname: the host's hostname.

    Attributes:
        calls: every call, in order.
        namespaces: the paths of live namespaces.
        interfaces: per namespace path, its interfaces by name.
        default_routes: per namespace path, ``(gateway, ifname)``.
        directories: directories that exist.
        files: file contents by path.
    """

    def __init__(
        self,
        *,
        host_networks: Sequence[tuple[IPNetwork, str]] = (),
        host_links: Mapping[str, str] | None = None,
        host_files: Mapping[str, str] | None = None,
        hostname: str = "fakehost",
    ) -> None:
        self.calls: list[Call] = []
        self.namespaces: set[str] = set()
        self.interfaces: dict[str, dict[str, FakeInterface]] = {}
        self.default_routes: dict[str, tuple[ipaddress.IPv4Address, str]] = {}
        self.directories: set[str] = set()
        self.files: dict[str, str] = {}
        self.failures = Failures()
        self._host_networks = list(host_networks)
        self._host_links = dict(host_links or {})
        self._host_files = dict(host_files or {"/etc/resolv.conf": "nameserver 192.0.2.53\n"})
        self._hostname = hostname

    def fail_at(self, name: str, *, skip: int = 0, error: BaseException | None = None) -> None:
        """Make the call ``name`` fail (see :meth:`Failures.fail_at`)."""
        self.failures.fail_at(name, skip=skip, error=error)

    def record(self, name: str, *args: object) -> None:
        """Record a call, then fail it if it is armed."""
        self.calls.append(Call(name, args))
        self.failures.check(name)

    def names(self) -> list[str]:
        """The names of the calls so far, in order."""
        return [c.name for c in self.calls]

    # --- what a fake driver does to the fake kernel -------------------------------------
    def add_interface(self, netns_path: str, ifname: str) -> None:
        """An interface appears in a namespace (a driver's join moved it in)."""
        self.record("add_interface", netns_path, ifname)
        if netns_path not in self.interfaces:
            raise KernelError(f"network namespace {netns_path} does not exist")
        self.interfaces[netns_path][ifname] = FakeInterface()

    def remove_interface(self, netns_path: str, ifname: str) -> None:
        """An interface goes (a driver's leave deleted it); nothing if gone."""
        self.record("remove_interface", netns_path, ifname)
        self.interfaces.get(netns_path, {}).pop(ifname, None)
        route = self.default_routes.get(netns_path)
        if route is not None and route[1] == ifname:
            del self.default_routes[netns_path]

    # --- namespaces ---------------------------------------------------------------
    def create_namespace(self, path: str) -> None:
        """A namespace with loopback only."""
        self.record("create_namespace", path)
        if path in self.namespaces:
            raise KernelError(f"network namespace {path} exists")
        self.namespaces.add(path)
        self.interfaces[path] = {"lo": FakeInterface(up=True)}

    def remove_namespace(self, path: str) -> None:
        """The namespace and its interfaces go."""
        self.record("remove_namespace", path)
        self.namespaces.discard(path)
        self.interfaces.pop(path, None)
        self.default_routes.pop(path, None)

    def namespace_exists(self, path: str) -> bool:
        """True if the namespace is live."""
        self.record("namespace_exists", path)
        return path in self.namespaces

    def clear_shadowed(self, directory: str) -> list[str]:
        """Nothing is ever shadowed in memory."""
        self.record("clear_shadowed", directory)
        return []

    @contextlib.contextmanager
    def network(self, netns_path: str) -> Iterator[FakeNetwork]:
        """A session on the namespace's stack."""
        self.record("network", netns_path)
        if netns_path not in self.interfaces:
            raise KernelError(f"network namespace {netns_path} does not exist")
        yield FakeNetwork(self, netns_path)

    # --- files ----------------------------------------------------------------------
    def make_directory(self, path: str) -> None:
        """The directory exists afterwards."""
        self.record("make_directory", path)
        self.directories.add(path)

    def remove_directory(self, path: str) -> None:
        """The directory and everything under it go."""
        self.record("remove_directory", path)
        prefix = path.rstrip("/") + "/"
        self.directories = {d for d in self.directories if d != path and not d.startswith(prefix)}
        self.files = {f: text for f, text in self.files.items() if not f.startswith(prefix)}

    def is_directory(self, path: str) -> bool:
        """True if the directory exists."""
        self.record("is_directory", path)
        return path in self.directories

    def list_directory(self, path: str) -> list[str]:
        """The names directly under ``path``: namespaces, directories and files."""
        self.record("list_directory", path)
        prefix = path.rstrip("/") + "/"
        every = [*self.namespaces, *self.directories, *self.files]
        return sorted({p[len(prefix) :].split("/", 1)[0] for p in every if p.startswith(prefix)})

    def write_file(self, path: str, text: str) -> None:
        """The file's new text; its directory must exist."""
        self.record("write_file", path)
        if os.path.dirname(path) not in self.directories:
            raise FileNotFoundError(f"no directory {os.path.dirname(path)} for {path}")
        self.files[path] = text

    def read_host_file(self, path: str) -> str:
        """A host file given at construction, or empty."""
        self.record("read_host_file", path)
        return self._host_files.get(path, "")

    def host_resolv_conf(self) -> str:
        """The host's resolv.conf given at construction."""
        self.record("host_resolv_conf")
        return self._host_files.get("/etc/resolv.conf", "")

    def host_hostname(self) -> str:
        """The hostname given at construction."""
        self.record("host_hostname")
        return self._hostname

    # --- host queries ------------------------------------------------------------
    def host_networks(self) -> list[tuple[IPNetwork, str]]:
        """The host networks given at construction."""
        self.record("host_networks")
        return list(self._host_networks)

    def host_link_alias(self, ifname: str) -> str | None:
        """The alias of a host interface given at construction, or None."""
        self.record("host_link_alias", ifname)
        return self._host_links.get(ifname)


class FakeDriver:
    """A driver whose networks live in memory and whose interfaces appear in a :class:`FakeSandboxOS`.

    Publishes ports (it is a :class:`~cnm.driverapi.PortPublisher`) through the
    context's firewall, so a :class:`~cnm.firewall.recording.RecordingFirewall`
    sees them. Its verbs are recorded in ``calls`` and fail on demand with ``fail_at``.
    """

    name: ClassVar[str] = "fake"
    # Its networks live in memory, with no gateway on the host: like a LAN the host is on, they get
    # no host-overlap check and no name resolver (which would run in the host namespace, here the
    # test process's own).
    capabilities: ClassVar[Capabilities] = Capabilities(on_host_lan=True)

    def __init__(self, context: DriverContext, sandbox_os: FakeSandboxOS | None = None) -> None:
        self.context = context
        self.os = sandbox_os
        self.calls: list[Call] = []
        self.failures = Failures()
        self.networks: set[str] = set()
        self.endpoints: set[str] = set()
        self.published: set[str] = set()
        self.joined: dict[str, tuple[str, str]] = {}

    def fail_at(self, verb: str, *, skip: int = 0, error: BaseException | None = None) -> None:
        """Make the driver verb ``verb`` (``"join"``, ``"publish_ports"``, ...) fail."""
        self.failures.fail_at(verb, skip=skip, error=error)

    def _record(self, verb: str, *args: object) -> None:
        self.calls.append(Call(verb, args))
        self.failures.check(verb)

    def validate_network(self, network: NetworkRequest) -> dict[str, object]:
        """Any options are fine."""
        self._record("validate_network", network.name)
        return dict(network.options)

    def create_network(self, network: NetworkInfo) -> None:
        """Remember the network."""
        self._record("create_network", network.name)
        self.networks.add(network.id)

    def delete_network(self, network: NetworkInfo) -> None:
        """Forget the network."""
        self._record("delete_network", network.name)
        self.networks.discard(network.id)

    def create_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Remember the endpoint."""
        self._record("create_endpoint", endpoint.name)
        self.endpoints.add(endpoint.id)

    def delete_endpoint(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Forget the endpoint."""
        self._record("delete_endpoint", endpoint.name)
        self.endpoints.discard(endpoint.id)

    def join(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo, ifname: str) -> JoinResult:
        """Put ``ifname`` in the sandbox's fake namespace; the network's gateway is the sandbox's."""
        self._record("join", endpoint.name, sandbox.name, ifname)
        if self.os is not None:
            self.os.add_interface(sandbox.netns.path, ifname)
        self.joined[endpoint.id] = (sandbox.netns.path, ifname)
        gateway = network.ipv4[0].gateway if network.ipv4 else None
        return JoinResult(interface=ifname, gateway=None if gateway is None else ipaddress.IPv4Address(gateway.ip))

    def leave(self, network: NetworkInfo, endpoint: EndpointInfo, sandbox: SandboxInfo) -> None:
        """Take the endpoint's interfaces out of the sandbox's fake namespace."""
        self._record("leave", endpoint.name, sandbox.name)
        joined = self.joined.pop(endpoint.id, None)
        if joined is not None and self.os is not None:
            self.os.remove_interface(*joined)

    def publish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Remember the endpoint's ports as published."""
        self._record("publish_ports", endpoint.name)
        self.published.add(endpoint.id)

    def unpublish_ports(self, network: NetworkInfo, endpoint: EndpointInfo) -> None:
        """Forget them."""
        self._record("unpublish_ports", endpoint.name)
        self.published.discard(endpoint.id)


@attrs.frozen
class FakeWorld:
    """A controller over in-memory parts, and those parts (see :func:`fake_controller`)."""

    controller: Controller
    os: FakeSandboxOS
    driver: FakeDriver
    firewall: RecordingFirewall


def fake_controller(state_dir: str, *, observer: StepObserver | None = None, **kwargs: Any) -> FakeWorld:
    """A Controller on a MemoryStore, a FakeSandboxOS, a RecordingFirewall and one FakeDriver (``"fake"``).

    No root and no kernel: ``state_dir`` holds only the lock files. ``kwargs`` go to
    :class:`FakeSandboxOS` (``host_networks=...``). The controller creates no
    predefined networks; its ephemeral host ports are 40000-40999.
    """
    fake_os = FakeSandboxOS(**kwargs)
    firewall = RecordingFirewall()
    host = NetNS.current()
    context = DriverContext(host_netns=host, firewall=firewall, state_dir=state_dir, observer=observer or NO_OBSERVER)
    driver = FakeDriver(context, fake_os)
    registry = DriverRegistry(lambda name: context, load_entry_points=False)
    registry.register(FakeDriver.name, lambda ctx: driver)
    controller = Controller(
        state_dir,
        host,
        store=MemoryStore(),
        sandbox_os=fake_os,
        firewall=firewall,
        observer=observer,
        registry=registry,
        predefined=False,
        ephemeral_ports="40000-40999",
    )
    return FakeWorld(controller, fake_os, driver, firewall)
