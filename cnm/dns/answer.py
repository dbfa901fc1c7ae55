"""What the resolver answers: the pure part, from the loaded networks to a reply or a forward.

Behaviour follows Docker's embedded DNS where the networks are concerned
(docs ``engine/network/dns.md``; moby ``libnetwork/resolver.go``):

* a sandbox sees the names of the networks it is on, and no others; a name is
  also found as ``<name>.<network>``;
* a legacy link's names (its alias, the target's hostname and name) are seen
  by the link's source only, and before the network's names, as Docker looks
  up a container's own aliases first;
* A and AAAA answers list every address of the name, in random order (so
  several sandboxes sharing an alias are round-robin), authoritative, TTL 600;
* a known name without an address of the asked family, or asked another
  type, gets an empty NOERROR and is not forwarded;
* PTR for a sandbox address gives one name, its first (the sandbox's name),
  as Docker gives one;
* everything else is forwarded to the sandbox's own servers, else its
  networks', else the host's; a sandbox only on internal networks gets
  nothing forwarded (SERVFAIL, as Docker answers with no upstream);
* a local UDP answer larger than the client takes is sent truncated (TC).

A query from an address the resolver does not know (the host itself, say)
is treated as coming from the network whose address it was sent to.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA

from cnm.dns.config import NetworkDNS
from cnm.types import IPAddress

__all__ = ["LOCAL_TTL", "MAX_UPSTREAMS", "Backend", "Forward", "Reply", "answer", "host_nameservers", "usable"]

LOCAL_TTL = 600
"""TTL of the answers from sandbox state (Docker's)."""
MAX_UPSTREAMS = 3
"""At most this many upstreams are tried, in order (as glibc and Docker do)."""


@attrs.frozen
class Reply:
    """Send these bytes back to the client."""

    wire: bytes


@attrs.frozen
class Forward:
    """Send the client's query to these upstreams in turn, and relay the first usable answer.

    ``failure`` is the reply to send if none answers usably (SERVFAIL).
    """

    servers: tuple[IPAddress, ...]
    failure: bytes


def host_nameservers(text: str) -> tuple[IPAddress, ...]:
    """The nameservers of a resolv.conf text (loopback ones too: the resolver runs in the host netns)."""
    out: list[IPAddress] = []
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["nameserver"] and len(parts) > 1:
            try:
                out.append(ipaddress.ip_address(parts[1].split("%", 1)[0]))
            except ValueError:
                continue
    return tuple(out)


class Backend:
    """The loaded networks, indexed for lookups. Immutable once built; a reload builds a new one."""

    def __init__(self, networks: Mapping[str, NetworkDNS], host_servers: Sequence[IPAddress] = ()) -> None:
        """Index ``networks``; ``host_servers`` are the upstreams when nothing else is set."""
        self.networks = dict(networks)
        self.host_servers = tuple(host_servers)
        self.by_source: dict[IPAddress, list[str]] = {}
        self.names: dict[str, dict[str, list[IPAddress]]] = {}
        self.reverse: dict[str, dict[IPAddress, list[str]]] = {}
        self.own_servers: dict[IPAddress, tuple[IPAddress, ...]] = {}
        self.listen: dict[IPAddress, str] = {}
        # network -> source sandbox id -> name -> the link targets' addresses
        self.links: dict[str, dict[str, dict[str, list[IPAddress]]]] = {}
        self.sandbox_of: dict[IPAddress, str] = {}
        # A sandbox's id is the same on every network it is on (aardvark-dns's container id): each
        # of its addresses sees the names of all its networks, whichever address it asks from.
        sandbox_networks: dict[str, list[str]] = {}
        sandbox_addresses: dict[str, list[IPAddress]] = {}
        for net in self.networks.values():
            for address in net.listen:
                self.listen[address] = net.name
            names = self.names.setdefault(net.name, {})
            reverse = self.reverse.setdefault(net.name, {})
            for entry in net.entries:
                nets = sandbox_networks.setdefault(entry.id, [])
                if net.name not in nets:
                    nets.append(net.name)
                sandbox_addresses.setdefault(entry.id, []).extend(entry.addresses)
                for address in entry.addresses:
                    known = reverse.setdefault(address, [])
                    known += [n for n in entry.names if n not in known]
                    if entry.dns_servers:
                        self.own_servers[address] = entry.dns_servers
                for name in entry.names:
                    names.setdefault(name, []).extend(entry.addresses)
            links = self.links.setdefault(net.name, {})
            for link in net.links:
                own = links.setdefault(link.id, {})
                for name in link.names:
                    targets = own.setdefault(name, [])
                    targets += [a for a in link.addresses if a not in targets]
        for sandbox, addrs in sandbox_addresses.items():
            for address in addrs:
                self.by_source[address] = sandbox_networks[sandbox]
                self.sandbox_of[address] = sandbox

    @property
    def listen_addresses(self) -> set[IPAddress]:
        """Every address the resolver must listen on."""
        return set(self.listen)

    def networks_of(self, source: IPAddress, local: IPAddress) -> list[str]:
        """The networks whose names ``source`` may see (asking on ``local``)."""
        nets = self.by_source.get(source)
        if nets:
            return nets
        home = self.listen.get(local)
        return [home] if home else []

    def lookup(self, nets: Iterable[str], qname: str, source: IPAddress | None = None) -> list[IPAddress] | None:
        """The addresses of ``qname`` (lowercase, no trailing dot) on ``nets``; None if unknown there.

        The links of the sandbox at ``source`` come first: a name one of its
        links gives is answered from its links only.
        """
        nets = list(nets)
        sandbox = self.sandbox_of.get(source) if source is not None else None
        if sandbox is not None:
            found = self._find(nets, qname, lambda net: self.links.get(net, {}).get(sandbox, {}))
            if found is not None:
                return found
        return self._find(nets, qname, lambda net: self.names.get(net, {}))

    @staticmethod
    def _find(
        nets: Iterable[str], qname: str, table_of: Callable[[str], Mapping[str, list[IPAddress]]]
    ) -> list[IPAddress] | None:
        found: list[IPAddress] | None = None
        for net in nets:
            table = table_of(net)
            hits = table.get(qname)
            if hits is None and qname.endswith("." + net):
                hits = table.get(qname[: -len(net) - 1])
            if hits is not None:
                found = (found or []) + [a for a in hits if a not in (found or [])]
        return found

    def reverse_lookup(self, nets: Iterable[str], address: IPAddress) -> list[str] | None:
        """The names of ``address`` on ``nets``, or None."""
        for net in nets:
            names = self.reverse.get(net, {}).get(address)
            if names:
                return names
        return None

    def upstreams(self, source: IPAddress, nets: Sequence[str]) -> tuple[IPAddress, ...]:
        """Where to forward for ``source``: empty if it is only on internal networks."""
        if nets and all(self.networks[n].internal for n in nets if n in self.networks):
            return ()
        own = self.own_servers.get(source)
        if own:
            return own[:MAX_UPSTREAMS]
        scoped: list[IPAddress] = []
        for net in nets:
            network = self.networks.get(net)
            if network is not None and not network.internal:
                scoped += [s for s in network.dns_servers if s not in scoped]
        return tuple(scoped or self.host_servers)[:MAX_UPSTREAMS]


def _max_udp(query: dns.message.Message) -> int:
    return max(512, query.payload) if query.edns >= 0 else 512


def _finish(query: dns.message.Message, response: dns.message.Message, tcp: bool) -> bytes:
    if query.flags & dns.flags.RD:
        response.flags |= dns.flags.RA
    limit = 65535 if tcp else _max_udp(query)
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        response.answer = []
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)


