"""The resolver process's life: start it in the host netns, reload it, tell if it lives, stop it.

Everything is found again from files in the resolver's directory, so any
process (a later run of the program, ``reconcile()`` after a reboot) can take
over: ``resolver.pid`` holds the PID and the kernel's start time of the
process, so a PID reused by another program is never signalled; signals go
through a pidfd opened after that check, so the check and the kill name the
same process. ``resolver.log`` receives the server's log.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Iterator

from cnm.dns.config import LOADED_FILE, ConfigDir, read_generation
from cnm.errors import ResolverError
from cnm.kernel.netns import NetNS
from cnm.kernel.process import command_in

__all__ = ["Resolver"]

log = logging.getLogger(__name__)

_PID_FILE = "resolver.pid"
_LOG_FILE = "resolver.log"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of ``pid`` from /proc, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


def _reap(pid: int) -> None:
    # Our own child stays a zombie until waited for; someone else's is not ours to wait for.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


class Resolver:
    """The resolver of one controller, kept in ``directory`` and run in ``netns``.

    Args:
        directory: the resolver's files: ``config/`` (the network files),
            ``resolver.pid``, ``resolver.log``.
        netns: the namespace to run in (the controller's host namespace).
        port: the DNS port on the listen addresses.
        resolv_conf: the host resolvers' file, read by the server at each load.
        upstream_timeout: seconds the server waits for one upstream.
        start_timeout: seconds to wait for the server to listen, or to reload.
    """

    def __init__(
        self,
        directory: str,
        netns: NetNS,
        *,
        port: int = 53,
        resolv_conf: str = "/etc/resolv.conf",
        upstream_timeout: float = 4.0,
        start_timeout: float = 10.0,
    ) -> None:
        """Nothing is started here; :meth:`start` does."""
        self.directory = directory
        self.netns = netns
        self.port = port
        self.resolv_conf = resolv_conf
        self.upstream_timeout = upstream_timeout
        self.start_timeout = start_timeout
        os.makedirs(directory, mode=0o755, exist_ok=True)
        self.config = ConfigDir(os.path.join(directory, "config"))

    @property
    def pid_file(self) -> str:
        """Where the PID is recorded."""
        return os.path.join(self.directory, _PID_FILE)

    @property
    def log_file(self) -> str:
        """Where the server logs."""
        return os.path.join(self.directory, _LOG_FILE)

    # --- identity ------------------------------------------------------------------------------

    def _recorded(self) -> tuple[int, int] | None:
        try:
            with open(self.pid_file) as f:
                pid, start = f.read().split()
            return int(pid), int(start)
        except (FileNotFoundError, ValueError):
            return None

    def pid(self) -> int | None:
        """The PID of the running resolver, or None if it is not running."""
        recorded = self._recorded()
        if recorded is None:
            return None
        pid, start = recorded
        stat = _stat(pid)
        if stat is not None and stat[0] == "Z":
            _reap(pid)
            return None
        if stat is None or stat[1] != start:
            return None  # dead, or the PID now belongs to another process
        return pid

    def alive(self) -> bool:
        """True while the recorded resolver process runs."""
        return self.pid() is not None

    def _pidfd(self) -> int | None:
        """A pidfd of the recorded process, opened only if it is still the recorded one."""
        pid = self.pid()
        if pid is None:
            return None
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        if self.pid() != pid:  # it died and the PID was reused between the check and the open
            os.close(fd)
            return None
        return fd

    # --- life ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lifecycle(self) -> Iterator[None]:
        # One start, stop or reload at a time, across threads and processes: two callers that both
        # see no resolver must not both start one.
        fd = os.open(os.path.join(self.directory, ".lifecycle.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def apply(self) -> bool:
        """Serve the config as written now: start the resolver, reload it, or stop it if no network is left.

        Returns True while a resolver runs afterwards.
        """
        with self._lifecycle():
            if not self.config.files():
                self._stop()
                return False
            if self.pid() is None:
                self._start()
            else:
                self._reload()
            return True

    def start(self) -> int:
        """Start the resolver unless it runs; returns its PID once it listens.

        Raises:
            ResolverError: the process exited or did not get ready in time (its
                log's last lines are in the message).
        """
        with self._lifecycle():
            return self._start()

    def _start(self) -> int:
        """Start the resolver unless it runs; returns its PID once it listens.

        Raises:
            ResolverError: the process exited or did not get ready in time (its
                log's last lines are in the message).
        """
        pid = self.pid()
        if pid is not None:
            return pid
        read_end, write_end = os.pipe()
        try:
            os.set_inheritable(write_end, True)
            argv = command_in(
                self.netns,
                [
                    sys.executable,
                    "-m",
                    "cnm.dns.server",
                    "--config",
                    self.config.path,
                    "--port",
                    str(self.port),
                    "--resolv-conf",
                    self.resolv_conf,
                    "--timeout",
                    str(self.upstream_timeout),
                    "--ready-fd",
                    str(write_end),
                    *([] if self.netns.is_current else ["--netns", self.netns.path]),
                ],
            )
            pid = os.posix_spawnp(
                argv[0],
                argv,
                dict(os.environ),
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
                    (os.POSIX_SPAWN_DUP2, 1, 2),
                ],
                setsid=True,  # its own session: a terminal's ^C to the caller does not reach it
            )
            os.close(write_end)
            write_end = -1
            ready = self._wait_ready(read_end, pid)
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)
        if not ready:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            raise ResolverError(
                f"the DNS resolver did not start in {self.netns.name}; its log ({self.log_file}) ends: "
                f"{self._log_tail()!r}. Check that port {self.port} is free on the networks' gateways"
            )
        stat = _stat(pid)
        if stat is None:
            raise ResolverError(f"the DNS resolver (pid {pid}) exited right after it started; see {self.log_file}")
        tmp = self.pid_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{pid} {stat[1]}\n")
        os.replace(tmp, self.pid_file)
        log.info("DNS resolver started in %s, pid %d", self.netns.name, pid)
        return pid

    def _wait_ready(self, fd: int, pid: int) -> bool:
        deadline = time.monotonic() + self.start_timeout
        data = b""
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                break
            chunk = os.read(fd, 64)
            if not chunk:
                break  # the server (and nsenter) closed it without saying ready: it exited
            data += chunk
            if b"ready" in data:
                return True
        _reap(pid)
        return False

    def _log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log_file, errors="replace") as f:
                return " | ".join(f.read().splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def reload(self) -> None:
        """Make the running resolver serve the config as written now; returns once it does.

        Raises:
            ResolverError: it is not running, or did not reload in time.
        """
        with self._lifecycle():
            self._reload()

    def _reload(self) -> None:
        wanted = self.config.generation
        fd = self._pidfd()
        if fd is None:
            raise ResolverError(
                f"the DNS resolver in {self.netns.name} is not running; start it (reconcile() restarts it)"
            )
        try:
            signal.pidfd_send_signal(fd, signal.SIGHUP)
            deadline = time.monotonic() + self.start_timeout
            again = time.monotonic() + 0.5
            while read_generation(self.config.path, LOADED_FILE) < wanted:
                if time.monotonic() > again:
                    # It may have read the counter half written, or coalesced two signals: ask again.
                    signal.pidfd_send_signal(fd, signal.SIGHUP)
                    again = time.monotonic() + 0.5
                if time.monotonic() > deadline or select.select([fd], [], [], 0.002)[0]:
                    raise ResolverError(
                        f"the DNS resolver in {self.netns.name} did not load generation {wanted}; "
                        f"its log ({self.log_file}) ends: {self._log_tail()!r}"
                    )
        finally:
            os.close(fd)

    def stop(self, grace: float = 5.0) -> bool:
        """Stop the resolver (SIGTERM, then SIGKILL after ``grace`` seconds); False if none ran."""
        with self._lifecycle():
            return self._stop(grace)

    def _stop(self, grace: float = 5.0) -> bool:
        fd = self._pidfd()
        stopped = fd is not None
        if fd is not None:
            pid = self.pid()
            try:
                for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(fd, sig)
                    if select.select([fd], [], [], wait)[0]:  # a pidfd is readable once its process exits
                        break
            finally:
                os.close(fd)
            if pid is not None:
                _reap(pid)
            log.info("DNS resolver in %s stopped", self.netns.name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pid_file)
        return stopped

    def ensure(self) -> bool:
        """Start the resolver if it is not running (after a crash or a reboot); True if it was started."""
        with self._lifecycle():
            if self.pid() is not None:
                return False
            log.warning("DNS resolver in %s is not running; starting it", self.netns.name)
            self._start()
            return True
