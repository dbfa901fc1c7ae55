"""cnm's nftables layout, as libnftables JSON commands: pure data, no library in sight.

:mod:`cnm.firewall.nftables` sends these commands, one batch (one kernel
transaction) per call. Everything lives in one table per controller,
``table inet cnm_<owner>``, which that controller owns wholly: cleanup is
deleting the table, and nothing in another table is ever touched.

Per network (``<k>`` is the network id's first 12 characters) the table holds
rules commented ``cnm:<k>`` and these sets and maps, whose names say whose
they are:

- ``addr_<k>``, ``port_<k>``: published ports bound to every host address,
  ``meta l4proto . th dport`` to the container address and port;
- ``ipaddr_<k>``, ``ipport_<k>``: the same for ports bound to one host
  address, keyed ``ip daddr . meta l4proto . th dport``;
- ``hairpin_tcp_<k>``, ``hairpin_udp_<k>``: ``ip saddr . ip daddr . ct
  original proto-dst`` (a sandbox to itself through one of its published host
  ports), which are masqueraded, so a sandbox reaches its own published port;
  one element per host port, added and removed with it (nft takes
  ``proto-dst`` in a concatenation only after a protocol match: one set per
  protocol);
- ``links_<k>``: legacy links on an icc=false network, ``source . target .
  protocol . port``;
- ``routed_<k>``: a ``routed`` network's published container ports, ``ip
  daddr . meta l4proto . th dport`` (the sandbox's own address and port: such
  a network has no NAT, so it has none of the maps above).

Publishing a port is then element adds, whatever the number already published.
(libnftables 1.0.6 crashes on a NAT map whose data is an ``addr . port``
concatenation given as JSON, hence separate address and port maps.)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from typing import Any

from cnm.errors import InvalidConfig
from cnm.firewallapi import FirewallNetwork, LinkRule, PortMapping

__all__ = [
    "SHARED_TAG",
    "Command",
    "base_objects",
    "base_rules",
    "link_elements",
    "network_objects",
    "network_rules",
    "network_set_names",
    "port_elements",
    "table_name",
]

#: One libnftables JSON command, e.g. ``{"add": {"rule": {...}}}``.
Command = dict[str, Any]

FAMILY = "inet"
SHARED_TAG = "cnm"
_OWNER = re.compile(r"[0-9a-z_]{1,32}")
_KEY = 12

#: The base chains: name, type, hook, priority. Isolation runs just before the
#: forward chain, so that no network's ACCEPT is reached by traffic between networks.
BASE_CHAINS: tuple[tuple[str, str, str, int], ...] = (
    # Before conntrack (-200) and nat: a remote packet to 127.0.0.0/8 never reaches a loopback-published DNAT.
    ("raw", "filter", "prerouting", -300),
    ("isolation", "filter", "forward", -1),
    ("forward", "filter", "forward", 0),
    ("prerouting", "nat", "prerouting", -100),
    ("output", "nat", "output", -100),
    ("postrouting", "nat", "postrouting", 100),
)
PUBLISHED = "published"
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


def table_name(owner: str) -> str:
    """The table of the controller ``owner``; raises InvalidConfig for a name nft would not take."""
    if not _OWNER.fullmatch(owner):
        raise InvalidConfig(f"firewall owner {owner!r} must be 1-32 characters of 0-9, a-z and _")
    return f"cnm_{owner}"


def _key(network: FirewallNetwork) -> str:
    return network.id[:_KEY]


def network_set_names(key: str) -> tuple[str, ...]:
    """The sets and maps of the network whose id starts with ``key``."""
    kinds = ("addr", "port", "ipaddr", "ipport", "hairpin_tcp", "hairpin_udp", "links", "routed")
    return tuple(f"{kind}_{key}" for kind in kinds)


_PROTOCOLS = ("tcp", "udp")


# -- expressions -------------------------------------------------------------------------------
def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _prefix(subnet: ipaddress.IPv4Network) -> dict[str, Any]:
    return {"prefix": {"addr": str(subnet.network_address), "len": subnet.prefixlen}}


def _fib_local(flag: str) -> dict[str, Any]:
    return _match({"fib": {"result": "type", "flags": [flag]}}, "local")


_PROTO_PORT = {"concat": [_meta("l4proto"), _payload("th", "dport")]}
_IP_PROTO_PORT = {"concat": [_payload("ip", "daddr"), _meta("l4proto"), _payload("th", "dport")]}


class _Table:
    def __init__(self, table: str) -> None:
        self.ref = {"family": FAMILY, "table": table}
        self.name = table

    def rule(self, chain: str, comment: str, *expr: dict[str, Any]) -> Command:
        return {"add": {"rule": {**self.ref, "chain": chain, "comment": comment, "expr": list(expr)}}}

    def set(self, name: str, type_: str | list[str], data: str | None = None) -> Command:
        body: dict[str, Any] = {**self.ref, "name": name, "type": type_}
        if data is not None:
            body["map"] = data
            return {"add": {"map": body}}
        return {"add": {"set": body}}


# -- the table and what every network shares ---------------------------------------------------
def base_objects(table: str) -> list[Command]:
    """The table, its chains and the shared set of bridges; adding them again changes nothing."""
    t = _Table(table)
    commands: list[Command] = [{"add": {"table": {"family": FAMILY, "name": table}}}]
    for name, type_, hook, prio in BASE_CHAINS:
        chain = {**t.ref, "name": name, "type": type_, "hook": hook, "prio": prio, "policy": "accept"}
        commands.append({"add": {"chain": chain}})
    commands.append({"add": {"chain": {**t.ref, "name": PUBLISHED}}})
    commands.append(t.set("bridges", "ifname"))
    return commands


def base_rules(table: str) -> list[Command]:
    """The shared jumps: traffic to one of the host's own addresses goes through the published ports."""
    t = _Table(table)
    jump = {"jump": {"target": PUBLISHED}}
    # No "ip daddr != 127.0.0.0/8": cnm runs no userland proxy, so host -> 127.0.0.1:published is DNATed.
    return [t.rule(chain, SHARED_TAG, _fib_local("daddr"), jump) for chain in ("prerouting", "output")]


