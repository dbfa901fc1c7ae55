"""The resolver's configuration: one plain file per network, written atomically.

The format is aardvark-dns's (netavark's resolver, `config.md` of its 1.x
releases), so the files are readable by either server:

* the file name is the network name; an internal network's file ends in
  ``%int`` (aardvark-dns 1.11 and later), and its sandboxes get no forwarding;
* the first line is the network's listen addresses (comma separated), then,
  optionally, a space and the network's own upstream servers;
* every further line is one endpoint: ``<id> <ipv4,...> <ipv6,...>
  <name,...>[ <upstream,...>]``, an empty list written as nothing between the
  spaces.

cnm adds one thing aardvark-dns has no notion of: legacy link aliases, names
only one sandbox (the link's source) may resolve. They go to a file of the same
name in the subdirectory ``.links`` (see :data:`LINKS_DIR`), in the entry
format, where the id is the *source's* and the addresses are the target's; the
network files stay exactly aardvark-dns's.

A writer replaces a file by rename, so a server reading the directory sees the
old file or the new one, never half of one. Every change also bumps a
generation counter (``.generation``); the server writes the generation it has
loaded to ``.loaded``, so a caller can wait until a change is served.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import re
from collections.abc import Iterable, Iterator

import attrs

from cnm.errors import InvalidConfig
from cnm.types import IPAddress

__all__ = [
    "GENERATION_FILE",
    "INTERNAL_SUFFIX",
    "LINKS_DIR",
    "LOADED_FILE",
    "ConfigDir",
    "Entry",
    "NetworkDNS",
    "is_dns_name",
]

log = logging.getLogger(__name__)

INTERNAL_SUFFIX = "%int"
"""The suffix that marks an internal network's file (aardvark-dns's convention)."""
GENERATION_FILE = ".generation"
"""The counter a writer bumps after every change."""
LINKS_DIR = ".links"
"""The subdirectory of the networks' link files (cnm's own: names for one source sandbox only)."""
LOADED_FILE = ".loaded"
"""The generation the server has loaded, written by the server after each (re)load."""

# A DNS name as Docker accepts network aliases and container names: labels of letters, digits,
# '_' and '-', separated by dots. Lowercased on the way in, as lookups are case-insensitive.
_NAME = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?:\.(?!-)[a-z0-9_-]{1,63})*$")
# Ids and network names end up as file names and space-separated fields.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_dns_name(value: str) -> bool:
    """True if ``value`` can be served as a name (labels of letters, digits, '-' and '_'; any case)."""
    name = value.lower().rstrip(".")
    return len(name) <= 253 and bool(_NAME.fullmatch(name))


def _name(value: str) -> str:
    name = value.lower().rstrip(".")
    if len(name) > 253 or not _NAME.fullmatch(name):
        raise InvalidConfig(
            f"{value!r} is not a valid DNS name: use labels of letters, digits, '-' and '_' joined by dots"
        )
    return name


def _names(values: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for value in values:
        seen.setdefault(_name(value), None)
    return tuple(seen)


def _ident(value: str, what: str) -> str:
    if not _ID.fullmatch(value) or len(value) > 255:
        raise InvalidConfig(
            f"{what} {value!r} must be letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return value


def _sandbox_id(value: str) -> str:
    return _ident(value, "sandbox id")


def _network_name(value: str) -> str:
    return _ident(value, "network name")


def _entries(values: Iterable[Entry]) -> tuple[Entry, ...]:
    return tuple(values)


def _addresses(values: Iterable[object]) -> tuple[IPAddress, ...]:
    out: list[IPAddress] = []
    for value in values:
        try:
            out.append(
                value
                if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address)
                else ipaddress.ip_address(str(value))
            )
        except ValueError as exc:
            raise InvalidConfig(f"{value!r} is not an IP address: {exc}") from None
    return tuple(out)


def _v4(values: Iterable[object]) -> tuple[ipaddress.IPv4Address, ...]:
    out = _addresses(values)
    if any(a.version != 4 for a in out):
        raise InvalidConfig(f"ipv4 holds a non-IPv4 address: {[str(a) for a in out]}")
    return tuple(a for a in out if isinstance(a, ipaddress.IPv4Address))


def _v6(values: Iterable[object]) -> tuple[ipaddress.IPv6Address, ...]:
    out = _addresses(values)
    if any(a.version != 6 for a in out):
        raise InvalidConfig(f"ipv6 holds a non-IPv6 address: {[str(a) for a in out]}")
    return tuple(a for a in out if isinstance(a, ipaddress.IPv6Address))


def _join(values: Iterable[object]) -> str:
    return ",".join(str(v) for v in values)


@attrs.frozen
class Entry:
    """One sandbox's names and addresses on a network (its endpoint there).

    Attributes:
        id: the sandbox's id, the same on every network the sandbox is on
            (aardvark-dns's container id): a sandbox sees the names of all
            the networks its id is on, whichever of its addresses it asks from.
        names: its DNS names, the first being the one a reverse lookup gives
            first (the sandbox's name), then hostname, aliases, link aliases.
        ipv4: its IPv4 addresses on the network.
        ipv6: its IPv6 addresses on the network.
        dns_servers: the upstreams its sandbox uses instead of the host's
            (a sandbox's own ``dns=`` servers); empty for the host's.
    """

    id: str = attrs.field(converter=_sandbox_id)
    names: tuple[str, ...] = attrs.field(converter=_names)
    ipv4: tuple[ipaddress.IPv4Address, ...] = attrs.field(default=(), converter=_v4)
    ipv6: tuple[ipaddress.IPv6Address, ...] = attrs.field(default=(), converter=_v6)
    dns_servers: tuple[IPAddress, ...] = attrs.field(default=(), converter=_addresses)

    def __attrs_post_init__(self) -> None:
        if not self.names:
            raise InvalidConfig(f"endpoint {self.id} has no DNS name; give it at least one")
        if not self.ipv4 and not self.ipv6:
            raise InvalidConfig(f"endpoint {self.id} has no address; a DNS entry needs one")

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        """Its IPv4 then IPv6 addresses."""
        return (*self.ipv4, *self.ipv6)

    def line(self) -> str:
        """The entry's line in the network's file (without the newline)."""
        fields = [self.id, _join(self.ipv4), _join(self.ipv6), _join(self.names)]
        if self.dns_servers:
            fields.append(_join(self.dns_servers))
        return " ".join(fields)


@attrs.frozen
class NetworkDNS:
    """The resolver's view of one network: where it listens, who is on it.

    Attributes:
        name: the network's name (the file's name).
        listen: the addresses the resolver answers on for this network (its gateways).
        entries: the endpoints on the network.
        dns_servers: the network's own upstreams (instead of the host's).
        internal: an internal network: names are answered, nothing is forwarded.
        links: legacy links on the network: names only the entry's id (the
            link's source sandbox) resolves, to the entry's addresses (the
            target's); several per id allowed.
    """

    name: str = attrs.field(converter=_network_name)
    listen: tuple[IPAddress, ...] = attrs.field(converter=_addresses)
    entries: tuple[Entry, ...] = attrs.field(default=(), converter=_entries)
    dns_servers: tuple[IPAddress, ...] = attrs.field(default=(), converter=_addresses)
    internal: bool = False
    links: tuple[Entry, ...] = attrs.field(default=(), converter=_entries)

    def __attrs_post_init__(self) -> None:
        if not self.listen:
            raise InvalidConfig(f"network {self.name} has no listen address; give its gateway address")
        ids = [e.id for e in self.entries]
        if len(ids) != len(set(ids)):
            raise InvalidConfig(f"network {self.name} lists a sandbox id twice: {sorted(ids)}; one entry per sandbox")

    @property
    def filename(self) -> str:
        """The file's name in the config directory."""
        return self.name + (INTERNAL_SUFFIX if self.internal else "")

    def render(self) -> str:
        """The file's text."""
        first = _join(self.listen) + (" " + _join(self.dns_servers) if self.dns_servers else "")
        return "".join(line + "\n" for line in (first, *(e.line() for e in self.entries)))

    def render_links(self) -> str:
        """The text of the network's link file (empty when it has no links: no file)."""
        return "".join(link.line() + "\n" for link in self.links)

    def with_entry(self, entry: Entry) -> NetworkDNS:
        """This network with ``entry`` added, or replacing the entry of the same id."""
        kept = [e for e in self.entries if e.id != entry.id]
        return attrs.evolve(self, entries=(*kept, entry))

    def without_entry(self, entry_id: str) -> NetworkDNS:
        """This network without the entry of ``entry_id``, nor its links (unchanged if there is none)."""
        return attrs.evolve(
            self,
            entries=tuple(e for e in self.entries if e.id != entry_id),
            links=tuple(lk for lk in self.links if lk.id != entry_id),
        )

    @classmethod
    def parse(cls, filename: str, text: str, links: str = "") -> NetworkDNS:
        """Read a network's file and ``links``, its link file's text.

        Raises :class:`~cnm.errors.InvalidConfig` on a malformed one.
        """
        internal = filename.endswith(INTERNAL_SUFFIX)
        name = filename.removesuffix(INTERNAL_SUFFIX)
        lines = [line for line in text.split("\n") if line]
        if not lines:
            raise InvalidConfig(f"resolver config {filename} is empty; its first line must list listen addresses")
        head = lines[0].split(" ")
        return cls(
            name=name,
            listen=_split(head[0]),
            dns_servers=_split(head[1]) if len(head) > 1 else (),
            entries=[_parse_entry(filename, line) for line in lines[1:]],
            internal=internal,
            links=[_parse_entry(f"{LINKS_DIR}/{filename}", line) for line in links.split("\n") if line],
        )


def _parse_entry(filename: str, line: str) -> Entry:
    parts = line.split(" ")
    if len(parts) not in (4, 5):
        raise InvalidConfig(
            f"resolver config {filename}: line {line!r} must be '<id> <ipv4s> <ipv6s> <names>[ <servers>]'"
        )
    return Entry(
        id=parts[0],
        ipv4=_split(parts[1]),
        ipv6=_split(parts[2]),
        names=_split(parts[3]),
        dns_servers=_split(parts[4]) if len(parts) == 5 else (),
    )


def _split(field: str) -> list[str]:
    return [item for item in field.split(",") if item]


def _write_atomically(path: str, text: str) -> None:
    # Rename makes it atomic for readers. No fsync: the files are derived state, rewritten from
    # the controller's store when a crash may have lost them, and an fsync costs ~5 ms per ADD.
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def is_network_file(filename: str) -> bool:
    """True for a file that holds a network (not a dot file, a temp file or aardvark's pid file)."""
    return not filename.startswith(".") and ".tmp" not in filename and filename != "aardvark.pid"


def read_generation(directory: str, filename: str = GENERATION_FILE) -> int:
    """The counter in ``directory/filename`` (0 when there is none yet)."""
    try:
        with open(os.path.join(directory, filename)) as f:
            return int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def write_generation(directory: str, value: int, filename: str = GENERATION_FILE) -> None:
    """Write the counter in place: one fixed-width write, no rename.

    A rename over an existing file costs ext4 a flush of the new data (its
    auto_da_alloc), about 1 ms, twice per change otherwise. A reader that
    catches the write half done reads a smaller number or none, which only
    makes a waiter wait for the next load (:meth:`cnm.dns.Resolver.reload`
    signals again).
    """
    fd = os.open(os.path.join(directory, filename), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.pwrite(fd, f"{value:019d}\n".encode(), 0)
    finally:
        os.close(fd)


class ConfigDir:
    """The directory of network files: read, replace and remove them atomically.

    Writers in several threads or processes are serialised by a lock file, so
    the generation counter only grows.
    """

    def __init__(self, path: str) -> None:
        """``path`` is created if missing."""
        self.path = path
        os.makedirs(path, mode=0o755, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.path, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
            write_generation(self.path, read_generation(self.path) + 1)
        finally:
            os.close(fd)

    @property
    def generation(self) -> int:
        """How many changes were written so far."""
        return read_generation(self.path)

    def files(self) -> list[str]:
        """The network files present, sorted."""
        return sorted(f for f in os.listdir(self.path) if is_network_file(f))

    def read(self) -> dict[str, NetworkDNS]:
        """Every network in the directory, by network name."""
        out: dict[str, NetworkDNS] = {}
        for filename in self.files():
            try:
                with open(os.path.join(self.path, filename)) as f:
                    text = f.read()
            except FileNotFoundError:
                continue  # removed while we listed: gone
            network = NetworkDNS.parse(filename, text, self.links_text(filename) or "")
            out[network.name] = network
        return out

    def text(self, filename: str) -> str | None:
        """A file's text as it is, or None."""
        try:
            with open(os.path.join(self.path, filename)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def links_text(self, filename: str) -> str | None:
        """The text of a network's link file (by the network file's name) as it is, or None."""
        return self.text(os.path.join(LINKS_DIR, filename))

    def get(self, name: str) -> NetworkDNS | None:
        """One network, or None."""
        return self.read().get(name)

    def write(self, network: NetworkDNS) -> None:
        """Replace (or create) the network's file; its other-internal twin goes."""
        with self._locked():
            # The link file first: one generation covers both, and the server loads after the bump.
            links = os.path.join(self.path, LINKS_DIR, network.filename)
            if network.links:
                os.makedirs(os.path.dirname(links), mode=0o755, exist_ok=True)
                _write_atomically(links, network.render_links())
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(links)
            _write_atomically(os.path.join(self.path, network.filename), network.render())
            twin = network.name + ("" if network.internal else INTERNAL_SUFFIX)
            for path in (os.path.join(self.path, twin), os.path.join(self.path, LINKS_DIR, twin)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        log.debug(
            "resolver config: wrote %s (%d entries, %d links)",
            network.filename,
            len(network.entries),
            len(network.links),
        )

    def remove_file(self, filename: str) -> bool:
        """Remove one file by its file name; False if there was none."""
        with self._locked():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.path, LINKS_DIR, filename))
            try:
                os.unlink(os.path.join(self.path, filename))
            except FileNotFoundError:
                return False
        return True

    def remove(self, name: str) -> bool:
        """Remove the network's file; False if there was none."""
        removed = False
        with self._locked():
            for filename in (name, name + INTERNAL_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.path, LINKS_DIR, filename))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.path, filename))
                    removed = True
        return removed
