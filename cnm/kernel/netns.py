"""Network namespaces: create, open, delete, and do work inside one.

The calling thread's namespace is never switched. Work that must happen
inside a namespace runs either in a short-lived helper thread that enters it
(:meth:`NetNS.in_thread`: opening sockets, sysctls; setns of a network
namespace affects only the calling thread) or in a forked child
(:meth:`NetNS.run_in`: libraries with process-wide caches, such as libiptc).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import pickle
import re
import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import attrs
from pyroute2 import IPRoute

from cnm.errors import CNMError, KernelError
from cnm.kernel.errors import map_netlink_errors

if TYPE_CHECKING:
    from pyroute2 import IPRoute

__all__ = [
    "NETNS_RUN_DIR",
    "NetNS",
    "Netlink",
    "clear_shadowed",
    "create",
    "prepare_directory",
    "release_directory",
    "remove",
]

log = logging.getLogger(__name__)

NETNS_RUN_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MS_SHARED = 1 << 20
_MNT_DETACH = 2
_PR_SET_PDEATHSIG = 1
_T = TypeVar("_T")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise KernelError(f"{what} failed: {os.strerror(err)}", err)


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
            _check(_libc.setns(fd, _CLONE_NEWNET), f"enter network namespace {self.path}")
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
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
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
        return fcntl.ioctl(fd, ns_get_nstype) == _CLONE_NEWNET
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
    _libc.umount2(ns.path.encode(), _MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ns.path)
    fd = os.open(ns.path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)

    def unshare_and_mount() -> None:
        _check(_libc.unshare(_CLONE_NEWNET), "unshare a network namespace")
        _check(
            _libc.mount(b"/proc/thread-self/ns/net", ns.path.encode(), b"none", _MS_BIND, None),
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
    mounted = bool(_libc.umount2(encoded, _MNT_DETACH) == 0)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return mounted
    log.debug("removed network namespace %s", path)
    return True


@attrs.frozen
class _Mount:
    """One line of /proc/self/mountinfo."""

    id: int
    parent: int
    dev: str
    root: str
    point: str
    fstype: str


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mountinfo() -> list[_Mount]:
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            after = fields.index("-")
            mounts.append(
                _Mount(
                    int(fields[0]),
                    int(fields[1]),
                    fields[2],
                    _unescape(fields[3]),
                    _unescape(fields[4]),
                    fields[after + 1],
                )
            )
    return mounts


def _stack(mounts: list[_Mount], directory: str) -> list[_Mount]:
    """The mounts at ``directory``, bottom first (each one covers the one before)."""
    at = {m.id: m for m in mounts if m.point == directory}
    bottom = [m for m in at.values() if m.parent not in at]
    stack: list[_Mount] = []
    while bottom:
        stack.append(bottom[0])
        bottom = [m for m in at.values() if m.parent == stack[-1].id]
    return stack


def _is_self_bind(mounts: list[_Mount], mount: _Mount) -> bool:
    """True for a bind mount of a directory onto itself (iproute2's and ours), not a file system of its own."""
    parent = next((m for m in mounts if m.id == mount.parent), None)
    if parent is None or parent.dev != mount.dev:
        return False
    return os.path.normpath(os.path.join(parent.root, os.path.relpath(mount.point, parent.point))) == mount.root


_prepared: set[tuple[int, str]] = set()
_prepared_lock = threading.Lock()


def _key(directory: str) -> tuple[int, str]:
    return (os.stat("/proc/self/ns/mnt").st_ino, directory)


@contextlib.contextmanager
def _directory_lock(directory: str) -> Iterator[None]:
    # flock on the directory itself: no lock file that ``ip netns list`` or a
    # listing of the directory would take for a namespace. Locks of separate
    # opens exclude each other, across threads and processes alike.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _namespaces_at(mounts: list[_Mount], directory: str, parent: int | None = None) -> list[_Mount]:
    prefix = directory + "/"
    return [
        m
        for m in mounts
        if m.fstype == "nsfs"
        and m.point.startswith(prefix)
        and "/" not in m.point[len(prefix) :]
        and (parent is None or m.parent == parent)
    ]


def _hold(held: dict[str, int], mount: _Mount) -> None:
    """Keep the namespace mounted at ``mount`` alive through an open file, the first one of each name."""
    name = os.path.basename(mount.point)
    if name not in held:
        held[name] = os.open(mount.point, os.O_RDONLY | os.O_CLOEXEC)


def _share(directory: str, held: dict[str, int]) -> None:
    """Make ``directory`` a shared mount of itself and mount every ``held`` namespace in it; locks held."""
    mounts = _mountinfo()
    try:
        if not _stack(mounts, directory):
            # Namespaces already mounted in the plain directory would end up
            # under the new mount: take them out and put them back on top.
            for mount in _namespaces_at(mounts, directory):
                _hold(held, mount)
                _libc.umount2(mount.point.encode(), _MNT_DETACH)
            _check(
                _libc.mount(directory.encode(), directory.encode(), b"none", _MS_BIND, None),
                f"bind-mount {directory} onto itself",
            )
            if directory != NETNS_RUN_DIR:
                # A peer group of its own: else every namespace mounted here is
                # copied into the parent mount's peers, under this mount, where
                # it looks like a shadowed one. /run/netns stays as iproute2
                # makes it, seen by the mount namespaces that follow its parent.
                _check(
                    _libc.mount(b"none", directory.encode(), None, _MS_PRIVATE, None),
                    f"make {directory} a private mount",
                )
        _check(
            _libc.mount(b"none", directory.encode(), None, _MS_SHARED | _MS_REC, None),
            f"make {directory} a shared mount",
        )
    finally:
        for name, fd in held.items():
            path = os.path.join(directory, name)
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
            _check(
                _libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), b"none", _MS_BIND, None),
                f"bind-mount network namespace at {path}",
            )


