"""Real packets between namespaces: tiny TCP/UDP servers and probes that report the peer.

A server answers every connection (or datagram) with the address it came
from, so a test sees both that traffic got through and what NAT did to it.
Everything runs as processes inside the namespaces given; nothing is sent
anywhere else.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Protocol

__all__ = ["Runner", "ping", "probe", "serve"]

_SERVER = r"""
import socket, sys
proto, port = sys.argv[1], int(sys.argv[2])
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
if proto == "tcp":
    s.listen(16)
print("ready", flush=True)
while True:
    if proto == "tcp":
        c, peer = s.accept()
        c.sendall((peer[0] + "\n").encode())
        c.close()
    else:
        data, peer = s.recvfrom(512)
        s.sendto((peer[0] + "\n").encode(), peer)
"""

_CLIENT = r"""
import socket, sys
proto, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.settimeout(timeout)
try:
    if proto == "tcp":
        s.connect((host, port))
        print(s.recv(512).decode().strip())
    else:
        for _ in range(3):
            s.sendto(b"hi", (host, port))
            try:
                print(s.recvfrom(512)[0].decode().strip())
                break
            except socket.timeout:
                continue
        else:
            sys.exit(1)
except OSError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


class Runner(Protocol):
    """Anything that runs commands in a namespace: a Sandbox, an Outside host."""

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run to completion."""

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start in the background."""


def serve(where: Runner, protocol: str, port: int, timeout: float = 10.0) -> subprocess.Popen[str]:
    """Start a server on ``0.0.0.0:port`` in ``where``; return once it listens. End it by PID."""
    proc = where.popen([sys.executable, "-c", _SERVER, protocol, str(port)], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline() if proc.stdout is not None else ""
    if line.strip() != "ready" or time.monotonic() > deadline:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{protocol} server on port {port} did not start")
    return proc


def probe(where: Runner, protocol: str, address: str, port: int, timeout: float = 2.0) -> str | None:
    """Connect from ``where``; the peer address the server saw, or None if nothing answered."""
    result = where.run(
        [sys.executable, "-c", _CLIENT, protocol, address, str(port), str(timeout)],
        capture_output=True,
        text=True,
        timeout=timeout * 4 + 10,
    )
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def ping(where: Runner, address: str, count: int = 1, wait: float = 1.0) -> bool:
    """True if ``address`` answers ICMP echo from ``where``."""
    result = where.run(
        ["ping", "-n", "-c", str(count), "-W", str(wait), address], capture_output=True, text=True, timeout=30
    )
    return result.returncode == 0