# -- a network ---------------------------------------------------------------------------------
def network_objects(table: str, network: FirewallNetwork) -> list[Command]:
    """The network's sets and maps (none for an internal network but the links set)."""
    t = _Table(table)
    addr, port, ipaddr, ipport, hairpin_tcp, hairpin_udp, links, routed = network_set_names(_key(network))
    commands = [t.set(links, ["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"])]
    if network.routed and not network.internal:
        commands.append(t.set(routed, ["ipv4_addr", "inet_proto", "inet_service"]))
    elif not network.internal:
        commands += [
            t.set(addr, ["inet_proto", "inet_service"], "ipv4_addr"),
            t.set(port, ["inet_proto", "inet_service"], "inet_service"),
            t.set(ipaddr, ["ipv4_addr", "inet_proto", "inet_service"], "ipv4_addr"),
            t.set(ipport, ["ipv4_addr", "inet_proto", "inet_service"], "inet_service"),
            t.set(hairpin_tcp, ["ipv4_addr", "ipv4_addr", "inet_service"]),
            t.set(hairpin_udp, ["ipv4_addr", "ipv4_addr", "inet_service"]),
        ]
    return commands


def network_rules(table: str, network: FirewallNetwork, *, guarded: bool = False) -> list[Command]:
    """The network's rules, each commented ``cnm:<id[:12]>``, in the order they go into their chains.

    ``guarded``: another table's dropping forward chain lets the bridge through on cnm's word
    (:mod:`cnm.firewall._nftables_coexist`), so what the network does not accept into its bridge
    is dropped here, last, as that chain dropped it before.
    """
    t, tag, br, subnet = _Table(table), network.tag, network.interface, network.subnet
    addr, port, ipaddr, ipport, *hairpins, links, _ = network_set_names(_key(network))
    iif, oif = _meta("iifname"), _meta("oifname")
    accept, drop = {"accept": None}, {"drop": None}
    rules = [
        # Into another of this controller's bridges: dropped (isolation between networks).
        t.rule("isolation", tag, _match(iif, br), _match(oif, br, "!="), _match(oif, "@bridges"), drop),
    ]
    if network.internal:
        # Nothing enters or leaves the subnet through the bridge.
        rules.append(
            t.rule("isolation", tag, _match(oif, br), _match(_payload("ip", "saddr"), _prefix(subnet), "!="), drop)
        )
        rules.append(
            t.rule("isolation", tag, _match(iif, br), _match(_payload("ip", "daddr"), _prefix(subnet), "!="), drop)
        )
    established = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
    rules.append(t.rule("forward", tag, _match(oif, br), established, accept))
    if not network.internal and not network.routed:
        # Every published port at once: what a DNAT sent in from outside the bridge.
        dnat = _match({"ct": {"key": "status"}}, "dnat", "in")
        rules.append(t.rule("forward", tag, _match(oif, br), _match(iif, br, "!="), dnat, accept))
    if not network.internal:
        rules.append(t.rule("forward", tag, _match(iif, br), _match(oif, br, "!="), accept))
    if network.icc:
        rules.append(t.rule("forward", tag, _match(iif, br), _match(oif, br), accept))
    else:
        src, dst = _payload("ip", "saddr"), _payload("ip", "daddr")
        proto = _meta("l4proto")
        to = {"concat": [src, dst, proto, _payload("th", "dport")]}
        back = {"concat": [dst, src, proto, _payload("th", "sport")]}
        same = (_match(iif, br), _match(oif, br))
        rules.append(t.rule("forward", tag, *same, _match(to, f"@{links}"), accept))
        rules.append(t.rule("forward", tag, *same, _match(back, f"@{links}"), accept))
        rules.append(t.rule("forward", tag, *same, drop))
    rules += _inbound_rules(t, network, guarded=guarded)
    if network.routed and not network.internal:
        # No NAT at all: nothing DNATed from the host's ports, nothing masqueraded (unless asked).
        if network.masquerade:
            saddr = _match(_payload("ip", "saddr"), _prefix(subnet))
            rules.append(t.rule("postrouting", tag, saddr, _match(oif, br, "!="), {"masquerade": None}))
    elif not network.internal:

        def dnat_to(key: dict[str, Any], addr_map: str, port_map: str) -> dict[str, Any]:
            lookup = {"addr": {"map": {"key": key, "data": f"@{addr_map}"}}}
            lookup["port"] = {"map": {"key": key, "data": f"@{port_map}"}}
            return {"dnat": {"family": "ip", **lookup}}

        # Bound to one host address first: it wins over a binding to every address of the same port.
        rules.append(t.rule(PUBLISHED, tag, dnat_to(_IP_PROTO_PORT, ipaddr, ipport)))
        rules.append(t.rule(PUBLISHED, tag, dnat_to(_PROTO_PORT, addr, port)))
        masquerade = {"masquerade": None}
        if network.masquerade:
            rules.append(
                t.rule(
                    "postrouting",
                    tag,
                    _match(_payload("ip", "saddr"), _prefix(subnet)),
                    _match(oif, br, "!="),
                    masquerade,
                )
            )
        # Host -> 127.0.0.1:published reaches the sandbox from a local address: masquerade it to the gateway.
        rules.append(t.rule("postrouting", tag, _match(oif, br), _fib_local("saddr"), masquerade))
        # A sandbox to itself, DNATed from one of its published host ports (the connection's original port).
        original_port = {"ct": {"key": "proto-dst", "dir": "original"}}
        pair = {"concat": [_payload("ip", "saddr"), _payload("ip", "daddr"), original_port]}
        for transport, hairpin in zip(_PROTOCOLS, hairpins, strict=True):
            protocol = _match(_meta("l4proto"), transport)
            rules.append(t.rule("postrouting", tag, _match(oif, br), protocol, _match(pair, f"@{hairpin}"), masquerade))
    return rules


