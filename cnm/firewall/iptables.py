"""The python-iptables (libiptc, legacy xtables) firewall backend, in Docker's layout.

:class:`IptablesFirewall` writes Docker's ``--userland-proxy=false`` rule layout
(cnm runs no userland proxy) with cnm's own chains, described in
:mod:`cnm.firewall._iptables_rules`, slimmed where a published port's cost is
concerned: libiptc reads and the kernel replaces a whole table on every change,
at about a microsecond per rule and per match, so a port adds two bare rules to
the nat table and none to filter (docs/firewall.md).

Every public method is one request to a long-lived worker process
(:class:`cnm.kernel.worker.Worker`), one per :class:`IptablesFirewall`, forked
on first use, that entered the namespace once; the worker's side is
:mod:`cnm.firewall._iptables_session` (sessions and operations) over
:mod:`cnm.firewall._libiptc` (python-iptables, one table's raw entries). For each request the worker takes
the xtables lock, reads each table it needs afresh (other iptables users change
them between requests), changes it, commits it once and frees it, then releases
the lock. python-iptables keeps process-wide state bound to the namespace where
it was first used (pitfalls B4), so it is never imported outside such a worker.
What the worker keeps between requests is what costs and never goes stale:
python-iptables with its loaded extensions, and the libiptc entries built from
rule specs (a rule's bytes do not depend on the table's contents).

Rules are handled as raw libiptc entries wherever possible: presence is asked of
libiptc (``iptc_check_entry``) and scans read only each entry's comment, so no
chain is parsed into python-iptables ``Rule`` objects; a thousand published
ports cost a thousand memcmp's in C, not a thousand Python objects. Publishing
and withdrawing ports never scan at all: what remains of their cost is the
kernel's (``benchmarks/bench_firewall.py``).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Collection, Sequence
from typing import Any, cast

import attrs

from cnm.firewall._iptables_rules import link_blocks, network_chains
from cnm.firewall._iptables_session import Server
from cnm.firewall._libiptc import LOCK_TIMEOUT
from cnm.firewallapi import Firewall, FirewallNetwork, LinkRule, NetworkRules, PortMapping
from cnm.kernel.netns import NetNS
from cnm.kernel.worker import Worker

__all__ = ["DEFAULT_LOCK_PATH", "LOCK_TIMEOUT", "REPLY_TIMEOUT", "IptablesFirewall"]

log = logging.getLogger(__name__)

#: The lock every xtables-legacy user takes (iptables ``-w``); ``XTABLES_LOCKFILE`` overrides it.
DEFAULT_LOCK_PATH = "/run/xtables.lock"
#: Seconds a call may take once it holds the lock before its worker is taken as wedged and replaced.
REPLY_TIMEOUT = 60.0


class IptablesFirewall:
    """A :class:`~cnm.firewallapi.Firewall` on python-iptables, bound to one host namespace.

    The work happens in a worker process inside ``netns``, started on the
    first call and replaced if it dies; :meth:`close` ends it (a later call
    starts a new one). Calls from several threads take turns.

    Args:
        netns: the namespace whose iptables (legacy xtables) cnm manages.
        owner: the controller's owner id; every rule is tagged
            ``cnm:<owner>:<network id[:12]>``, and reapply and cleanup touch
            only rules of this owner.
        lock_path: the xtables lock file; defaults to ``$XTABLES_LOCKFILE`` or
            ``/run/xtables.lock``, the lock ``iptables -w`` takes.
        lock_timeout: seconds to wait for that lock before raising KernelError.
        reply_timeout: seconds to wait for the worker's answer before taking it
            as wedged, killing it and raising KernelError; defaults to
            ``lock_timeout + REPLY_TIMEOUT``.

    Example::

        fw = IptablesFirewall(NetNS.named("h1"))
        fw.setup_network(FirewallNetwork(id=net_id, interface="br-1", subnet=subnet))
        fw.close()
    """

    name = "iptables"

    def __init__(
        self,
        netns: NetNS,
        *,
        owner: str = "",
        lock_path: str | None = None,
        lock_timeout: float = LOCK_TIMEOUT,
        reply_timeout: float | None = None,
    ) -> None:
        self._netns = netns
        self._owner = owner
        self._lock_path = lock_path or os.environ.get("XTABLES_LOCKFILE") or DEFAULT_LOCK_PATH
        self._lock_timeout = lock_timeout
        self._worker = Worker(
            netns,
            functools.partial(Server, self._lock_path, lock_timeout),
            label="firewall",
            reply_timeout=lock_timeout + REPLY_TIMEOUT if reply_timeout is None else reply_timeout,
        )

    @property
    def netns(self) -> NetNS:
        """The namespace this firewall writes to."""
        return self._netns

    @property
    def _worker_pid(self) -> int | None:
        # For tests: the PID of the worker serving this firewall now, None if none runs.
        return self._worker.pid

    @property
    def owner(self) -> str:
        """The owner id whose rules this firewall writes and removes."""
        return self._owner

    def __repr__(self) -> str:
        return f"IptablesFirewall(netns={self._netns.path!r}, owner={self._owner!r})"

    def _own(self, network: FirewallNetwork) -> FirewallNetwork:
        return attrs.evolve(network, owner=self._owner)

    def close(self) -> None:
        """End the worker process (by PID); a later call starts a new one. Rules stay as they are."""
        self._worker.close()

    def _run(self, what: str, method: str, *args: Any) -> object:
        """Have the worker run ``method`` with ``args`` under the xtables lock, committing once per table."""
        return self._worker.run(what, method, *args)

    def setup_network(self, network: FirewallNetwork) -> None:
        """Install the network-level rules: forwarding, isolation, NAT, icc, internal."""
        network = self._own(network)
        self._run(f"set up firewall for network {network.id[:12]}", "setup_network", network)

    def teardown_network(self, network: FirewallNetwork) -> None:
        """Remove every rule of the network, its ports and links included."""
        network = self._own(network)
        self._run(f"tear down firewall for network {network.id[:12]}", "teardown_network", network)

    def add_ports(self, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
        """Publish ports (DNAT and hairpin masquerade; the network's conntrack ACCEPT lets them in)."""
        network = self._own(network)
        if ports and network_chains(network):  # nothing to publish (none, or an internal network): no round trip
            what = f"publish {_describe(ports)} on network {network.id[:12]}"
            self._run(what, "add_ports", network, tuple(ports))

    def remove_ports(self, network: FirewallNetwork, ports: Sequence[PortMapping]) -> None:
        """Withdraw published ports."""
        network = self._own(network)
        if ports and network_chains(network):
            what = f"withdraw {_describe(ports)} on network {network.id[:12]}"
            self._run(what, "remove_ports", network, tuple(ports))

    def add_link(self, network: FirewallNetwork, link: LinkRule) -> None:
        """Allow a legacy link's ports through on an icc=false network."""
        network = self._own(network)
        if link_blocks(network, link):
            what = f"link {link.source_ip} -> {link.target_ip} on network {network.id[:12]}"
            self._run(f"allow {what}", "add_link", network, link)

    def remove_link(self, network: FirewallNetwork, link: LinkRule) -> None:
        """Withdraw a legacy link's rules."""
        network = self._own(network)
        if link_blocks(network, link):
            what = f"link {link.source_ip} -> {link.target_ip} on network {network.id[:12]}"
            self._run(f"withdraw {what}", "remove_link", network, link)

    def reapply(self, networks: Sequence[NetworkRules]) -> None:
        """Rebuild every cnm rule from this description, dropping any other cnm rule.

        ``networks`` are given in creation order (the newest last), as setup
        saw them. Everything is rebuilt in one request and committed once per
        table, so there is no moment without rules; rules that are not cnm's
        are left where they are.
        """
        owned = tuple(attrs.evolve(item, network=self._own(item.network)) for item in networks)
        self._run(f"reapply firewall rules of {len(networks)} networks", "reapply", self._owner, owned)

    def cleanup(self, keep: Collection[str] = ()) -> int:
        """Remove every rule of this owner whose network id is not in ``keep``; return how many.

        With ``keep`` empty and no other owner's rules left, cnm's chains and
        shared jumps go too, leaving the tables as they were before cnm came.
        """
        kept = frozenset(network_id[:12] for network_id in keep)
        removed = cast(int, self._run("clean up cnm firewall rules", "cleanup", self._owner, kept))
        log.info("removed %d cnm firewall rules from %s", removed, self._netns.name)
        return removed

    def holds_rules(self) -> bool:
        """Whether the namespace's legacy tables hold rules of this owner already (reads, changes nothing)."""
        return bool(self._run(f"look for firewall rules of owner {self._owner}", "holds_rules", self._owner))

    def check(self) -> None:
        """Raise KernelError saying why if python-iptables or the kernel's legacy xtables cannot be used here."""
        self._run("check the iptables (legacy xtables) backend", "check")


def _describe(ports: Sequence[PortMapping]) -> str:
    shown = ", ".join(f"{p.host_port}/{p.protocol}" for p in ports[:3])
    return f"ports {shown}" + (f" and {len(ports) - 3} more" if len(ports) > 3 else "")


_: type[Firewall] = IptablesFirewall
