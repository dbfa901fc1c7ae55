"""What a sandbox derives from the store: its hosts, resolv.conf and hostname files, and its default route (internal).

The bottom of the operations: joins, leaves and links change records, then call
:func:`refresh_files` and :func:`update_gateway` to bring the sandbox in line.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os

from cnm import etchosts, resolvconf
from cnm._core import records as rec
from cnm._core.ops.names import resolver_address
from cnm._core.runtime import Runtime
from cnm._core.sandbox_os import SandboxNetwork
from cnm.errors import NotFound
from cnm.etchosts import HostEntry
from cnm.legacy_links import hosts_names

__all__ = ["host_entries", "links_from", "refresh_files", "update_gateway", "write_files", "write_resolv_conf"]

log = logging.getLogger(__name__)


def links_from(rt: Runtime, sandbox_id: str) -> list[rec.LinkRecord]:
    """The settled links a sandbox made, oldest first."""
    return [lk for lk in rt.state.links_of(sandbox_id) if lk.source_id == sandbox_id and lk.status == rec.READY]


def host_entries(rt: Runtime, sandbox_id: str) -> list[HostEntry]:
    """The hosts lines of a sandbox's links, oldest link first."""
    entries = []
    for link in links_from(rt, sandbox_id):
        with contextlib.suppress(NotFound):
            target = rt.state.get(rec.SandboxRecord, link.target_id)
            names = hosts_names(link.alias, target.hostname, target.name)
            entries.append(HostEntry(ipaddress.IPv4Address(link.target_ip), names))
    return entries


def write_files(rt: Runtime, sandbox: rec.SandboxRecord) -> None:
    """Write the sandbox's hostname, hosts and resolv.conf files (a sharer has none of its own)."""
    if sandbox.mode == rec.CONTAINER:
        return
    host = rt.sandbox_os
    host.write_file(os.path.join(sandbox.files_dir, "hostname"), sandbox.hostname + "\n")
    write_resolv_conf(rt, sandbox)
    if sandbox.mode == rec.HOST:
        hosts = host.read_host_file(etchosts.HOST_HOSTS) or etchosts.STANDARD_BLOCK
        host.write_file(os.path.join(sandbox.files_dir, "hosts"), hosts)
    refresh_files(rt, sandbox)


def write_resolv_conf(rt: Runtime, sandbox: rec.SandboxRecord) -> None:
    """Write the sandbox's resolv.conf: cnm's resolver on a network with names, else the host's servers."""
    host = rt.sandbox_os
    overrides = sandbox.dns or sandbox.dns_search or sandbox.dns_options
    nameserver = resolver_address(rt, sandbox) if sandbox.mode == rec.PRIVATE else None
    if nameserver is not None:
        # Its dns= servers are the resolver's upstreams for it now (names.network_dns).
        resolv = resolvconf.render_resolver(
            host.host_resolv_conf(), nameserver, sandbox.dns_search, sandbox.dns_options
        )
    elif sandbox.mode == rec.HOST and not overrides:
        # The host's stack is the sandbox's, so even a loopback resolver (a
        # local stub) works: copy the file as it is, as Docker does.
        resolv = host.read_host_file(resolvconf.HOST_RESOLV_CONF)
    else:
        resolv = resolvconf.render(host.host_resolv_conf(), sandbox.dns, sandbox.dns_search, sandbox.dns_options)
    if host.is_directory(sandbox.files_dir):
        host.write_file(os.path.join(sandbox.files_dir, "resolv.conf"), resolv)


def refresh_files(rt: Runtime, sandbox: rec.SandboxRecord) -> None:
    """Rewrite the hosts file from the sandbox's joined endpoints (one line per address) and its links, and resolv.conf.

    Only a private-mode sandbox's: a host-mode one keeps its copy of the
    host's file, and a sharer's file is its owner's. resolv.conf follows the
    joins: it names cnm's resolver while the sandbox is on a network with names.
    """
    if sandbox.mode != rec.PRIVATE:
        return
    write_resolv_conf(rt, sandbox)
    own = [
        etchosts.HostEntry(ipaddress.IPv4Interface(e.address).ip, (sandbox.hostname,))
        for e in rt.state.endpoints_of_sandbox(sandbox.id)
        if e.address is not None
    ]
    if rt.sandbox_os.is_directory(sandbox.files_dir):
        text = etchosts.render(own, host_entries(rt, sandbox.id))
        rt.sandbox_os.write_file(os.path.join(sandbox.files_dir, "hosts"), text)


def update_gateway(rt: Runtime, sandbox: rec.SandboxRecord, stack: SandboxNetwork | None = None) -> None:
    """Point the default route at the first-joined endpoint that offers a gateway, or remove it.

    Only in a namespace the sandbox owns: the host's routes (host mode) are
    never touched, and a sharer has no endpoints of its own. ``stack``, if
    given, is the sandbox's network stack already open (a join's).
    """
    if not rt.owns_netns(sandbox):
        return
    if stack is None and not rt.sandbox_os.namespace_exists(sandbox.netns_path):
        return
    gateway_ep = next((e for e in rt.state.endpoints_of_sandbox(sandbox.id) if e.gateway is not None), None)
    with contextlib.ExitStack() as opened:
        if stack is None or stack.netns_path != sandbox.netns_path:
            stack = opened.enter_context(rt.sandbox_os.network(sandbox.netns_path))
        if gateway_ep is None or gateway_ep.ifname is None or gateway_ep.gateway is None:
            stack.clear_default_route()
            return
        stack.set_default_route(ipaddress.IPv4Address(gateway_ep.gateway), gateway_ep.ifname)
