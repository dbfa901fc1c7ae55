"""The operating-system side of sandboxes, as the core sees it (internal; libnetwork's ``osl`` is the model).

Every OS effect the core makes itself goes through a :class:`SandboxOS`: creating and
removing namespaces, configuring an interface a driver made, the default route, the
hosts/resolv.conf/hostname files, and the few questions it asks the host. Drivers do
their own kernel work through :mod:`cnm.kernel`; this is only the core's part.

The values are plain (paths, interface names, :mod:`ipaddress` values), never records,
so an implementation needs nothing of the core. :class:`cnm.kernel.sandbox_os.KernelSandboxOS`
is the real one; :class:`cnm.testing.fakes.FakeSandboxOS` keeps everything in memory, for
unit tests of the operations' ordering, undo and recovery without root.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from cnm.types import IPNetwork

__all__ = ["HostNetwork", "SandboxNetwork", "SandboxOS", "StaticRoute"]

HostNetwork = tuple[IPNetwork, str]
"""A network the host has (an address's or a route's), with a description such as
``"address 192.168.1.5/24 on eth0"`` for messages."""

StaticRoute = tuple[IPNetwork, "ipaddress.IPv4Address | ipaddress.IPv6Address | None"]
"""A route to add with an interface: ``(destination, next hop or None)``."""


@runtime_checkable
class SandboxNetwork(Protocol):
    """The network stack of one sandbox namespace, opened for one operation (one netlink socket)."""

    @property
    def netns_path(self) -> str:
        """The namespace this session works in."""
        ...

    def configure_interface(
        self, ifname: str, address: ipaddress.IPv4Interface | None, routes: Sequence[StaticRoute] = ()
    ) -> None:
        """Give an interface a driver moved in its address, bring it up, add its routes."""
        ...

    def set_default_route(self, gateway: ipaddress.IPv4Address, ifname: str) -> None:
        """Point the default route at ``gateway`` through ``ifname``, replacing any other."""
        ...

    def clear_default_route(self) -> None:
        """Remove the default route; nothing if there is none."""
        ...

    def interface_exists(self, ifname: str) -> bool:
        """True if the namespace has an interface of that name."""
        ...


@runtime_checkable
class SandboxOS(Protocol):
    """Namespaces, interfaces, files and host queries: the core's OS calls."""

    # --- namespaces ---------------------------------------------------------------
    def create_namespace(self, path: str) -> None:
        """Create a network namespace mounted at ``path``, with loopback up."""
        ...

    def remove_namespace(self, path: str) -> None:
        """Unmount and remove the namespace at ``path``; nothing if it is gone."""
        ...

    def namespace_exists(self, path: str) -> bool:
        """True if a live namespace is mounted at ``path``."""
        ...

    def clear_shadowed(self, directory: str) -> list[str]:
        """Bring back namespaces hidden under later mounts of ``directory``; one line per repair."""
        ...

    def network(self, netns_path: str) -> contextlib.AbstractContextManager[SandboxNetwork]:
        """Open the namespace's network stack for a series of calls."""
        ...

    # --- files ----------------------------------------------------------------------
    def make_directory(self, path: str) -> None:
        """Create a sandbox's files directory (and its parents); nothing if it exists."""
        ...

    def remove_directory(self, path: str) -> None:
        """Remove a directory and everything in it; nothing if it is gone."""
        ...

    def is_directory(self, path: str) -> bool:
        """True if ``path`` is a directory."""
        ...

    def list_directory(self, path: str) -> list[str]:
        """The entries of a directory; none if it does not exist."""
        ...

    def write_file(self, path: str, text: str) -> None:
        """Write a sandbox file in place (processes that bind-mounted it see the change)."""
        ...

    def read_host_file(self, path: str) -> str:
        """A file of the host's (``/etc/hosts``); empty if it does not exist."""
        ...

    def host_resolv_conf(self) -> str:
        """The host's resolv.conf as sandboxes inherit it (systemd-resolved's upstream file if in use)."""
        ...

    def host_hostname(self) -> str:
        """The host's hostname, for host-mode sandboxes."""
        ...

    # --- host queries ------------------------------------------------------------
    def host_networks(self) -> list[HostNetwork]:
        """The host namespace's IPv4 addresses and routes (loopback and link-local left out)."""
        ...

    def host_link_alias(self, ifname: str) -> str | None:
        """The alias of the host's interface ``ifname`` (``""`` if it has none), or None if it does not exist."""
        ...
