"""The core's OS calls on the real kernel: :class:`KernelSandboxOS`.

It satisfies the core's ``SandboxOS`` protocol structurally (it imports nothing of
the core): namespaces through :mod:`cnm.kernel.netns` (mounted under the
controller's ``state_dir/netns``; the /run/netns handling stays there), interfaces
and routes through :mod:`cnm.kernel.addresses`, ``links`` and ``routes``, files
written in place, and the host's addresses and routes for the overlap check.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import socket
from collections.abc import Iterator, Sequence

from cnm import etchosts, resolvconf
from cnm.kernel import addresses, links, netns, netns_dirs
from cnm.kernel import routes as kernel_routes
from cnm.kernel.netns import Netlink, NetNS
from cnm.types import IPAddress, IPNetwork

__all__ = ["KernelNetwork", "KernelSandboxOS"]

log = logging.getLogger(__name__)

_DEFAULT = ipaddress.IPv4Network("0.0.0.0/0")


class KernelNetwork:
    """One sandbox namespace's stack over one netlink socket (see ``SandboxOS.network``)."""

    def __init__(self, netns_path: str, nl: Netlink) -> None:
        self._path = netns_path
        self._nl = nl

    @property
    def netns_path(self) -> str:
        """The namespace this session works in."""
        return self._path

    def configure_interface(
        self,
        ifname: str,
        address: ipaddress.IPv4Interface | None,
        routes: Sequence[tuple[IPNetwork, IPAddress | None]] = (),
    ) -> None:
        """Address, up, routes: in that order, as a join needs them."""
        if address is not None:
            addresses.add_address(self._nl, ifname, address)
        links.set_link(self._nl, ifname, up=True)
        for destination, next_hop in routes:
            kernel_routes.add_route(self._nl, destination, gateway=next_hop, ifname=ifname)

    def set_default_route(self, gateway: ipaddress.IPv4Address, ifname: str) -> None:
        """Replace the default route."""
        kernel_routes.replace_default_route(self._nl, gateway, ifname)

    def clear_default_route(self) -> None:
        """Delete the default route if there is one."""
        kernel_routes.delete_route(self._nl, _DEFAULT)

    def interface_exists(self, ifname: str) -> bool:
        """True if the namespace has the interface."""
        return links.get_link(self._nl, ifname) is not None


class KernelSandboxOS:
    """The kernel's side of sandboxes, for one controller's host namespace."""

    def __init__(self, host_netns: NetNS) -> None:
        self.host_netns = host_netns

    # --- namespaces ---------------------------------------------------------------
    def create_namespace(self, path: str) -> None:
        """A namespace mounted at ``path``, loopback up."""
        netns.create(path, loopback_up=True)

    def remove_namespace(self, path: str) -> None:
        """Unmount and remove it; nothing if gone."""
        netns.remove(path)

    def namespace_exists(self, path: str) -> bool:
        """True if a live namespace is mounted there."""
        return NetNS(path).exists()

    def clear_shadowed(self, directory: str) -> list[str]:
        """Bring back namespaces hidden under later mounts of the directory."""
        return netns_dirs.clear_shadowed(directory)

    @contextlib.contextmanager
    def network(self, netns_path: str) -> Iterator[KernelNetwork]:
        """One netlink socket in the namespace for the calls of one operation."""
        with NetNS(netns_path).netlink() as nl:
            yield KernelNetwork(netns_path, nl)

    # --- files ----------------------------------------------------------------------
    def make_directory(self, path: str) -> None:
        """``mkdir -p``."""
        os.makedirs(path, exist_ok=True)

    def remove_directory(self, path: str) -> None:
        """``rm -rf``."""
        shutil.rmtree(path, ignore_errors=True)

    def is_directory(self, path: str) -> bool:
        """True if a directory."""
        return os.path.isdir(path)

    def list_directory(self, path: str) -> list[str]:
        """Entries, sorted; none if it does not exist."""
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def write_file(self, path: str, text: str) -> None:
        """In place, so bind mounts of it see the change."""
        etchosts.write(path, text)

    def read_host_file(self, path: str) -> str:
        """The file's text, or empty if it does not exist."""
        try:
            with open(path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def host_resolv_conf(self) -> str:
        """The host's resolv.conf, following systemd-resolved's stub to its upstream file."""
        return resolvconf.read_host()

    def host_hostname(self) -> str:
        """``socket.gethostname()``."""
        return socket.gethostname()

    # --- host queries ------------------------------------------------------------
    def host_networks(self) -> list[tuple[IPNetwork, str]]:
        """The host namespace's IPv4 addresses and routes, each with a description naming its interface."""
        found: list[tuple[IPNetwork, str]] = []
        with self.host_netns.netlink() as nl:
            for link in links.list_links(nl):
                for a in addresses.list_addresses(nl, link.name):
                    if a.version == 4:
                        found.append((a.network, f"address {a} on {link.name}"))
            for r in kernel_routes.list_routes(nl):
                if r.destination.prefixlen > 0:
                    found.append((r.destination, f"route {r.destination} on {r.ifname or 'no interface'}"))
        return [(n, what) for n, what in found if not n.is_loopback and not n.is_link_local]

    def host_link_alias(self, ifname: str) -> str | None:
        """The alias of a host interface ("" if none), or None if there is no such interface."""
        with self.host_netns.netlink() as nl:
            found = links.get_link(nl, ifname)
        return None if found is None else found.alias or ""
