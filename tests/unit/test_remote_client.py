"""The remote driver's protocol client against a plugin server on a Unix socket (no root needed)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cnm.errors import Conflict, InvalidConfig, KernelError
from cnm.plugin import PluginServer
from cnm_drivers.remote.client import RemoteClient


class _Handler:
    implements = "NetworkDriver"

    def routes(self) -> dict[str, object]:
        return {
            "NetworkDriver.GetCapabilities": lambda body: {"Scope": "local", "ConnectivityScope": "local"},
            "NetworkDriver.Join": lambda body: {"Error": "spelled the other way"},
        }


def test_a_plugin_that_starts_late_is_waited_for(tmp_path: Path) -> None:
    sock = str(tmp_path / "late.sock")
    servers: list[PluginServer] = []

    def start() -> None:
        server = PluginServer(sock, [_Handler()])  # type: ignore[list-item]
        server.start()
        servers.append(server)

    timer = threading.Timer(0.3, start)
    timer.start()
    try:
        assert RemoteClient(sock, retry_for=30).call("Plugin.Activate") == {"Implements": ["NetworkDriver"]}
    finally:
        timer.join()
        for server in servers:
            server.shutdown()


def test_refusals_missing_methods_and_absent_plugins(tmp_path: Path) -> None:
    sock = str(tmp_path / "p.sock")
    server = PluginServer(sock, [_Handler()])  # type: ignore[list-item]
    server.start()
    try:
        client = RemoteClient(sock)
        with pytest.raises(Conflict, match="remote plugin: spelled the other way"):
            client.call("NetworkDriver.Join", {})
        with pytest.raises(InvalidConfig, match="remote plugin: spelled the other way"):
            client.call("NetworkDriver.Join", {}, refused=InvalidConfig)
        assert client.call("NetworkDriver.ProgramExternalConnectivity", {}, optional=True) == {}  # 404: optional
        with pytest.raises(Conflict, match="not a method this plugin serves"):
            client.call("NetworkDriver.ProgramExternalConnectivity", {})
    finally:
        server.shutdown()
    with pytest.raises(KernelError, match="cannot reach the plugin"):
        RemoteClient(sock, retry_for=0.2).call("Plugin.Activate")
