"""The plugin's HTTP server: HTTP/1.1 over a Unix socket, stdlib only.

Docker's plugin client (Go's net/http) sends every call as ``POST /<Method>``
with a JSON body (empty for ``Plugin.Activate`` and the ``GetCapabilities``
calls) on a kept-alive connection, and reads a JSON reply. A reply
``{"Err": "..."}`` with status 200 is how the protocol reports a refusal: the
Docker CLI shows ``Error response from daemon: remote: ...``. A method the
plugin does not serve gets 404, which Docker takes as "not implemented" for
the optional ones.

Why :mod:`http.server` over :class:`socketserver.UnixStreamServer`: it is part
of Python itself (maintained with it, no dependency to pin or audit), it
speaks HTTP/1.1 with keep-alive, and the protocol needs nothing more: a few
small POSTs a second from one local client. A thread per connection keeps
Docker's concurrent calls from waiting on each other's I/O.
"""

from __future__ import annotations

import contextlib
import errno
import http.server
import json
import logging
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from cnm.errors import AlreadyExists, CNMError
from cnm.plugin.messages import error_reply

__all__ = ["CONTENT_TYPE", "PluginHandler", "PluginServer"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
"""The media type of replies, as Docker's own plugin helpers send it."""

Route = Callable[[object], Mapping[str, object]]


class PluginHandler(Protocol):
    """One protocol a plugin serves (``NetworkDriver`` or ``IpamDriver``)."""

    implements: str

    def routes(self) -> Mapping[str, Route]:
        """The methods it answers, as ``"NetworkDriver.Join"`` and so on."""
        ...


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    routes: Mapping[str, Route]


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        method = self.path.lstrip("/").split("?")[0]
        try:
            raw = self._body()
        except ValueError as exc:
            self._reply(400, error_reply(f"cnm plugin: unreadable request body for {method}: {exc}"))
            return
        route = self.server.routes.get(method)
        if route is None:
            self._reply(404, error_reply(f"cnm plugin: {method or '/'} is not a method this plugin serves"))
            return
        self._reply(200, _call(method, route, raw))

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, body: Mapping[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        # A Unix socket's client address is "", which the base class cannot print.
        log.debug("%s", format % args)


def _call(method: str, route: Route, raw: bytes) -> Mapping[str, object]:
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError as exc:
        return error_reply(f"cnm plugin: {method}: the body is not JSON ({exc}); send a JSON object")
    try:
        reply = route(body)
    except CNMError as exc:
        log.warning("%s refused: %s", method, exc)
        return error_reply(str(exc))
    except Exception as exc:  # the protocol's boundary: Docker gets the message, the log the rest
        log.exception("%s failed", method)
        return error_reply(f"cnm plugin: {method} failed: {type(exc).__name__}: {exc}; see the plugin's log")
    log.debug("%s -> %s", method, reply)
    return reply


class PluginServer:
    """Serves plugin handlers on a Unix socket.

    Args:
        socket_path: where to listen, e.g. ``/run/docker/plugins/cnm-bridge.sock``
            (Docker finds a plugin by the socket's name in that directory). A
            stale socket left by a killed server is replaced; one another server
            still answers on is refused.
        handlers: what to serve; ``Plugin.Activate`` lists their ``implements``.
    """

    def __init__(self, socket_path: str, handlers: Sequence[PluginHandler]) -> None:
        self.socket_path = socket_path
        self.implements = [h.implements for h in handlers]
        routes: dict[str, Route] = {"Plugin.Activate": lambda _body: {"Implements": list(self.implements)}}
        for handler in handlers:
            routes.update(handler.routes())
        _claim(socket_path)
        self._server = _Server(socket_path, _RequestHandler, bind_and_activate=True)
        self._server.routes = routes
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        """Answer requests until :meth:`shutdown` (from another thread or a signal handler's thread)."""
        log.info("serving %s on %s", ", ".join(self.implements), self.socket_path)
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="cnm-plugin-server", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop serving (waits for the serving loop to end) and remove the socket."""
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join()
        self.close()

    def close(self) -> None:
        """Close the listening socket and remove its file."""
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def __enter__(self) -> PluginServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _claim(path: str) -> None:
    """Make the socket's directory; remove a stale socket; refuse one that is in use."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AlreadyExists(f"{path} exists and is not a socket; remove it or choose another --socket")
    with _unix_client(path) as client:
        try:
            client.connect(path)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
            os.unlink(path)
            log.info("removed the stale socket %s", path)
            return
    raise AlreadyExists(f"another plugin is serving on {path}; stop it first, or choose another --socket")


@contextlib.contextmanager
def _unix_client(path: str) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(2)
        yield sock
    finally:
        sock.close()