def _inbound_rules(t: _Table, network: FirewallNetwork, *, guarded: bool) -> list[Command]:
    """The end of the network's forward rules (what else gets in from outside), and its raw loopback drop."""
    tag, br = network.tag, network.interface
    iif, oif = _meta("iifname"), _meta("oifname")
    accept, drop = {"accept": None}, {"drop": None}
    rules = []
    if network.routed and not network.internal:
        # Docker 28's routed mode: ICMP, and the published container ports at the sandboxes' own addresses.
        routed = network_set_names(_key(network))[-1]
        outside = (_match(oif, br), _match(iif, br, "!="))
        rules.append(t.rule("forward", tag, *outside, _match(_meta("l4proto"), "icmp"), accept))
        rules.append(t.rule("forward", tag, *outside, _match(_IP_PROTO_PORT, f"@{routed}"), accept))
    if not network.internal:
        if network.protected:
            # What a trusted host interface sends is let in; anything else routed into the bridge from
            # outside, not DNATed and no reply, is dropped below (Docker 28's "UNPUBLISHED PORT DROP").
            for trusted in network.trusted_interfaces:
                rules.append(t.rule("forward", tag, _match(iif, trusted), _match(oif, br), accept))
        else:
            # nat-unprotected: the network opted in to direct access on every port.
            rules.append(t.rule("forward", tag, _match(oif, br), accept))
    if guarded or network.protected:
        rules.append(t.rule("forward", tag, _match(oif, br), drop))
    if not network.internal:
        # A neighbour's packet to 127.0.0.1:PORT via the host must not be DNATed to a port published on loopback.
        loopback = _match(_payload("ip", "daddr"), _prefix(_LOOPBACK))
        rules.append(t.rule("raw", tag, _match(iif, "lo", "!="), loopback, drop))
    return rules