def _address_of_reverse(qname: dns.name.Name) -> IPAddress | None:
    try:
        return ipaddress.ip_address(dns.reversename.to_address(qname))
    except (dns.exception.SyntaxError, ValueError):
        return None


def _raw_error(wire: bytes, rcode: int) -> bytes:
    # Built from the raw header, so even a query dnspython cannot parse gets an answer.
    if len(wire) < 12 or wire[2] & 0x80:  # too short, or itself a response: drop it
        return b""
    flags = int.from_bytes(wire[2:4], "big")
    flags = (flags | 0x8000 | 0x0080) & ~0x000F | rcode  # QR, RA, the rcode
    question_end = _question_end(wire)
    qd = 1 if question_end else 0
    header = wire[0:2] + flags.to_bytes(2, "big") + qd.to_bytes(2, "big") + b"\x00\x00\x00\x00\x00\x00"
    return header + (wire[12:question_end] if question_end else b"")


def _question_end(wire: bytes) -> int:
    if int.from_bytes(wire[4:6], "big") != 1:
        return 0
    i = 12
    while i < len(wire):
        length = wire[i]
        if length == 0:
            end = i + 5
            return end if end <= len(wire) else 0
        if length & 0xC0:
            return 0
        i += length + 1
    return 0


def _local(
    backend: Backend, query: dns.message.Message, nets: list[str], source: IPAddress, *, tcp: bool
) -> Reply | None:
    """The answer from the networks' names, or None if the name is not theirs."""
    question = query.question[0]
    if question.rdclass != dns.rdataclass.IN:
        return None
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    if question.rdtype == dns.rdatatype.PTR:
        address = _address_of_reverse(question.name)
        names = backend.reverse_lookup(nets, address) if address is not None else None
        if not names:
            return None
        response.answer.append(dns.rrset.from_text(question.name, LOCAL_TTL, "IN", "PTR", names[0] + "."))
        return Reply(_finish(query, response, tcp))
    addresses = backend.lookup(nets, question.name.to_text(omit_final_dot=True).lower(), source)
    if addresses is None:
        return None
    if question.rdtype != dns.rdatatype.ANY:
        family = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6}.get(question.rdtype)
        addresses = [a for a in addresses if a.version == family]
    addresses = random.sample(addresses, len(addresses))  # round-robin: a new order every time
    for version, rdtype, rdcls in ((4, dns.rdatatype.A, A), (6, dns.rdatatype.AAAA, AAAA)):
        rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, rdtype)
        for a in addresses:
            if a.version == version:
                # Built from the address, not from text: a third of the time of an answer.
                rrset.add(rdcls(dns.rdataclass.IN, rdtype, str(a)), LOCAL_TTL)
        if rrset:
            response.answer.append(rrset)
    return Reply(_finish(query, response, tcp))


