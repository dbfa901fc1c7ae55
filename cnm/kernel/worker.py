"""A long-lived child process inside one network namespace, serving requests over a socket pair.

:class:`Worker` is what :class:`~cnm.firewall.iptables.IptablesFirewall` talks to:
forking a fresh child for every call (:meth:`NetNS.run_in`) costs a fork of the
whole parent, python-iptables loading its extensions again and every rule being
built again, about as much as the change itself. A worker is forked once, on
first use, enters the namespace once and keeps those caches; each request is
picklable data (never a closure), and each reply is the handler's result or the
:class:`CNMError` it raised.

The guarantees the one-child-per-call model gave are kept:

- the worker dies with its parent (``PR_SET_PDEATHSIG``) and on EOF of its socket;
  ``PR_SET_PDEATHSIG`` follows the *thread* that forked, so workers are forked by
  one spawner thread that lives as long as the process, never by a caller's
  thread, which may end while the worker is still in use;
- a worker that dies or stops answering is killed, reaped and replaced on the
  next call; the call that saw it fail gets a KernelError saying so;
- a process forked from the parent never talks to the parent's worker: it gets
  its own on first use (``os.register_at_fork`` and a pid check);
- calls from several threads take turns (one lock per worker).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import faulthandler
import gc
import logging
import os
import pickle
import queue
import select
import signal
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, NoReturn

import attrs

from cnm.errors import CNMError, KernelError
from cnm.kernel.netns import NetNS

__all__ = ["Handler", "Worker"]

log = logging.getLogger(__name__)

#: A request handler, made inside the worker once it has entered the namespace.
Handler = Callable[[Any], object]

_PR_SET_PDEATHSIG = 1
_FRAME = struct.Struct("!Q")
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class _Gone(Exception):
    """The worker's end of the socket closed (EOF or reset): the worker is dead."""


# -- framing --------------------------------------------------------------------------------------
def _send(sock: socket.socket, message: object) -> None:
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    sock.sendall(_FRAME.pack(len(data)) + data)


def _recv_exactly(sock: socket.socket, size: int, deadline: float | None) -> bytes:
    buffer = bytearray()
    while len(buffer) < size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
        try:
            chunk = sock.recv(size - len(buffer))
        except ConnectionResetError as exc:
            raise _Gone from exc
        if not chunk:
            raise _Gone
        buffer += chunk
    return bytes(buffer)


def _recv(sock: socket.socket, deadline: float | None) -> Any:
    (size,) = _FRAME.unpack(_recv_exactly(sock, _FRAME.size, deadline))
    return pickle.loads(_recv_exactly(sock, size, deadline))  # noqa: S301 - our own worker's frames


# -- the worker's side ----------------------------------------------------------------------------
class _LogForwarder(logging.Handler):
    """Collects the worker's log records; they go back with each reply and are logged by the parent.

    The parent's handlers may write to descriptors the worker has closed (a log
    file), so the worker takes every handler off and keeps them referenced,
    never used and never freed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, int, str]] = []
        self._kept: list[logging.Handler] = []

    def install(self) -> None:
        loggers = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
        for logger in loggers:
            if isinstance(logger, logging.Logger):
                self._kept.extend(logger.handlers)
                logger.handlers = []
        logging.getLogger().handlers = [self]

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        self.records.append((record.name, record.levelno, message))

    def take(self) -> list[tuple[str, int, str]]:
        records, self.records = self.records, []
        return records


def _close_inherited(keep: int) -> None:
    """Close every inherited descriptor but stdio and ``keep``.

    The worker outlives the moment it was forked by far: holding the parent's
    descriptors would keep a peer from seeing EOF, a listening port bound, a
    child's stdin open, and a flock the parent released by closing its file
    held. Objects that own the closed descriptors are frozen out of the garbage
    collector first, so none closes a reused descriptor number later.
    """
    gc.freeze()
    if faulthandler.is_enabled():
        faulthandler.enable(2)  # its own descriptor is about to be closed
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))


def _serve(sock: socket.socket, parent: int, netns: NetNS, make_handler: Callable[[], Handler]) -> NoReturn:
    """The worker's whole life: enter, say hello, answer requests until EOF."""
    code = 0
    try:
        # Die with the parent: a worker left running after its caller was killed could
        # commit rules after a reconcile has looked.
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)
        # Ctrl-C reaches the whole process group; the parent decides, the worker follows by EOF.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        logs = _LogForwarder()
        logs.install()
        _close_inherited(sock.fileno())
        try:
            netns.enter()  # safe here: this process exists to live in the namespace and has one thread
            handler = make_handler()
            hello: tuple[bool, object] = (True, os.getpid())
        except CNMError as exc:
            hello = (False, exc)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            hello = (False, KernelError(f"{type(exc).__name__}: {exc}"))
        _send(sock, hello)
        if not hello[0]:
            os._exit(1)
        while True:
            try:
                seq, request = _recv(sock, None)
            except _Gone:
                break  # the parent closed its end, or died
            try:
                ok, value = True, handler(request)
            except CNMError as exc:
                ok, value = False, exc
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                ok, value = False, KernelError(f"{type(exc).__name__}: {exc}")
            records = logs.take()
            try:
                _send(sock, (seq, ok, value, records))
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                _send(sock, (seq, False, KernelError(f"the worker's reply is not picklable: {exc}"), records))
    except BaseException:  # noqa: BLE001 - a broken socket or a bug: the parent sees EOF and replaces us
        code = 1
    os._exit(code)


