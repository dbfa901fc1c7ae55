"""cnm's iptables rule layout, as plain values: what goes where, with no libiptc in sight.

:mod:`cnm.firewall.iptables` turns these values into libiptc entries. Keeping
the layout pure makes it readable next to Docker's (``--userland-proxy=false``
layout with cnm's own chain names) and testable without root.

Ownership is always readable from the table, so cleanup finds exactly cnm's
rules and nothing else: a rule in a shared chain carries a comment (``cnm`` for
the shared jumps and chain tails, ``cnm:<network id[:12]>`` for a network's
rules); a published port's rules carry none and live in the network's own nat
chains instead (``CNM-DNAT-<id[:12]>``, ``CNM-HAIRPIN-<id[:12]>``), whose names
say whose they are. A ``routed`` network (no NAT) has neither: its published
container ports are bare ACCEPTs in its own filter chain ``CNM-ROUTED-<id[:12]>``,
jumped from CNM. A comment is a match the kernel checks and copies for every
rule of the table on every commit (about 1 µs per rule, a third of a port's
cost); those chains keep the per-port rules bare.
"""

from __future__ import annotations

import ipaddress
from typing import Literal, TypeAlias

import attrs

from cnm.firewallapi import FirewallNetwork, LinkRule, PortMapping

__all__ = [
    "CHAINS",
    "DNAT_PREFIX",
    "HAIRPIN_PREFIX",
    "ROUTED_PREFIX",
    "SHARED_TAG",
    "STAGE_1_JUMP",
    "TAG_PREFIX",
    "Block",
    "PortRules",
    "RuleSpec",
    "base_blocks",
    "link_blocks",
    "network_blocks",
    "network_chain_tag",
    "network_chains",
    "port_chain_blocks",
    "port_rules",
]

TableName: TypeAlias = Literal["filter", "nat", "raw"]
#: Where a block goes: ``top`` of the chain, ``after-first`` (right after the
#: chain's first rule, the stage-1 jump of CNM-FORWARD), or ``append``.
Where: TypeAlias = Literal["top", "after-first", "append"]
Options: TypeAlias = tuple[tuple[str, str], ...]

SHARED_TAG = "cnm"
TAG_PREFIX = "cnm:"

USER = "CNM-USER"
FORWARD = "CNM-FORWARD"
CNM = "CNM"
ISOLATION_1 = "CNM-ISOLATION-STAGE-1"
ISOLATION_2 = "CNM-ISOLATION-STAGE-2"
POSTROUTING = "CNM-POSTROUTING"
RAW = "CNM-RAW"
#: Every loopback address: a packet to one arriving on another interface than lo is dropped before
#: nat PREROUTING could DNAT it to a port published on 127.0.0.1 (route_localnet, Docker 28's raw drop).
LOOPBACK = "127.0.0.0/8"

#: cnm's own chains per table, in the order they are created.
CHAINS: dict[TableName, tuple[str, ...]] = {
    "filter": (USER, FORWARD, CNM, ISOLATION_1, ISOLATION_2),
    "nat": (CNM, POSTROUTING),
    "raw": (RAW,),
}
#: A network's own nat chains: its published ports' DNATs (jumped from CNM) and their
#: hairpin masquerades (jumped from CNM-POSTROUTING), each name ending in the network id[:12].
DNAT_PREFIX = "CNM-DNAT-"
HAIRPIN_PREFIX = "CNM-HAIRPIN-"
#: A routed network's own filter chain: one ACCEPT per published container port, jumped from CNM.
ROUTED_PREFIX = "CNM-ROUTED-"
_NETWORK_CHAIN_PREFIXES = (DNAT_PREFIX, HAIRPIN_PREFIX, ROUTED_PREFIX)
_ID_LENGTH = 12


@attrs.frozen
class RuleSpec:
    """One rule, as ``iptables -A CHAIN ...`` would spell it.

    Address and interface fields take a leading ``!`` for negation, as
    python-iptables does. ``matches`` hold ``(module, ((option, value), ...))``
    pairs in the order the rule lists them; the comment match is added last,
    unless ``comment`` is None (a rule in a network's own chain).
    """

    chain: str
    target: str
    comment: str | None
    source: str | None = None
    destination: str | None = None
    in_interface: str | None = None
    out_interface: str | None = None
    protocol: str | None = None
    matches: tuple[tuple[str, Options], ...] = ()
    target_options: Options = ()

    def __str__(self) -> str:
        # The iptables-save spelling, so that error messages can be pasted into a shell.
        parts = [f"-A {self.chain}"]
        for flag, value in (
            ("-s", self.source),
            ("-d", self.destination),
            ("-i", self.in_interface),
            ("-o", self.out_interface),
            ("-p", self.protocol),
        ):
            if value is not None:
                parts.append(f"! {flag} {value[1:]}" if value.startswith("!") else f"{flag} {value}")
        for module, options in self.all_matches:
            parts.append(f"-m {module}")
            parts.extend(f"--{name} {value}" for name, value in options)
        parts.append(f"-j {self.target}")
        parts.extend(f"--{name} {value}" for name, value in self.target_options)
        return " ".join(parts)

    @property
    def all_matches(self) -> tuple[tuple[str, Options], ...]:
        """``matches`` with the comment match, if any, last."""
        if self.comment is None:
            return self.matches
        return (*self.matches, ("comment", (("comment", self.comment),)))


