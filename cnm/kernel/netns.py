"""Network namespaces: create, open, delete, and do work inside one.

The calling thread's namespace is never switched. Work that must happen
inside a namespace runs either in a short-lived helper thread that enters it
(:meth:`NetNS.in_thread`: opening sockets, sysctls; setns of a network
namespace affects only the calling thread) or in a forked child
(:meth:`NetNS.run_in`: libraries with process-wide caches, such as libiptc).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pickle
import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import attrs
from pyroute2 import IPRoute

from cnm.errors import CNMError, KernelError
from cnm.kernel._syscalls import CLONE_NEWNET, MNT_DETACH, MS_BIND, check, libc
from cnm.kernel.errors import map_netlink_errors
from cnm.kernel.netns_dirs import NETNS_RUN_DIR, prepare_directory

if TYPE_CHECKING:
    from pyroute2 import IPRoute

__all__ = ["NETNS_RUN_DIR", "NetNS", "Netlink", "create", "remove"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_T = TypeVar("_T")


def _in_thread(fn: Callable[[], _T]) -> _T:
    """Run ``fn`` in a fresh thread and return its result or raise its error."""
    result: list[_T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            error.append(exc)

    thread = threading.Thread(target=target, name="cnm-netns")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


@attrs.frozen
class NetNS:
    """A handle on a network namespace, by the path of its nsfs file.

    A NetNS holds no open file or socket; it is cheap to pass around and safe
    to share between threads.

    Attributes:
        path: the bind-mounted namespace file (``/run/netns/NAME``, or a file
            under a controller's state_dir), or ``/proc/self/ns/net`` for the
            calling process's own namespace.
    """

    path: str

    @classmethod
    def current(cls) -> NetNS:
        """The namespace of the calling process."""
        return cls("/proc/self/ns/net")

    @classmethod
    def named(cls, name: str) -> NetNS:
        """A namespace by ``ip netns`` name (``/run/netns/NAME``) or by absolute path."""
        if "/" in name:
            return cls(os.path.abspath(name))
        return cls(os.path.join(NETNS_RUN_DIR, name))

    @property
    def is_current(self) -> bool:
        """True for the calling process's own namespace."""
        return self.path == "/proc/self/ns/net"

    @property
    def name(self) -> str:
        """A short label for messages and logs."""
        return "host" if self.is_current else os.path.basename(self.path)

    def exists(self) -> bool:
        """True if the path is a live namespace (a bind-mounted nsfs file)."""
        if self.is_current:
            return True
        try:
            with open(self.path, "rb") as f:
                return _is_netns_fd(f.fileno())
        except OSError:
            return False

    def enter(self) -> None:
        """Move the calling thread into this namespace.

        Only for threads and processes made for that purpose (:meth:`in_thread`,
        :meth:`run_in`, a worker process): never call it on a thread that does
        anything else, since every socket it opens afterwards lands here.
        """
        if self.is_current:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise KernelError(f"network namespace {self.path} does not exist", errno.ENOENT) from exc
        try:
            check(libc.setns(fd, CLONE_NEWNET), f"enter network namespace {self.path}")
        finally:
            os.close(fd)

    def in_thread(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` in a helper thread that has entered this namespace.

        Use it for short work whose effect outlives the thread's namespace:
        opening a socket, reading or writing a sysctl. The thread ends
        afterwards, so the caller's namespace never changes.
        """
        if self.is_current:
            return fn()

        def entered() -> _T:
            self.enter()
            return fn()

        return _in_thread(entered)

    def socket(self, family: int, type: int, proto: int = 0) -> socket.socket:
        """Open a socket that lives in this namespace."""
        return self.in_thread(lambda: socket.socket(family, type, proto))

    @contextlib.contextmanager
    def netlink(self) -> Iterator[Netlink]:
        """An rtnetlink socket bound to this namespace, closed on exit.

        Pass it to the helpers of :mod:`cnm.kernel.links`, ``addresses`` and
        ``routes``; open one per operation and reuse it for every call of that
        operation (opening costs about a millisecond).
        """
        with map_netlink_errors(f"open netlink in {self.name}"):
            sock = self.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
            ipr = IPRoute(fileno=sock.detach())
        try:
            # pyroute2 wraps the descriptor in a socket of its own; ask it for the number.
            yield Netlink(self, ipr, ipr.fileno())
        finally:
            ipr.close()

    def run_in(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` in a forked child that has entered this namespace.

        For libraries that keep process-wide state bound to the namespace they
        were first used in (libiptc). The result and any :class:`CNMError`
        come back through a pipe; other exceptions become KernelError.
        """
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os.close(read_fd)
            # Die with the parent: a worker left running after its caller was
            # killed could commit rules after a reconcile has looked.
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() == 1:
                os._exit(1)
            try:
                self.enter()
                payload: tuple[bool, object] = (True, fn())
            except CNMError as exc:
                payload = (False, exc)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                payload = (False, KernelError(f"{type(exc).__name__}: {exc}"))
            try:
                data = pickle.dumps(payload)
            except Exception as exc:  # noqa: BLE001
                data = pickle.dumps((False, KernelError(f"result not picklable: {exc}")))
            with os.fdopen(write_fd, "wb") as out:
                out.write(data)
            os._exit(0)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as inp:
            data = inp.read()
        _, status = os.waitpid(pid, 0)
        if not data:
            raise KernelError(f"worker for namespace {self.name} died (wait status {status})")
        ok, value = pickle.loads(data)  # noqa: S301 - our own child's output
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]


class Netlink:
    """An open rtnetlink socket in one namespace (see :meth:`NetNS.netlink`).

    Attributes:
        netns: the namespace the socket lives in.
        ipr: the pyroute2 handle; only :mod:`cnm.kernel` touches it.
        fd: the socket's file descriptor, owned by ``ipr``; interface ioctls
            on it (SIOCGIFINDEX) act in ``netns`` without a netlink round trip.
    """

    def __init__(self, netns: NetNS, ipr: IPRoute, fd: int) -> None:
        self.netns = netns
        self.ipr = ipr
        self.fd = fd


def _is_netns_fd(fd: int) -> bool:
    # An nsfs file reports the namespace type through ioctl NS_GET_NSTYPE; a
    # plain file left behind by a crash does not.
    ns_get_nstype = 0xB703
    try:
        return fcntl.ioctl(fd, ns_get_nstype) == CLONE_NEWNET
    except OSError:
        return False


def create(path: str, *, loopback_up: bool = False) -> NetNS:
    """Create a new network namespace and bind-mount it at ``path``.

    Loopback is brought up when ``loopback_up`` is true (from the thread that
    made the namespace, which spares opening a netlink socket in it), else
    left down. A stale file left at ``path`` by a crash (not a live
    namespace) is replaced.

    Raises:
        KernelError: when ``path`` already holds a live namespace, or a syscall fails.
    """
    ns = NetNS(os.path.abspath(path))
    directory = os.path.dirname(ns.path)
    prepare_directory(directory)
    if ns.exists():
        raise KernelError(f"network namespace {ns.path} already exists", errno.EEXIST)
    # A stale mount or file from an earlier crash would make the bind mount
    # stack up; clear it first (moby's createNamespaceFile does the same).
    libc.umount2(ns.path.encode(), MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ns.path)
    fd = os.open(ns.path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)

    def unshare_and_mount() -> None:
        check(libc.unshare(CLONE_NEWNET), "unshare a network namespace")
        check(
            libc.mount(b"/proc/thread-self/ns/net", ns.path.encode(), b"none", MS_BIND, None),
            f"bind-mount network namespace at {ns.path}",
        )
        if loopback_up:
            _set_up_by_ioctl("lo")

    try:
        _in_thread(unshare_and_mount)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(ns.path)
        raise
    log.debug("created network namespace %s", ns.path)
    return ns


_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def _set_up_by_ioctl(ifname: str) -> None:
    """Bring ``ifname`` up in the calling thread's namespace with the classic interface ioctls."""

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        name = ifname.encode()
        try:
            flags = struct.unpack_from("H", fcntl.ioctl(sock, _SIOCGIFFLAGS, struct.pack("16sH", name, 0)), 16)[0]
            fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH", name, flags | _IFF_UP))
        except OSError as exc:
            raise KernelError(f"bring {ifname} up in a new namespace: {exc.strerror}", exc.errno) from exc


def remove(path: str) -> bool:
    """Unmount and delete the namespace file at ``path``.

    The kernel destroys the namespace, and every interface in it, once nothing
    else holds it. Succeeds when ``path`` is already gone.

    Returns:
        True if something was removed.
    """
    encoded = os.path.abspath(path).encode()
    mounted = bool(libc.umount2(encoded, MNT_DETACH) == 0)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return mounted
    log.debug("removed network namespace %s", path)
    return True