def answer(backend: Backend, wire: bytes, source: IPAddress, local: IPAddress, *, tcp: bool) -> Reply | Forward | None:
    """What to do with one query ``wire`` from ``source``, received on ``local``.

    Returns a :class:`Reply`, a :class:`Forward`, or None to drop it (not a
    query at all).
    """
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        error = _raw_error(wire, dns.rcode.FORMERR)
        return Reply(error) if error else None
    if query.flags & dns.flags.QR:
        return None
    if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.NOTIMP)
        return Reply(_finish(query, response, tcp))
    nets = backend.networks_of(source, local)
    reply = _local(backend, query, nets, source, tcp=tcp)
    if reply is not None:
        return reply
    servers = backend.upstreams(source, nets)
    failure = _raw_error(wire, dns.rcode.SERVFAIL)  # from the header: most forwards never need it
    return Forward(servers, failure) if servers else Reply(failure)


def usable(reply: bytes, query_id: bytes) -> bool:
    """True if an upstream's ``reply`` ends the search (not SERVFAIL/REFUSED, the id matches)."""
    if len(reply) < 12 or reply[0:2] != query_id or not reply[2] & 0x80:
        return False
    return reply[3] & 0x0F not in (dns.rcode.SERVFAIL, dns.rcode.REFUSED)