@attrs.frozen
class Block:
    """Rules that go together into one chain at one place.

    ``top``/``after-first`` blocks are kept contiguous and in order: if only
    part of the block is found, the backend removes it and inserts it whole.
    ``append`` rules are each added at the end when missing.
    """

    table: TableName
    chain: str
    where: Where
    rules: tuple[RuleSpec, ...]


@attrs.frozen
class PortRules:
    """One published port's rules, in the network's own chains of ``table``.

    ``main`` is the port (its DNAT in nat, or in a routed network its ACCEPT in
    filter): publishing adds the rules only when ``main`` is missing, and
    withdrawing removes the hairpin only with it. Two ports of one sandbox and
    protocol have equal hairpin rules, one copy each, so withdrawing one port
    leaves the other's hairpin in place. A routed network has no hairpin (no NAT).
    """

    table: TableName
    main: RuleSpec
    hairpin: RuleSpec | None = None


def _shared(chain: str, target: str, matches: tuple[tuple[str, Options], ...] = ()) -> RuleSpec:
    return RuleSpec(chain=chain, target=target, comment=SHARED_TAG, matches=matches)


#: The first rule of CNM-FORWARD; every network's forwarding block goes right after it.
STAGE_1_JUMP = _shared(FORWARD, ISOLATION_1)


def network_chains(network: FirewallNetwork) -> tuple[str, ...]:
    """The network's own chains its ports go to: nat DNAT and hairpin, or a routed network's filter chain.

    None for an internal network, which publishes nothing.
    """
    if network.internal:
        return ()
    key = network.id[:_ID_LENGTH]
    if network.routed:
        return (ROUTED_PREFIX + key,)
    return (DNAT_PREFIX + key, HAIRPIN_PREFIX + key)


def network_chain_tag(chain: str) -> str | None:
    """The tag of the network that owns ``chain`` (``cnm:<id[:12]>``), None if no network does."""
    for prefix in _NETWORK_CHAIN_PREFIXES:
        key = chain.removeprefix(prefix)
        if key != chain and len(key) == _ID_LENGTH:
            return TAG_PREFIX + key
    return None


def base_blocks(table: TableName) -> tuple[Block, ...]:
    """The shared jumps and chain tails of ``table``, independent of any network."""
    if table == "filter":
        return (
            # CNM-USER is the hook users own (pitfalls A8): jumped first, its tail only is cnm's.
            Block("filter", "FORWARD", "top", (_shared("FORWARD", USER), _shared("FORWARD", FORWARD))),
            Block("filter", USER, "append", (_shared(USER, "RETURN"),)),
            Block("filter", FORWARD, "top", (STAGE_1_JUMP,)),
            Block("filter", ISOLATION_1, "append", (_shared(ISOLATION_1, "RETURN"),)),
            Block("filter", ISOLATION_2, "append", (_shared(ISOLATION_2, "RETURN"),)),
        )
    if table == "raw":
        return (
            Block("raw", "PREROUTING", "top", (_shared("PREROUTING", RAW),)),
            Block("raw", RAW, "append", (_shared(RAW, "RETURN"),)),
        )
    local = (("addrtype", (("dst-type", "LOCAL"),)),)
    return (
        Block("nat", "PREROUTING", "append", (_shared("PREROUTING", CNM, matches=local),)),
        # No "! -d 127.0.0.0/8": cnm runs no userland proxy, so host -> 127.0.0.1:published is DNATed here.
        Block("nat", "OUTPUT", "append", (_shared("OUTPUT", CNM, matches=local),)),
        Block("nat", "POSTROUTING", "append", (_shared("POSTROUTING", POSTROUTING),)),
    )