def bridge_element(table: str, network: FirewallNetwork) -> dict[str, Any]:
    """The network's bridge as an element of the shared ``bridges`` set."""
    return {"family": FAMILY, "table": table, "name": "bridges", "elem": [network.interface]}


# -- ports and links ---------------------------------------------------------------------------
def _host_ports(port: PortMapping) -> Iterator[tuple[int, int]]:
    host, container = port.host_port, port.container_port
    single = container.start == container.end
    for offset, host_port in enumerate(range(host.start, host.end + 1)):
        # A range maps onto an equal range port by port; a single container port takes every host port.
        yield host_port, container.start if single else container.start + offset


def port_elements(table: str, network: FirewallNetwork, ports: Iterable[PortMapping]) -> list[dict[str, Any]]:
    """The element bodies that publish ``ports`` (one per map and host port, hairpin included); none when internal.

    In a routed network, one element per container port at the sandbox's address: the host
    port and address are not used (Docker 28 ignores them too), and nothing is DNATed.
    """
    if network.internal:
        return []
    addr, port, ipaddr, ipport, hairpin_tcp, hairpin_udp, _, routed = network_set_names(_key(network))
    if network.routed:
        opened = {
            (str(m.container_ip), m.protocol, p)
            for m in ports
            for p in range(m.container_port.start, m.container_port.end + 1)
        }
        elem = [{"concat": list(key)} for key in sorted(opened)]
        return [{"family": FAMILY, "table": table, "name": routed, "elem": elem}] if elem else []
    hairpin = dict(zip(_PROTOCOLS, (hairpin_tcp, hairpin_udp), strict=True))
    elements: dict[str, list[Any]] = {name: [] for name in (addr, port, ipaddr, ipport, hairpin_tcp, hairpin_udp)}
    for mapping in ports:
        ip = str(mapping.container_ip)
        for host_port, container_port in _host_ports(mapping):
            if mapping.host_ip is None:
                key: dict[str, Any] = {"concat": [mapping.protocol, host_port]}
                elements[addr].append([key, ip])
                elements[port].append([key, container_port])
            else:
                key = {"concat": [str(mapping.host_ip), mapping.protocol, host_port]}
                elements[ipaddr].append([key, ip])
                elements[ipport].append([key, container_port])
            elements[hairpin[mapping.protocol]].append({"concat": [ip, ip, host_port]})
    return [{"family": FAMILY, "table": table, "name": name, "elem": elem} for name, elem in elements.items() if elem]


def link_elements(table: str, network: FirewallNetwork, link: LinkRule) -> list[dict[str, Any]]:
    """The element bodies of a legacy link's ports; none on an icc=true network (nothing is dropped there)."""
    if network.icc or not link.ports:
        return []
    links = network_set_names(_key(network))[-2]
    src, dst = str(link.source_ip), str(link.target_ip)
    elem = [{"concat": [src, dst, proto, port]} for proto, port in link.ports]
    return [{"family": FAMILY, "table": table, "name": links, "elem": elem}]
