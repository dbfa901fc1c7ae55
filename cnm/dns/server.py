"""The resolver process: ``python -m cnm.dns.server --config DIR``.

It serves UDP and TCP on port 53 (``--port``) of every listen address in the
config directory (the networks' gateways), answers from the loaded networks
(:mod:`cnm.dns.answer`) and forwards the rest. Forwarding relays the client's
own query bytes and the upstream's reply bytes unchanged, so an upstream's
truncation (TC), NXDOMAIN and other errors reach the client as they were:
a UDP query is forwarded over UDP, a TCP query over TCP. An upstream that
times out, or answers SERVFAIL or REFUSED, is passed over for the next.

It exits by itself when its host namespace is gone (``--netns``: the file
no longer names the namespace it runs in, e.g. a test's throwaway host was
removed) or its config directory is: nothing is left for it to serve.

SIGHUP reloads the directory. The sockets of addresses that stay are kept
open, so no query is lost during a reload; a malformed directory keeps the
last good configuration and is logged. After every load the generation read
from the directory is written to ``.loaded`` there. SIGTERM ends the process.

This module is the process's main program; :mod:`cnm.dns.process` starts it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, cast

from cnm.dns.answer import Backend, Forward, Reply, answer, host_nameservers, usable
from cnm.dns.config import GENERATION_FILE, LOADED_FILE, ConfigDir, read_generation, write_generation
from cnm.errors import CNMError
from cnm.types import IPAddress

__all__ = ["Server", "main"]

log = logging.getLogger(__name__)

_IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
_MAX_IN_FLIGHT = 1024  # Docker's limit of concurrent forwarded queries
_TCP_IDLE = 10.0  # seconds a TCP client may stay silent before it is dropped
_WATCH_EVERY = 1.0  # seconds between checks that the host namespace and the config are still there


def _socket(address: IPAddress, port: int, kind: int) -> socket.socket:
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Bind even while the address is not (yet) usable, e.g. an IPv6 gateway still in DAD.
        sock.setsockopt(socket.SOL_IP, _IP_FREEBIND, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((str(address), port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: Server, local: IPAddress) -> None:
        self.server = server
        self.local = local
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector transport is a DatagramTransport in all but its class hierarchy.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.server.spawn(self.server.serve_udp(self, data, addr))


class Server:
    """The resolver: its listeners, the loaded backend, and forwarding."""

    def __init__(
        self,
        config: str,
        port: int = 53,
        resolv_conf: str = "/etc/resolv.conf",
        timeout: float = 4.0,
        netns: str | None = None,
    ) -> None:
        """Serve the networks in directory ``config`` on ``port``; forward with ``timeout`` seconds per upstream.

        ``netns`` is the path of the namespace it runs in, watched so that it
        exits once that namespace is gone.
        """
        self.config = ConfigDir(config)
        self.netns = netns
        self.port = port
        self.resolv_conf = resolv_conf
        self.timeout = timeout
        self.backend = Backend({})
        self.udp: dict[IPAddress, asyncio.DatagramTransport] = {}
        self.tcp: dict[IPAddress, asyncio.Server] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.in_flight = 0
        self.stopped = asyncio.Event()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a handler as a task (kept referenced until it ends); dropped beyond the in-flight limit."""
        if self.in_flight >= _MAX_IN_FLIGHT:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self.in_flight += 1
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.in_flight -= 1
        if not task.cancelled() and task.exception() is not None:
            log.error("query handler failed: %r", task.exception())

    # --- loading -------------------------------------------------------------------------------

    def _host_servers(self) -> tuple[IPAddress, ...]:
        try:
            with open(self.resolv_conf) as f:
                return host_nameservers(f.read())
        except OSError:
            return ()

    async def load(self) -> None:
        """(Re)load the directory and open or close listeners to match; the old config stays on error."""
        generation = read_generation(self.config.path, GENERATION_FILE)
        try:
            backend = Backend(self.config.read(), self._host_servers())
        except (CNMError, OSError) as exc:
            log.error("resolver config in %s not loaded, keeping the last one: %s", self.config.path, exc)
            return
        loop = asyncio.get_running_loop()
        wanted = backend.listen_addresses
        for address in set(self.udp) - wanted:
            self.udp.pop(address).close()
            self.tcp.pop(address).close()
        for address in wanted - set(self.udp):
            try:
                udp = _socket(address, self.port, socket.SOCK_DGRAM)
                tcp = _socket(address, self.port, socket.SOCK_STREAM)
            except OSError as exc:
                log.error("cannot listen on %s port %d: %s", address, self.port, exc)
                continue
            transport, _ = await loop.create_datagram_endpoint(functools.partial(_Udp, self, address), sock=udp)
            self.udp[address] = transport
            self.tcp[address] = await asyncio.start_server(
                functools.partial(self._serve_tcp, local=address), sock=tcp, limit=65536 + 2
            )
        self.backend = backend
        write_generation(self.config.path, generation, LOADED_FILE)
        log.info(
            "loaded %d networks (generation %d); listening on %s",
            len(backend.networks),
            generation,
            ", ".join(sorted(map(str, self.udp))) or "nothing",
        )

    # --- serving -------------------------------------------------------------------------------

    async def serve_udp(self, proto: _Udp, data: bytes, addr: tuple[str | int, ...]) -> None:
        """Answer one UDP query."""
        source = _ip(str(addr[0]))
        result = answer(self.backend, data, source, proto.local, tcp=False)
        reply = await self._resolve(result, data, tcp=False)
        if reply and proto.transport is not None and not proto.transport.is_closing():
            proto.transport.sendto(reply, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, local: IPAddress) -> None:
        peer = writer.get_extra_info("peername")
        source = _ip(str(peer[0]))
        try:
            while True:
                try:
                    size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), _TCP_IDLE), "big")
                    data = await asyncio.wait_for(reader.readexactly(size), _TCP_IDLE)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                result = answer(self.backend, data, source, local, tcp=True)
                reply = await self._resolve(result, data, tcp=True)
                if not reply:
                    return
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _resolve(self, result: Reply | Forward | None, query: bytes, *, tcp: bool) -> bytes:
        if result is None:
            return b""
        if isinstance(result, Reply):
            return result.wire
        for server in result.servers:
            try:
                reply = await asyncio.wait_for((_ask_tcp if tcp else _ask_udp)(server, query), self.timeout)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                log.debug("upstream %s failed: %r", server, exc)
                continue
            if usable(reply, query[0:2]):
                return reply
        return result.failure

    # --- life ----------------------------------------------------------------------------------

    def _orphaned(self) -> bool:
        if not os.path.isdir(self.config.path):
            return True
        if self.netns is None:
            return False
        try:
            there, here = os.stat(self.netns), os.stat("/proc/self/ns/net")
        except OSError:
            return True
        return (there.st_dev, there.st_ino) != (here.st_dev, here.st_ino)

    async def _watch(self) -> None:
        while not self.stopped.is_set():
            await asyncio.sleep(_WATCH_EVERY)
            if self._orphaned():
                log.info("host namespace %s or config %s is gone; exiting", self.netns, self.config.path)
                self.stopped.set()

    async def run(self, ready_fd: int | None = None) -> None:
        """Load, tell ``ready_fd`` we are ready, serve until SIGTERM; SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        await self.load()
        watch = loop.create_task(self._watch())
        loop.add_signal_handler(signal.SIGHUP, self.spawn_reload)
        loop.add_signal_handler(signal.SIGTERM, self.stopped.set)
        loop.add_signal_handler(signal.SIGINT, self.stopped.set)
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        await self.stopped.wait()
        watch.cancel()
        for transport in self.udp.values():
            transport.close()
        for server in self.tcp.values():
            server.close()
        log.info("stopped")

    def spawn_reload(self) -> None:
        """Reload in a task (from the signal handler)."""
        task = asyncio.get_running_loop().create_task(self.load())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def _ip(text: str) -> IPAddress:
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def _ask_udp(server: IPAddress, query: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if server.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (str(server), 53))
        await loop.sock_sendall(sock, query)
        while True:
            reply = await loop.sock_recv(sock, 65535)
            if reply[0:2] == query[0:2]:
                return reply  # anything else is a stray datagram: keep waiting


async def _ask_tcp(server: IPAddress, query: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(str(server), 53)
    try:
        writer.write(len(query).to_bytes(2, "big") + query)
        await writer.drain()
        size = int.from_bytes(await reader.readexactly(2), "big")
        return await reader.readexactly(size)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def main(argv: Sequence[str] | None = None) -> int:
    """The process's entry point."""
    parser = argparse.ArgumentParser(prog="python -m cnm.dns.server", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", required=True, help="the directory of network files")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--resolv-conf", default="/etc/resolv.conf", help="the host's resolvers, read at each load")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds to wait for one upstream")
    parser.add_argument("--ready-fd", type=int, default=None, help="write 'ready' here once listening")
    parser.add_argument("--netns", default=None, help="the host namespace's path: exit once it is gone")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s cnm-dns[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    server = Server(args.config, args.port, args.resolv_conf, args.timeout, args.netns)
    asyncio.run(server.run(args.ready_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