def network_blocks(network: FirewallNetwork) -> tuple[Block, ...]:
    """The network-level rules: forwarding, isolation, icc, internal, masquerade."""
    tag, br, subnet = network.tag, network.interface, str(network.subnet)

    def rule(
        chain: str,
        target: str,
        *,
        source: str | None = None,
        destination: str | None = None,
        in_interface: str | None = None,
        out_interface: str | None = None,
        matches: tuple[tuple[str, Options], ...] = (),
    ) -> RuleSpec:
        return RuleSpec(
            chain=chain,
            target=target,
            comment=tag,
            source=source,
            destination=destination,
            in_interface=in_interface,
            out_interface=out_interface,
            matches=matches,
        )

    established = (("conntrack", (("ctstate", "RELATED,ESTABLISHED"),)),)
    forward = [
        rule(FORWARD, "ACCEPT", out_interface=br, matches=established),
        rule(FORWARD, CNM, out_interface=br),
    ]
    if not network.internal:
        forward.append(rule(FORWARD, "ACCEPT", in_interface=br, out_interface=f"!{br}"))
    if network.icc:
        forward.append(rule(FORWARD, "ACCEPT", in_interface=br, out_interface=br))
    isolation = []
    if network.internal:
        isolation += [
            rule(ISOLATION_1, "DROP", source=f"!{subnet}", out_interface=br),
            rule(ISOLATION_1, "DROP", destination=f"!{subnet}", in_interface=br),
        ]
    isolation.append(rule(ISOLATION_1, ISOLATION_2, in_interface=br, out_interface=f"!{br}"))
    blocks = [
        Block("filter", FORWARD, "after-first", tuple(forward)),
        Block("filter", ISOLATION_1, "top", tuple(isolation)),
        Block("filter", ISOLATION_2, "top", (rule(ISOLATION_2, "DROP", out_interface=br),)),
    ]
    if not network.internal:
        blocks.append(_inbound_block(network))
        # A neighbour's packet to 127.0.0.1:PORT via the host must not be DNATed to a port published on loopback.
        loopback = rule(RAW, "DROP", destination=LOOPBACK, in_interface="!lo")
        blocks.append(Block("raw", RAW, "top", (loopback,)))
    if not network.icc:
        # Appended after every network block, so that link ACCEPTs in CNM win (pitfalls A10).
        blocks.append(Block("filter", FORWARD, "append", (rule(FORWARD, "DROP", in_interface=br, out_interface=br),)))
    if not network.internal:
        nat = []
        if network.masquerade:
            nat.append(rule(POSTROUTING, "MASQUERADE", source=subnet, out_interface=f"!{br}"))
        if not network.routed:
            # Host -> 127.0.0.1:published reaches the container from a local address; masquerade it
            # to the gateway so the reply comes back through the bridge (route_localnet, pitfalls A7).
            # A routed network DNATs nothing, so nothing reaches it from 127.0.0.1.
            local = (("addrtype", (("src-type", "LOCAL"),)),)
            nat.append(rule(POSTROUTING, "MASQUERADE", out_interface=br, matches=local))
        if nat:
            blocks.append(Block("nat", POSTROUTING, "top", tuple(nat)))
        if not network.routed:  # a routed network's jump is in its inbound block, placed above
            blocks += port_chain_blocks(network)
    return tuple(blocks)


def _inbound_block(network: FirewallNetwork) -> Block:
    """The network's block at the top of CNM: what gets into its bridge from outside it."""
    tag, br = network.tag, network.interface

    def rule(
        target: str,
        *,
        in_interface: str | None = None,
        protocol: str | None = None,
        matches: tuple[tuple[str, Options], ...] = (),
    ) -> RuleSpec:
        return RuleSpec(
            chain=CNM,
            target=target,
            comment=tag,
            in_interface=in_interface or f"!{br}",
            out_interface=br,
            protocol=protocol,
            matches=matches,
        )

    inbound = []
    if network.routed:
        # Docker 28's routed mode: ICMP, and each published container port at the sandbox's own
        # address (the ACCEPTs of the network's own chain; publishing adds one there), nothing DNATed.
        inbound.append(rule("ACCEPT", protocol="icmp"))
        inbound.append(rule(network_chains(network)[0]))
    else:
        # Every published port at once: a connection DNATed into the network from outside its bridge
        # (Docker writes one ACCEPT per port here). Publishing then never touches the filter table.
        inbound.append(rule("ACCEPT", matches=(("conntrack", (("ctstate", "DNAT"),)),)))
    if network.protected:
        # Anything else routed into the bridge from outside is dropped, whatever FORWARD's policy
        # (Docker 28's "! -i br -o br -j DROP"), but from the interfaces the network trusts.
        inbound += [rule("ACCEPT", in_interface=i) for i in network.trusted_interfaces]
        inbound.append(rule("DROP"))
    else:
        # nat-unprotected: direct access on every port, said here rather than left to FORWARD's policy.
        inbound.append(rule("ACCEPT"))
    # One block at the top, kept whole and in order (its ACCEPTs before its DROP) even if a rule of it
    # is deleted by hand: appended rules would come back after the DROP. Each network's rules match
    # only its own bridge as -o, and links' ACCEPTs only -i and -o it, so the order between them is free.
    return Block("filter", CNM, "top", tuple(inbound))


