"""A sandbox's /etc/hosts file, laid out as Docker lays it out.

The file is a pure function of the sandbox's state (its own addresses and,
later, its legacy links), rewritten whole on every change. It is written in
place, not replaced, so processes that bind-mounted it keep seeing updates.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import attrs

from cnm.types import IPAddress

__all__ = ["HOST_HOSTS", "STANDARD_BLOCK", "HostEntry", "render", "write"]

HOST_HOSTS = "/etc/hosts"
"""The host's hosts file, copied into host-mode sandboxes."""

STANDARD_BLOCK = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)


@attrs.frozen
class HostEntry:
    """One line: an address and its names."""

    address: IPAddress
    names: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.address}\t{' '.join(self.names)}\n"


def render(own: Sequence[HostEntry], links: Sequence[HostEntry] = ()) -> str:
    """The file's text: the standard block, link entries, then the sandbox's own lines."""
    return STANDARD_BLOCK + "".join(str(e) for e in links) + "".join(str(e) for e in own)


def write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` in place (same inode), creating it if needed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.truncate()