def _close_all(held: dict[str, int]) -> None:
    for fd in held.values():
        os.close(fd)


def prepare_directory(directory: str) -> None:
    """Make ``directory`` a shared mount point of itself, as iproute2 does for /run/netns.

    A namespace bind-mounted into a plain directory is hidden for good when
    someone later bind-mounts the directory onto itself (the first ``ip netns
    add`` on a fresh machine does): its file can then be neither unmounted
    nor unlinked. Doing iproute2's set-up first means iproute2 finds it done
    and mounts nothing over it. Done once per directory and mount namespace;
    concurrent callers, in threads or processes, never stack two mounts. The
    mount stays, as iproute2's does.

    Raises:
        KernelError: when a mount fails.
    """
    directory = os.path.realpath(directory)
    os.makedirs(directory, exist_ok=True)
    key = _key(directory)
    with _prepared_lock:
        if key in _prepared:
            return
        held: dict[str, int] = {}
        with _directory_lock(directory):
            try:
                _share(directory, held)
            finally:
                _close_all(held)
        _prepared.add(key)


def release_directory(directory: str) -> bool:
    """Undo :func:`prepare_directory` for a directory about to be deleted (a throwaway state_dir).

    Its self-mounts are detached when no namespace is mounted in it any more;
    else nothing changes. Never for /run/netns, whose mount others rely on.

    Returns:
        True if a mount was taken off.
    """
    directory = os.path.realpath(directory)
    if directory == NETNS_RUN_DIR or not os.path.isdir(directory):
        return False
    with _prepared_lock, _directory_lock(directory):
        mounts = _mountinfo()
        if _namespaces_at(mounts, directory):
            return False
        released = False
        for mount in reversed(_stack(mounts, directory)):
            if not _is_self_bind(mounts, mount):
                break
            _check(_libc.umount2(directory.encode(), _MNT_DETACH), f"detach the mount of {directory}")
            released = True
        _prepared.discard(_key(directory))
    return released


def clear_shadowed(directory: str) -> list[str]:
    """Bring back namespaces hidden under a later mount of ``directory``, and flatten stacked self-mounts.

    A crash, or an ``ip netns add`` while ``directory`` was a plain directory,
    can leave nsfs mounts hidden under a bind mount of the directory onto
    itself, where they can be neither used nor removed. This detaches every
    self-mount, keeping each namespace alive through an open file, then mounts
    the directory once, shared, and each namespace once more at its own path;
    the caller then deletes those it does not know. Meant for a directory only
    cnm uses (a controller's own), with its users excluded (reconcile holds
    every lock).

    Returns:
        One line per repair; empty when nothing was hidden or stacked.

    Raises:
        KernelError: when a mount fails.
    """
    directory = os.path.realpath(directory)
    if not os.path.isdir(directory):
        return []
    mounts = _mountinfo()
    stack = _stack(mounts, directory)
    if not stack:
        return []
    hidden = sorted({m.point for m in _namespaces_at(mounts, directory) if m.parent != stack[-1].id})
    self_mounts = sum(_is_self_bind(mounts, m) for m in stack)
    if not hidden and self_mounts <= 1:
        return []
    held: dict[str, int] = {}
    with _prepared_lock, _directory_lock(directory):
        try:
            while True:
                mounts = _mountinfo()
                stack = _stack(mounts, directory)
                if not stack or not _is_self_bind(mounts, stack[-1]):
                    break
                for mount in _namespaces_at(mounts, directory, stack[-1].id):
                    _hold(held, mount)
                _check(_libc.umount2(directory.encode(), _MNT_DETACH), f"detach a mount of {directory}")
            _share(directory, held)
        finally:
            _close_all(held)
        _prepared.add(_key(directory))
    repairs = [f"removed {self_mounts - 1} stacked mount(s) of {directory}"] if self_mounts > 1 else []
    return repairs + [f"brought back namespace {path}, hidden under a later mount of {directory}" for path in hidden]