def port_chain_blocks(network: FirewallNetwork) -> tuple[Block, ...]:
    """The jumps into the network's own chains; placing them creates the chains.

    Part of :func:`network_blocks`; publishing a port places them again (a cheap
    check when present), so a port never lands in a chain nothing jumps to.
    A routed network's jump is part of its block in CNM, placed again whole.
    """
    chains = network_chains(network)
    if not chains:
        return ()
    if network.routed:
        return (_inbound_block(network),)
    dnat, hairpin = chains
    # Only a sandbox's own traffic hairpins, and it leaves through the bridge.
    to_hairpin = RuleSpec(chain=POSTROUTING, target=hairpin, comment=network.tag, out_interface=network.interface)
    return (
        Block("nat", CNM, "append", (RuleSpec(chain=CNM, target=dnat, comment=network.tag),)),
        Block("nat", POSTROUTING, "append", (to_hairpin,)),
    )


def _ports(port_range: object) -> str:
    text = str(port_range)
    return text.replace("-", ":")


def _host(address: ipaddress.IPv4Address) -> str:
    return f"{address}/32"


def port_rules(network: FirewallNetwork, port: PortMapping) -> PortRules | None:
    """The rules of one published port; None on an internal network, which publishes nothing.

    They go to the network's own chains, without a comment. Normally both go to the
    nat table, and the filter side is the network's one conntrack ACCEPT
    (:func:`network_blocks`). In a routed network the port is one filter ACCEPT of
    the container port at the sandbox's address; the host port and address are not
    used (Docker 28 ignores them too), and nothing is DNATed. Docker's
    ``setPerPortIptables`` returns early on internal networks too.
    """
    chains = network_chains(network)
    if not chains:
        return None
    proto, ip = port.protocol, port.container_ip
    if network.routed:
        accept = RuleSpec(
            chain=chains[0],
            target="ACCEPT",
            comment=None,
            destination=_host(ip),
            protocol=proto,
            matches=((proto, (("dport", _ports(port.container_port)),)),),
        )
        return PortRules(table="filter", main=accept)
    dnat_chain, hairpin_chain = chains
    # Masquerade a sandbox reaching its own published port (DNATed back to itself), so its reply goes
    # through the host and is un-DNATed. Another sandbox going through the host's port keeps its address,
    # as in Docker. Docker's rule also matches the container port; a packet from a sandbox to itself only
    # crosses the host when a DNAT sent it back, so the address pair is enough, and the port match would
    # cost the kernel a match per rule on every commit of the table.
    hairpin = RuleSpec(
        chain=hairpin_chain, target="MASQUERADE", comment=None, source=_host(ip), destination=_host(ip), protocol=proto
    )
    host_ip = port.host_ip
    dnat = RuleSpec(
        chain=dnat_chain,
        target="DNAT",
        comment=None,
        destination=None if host_ip is None or host_ip.is_unspecified else _host(host_ip),
        protocol=proto,
        matches=((proto, (("dport", _ports(port.host_port)),)),),
        # "IP:C-D" maps a host range onto an equal container range; "IP:C" maps every host port to C.
        target_options=(("to-destination", f"{ip}:{port.container_port}"),),
    )
    return PortRules(table="nat", main=dnat, hairpin=hairpin)


def link_blocks(network: FirewallNetwork, link: LinkRule) -> tuple[Block, ...]:
    """A legacy link's reciprocal ACCEPT pairs; none on an icc=true network (nothing is dropped there)."""
    if network.icc or not link.ports:
        return ()
    tag, br = network.tag, network.interface
    src, dst = _host(link.source_ip), _host(link.target_ip)
    rules = []
    for proto, port in link.ports:
        for source, destination, direction in ((src, dst, "dport"), (dst, src, "sport")):
            rules.append(
                RuleSpec(
                    chain=CNM,
                    target="ACCEPT",
                    comment=tag,
                    source=source,
                    destination=destination,
                    in_interface=br,
                    out_interface=br,
                    protocol=proto,
                    matches=((proto, ((direction, str(port)),)),),
                )
            )
    return (Block("filter", CNM, "append", tuple(rules)),)
