"""The JSON-RPC connection to ovsdb-server (RFC 7047), with a deadline on every read and write."""

from __future__ import annotations

import errno
import itertools
import json
import socket
import time
from collections.abc import Mapping
from typing import Any

from cnm.errors import InvalidConfig

__all__ = ["Connection", "Json", "OpError", "ServerError", "parse_remote"]

Json = Any  # what json.loads returns; narrowed where it is read


def parse_remote(remote: str) -> tuple[int, str | tuple[str, int]]:
    """Split ``unix:PATH`` or ``tcp:HOST:PORT`` into a socket family and address.

    Raises:
        InvalidConfig: for any other form.
    """
    kind, _, rest = remote.partition(":")
    if kind == "unix" and rest.startswith("/"):
        return socket.AF_UNIX, rest
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        if host and port.isdigit():
            return socket.AF_INET, (host.strip("[]"), int(port))
    raise InvalidConfig(f"OVSDB remote {remote!r} is not unix:/PATH or tcp:HOST:PORT")


class Connection:
    """One JSON-RPC connection with a deadline on every read and write."""

    def __init__(self, remote: str, deadline: float) -> None:
        family, address = parse_remote(remote)
        self._remote = remote
        self.deadline = deadline
        self._ids = itertools.count(1)
        self._buffer = b""
        self._decoder = json.JSONDecoder()
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(self._remaining())
            self._sock.connect(address)
        except BaseException:
            self._sock.close()
            raise

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(errno.ETIMEDOUT, "timed out")
        return left

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    def _send(self, message: Mapping[str, Json]) -> None:
        self._sock.settimeout(self._remaining())
        self._sock.sendall(json.dumps(message).encode())

    def _receive(self) -> Json:
        while True:
            text = self._buffer.decode(errors="replace").lstrip()
            if text:
                try:
                    message, end = self._decoder.raw_decode(text)
                except json.JSONDecodeError:
                    pass  # incomplete: read more
                else:
                    self._buffer = text[end:].encode()
                    return message
            self._sock.settimeout(self._remaining())
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionResetError(errno.ECONNRESET, "ovsdb-server closed the connection")
            self._buffer += chunk

    def call(self, method: str, params: list[Json]) -> Json:
        """Send one request and return its result, answering the server's echo probes meanwhile."""
        request_id = next(self._ids)
        self._send({"method": method, "params": params, "id": request_id})
        while True:
            message = self._receive()
            if message.get("method") == "echo":
                self._send({"result": message.get("params", []), "error": None, "id": message.get("id")})
                continue
            if message.get("id") != request_id:
                continue  # a notification (no monitors are set up, but be tolerant)
            if message.get("error") is not None:
                raise ServerError(f"{method} refused: {message['error']}")
            return message.get("result")


class ServerError(Exception):
    """The server answered with an error (mapped to KernelError at the boundary)."""


class OpError(Exception):
    """One operation of a transaction failed; ``error`` is OVSDB's error string."""

    def __init__(self, error: str, details: str, op: str) -> None:
        super().__init__(f"{error}: {details}" if details else error)
        self.error = error
        self.details = details
        self.op = op
