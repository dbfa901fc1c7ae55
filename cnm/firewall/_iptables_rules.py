"""cnm's iptables rule layout, as plain values: what goes where, with no libiptc in sight.

:mod:`cnm.firewall.iptables` turns these values into libiptc entries. Keeping
the layout pure makes it readable next to Docker's (``--userland-proxy=false``
layout with cnm's own chain names) and testable without root.

Every rule carries a comment: ``cnm`` for the shared jumps and chain tails,
``cnm:<network id[:12]>`` for a network's rules, so cleanup finds exactly
cnm's rules and nothing else.
"""

from __future__ import annotations

import ipaddress
from typing import Literal, TypeAlias

import attrs

from cnm.firewall import FirewallNetwork, LinkRule, PortMapping

__all__ = [
    "CHAINS",
    "SHARED_TAG",
    "STAGE_1_JUMP",
    "TAG_PREFIX",
    "Block",
    "RuleSpec",
    "base_blocks",
    "link_blocks",
    "network_blocks",
    "port_blocks",
]

TableName: TypeAlias = Literal["filter", "nat"]
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

#: cnm's own chains per table, in the order they are created.
CHAINS: dict[TableName, tuple[str, ...]] = {
    "filter": (USER, FORWARD, CNM, ISOLATION_1, ISOLATION_2),
    "nat": (CNM, POSTROUTING),
}


@attrs.frozen
class RuleSpec:
    """One rule, as ``iptables -A CHAIN ...`` would spell it.

    Address and interface fields take a leading ``!`` for negation, as
    python-iptables does. ``matches`` hold ``(module, ((option, value), ...))``
    pairs in the order the rule lists them; the comment match is added last.
    """

    chain: str
    target: str
    comment: str
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
        for module, options in (*self.matches, ("comment", (("comment", self.comment),))):
            parts.append(f"-m {module}")
            parts.extend(f"--{name} {value}" for name, value in options)
        parts.append(f"-j {self.target}")
        parts.extend(f"--{name} {value}" for name, value in self.target_options)
        return " ".join(parts)


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


def _shared(chain: str, target: str, matches: tuple[tuple[str, Options], ...] = ()) -> RuleSpec:
    return RuleSpec(chain=chain, target=target, comment=SHARED_TAG, matches=matches)


#: The first rule of CNM-FORWARD; every network's forwarding block goes right after it.
STAGE_1_JUMP = _shared(FORWARD, ISOLATION_1)


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
    if not network.icc:
        # Appended after every network block, so that link ACCEPTs in CNM win (pitfalls A10).
        blocks.append(Block("filter", FORWARD, "append", (rule(FORWARD, "DROP", in_interface=br, out_interface=br),)))
    if not network.internal:
        nat = []
        if network.masquerade:
            nat.append(rule(POSTROUTING, "MASQUERADE", source=subnet, out_interface=f"!{br}"))
        # Host -> 127.0.0.1:published reaches the container from a local address; masquerade it
        # to the gateway so the reply comes back through the bridge (route_localnet, pitfalls A7).
        nat.append(rule(POSTROUTING, "MASQUERADE", out_interface=br, matches=(("addrtype", (("src-type", "LOCAL"),)),)))
        blocks.append(Block("nat", POSTROUTING, "top", tuple(nat)))
    return tuple(blocks)


def _ports(port_range: object) -> str:
    text = str(port_range)
    return text.replace("-", ":")


def _host(address: ipaddress.IPv4Address) -> str:
    return f"{address}/32"


def port_blocks(network: FirewallNetwork, port: PortMapping) -> tuple[Block, ...]:
    """The rules of one published port: forward accept, hairpin masquerade, DNAT.

    Internal networks publish nothing (Docker's ``setPerPortIptables`` returns early too).
    """
    if network.internal:
        return ()
    tag, br, proto, ip = network.tag, network.interface, port.protocol, port.container_ip
    container_ports = _ports(port.container_port)
    proto_match = ((proto, (("dport", container_ports),)),)
    accept = RuleSpec(
        chain=CNM,
        target="ACCEPT",
        comment=tag,
        destination=_host(ip),
        in_interface=f"!{br}",
        out_interface=br,
        protocol=proto,
        matches=proto_match,
    )
    hairpin = RuleSpec(
        chain=POSTROUTING,
        target="MASQUERADE",
        comment=tag,
        source=_host(ip),
        destination=_host(ip),
        protocol=proto,
        matches=proto_match,
    )
    host_ip = port.host_ip
    dnat = RuleSpec(
        chain=CNM,
        target="DNAT",
        comment=tag,
        destination=None if host_ip is None or host_ip.is_unspecified else _host(host_ip),
        protocol=proto,
        matches=((proto, (("dport", _ports(port.host_port)),)),),
        # "IP:C-D" maps a host range onto an equal container range; "IP:C" maps every host port to C.
        target_options=(("to-destination", f"{ip}:{port.container_port}"),),
    )
    return (
        Block("filter", CNM, "append", (accept,)),
        Block("nat", POSTROUTING, "append", (hairpin,)),
        Block("nat", CNM, "append", (dnat,)),
    )


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
