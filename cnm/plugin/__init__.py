"""cnm's drivers served to a Docker engine: the remote network driver and IPAM plugin protocol.

::

    from cnm.plugin import open_plugin

    with open_plugin("bridge", ipam=True, state_dir="/var/lib/cnm/plugin", firewall="nftables") as plugin:
        plugin.serve_forever()          # /run/docker/plugins/cnm-bridge.sock

then ``docker network create -d cnm-bridge --ipam-driver cnm-bridge net1``.
The command line is ``cnm plugin serve --driver bridge [--ipam] [--socket PATH]``.

The package: :mod:`~cnm.plugin.messages` (the protocol's requests and replies,
field by field), :mod:`~cnm.plugin.network` (``NetworkDriver.*`` onto a cnm
driver), :mod:`~cnm.plugin.ipam` (``IpamDriver.*`` onto cnm's IPAM),
:mod:`~cnm.plugin.state` (what is kept in the store), :mod:`~cnm.plugin.server`
(HTTP over a Unix socket) and :mod:`~cnm.plugin.client` (the same protocol as
a client). It uses only cnm's public driver API: the registry, the driver
contract, the store, the firewall selection and the IPAM.
"""

from __future__ import annotations

import logging
import os

from cnm.driverapi import DriverContext
from cnm.firewallapi import ClosableFirewall, open_firewall
from cnm.ipam import LocalIpam
from cnm.kernel.netns import NetNS
from cnm.plugin.client import PluginClient, PluginError
from cnm.plugin.ipam import IpamPlugin, host_networks
from cnm.plugin.network import NetworkPlugin
from cnm.plugin.server import PluginHandler, PluginServer
from cnm.plugin.state import owner_id
from cnm.registry import DriverRegistry
from cnm.steps import StepObserver
from cnm.store import SqliteStore

__all__ = [
    "PLUGIN_DIR",
    "IpamPlugin",
    "NetworkPlugin",
    "Plugin",
    "PluginClient",
    "PluginError",
    "PluginServer",
    "default_socket",
    "open_plugin",
    "plugin_name",
]

log = logging.getLogger(__name__)

PLUGIN_DIR = "/run/docker/plugins"
"""Where Docker looks for plugin sockets: ``NAME.sock`` is the plugin called NAME."""


def plugin_name(driver: str) -> str:
    """The name Docker knows a served cnm driver by: ``cnm-<driver>``."""
    return f"cnm-{driver}"


def default_socket(driver: str) -> str:
    """``/run/docker/plugins/cnm-<driver>.sock``."""
    return os.path.join(PLUGIN_DIR, plugin_name(driver) + ".sock")


class Plugin:
    """A running plugin: its server, handlers, store and firewall; close it to release them."""

    def __init__(
        self,
        server: PluginServer,
        *,
        network: NetworkPlugin | None,
        ipam: IpamPlugin | None,
        store: SqliteStore,
        firewall: ClosableFirewall | None,
    ) -> None:
        self.server = server
        self.network = network
        self.ipam = ipam
        self.store = store
        self.firewall = firewall

    @property
    def socket_path(self) -> str:
        """Where it listens."""
        return self.server.socket_path

    def serve_forever(self) -> None:
        """Answer Docker until :meth:`shutdown`."""
        self.server.serve_forever()

    def start(self) -> None:
        """Answer Docker from a background thread."""
        self.server.start()

    def shutdown(self) -> None:
        """Stop answering (from another thread than :meth:`serve_forever`'s)."""
        self.server.shutdown()

    def close(self) -> None:
        """Stop listening and release the store and the firewall."""
        self.server.close()
        if self.firewall is not None:
            self.firewall.close()
        self.store.close()

    def __enter__(self) -> Plugin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_plugin(
    driver: str | None,
    *,
    ipam: bool = False,
    state_dir: str,
    socket_path: str | None = None,
    host_netns: str | NetNS | None = None,
    firewall: str = "nftables",
    observer: StepObserver | None = None,
) -> Plugin:
    """Open the store, construct the driver, reconcile, and listen.

    Args:
        driver: the cnm driver to serve as Docker's network driver (an entry
            point of ``cnm.drivers``), or None to serve only the IPAM.
        ipam: also serve cnm's IPAM (``--ipam-driver``), on the same socket.
        state_dir: the plugin's own directory: its store (``plugin.db``) and the driver's files.
        socket_path: default :func:`default_socket` (``cnm-ipam`` if ``driver`` is None).
        host_netns: the namespace the Docker engine runs in (a name, a path or a NetNS); default the caller's.
        firewall: the firewall backend the driver uses. ``nftables`` by default:
            beside Docker's own iptables-nft rules (Debian 12's), it lets cnm's
            bridges through Docker's ``FORWARD`` drop policy.
        observer: sees every step.

    Raises:
        cnm.errors.CNMError: no such driver or firewall, the socket is in use, or the reconcile failed.
    """
    if driver is None and not ipam:
        raise ValueError("open_plugin needs a driver, ipam=True, or both")
    host = host_netns if isinstance(host_netns, NetNS) else NetNS.named(host_netns) if host_netns else NetNS.current()
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    store = SqliteStore(os.path.join(state_dir, "plugin.db"))
    fw: ClosableFirewall | None = None
    try:
        handlers: list[PluginHandler] = []
        network = None
        if driver is not None:
            owner = owner_id(store)
            fw = open_firewall(firewall, host, owner=owner)
            chosen_fw = fw
            registry = DriverRegistry(
                lambda name: DriverContext(
                    host_netns=host,
                    firewall=chosen_fw,
                    state_dir=_driver_dir(state_dir, name),
                    owner=owner,
                )
            )
            network = NetworkPlugin(registry.get(driver), store, host_netns=host, firewall=fw, observer=observer)
            handlers.append(network)
        ipam_plugin = IpamPlugin(LocalIpam(store), exclude=lambda: host_networks(host)) if ipam else None
        if ipam_plugin is not None:
            handlers.append(ipam_plugin)
        server = PluginServer(socket_path or default_socket(driver or "ipam"), handlers)
    except BaseException:
        if fw is not None:
            fw.close()
        store.close()
        raise
    return Plugin(server, network=network, ipam=ipam_plugin, store=store, firewall=fw)


def _driver_dir(state_dir: str, name: str) -> str:
    path = os.path.join(state_dir, "drivers", name)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path
