"""Garbage collection for the OVS driver: OVS rows and veths of networks and endpoints the store no longer knows.

A network names its OVSDB server in its options, so once the network is gone
nothing in the store says which servers hold cnm's rows. The driver therefore
writes down every server it has used (:class:`RemoteBook`, a file in its
state directory) and collects garbage in each until that server holds nothing
of cnm's any more. Only rows whose ``external_ids`` name a cnm network and
this controller as owner (``cnm-owner``), and veths whose alias is this
controller's mark, are ever removed: other controllers on the same OVSDB and
host namespace keep theirs, and rows of an older cnm without an owner are
left alone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
from collections.abc import Collection, Iterable, Mapping

from cnm.driverapi import owner_mark
from cnm.errors import KernelError
from cnm.kernel import links
from cnm.kernel.netns import NetNS
from cnm.ovsdb import DEFAULT_TIMEOUT, Ovsdb

from .steps import ENDPOINT_ID, NETWORK_ID, OWNER, SHARED

__all__ = ["RemoteBook", "collect_garbage", "collect_ovsdb", "collect_veths"]

log = logging.getLogger(__name__)

_OWN_VETH = re.compile(r"^cno[0-9a-f]{12}$")


class RemoteBook:
    """The OVSDB servers this driver has made rows in, kept in a JSON file.

    Writes happen under the controller's state lock (every operation and
    reconcile hold it), and replace the file atomically, so a crash leaves
    either the old list or the new one.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def known(self) -> set[str]:
        """Every remote written down; empty if the file is missing or unreadable."""
        try:
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as exc:
            # A lost list only means garbage may survive on a server; never fail an operation for it.
            log.warning("cannot read the OVSDB servers cnm used from %s (%s); starting a new list", self.path, exc)
            return set()
        return {str(r) for r in data} if isinstance(data, list) else set()

    def _write(self, remotes: Iterable[str]) -> None:
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(sorted(remotes), f)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise KernelError(
                f"cannot record the OVSDB servers cnm uses in {self.path}: {exc.strerror}; "
                "check that the controller's state_dir is writable",
                exc.errno,
            ) from exc

    def add(self, remote: str) -> None:
        """Write ``remote`` down (before the first row is made there)."""
        known = self.known()
        if remote not in known:
            self._write(known | {remote})

    def forget(self, remote: str) -> None:
        """Strike ``remote`` off (once it holds nothing of cnm's and no network uses it)."""
        known = self.known()
        if remote in known:
            self._write(known - {remote})


def collect_ovsdb(
    db: Ovsdb, owner: str, networks: Collection[str], endpoints: Collection[str], bridges: Collection[str]
) -> tuple[list[str], bool]:
    """Delete ``owner``'s rows in ``db`` that belong to none of ``networks`` and ``endpoints`` (ids).

    Orphaned bridges go first (with their ports), then orphaned ports on the
    bridges that remain, then a shared VLAN bridge that none of ``bridges``
    (the known networks' bridges) names and that is left with nothing but its
    own port. Interfaces are not a root table: each goes with its port.

    Returns:
        What was removed, and whether ``db`` still holds any row of cnm's (any owner's).
    """
    removed: list[str] = []
    remaining = False
    for bridge in db.bridges():
        network = bridge.external_ids.get(NETWORK_ID)
        if network is not None and bridge.external_ids.get(OWNER) != owner:
            remaining = True
        elif network is not None and network not in networks and db.delete_bridge(bridge.name):
            removed.append(f"deleted orphaned OVS bridge {bridge.name} of network {network[:12]} ({db.remote})")
    local_ports = {b.name for b in db.bridges()}  # a bridge's own port goes only with the bridge
    for port in db.ports():
        network = port.external_ids.get(NETWORK_ID)
        if network is None or port.name in local_ports:
            continue
        endpoint = port.external_ids.get(ENDPOINT_ID)
        if port.external_ids.get(OWNER) != owner or (
            network in networks and (endpoint is None or endpoint in endpoints)
        ):
            remaining = True
        elif db.delete_port(port.name):
            removed.append(f"deleted orphaned OVS port {port.name} of network {network[:12]} ({db.remote})")
    for bridge in db.bridges():
        if bridge.external_ids.get(SHARED) == "true":
            if bridge.name not in bridges and len(bridge.ports) <= 1 and db.delete_bridge(bridge.name):
                removed.append(f"deleted the emptied shared OVS bridge {bridge.name} ({db.remote})")
            else:
                remaining = True
        elif NETWORK_ID in bridge.external_ids:
            remaining = True
    return removed, remaining


def collect_veths(host: NetNS, owner: str, keep: Collection[str]) -> list[str]:
    """Delete ``owner``'s veths named as the driver names endpoints' host ends, unless named in ``keep``."""
    removed = []
    with host.netlink() as nl:
        for link in links.list_links(nl):
            if (
                link.kind == "veth"
                and _OWN_VETH.match(link.name)
                and link.alias == owner_mark(owner)
                and link.name not in keep
                and links.delete_link(nl, link.name)
            ):
                removed.append(f"deleted orphaned veth {link.name}")
    return removed


def collect_garbage(
    host: NetNS,
    book: RemoteBook,
    *,
    owner: str,
    in_use: Mapping[str, float],
    networks: Collection[str],
    endpoints: Collection[str],
    bridges: Collection[str],
    keep_veths: Collection[str],
) -> list[str]:
    """Collect garbage on every OVSDB server in use (``in_use``: remote -> timeout) or written down.

    Only ``owner``'s rows and veths are removed. ``networks`` and ``endpoints``
    are the ids to keep, ``bridges`` the known networks' bridges,
    ``keep_veths`` the host ends of joined endpoints.

    A server no network uses is struck off once it holds nothing of cnm's;
    while it cannot be reached it stays written down and is skipped, since
    nothing the store knows depends on it.

    Raises:
        KernelError: a server that a network uses could not be cleaned (after
            all the others were).
    """
    removed: list[str] = []
    failed: list[str] = []
    for remote in sorted(book.known() | set(in_use)):
        db = Ovsdb(remote, timeout=in_use.get(remote, DEFAULT_TIMEOUT))
        try:
            done, remaining = collect_ovsdb(db, owner, networks, endpoints, bridges)
        except KernelError as exc:
            if remote in in_use:
                failed.append(str(exc))
            else:
                log.warning("skipped garbage collection in unused OVSDB server %s: %s", remote, exc)
            continue
        removed += done
        if not remaining and remote not in in_use:
            with contextlib.suppress(KernelError):
                book.forget(remote)
    removed += collect_veths(host, owner, keep_veths)
    for line in removed:
        log.info("%s", line)
    if failed:
        raise KernelError(
            f"garbage collection failed in {len(failed)} OVSDB server(s) ({'; '.join(failed)}); "
            f"{len(removed)} other removal(s) were made; reconcile again once the servers answer",
            errno.EIO,
        )
    return removed
