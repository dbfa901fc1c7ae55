"""Real packets between namespaces: tiny TCP/UDP servers and probes that report the peer.

A server answers every connection (or datagram) with the address it came
from, so a test sees both that traffic got through and what NAT did to it.
A Unix-socket server answers with its hostname and network namespace
instead, so a client sees who served it. Everything runs as processes
inside the namespaces given; nothing is sent anywhere else.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Protocol

__all__ = ["Runner", "ping", "probe", "probe_unix", "serve", "serve_unix"]

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


# A leading "@" names an abstract socket (one that lives in a network namespace, not in a file).
_UNIX_SERVER = r"""
import os, socket, sys
name = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\0" + name[1:] if name.startswith("@") else name)
s.listen(4)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(f"{socket.gethostname()} {os.readlink('/proc/self/ns/net')}".encode())
    c.close()
"""

_UNIX_CLIENT = r"""
import socket, sys
name = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect("\0" + name[1:] if name.startswith("@") else name)
except OSError as exc:
    print(type(exc).__name__, file=sys.stderr)
    sys.exit(1)
print(s.recv(256).decode().strip())
"""


class Runner(Protocol):
    """Anything that runs commands in a namespace: a Sandbox, an Outside host."""

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run to completion."""

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start in the background."""


def upstream_resolver_argv(address: object, *records: str) -> list[str]:
    """dnsmasq as a plain upstream DNS server on ``address`` (its own namespace's): no resolv.conf,
    no hosts file, in the foreground, answering only ``records`` (dnsmasq options such as
    ``--address=/ext.test/203.0.113.7``) and what they imply."""
    return [
        "dnsmasq",
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        f"--listen-address={address}",
        "--bind-interfaces",
        "--pid-file=",
        "--user=root",
        *records,
    ]


def _start(where: Runner, argv: list[str], what: str, timeout: float) -> subprocess.Popen[str]:
    """Start a server script in ``where``; return once it says it is ready."""
    proc = where.popen([sys.executable, "-c", *argv], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline() if proc.stdout is not None else ""
    if line.strip() != "ready" or time.monotonic() > deadline:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{what} did not start")
    return proc


def serve(where: Runner, protocol: str, port: int, timeout: float = 10.0) -> subprocess.Popen[str]:
    """Start a server on ``0.0.0.0:port`` in ``where``; return once it listens. End it by PID."""
    return _start(where, [_SERVER, protocol, str(port)], f"{protocol} server on port {port}", timeout)


def serve_unix(where: Runner, name: str, timeout: float = 10.0) -> subprocess.Popen[str]:
    """Start a Unix-socket server at path ``name`` (or abstract ``@name``) in ``where``. End it by PID."""
    return _start(where, [_UNIX_SERVER, name], f"unix socket server on {name}", timeout)


def probe_unix(where: Runner, name: str) -> tuple[bool, str]:
    """Connect from ``where``: (True, the server's "hostname net:[inode]") or (False, the error's class name)."""
    result = where.run([sys.executable, "-c", _UNIX_CLIENT, name], capture_output=True, text=True, timeout=30)
    if result.returncode == 0:
        return True, result.stdout.strip()
    return False, result.stderr.strip()


def probe(where: Runner, protocol: str, address: str, port: int, timeout: float = 2.0) -> str | None:
    """Connect from ``where``; the peer address the server saw, or None if nothing answered."""
    result = where.run(
        [sys.executable, "-c", _CLIENT, protocol, address, str(port), str(timeout)],
        capture_output=True,
        text=True,
        timeout=timeout * 4 + 10,
    )
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def ping(where: Runner, address: str, count: int = 3, wait: float = 1.0) -> bool:
    """True if ``address`` answers at least one of ``count`` ICMP echoes sent from ``where``.

    Several echoes, 0.2 s apart, because the first packets on a path set up a
    moment ago may be lost while neighbours resolve or OVS's userspace datapath
    installs its flows, more so on a loaded machine; a path that works answers
    one of them, a blocked one none.
    """
    result = where.run(
        ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", str(wait), address],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode == 0
