"""Name resolution: what the resolver (:mod:`cnm.dns`) is told about each network (internal).

As on Docker's user-defined networks: every sandbox on a DNS-enabled network
is known there by its name, its hostname, its short id and its endpoint's
aliases; the predefined networks (``bridge``, ``host``, ``none``) have no
names. A network is DNS-enabled when it is user-defined, has a gateway, and
its driver puts that gateway on the host (not a LAN the host is on, as
macvlan's): the resolver listens on the gateway address, port 53, in the
controller's host namespace, as aardvark-dns does for netavark.

The resolver's files are derived from the store: :func:`sync_network` rewrites
one network's file after a join, a leave or a legacy link's change (a link's
names are served to its source only) and starts, reloads or stops the
process; :func:`restore` rewrites them all and restarts a dead resolver
(reconcile). A sandbox's resolv.conf then names that gateway
(:func:`resolver_address`); its ``dns=`` servers become its upstreams in the
resolver instead.
"""

from __future__ import annotations

import logging
import os

from cnm._core import records as rec
from cnm._core.runtime import Runtime
from cnm.dns import Entry, NetworkDNS, Resolver
from cnm.dns.config import is_dns_name
from cnm.errors import CNMError, InvalidConfig, NotFound
from cnm.legacy_links import hosts_names

__all__ = [
    "check_aliases",
    "dns_enabled",
    "network_dns",
    "resolver",
    "resolver_address",
    "restore",
    "sync_network",
]

log = logging.getLogger(__name__)


def resolver(rt: Runtime) -> Resolver:
    """The controller's resolver: files under ``<state_dir>/dns``, process in the host namespace."""
    return Resolver(os.path.join(rt.state_dir, "dns"), rt.host_netns)


def dns_enabled(rt: Runtime, network: rec.NetworkRecord) -> bool:
    """True if sandboxes on ``network`` resolve each other's names."""
    if network.predefined or network.gateway is None:
        return False
    try:
        caps = rt.driver(network).capabilities
    except NotFound:  # the driver was uninstalled: nothing serves the network
        return False
    return caps.needs_sandbox_netns and caps.needs_address and not caps.on_host_lan


def check_aliases(rt: Runtime, network: rec.NetworkRecord, aliases: list[str]) -> list[str]:
    """``aliases`` lowercased and checked; refused where names are not served (as Docker refuses them)."""
    if not aliases:
        return []
    if not dns_enabled(rt, network):
        raise InvalidConfig(
            f"network-scoped aliases are served only on user-defined networks with a gateway on the host; "
            f"network {network.name!r} is not one: drop aliases=, or use a user-defined network"
        )
    out: list[str] = []
    for alias in aliases:
        if not is_dns_name(alias):
            raise InvalidConfig(
                f"alias {alias!r} is not a valid DNS name: use labels of letters, digits, '-' and '_' joined by dots"
            )
        if alias.lower() not in out:
            out.append(alias.lower())
    return out


def _names(sandbox: rec.SandboxRecord, endpoint: rec.EndpointRecord) -> list[str]:
    # Docker's DNSNames: the container's name, its aliases, its short id; plus the hostname here,
    # which Docker resolves too (the hostname defaults to the short id there).
    candidates = [sandbox.name, *endpoint.aliases, sandbox.hostname, sandbox.id[:12]]
    return [n for n in dict.fromkeys(c.lower() for c in candidates) if is_dns_name(n)]


