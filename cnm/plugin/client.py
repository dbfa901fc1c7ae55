"""A client of the plugin protocol: ``POST /<Method>`` over a Unix socket, as Docker's engine sends it.

For tools and tests that talk to a plugin (cnm's own or any other) the way a
Docker engine does: the same headers, an empty body for ``Plugin.Activate``
and the ``GetCapabilities`` calls, one kept-alive connection.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Mapping
from typing import Any

from cnm.errors import CNMError, KernelError

__all__ = ["ACCEPT", "PluginClient", "PluginError"]

ACCEPT = "application/vnd.docker.plugins.v1.2+json"
"""The Accept header Docker 20.10 sends."""


class PluginError(CNMError):
    """The plugin answered ``{"Err": ...}``; the message is the plugin's."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class PluginClient:
    """Calls a plugin's methods.

    Args:
        socket_path: the plugin's socket.
        timeout: seconds to wait for a reply.
    """

    def __init__(self, socket_path: str, *, timeout: float = 60.0) -> None:
        self.socket_path = socket_path
        self._conn = _UnixConnection(socket_path, timeout)

    def call(self, method: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """POST ``body`` to ``/<method>``; the reply.

        Raises:
            PluginError: the plugin replied ``{"Err": ...}``.
            KernelError: the plugin could not be reached, or replied something that is not the protocol.
        """
        payload = b"" if body is None else json.dumps(body).encode()
        headers = {"Accept": ACCEPT, "User-Agent": "Go-http-client/1.1", "Content-Length": str(len(payload))}
        try:
            try:
                self._conn.request("POST", f"/{method}", body=payload, headers=headers)
                response = self._conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # The server closed a kept-alive connection (it restarted): one fresh try, as Go's client does.
                self._conn.close()
                self._conn.request("POST", f"/{method}", body=payload, headers=headers)
                response = self._conn.getresponse()
            status, raw = response.status, response.read()
        except OSError as exc:
            self._conn.close()
            raise KernelError(
                f"cannot reach the plugin at {self.socket_path} for {method}: {exc}; is it running?"
            ) from exc
        try:
            reply = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise KernelError(f"{method}: the plugin at {self.socket_path} replied {raw[:200]!r}, not JSON") from exc
        if not isinstance(reply, dict):
            raise KernelError(f"{method}: the plugin at {self.socket_path} replied {reply!r}, not a JSON object")
        if reply.get("Err"):
            raise PluginError(str(reply["Err"]))
        if status != 200:
            raise KernelError(f"{method}: the plugin at {self.socket_path} answered HTTP {status}")
        return reply

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> PluginClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