# -- forking from one long-lived thread -----------------------------------------------------------
class _Spawner:
    """Forks workers from a thread that lives as long as the process (see the module docstring)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], NoReturn], queue.SimpleQueue[int | BaseException]]] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._loop, name="cnm-worker-spawner", daemon=True).start()

    def _loop(self) -> None:
        while True:
            child_main, answer = self._jobs.get()
            try:
                pid = os.fork()
            except OSError as exc:
                answer.put(exc)
                continue
            if pid == 0:  # pragma: no cover - runs in the worker
                child_main()
            answer.put(pid)

    def fork(self, child_main: Callable[[], NoReturn]) -> int:
        answer: queue.SimpleQueue[int | BaseException] = queue.SimpleQueue()
        self._jobs.put((child_main, answer))
        result = answer.get()
        if isinstance(result, BaseException):
            raise result
        return result


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def _fork(child_main: Callable[[], NoReturn]) -> int:
    global _spawner  # noqa: PLW0603 - one spawner per process, replaced after a fork
    with _spawner_lock:
        if _spawner is None or _spawner.pid != os.getpid():
            _spawner = _Spawner()
        spawner = _spawner
    return spawner.fork(child_main)


# -- the parent's side ----------------------------------------------------------------------------
class _Process:
    """One running worker, as its parent sees it."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.owner = os.getpid()
        self.reaped = False

    def status(self) -> str:
        """Why the worker is gone, reaping it if it has exited; '' while it still runs."""
        if self.reaped:
            return "it was already reaped"
        try:
            done, wait_status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.reaped = True  # someone else reaped it
            return "it is gone"
        if not done:
            return ""
        self.reaped = True
        return _describe_exit(wait_status)

    def idle_and_alive(self) -> bool:
        """True if the worker runs and has nothing unasked-for to say (EOF reads as readable)."""
        if self.status():
            return False
        readable, _, _ = select.select([self.sock], [], [], 0)
        return not readable

    def stop(self, grace: float = 0.0) -> str:
        """Reap the worker if this process owns it, killing it (by PID) if it still runs after ``grace`` s.

        Our socket is closed in every case. Returns how the worker ended.
        """
        self.sock.close()
        if self.owner != os.getpid():
            return "it belongs to the process this one was forked from"
        deadline = time.monotonic() + grace
        why = self.status()
        while not why and time.monotonic() < deadline:
            time.sleep(0.005)
            why = self.status()
        if why:
            return why
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # reaped elsewhere
            os.waitpid(self.pid, 0)
        self.reaped = True
        return "it was killed"


