"""A sandbox's /etc/resolv.conf: the host's, minus what cannot work inside a sandbox.

As Docker does for networks without its embedded DNS server: nameservers on
loopback are dropped (they would point at the sandbox's own loopback), and
when none is left, public resolvers are used instead. Where the host runs
systemd-resolved's stub (127.0.0.53), its upstream file is read instead.

A sandbox on a network with name resolution gets :func:`render_resolver`'s file
instead: the resolver's address as its only nameserver, as Docker points its
containers at 127.0.0.11 (the upstreams are the resolver's business then).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

__all__ = ["DEFAULT_NAMESERVERS", "HOST_RESOLV_CONF", "SYSTEMD_RESOLV_CONF", "read_host", "render", "render_resolver"]

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


def render_resolver(host_text: str, nameserver: str, search: Sequence[str] = (), options: Sequence[str] = ()) -> str:
    """The resolv.conf of a sandbox whose queries go to cnm's resolver at ``nameserver``.

    As Docker writes it for its embedded DNS: that one nameserver, the host's
    search domains and options unless ``search``/``options`` replace them,
    and ``ndots:0`` unless an ``ndots`` option is given, so that a single
    label (``db``) is asked as it is first.
    """
    host_search: list[str] = []
    host_options: list[str] = []
    for line in host_text.splitlines():
        parts = line.split()
        if parts[:1] in (["search"], ["domain"]):
            host_search = parts[1:]  # the last search/domain line wins, as in glibc
        elif parts[:1] == ["options"]:
            host_options += parts[1:]
    domains = list(search) or host_search
    opts = list(options) or host_options
    if not any(o.startswith("ndots:") for o in opts):
        opts.append("ndots:0")
    lines = [f"nameserver {nameserver}"]
    if domains:
        lines.append("search " + " ".join(domains))
    lines.append("options " + " ".join(opts))
    return "\n".join(lines) + "\n"