def network_dns(rt: Runtime, network: rec.NetworkRecord) -> NetworkDNS | None:
    """The resolver's file for ``network`` from the store, or None if no sandbox is joined to it."""
    if network.gateway is None:
        return None  # not DNS-enabled: nothing to listen on
    # One read, one transaction, not one per endpoint: this runs at every join and leave.
    with rt.state.transaction() as tx:
        joined = [
            e
            for e in tx.endpoints_of_network(network.id)
            if e.sandbox_id is not None and e.address is not None and e.status != rec.DELETING
        ]
        sandboxes = {s.id: s for s in tx.list(rec.SandboxRecord)} if joined else {}
        links = [lk for lk in tx.list(rec.LinkRecord) if lk.network_id == network.id] if joined else []
    entries = []
    for endpoint in joined:
        sandbox = sandboxes.get(endpoint.sandbox_id or "")
        if sandbox is None or endpoint.address is None or sandbox.status in (rec.DELETING, rec.DEAD):
            continue
        entries.append(
            Entry(
                id=sandbox.id[:12],
                names=_names(sandbox, endpoint),
                ipv4=[endpoint.address.split("/", 1)[0]],
                dns_servers=sandbox.dns,
            )
        )
    if not entries:
        return None
    return NetworkDNS(
        name=network.name,
        listen=[network.gateway],
        entries=entries,
        internal=network.internal,
        links=_link_entries(links, sandboxes, {e.id for e in entries}),
    )


def _link_entries(
    links: list[rec.LinkRecord], sandboxes: dict[str, rec.SandboxRecord], listed: set[str]
) -> list[Entry]:
    # Docker serves a link on a user-defined network as an alias of the source's endpoint there:
    # for the source only, to the target's address on that network. The names are the hosts
    # line's (alias, target's hostname, target's name). A link one of whose ends is not (or no
    # longer) on the network is left out: drop_links removes it in the same leave.
    out = []
    for link in sorted(links, key=lambda lk: (lk.created, lk.alias)):
        target = sandboxes.get(link.target_id)
        if link.status != rec.READY or target is None or not {link.source_id[:12], target.id[:12]} <= listed:
            continue
        names = [n for n in dict.fromkeys(hosts_names(link.alias, target.hostname, target.name)) if is_dns_name(n)]
        if names:
            out.append(Entry(id=link.source_id[:12], names=names, ipv4=[link.target_ip]))
    return out


def sync_network(rt: Runtime, network: rec.NetworkRecord) -> None:
    """Tell the resolver what the store says of ``network`` now; start, reload or stop it to match.

    A failure is logged, not raised: the join or leave that called it is done,
    and names come back at the next change or ``reconcile()``.
    """
    if not dns_enabled(rt, network):
        return
    res = resolver(rt)
    try:
        dns = network_dns(rt, network)
        if dns is None:
            res.config.remove(network.name)
        else:
            res.config.write(dns)
        res.apply()
    except (CNMError, OSError) as exc:
        log.warning("names on network %s are not served until the next change or reconcile(): %s", network.name, exc)


def resolver_address(rt: Runtime, sandbox: rec.SandboxRecord) -> str | None:
    """The nameserver for the sandbox's resolv.conf: the gateway of its first-joined DNS network, or None."""
    joined = sorted(
        (e for e in rt.state.endpoints_of_sandbox(sandbox.id) if e.status != rec.DELETING),
        key=lambda e: e.join_seq,
    )
    for endpoint in joined:
        try:
            network = rt.state.get(rec.NetworkRecord, endpoint.network_id)
        except NotFound:
            continue
        if dns_enabled(rt, network):
            return network.gateway
    return None


def restore(rt: Runtime) -> list[str]:
    """Rewrite every network's file from the store, drop stale ones, and (re)start the resolver as needed.

    For reconcile; returns what it did, one line each.
    """
    res = resolver(rt)
    done: list[str] = []
    wanted: dict[str, NetworkDNS] = {}
    for network in rt.state.list(rec.NetworkRecord):
        if network.status == rec.READY and dns_enabled(rt, network):
            dns = network_dns(rt, network)
            if dns is not None:
                wanted[dns.name] = dns
    files = {dns.filename: dns for dns in wanted.values()}
    for filename in res.config.files():
        if filename not in files:
            res.config.remove_file(filename)
            done.append(f"removed the resolver's stale file {filename}")
    for filename, dns in files.items():
        if res.config.text(filename) != dns.render() or (res.config.links_text(filename) or "") != dns.render_links():
            res.config.write(dns)
            done.append(f"rewrote the resolver's names for network {dns.name}")
    was_running = res.alive()
    running = res.apply()
    if running and not was_running:
        done.append("started the DNS resolver (it was not running)")
    elif was_running and not running:
        done.append("stopped the DNS resolver (no network with names is left)")
    return done