def _describe_exit(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        return f"it was killed by {signal.Signals(os.WTERMSIG(wait_status)).name}"
    return f"it exited with status {os.waitstatus_to_exitcode(wait_status)}"


class _Slot:
    """A Worker's mutable state, kept apart so that its finalizer does not hold the Worker."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.process: _Process | None = None
        self.owner = os.getpid()

    def discard(self, grace: float = 0.0) -> str:
        """Stop the current process, if any; say how it ended."""
        process, self.process = self.process, None
        return process.stop(grace) if process is not None else ""

    def forget(self) -> None:
        """In a forked child: drop the parent's worker without touching it, and the parent's lock."""
        process, self.process = self.process, None
        if process is not None:
            process.sock.close()  # our copy only: the parent's worker stays the parent's
        self.lock = threading.Lock()  # the parent may have held it at the fork
        self.owner = os.getpid()


_slots: weakref.WeakSet[_Slot] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _spawner  # noqa: PLW0603 - the spawner thread did not survive the fork
    _spawner = None
    for slot in list(_slots):
        slot.forget()


os.register_at_fork(after_in_child=_after_fork_in_child)


@attrs.frozen
class Request:
    """One named call, as it crosses the socket: the method's name, its description and its arguments."""

    method: str
    what: str
    args: tuple[Any, ...]


class Worker:
    """A lazily forked, self-replacing worker process inside ``netns``.

    Args:
        netns: the namespace the worker enters.
        make_handler: called inside the worker, once, after entering; returns
            the function that turns one request into one result. Its state (and
            anything it caches) lives as long as the worker.
        label: what the worker is for, in messages ("firewall").
        reply_timeout: seconds to wait for a reply (or for a new worker's hello)
            before the worker is taken as wedged, killed and replaced.

    Requests and results must be picklable; a :class:`CNMError` raised by the
    handler is raised again in the caller, other exceptions become KernelError.
    """

    def __init__(self, netns: NetNS, make_handler: Callable[[], Handler], *, label: str, reply_timeout: float) -> None:
        self._netns = netns
        self._make_handler = make_handler
        self._label = label
        self._reply_timeout = reply_timeout
        self._slot = _Slot()
        self._seq = 0
        _slots.add(self._slot)
        # Collected or interpreter exiting: end the worker by PID, not only by EOF (a forked
        # child may still hold a copy of our socket, which would keep the EOF from coming).
        self._finalizer = weakref.finalize(self, self._slot.discard)

    @property
    def pid(self) -> int | None:
        """The current worker's PID, None before the first call or after a failure or close()."""
        process = self._slot.process
        return process.pid if process is not None and process.owner == os.getpid() else None

    def _describe(self) -> str:
        return f"{self._label} worker for namespace {self._netns.name}"

    def _start(self) -> _Process:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent = os.getpid()
        netns, make_handler = self._netns, self._make_handler

        def child_main() -> NoReturn:  # pragma: no cover - runs in the worker
            parent_end.close()
            _serve(child_end, parent, netns, make_handler)

        try:
            pid = _fork(child_main)
        except OSError as exc:
            parent_end.close()
            child_end.close()
            raise KernelError(f"cannot start the {self._describe()}: fork failed: {exc.strerror}", exc.errno) from exc
        child_end.close()
        process = _Process(pid, parent_end)
        try:
            ok, value = _recv(parent_end, time.monotonic() + self._reply_timeout)
        except (_Gone, TimeoutError, OSError, pickle.UnpicklingError) as exc:
            why = process.stop()
            raise KernelError(f"the {self._describe()} did not start ({why or type(exc).__name__})") from exc
        except BaseException:
            process.stop()
            raise
        if not ok:
            process.stop()
            raise value  # a CNMError from the worker's start
        log.debug("started %s (pid %d)", self._describe(), pid)
        return process

    def run(self, what: str, method: str, *args: Any) -> object:
        """Have the worker run ``method`` with ``args`` as a :class:`Request`, described as ``what``.

        Raises:
            KernelError: its message names ``what`` and the namespace (the worker's own message
                already does when it names ``what``).
        """
        log.debug("%s in %s", what, self._netns.name)
        try:
            return self.call(Request(method=method, what=what, args=args))
        except KernelError as exc:
            if what in str(exc):
                raise
            raise KernelError(f"{what} in {self._netns.name}: {exc.strerror}", exc.errno) from exc

    def call(self, request: object) -> object:
        """Send ``request`` to the worker (starting one if needed) and return its result.

        Raises:
            CNMError: what the handler raised.
            KernelError: the worker died or did not answer within the reply
                timeout; it has been killed and the next call starts a new one.
        """
        slot = self._slot
        if slot.owner != os.getpid():
            slot.forget()  # forked without the at-fork hook (e.g. a raw fork(2)): never use the parent's worker
        with slot.lock:
            process = slot.process
            if process is not None and not process.idle_and_alive():
                # Died between calls (killed, its namespace thread gone...): nothing was lost, replace it quietly.
                log.info("%s (pid %d) is gone (%s); starting a new one", self._describe(), process.pid, slot.discard())
                process = None
            if process is None:
                process = slot.process = self._start()
            self._seq += 1
            seq = self._seq
            try:
                process.sock.settimeout(self._reply_timeout)  # a wedged worker may stop reading a large request
                _send(process.sock, (seq, request))
                answer = _recv(process.sock, time.monotonic() + self._reply_timeout)
            except TimeoutError:
                slot.discard()
                raise KernelError(
                    f"the {self._describe()} (pid {process.pid}) did not answer within {self._reply_timeout:g} s "
                    "and was killed; a new one starts on the next call. The change may or may not have been "
                    "applied; every call is idempotent, so retry it",
                    errno.ETIMEDOUT,
                ) from None
            except (_Gone, BrokenPipeError, ConnectionResetError) as exc:
                why = slot.discard(grace=1.0)  # its socket closed: it is exiting, let it say how
                raise KernelError(
                    f"the {self._describe()} (pid {process.pid}) died during the call ({why}); a new one starts "
                    "on the next call. The change may or may not have been applied; every call is idempotent, "
                    "so retry it"
                ) from exc
            except BaseException:
                # Interrupted half-way (KeyboardInterrupt, an unpicklable request...): the stream's state
                # is unknown, so the next call must not read this call's reply as its own.
                slot.discard()
                raise
            reply_seq, ok, value, records = answer
            if reply_seq != seq:
                slot.discard()
                raise KernelError(f"the {self._describe()} answered request {reply_seq} to request {seq}; restarted it")
            for name, level, message in records:
                logging.getLogger(name).log(level, "%s", message)
            if not ok:
                raise value  # a CNMError from the handler
            return value

    def close(self) -> None:
        """End the worker by PID, if one runs; a later call starts a new one."""
        slot = self._slot
        if slot.owner != os.getpid():
            slot.forget()
            return
        with slot.lock:
            process = slot.process
            if process is not None:
                log.debug("stopping %s (pid %d): %s", self._describe(), process.pid, slot.discard())
