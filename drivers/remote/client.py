"""The remote driver's side of Docker's plugin protocol: ``POST /<Method>`` over a Unix socket.

A driver uses only cnm's public driver API, so this small client is the
driver's own (Python's http.client over AF_UNIX, as the server side is
http.server): the same headers dockerd sends, one kept-alive connection,
``{"Err": ...}`` raised as :class:`cnm.errors.Conflict` with the plugin's message.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from cnm.errors import CNMError, Conflict, InvalidConfig, KernelError

__all__ = ["PLUGIN_DIRS", "RemoteClient", "find_socket"]

PLUGIN_DIRS = ("/run/docker/plugins", "/etc/docker/plugins", "/usr/lib/docker/plugins")
"""Where Docker looks for a plugin by name: ``NAME.sock``, or a ``NAME.spec`` file naming its address."""


def find_socket(plugin: str) -> str:
    """The socket of the plugin called ``plugin``, found as dockerd finds it.

    Raises:
        InvalidConfig: no socket or spec file of that name, or a spec that is not ``unix://PATH``.
    """
    for directory in PLUGIN_DIRS:
        sock = os.path.join(directory, f"{plugin}.sock")
        if os.path.exists(sock):
            return sock
        spec = os.path.join(directory, f"{plugin}.spec")
        if os.path.exists(spec):
            with open(spec) as f:
                address = f.read().strip()
            if not address.startswith("unix://"):
                raise InvalidConfig(
                    f"{spec} names {address!r}; the remote driver reaches plugins on unix:// sockets only"
                )
            return address.removeprefix("unix://")
    raise InvalidConfig(
        f"no Docker plugin named {plugin!r} ({plugin}.sock or {plugin}.spec in {', '.join(PLUGIN_DIRS)}); "
        "start the plugin, or give its socket with the option socket=PATH"
    )


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


class RemoteClient:
    """Calls one plugin, a connection per call.

    A connection per call rather than one kept alive: the driver has no
    moment to close one (drivers are not closed), and a plugin that restarted
    in between is reached again without a retry. A Unix connect costs little.

    Args:
        socket_path: the plugin's socket.
        timeout: seconds to wait for a reply.
        retry_for: seconds to keep trying, with backoff, while the plugin cannot be reached
            (not started yet, restarting): dockerd's own budget is 30 s.
    """

    def __init__(self, socket_path: str, *, timeout: float = 60.0, retry_for: float = 30.0) -> None:
        self.socket_path = socket_path
        self._timeout = timeout
        self._retry_for = retry_for

    def call(
        self,
        method: str,
        body: Mapping[str, Any] | None = None,
        *,
        optional: bool = False,
        refused: type[CNMError] = Conflict,
    ) -> dict[str, Any]:
        """POST ``body`` to ``/<method>``; the reply (``{}`` for an ``optional`` method the plugin lacks: 404).

        Raises:
            CNMError: ``refused`` (Conflict by default) when the plugin refused
                (``{"Err": ...}``), with the plugin's message.
            KernelError: the plugin could not be reached or did not answer the protocol.
        """
        payload = b"" if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/vnd.docker.plugins.v1.2+json", "Content-Length": str(len(payload))}
        status, raw = self._post(method, payload, headers)
        if status == 404 and optional:
            return {}
        try:
            reply = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise KernelError(f"{method}: the plugin at {self.socket_path} replied {raw[:200]!r}, not JSON") from exc
        if not isinstance(reply, dict):
            raise KernelError(f"{method}: the plugin at {self.socket_path} replied {reply!r}, not a JSON object")
        message = reply.get("Err") or reply.get("Error")  # some plugins spell it Error
        if message:
            raise refused(f"remote plugin: {message}")
        if status != 200:
            raise KernelError(f"{method}: the plugin at {self.socket_path} answered HTTP {status}")
        return reply

    def _post(self, method: str, payload: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        deadline = time.monotonic() + self._retry_for
        delay = 0.05
        while True:
            conn = _UnixConnection(self.socket_path, self._timeout)
            try:
                try:
                    conn.connect()
                except (FileNotFoundError, ConnectionRefusedError) as exc:
                    if time.monotonic() + delay > deadline:
                        raise KernelError(
                            f"cannot reach the plugin at {self.socket_path} for {method} (tried for "
                            f"{self._retry_for:.0f} s): {exc}; start the plugin"
                        ) from exc
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                conn.request("POST", f"/{method}", body=payload, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except OSError as exc:
                raise KernelError(f"{method}: the plugin at {self.socket_path} failed to answer: {exc}") from exc
            finally:
                conn.close()
