"""The bridge driver's steps, each idempotent, run in order with undo on failure."""

from __future__ import annotations

import ipaddress
import logging

from cnm.errors import AlreadyExists
from cnm.firewallapi import Firewall, FirewallNetwork
from cnm.kernel import addresses, links, sysctl
from cnm.kernel.netns import NetNS
from cnm.steps import StepObserver, Steps

__all__ = ["attach_veth", "create_network", "restore_bridge"]

log = logging.getLogger(__name__)


def create_network(
    host: NetNS,
    firewall: Firewall,
    *,
    bridge: str,
    mtu: int,
    gateway: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None,
    fw_network: FirewallNetwork,
    mark: str,
    observer: StepObserver | None = None,
) -> None:
    """Bridge marked ``mark``, gateway address, sysctls, firewall rules; on failure undo what was done."""
    with host.netlink() as nl, Steps(f"create bridge {bridge}", observer) as steps:
        if links.get_link(nl, bridge) is not None:
            raise AlreadyExists(f"a link named {bridge} already exists in the host namespace; pick another bridge_name")
        steps.run(
            "bridge",
            lambda: links.ensure_bridge(nl, bridge, mtu=mtu, up=False),
            undo=lambda: links.delete_link(nl, bridge),
        )
        steps.run("mark", lambda: links.set_alias(nl, bridge, mark))
        if gateway is not None:
            steps.run("gateway address", lambda: addresses.add_address(nl, bridge, gateway))
        steps.run("forwarding", lambda: enable_forwarding(host, bridge))
        steps.run("up", lambda: links.set_link(nl, bridge, up=True))
        steps.run("firewall rules", lambda: firewall.setup_network(fw_network))


def restore_bridge(
    host: NetNS,
    *,
    bridge: str,
    mtu: int,
    gateway: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None,
    mark: str,
) -> None:
    """The bridge marked ``mark``, its gateway address and sysctls, without rules (the controller re-applies those)."""
    with host.netlink() as nl:
        links.ensure_bridge(nl, bridge, mtu=mtu, up=False)
        links.set_alias(nl, bridge, mark)
        if gateway is not None:
            addresses.add_address(nl, bridge, gateway)
        enable_forwarding(host, bridge)
        links.set_link(nl, bridge, up=True)


def enable_forwarding(host: NetNS, bridge: str) -> None:
    """Routing between the bridge and the host, filtering of bridged traffic, and DNAT from 127.0.0.1.

    bridge-nf-call-iptables makes bridged frames cross iptables, which icc=false
    and the hairpin need; route_localnet lets host->127.0.0.1:published be
    DNATed onto the bridge.
    """
    sysctl.set_sysctl(host, "net.ipv4.ip_forward", "1")
    sysctl.set_sysctl(host, "net.bridge.bridge-nf-call-iptables", "1")
    sysctl.set_sysctl(host, f"net/ipv4/conf/{bridge}/route_localnet", "1")


def attach_veth(
    host: NetNS,
    sandbox: NetNS,
    *,
    host_name: str,
    ifname: str,
    bridge: str,
    mac: str | None,
    mtu: int,
    mark: str,
    observer: StepObserver | None = None,
) -> None:
    """A veth whose peer is born in the sandbox, the host end marked ``mark`` and enslaved to the bridge."""
    with host.netlink() as nl, Steps(f"attach veth {host_name} to {bridge}", observer) as steps:
        steps.run(
            "veth",
            lambda: links.add_veth(nl, host_name, ifname, sandbox, peer_mac=mac, mtu=mtu, master=bridge),
            undo=lambda: links.delete_link(nl, host_name),
        )
        steps.run("mark", lambda: links.set_alias(nl, host_name, mark))
        # Hairpin lets a sandbox reach its own published port through the host address.
        steps.run("hairpin", lambda: links.set_hairpin(nl, host_name, True))
