"""A sandbox's /etc/resolv.conf: the host's, minus what cannot work inside a sandbox.

As Docker does for networks without its embedded DNS server: nameservers on
loopback are dropped (they would point at the sandbox's own loopback), and
when none is left, public resolvers are used instead. Where the host runs
systemd-resolved's stub (127.0.0.53), its upstream file is read instead.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

__all__ = ["DEFAULT_NAMESERVERS", "HOST_RESOLV_CONF", "SYSTEMD_RESOLV_CONF", "read_host", "render"]

log = logging.getLogger(__name__)

HOST_RESOLV_CONF = "/etc/resolv.conf"
SYSTEMD_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"
DEFAULT_NAMESERVERS = ("8.8.8.8", "8.8.4.4")


def _is_loopback(value: str) -> bool:
    try:
        return ipaddress.ip_address(value.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _nameservers(text: str) -> list[str]:
    return [
        parts[1]
        for parts in (line.split() for line in text.splitlines())
        if parts[:1] == ["nameserver"] and len(parts) > 1
    ]


def read_host(path: str = HOST_RESOLV_CONF, systemd_path: str = SYSTEMD_RESOLV_CONF) -> str:
    """The host's resolv.conf text, following systemd-resolved's stub to its upstream file."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return ""
    servers = _nameservers(text)
    if servers and all(_is_loopback(s) for s in servers):
        try:
            with open(systemd_path) as f:
                return f.read()
        except FileNotFoundError:
            pass
    return text


def render(
    host_text: str, nameservers: Sequence[str] = (), search: Sequence[str] = (), options: Sequence[str] = ()
) -> str:
    """The sandbox's resolv.conf.

    Args:
        host_text: the host's file (:func:`read_host`).
        nameservers: explicit servers (``dns=``); replace the host's.
        search: explicit search domains; replace the host's.
        options: explicit options; replace the host's.
    """
    kept: list[str] = []
    host_servers: list[str] = []
    for line in host_text.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith(("#", ";")):
            continue
        key = parts[0]
        if key == "nameserver" and len(parts) > 1:
            if not _is_loopback(parts[1]):
                host_servers.append(parts[1])
        elif (key == "search" and search) or (key == "options" and options) or (key == "domain" and search):
            continue
        else:
            kept.append(line.strip())
    servers = list(nameservers) or host_servers
    if not servers:
        log.info("no usable nameserver in the host's resolv.conf; using %s", ", ".join(DEFAULT_NAMESERVERS))
        servers = list(DEFAULT_NAMESERVERS)
    lines = [f"nameserver {s}" for s in servers]
    if search:
        lines.append("search " + " ".join(search))
    lines += kept
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"
