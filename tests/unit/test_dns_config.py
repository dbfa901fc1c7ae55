"""cnm.dns without root: the config format, the atomic directory, and what the resolver answers."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import attrs
import dns.flags
import dns.message
import dns.rcode
import dns.reversename
import pytest

from cnm.dns.answer import Backend, Forward, Reply, answer, host_nameservers, usable
from cnm.dns.config import GENERATION_FILE, ConfigDir, Entry, NetworkDNS
from cnm.errors import InvalidConfig
from cnm.resolvconf import render_resolver

IP = ipaddress.ip_address
GW = IP("10.5.0.1")


def net(*entries: Entry, internal: bool = False, servers: tuple[str, ...] = ()) -> NetworkDNS:
    return NetworkDNS(name="net1", listen=(GW,), entries=entries, internal=internal, dns_servers=servers)


WEB = Entry(id="sb-web", names=("web", "WWW."), ipv4=("10.5.0.2",), ipv6=("fd00::2",))
DB = Entry(id="sb-db", names=("db1", "db"), ipv4=("10.5.0.3",))
DB2 = Entry(id="sb-db2", names=("db2", "db"), ipv4=("10.5.0.4",), dns_servers=("9.9.9.9",))


def test_render_is_aardvarks_format_and_parses_back() -> None:
    network = net(WEB, DB, DB2, servers=("1.1.1.1",))
    assert network.render() == (
        "10.5.0.1 1.1.1.1\nsb-web 10.5.0.2 fd00::2 web,www\nsb-db 10.5.0.3  db1,db\nsb-db2 10.5.0.4  db2,db 9.9.9.9\n"
    )
    assert NetworkDNS.parse("net1", network.render()) == network
    internal = net(WEB, internal=True)
    assert internal.filename == "net1%int"
    assert NetworkDNS.parse("net1%int", internal.render()) == internal


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"id": "a b", "names": ("x",), "ipv4": ("10.0.0.2",)}, "sandbox id"),
        ({"id": "a", "names": ("x y",), "ipv4": ("10.0.0.2",)}, "not a valid DNS name"),
        ({"id": "a", "names": ("x,y",), "ipv4": ("10.0.0.2",)}, "not a valid DNS name"),
        ({"id": "a", "names": (), "ipv4": ("10.0.0.2",)}, "no DNS name"),
        ({"id": "a", "names": ("x",)}, "no address"),
        ({"id": "a", "names": ("x",), "ipv4": ("fd00::1",)}, "non-IPv4"),
        ({"id": "a", "names": ("x",), "ipv4": ("nope",)}, "not an IP address"),
    ],
)
def test_entries_are_validated(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        Entry(**kwargs)


def test_malformed_files_are_refused() -> None:
    with pytest.raises(InvalidConfig, match="empty"):
        NetworkDNS.parse("n", "")
    with pytest.raises(InvalidConfig, match="must be"):
        NetworkDNS.parse("n", "10.0.0.1\nonly three fields\n")
    with pytest.raises(InvalidConfig, match="twice"):
        net(DB, DB)


def test_config_dir_replaces_atomically_and_counts(tmp_path: Any) -> None:
    cfg = ConfigDir(str(tmp_path / "cfg"))
    assert cfg.generation == 0
    cfg.write(net(WEB))
    cfg.write(net(WEB, DB))
    assert cfg.generation == 2
    assert cfg.read() == {"net1": net(WEB, DB)}
    cfg.write(net(WEB, internal=True))  # the plain file goes, the %int one replaces it
    assert cfg.files() == ["net1%int"]
    assert sorted(os.listdir(cfg.path)) == sorted([".lock", GENERATION_FILE, "net1%int"])
    assert cfg.remove("net1") is True
    assert cfg.remove("net1") is False
    assert cfg.read() == {}
    assert cfg.generation == 5


def test_with_and_without_entry() -> None:
    network = net(WEB).with_entry(DB).with_entry(Entry(id="sb-db", names=("db1",), ipv4=("10.5.0.9",)))
    assert [e.id for e in network.entries] == ["sb-web", "sb-db"]
    assert network.entries[1].ipv4 == (IP("10.5.0.9"),)
    assert network.without_entry("sb-web").without_entry("absent").entries == network.entries[1:]


def test_link_files_sit_beside_aardvarks_files(tmp_path: Any) -> None:
    # A link of web's to db under "sql": the line names web (the source) and db's address.
    link = Entry(id="sb-web", names=("sql", "db1"), ipv4=("10.5.0.3",))
    network = attrs.evolve(net(WEB, DB), links=(link,))
    cfg = ConfigDir(str(tmp_path / "cfg"))
    cfg.write(network)
    assert cfg.text("net1") == net(WEB, DB).render()  # the network file is aardvark-dns's, unchanged
    assert cfg.links_text("net1") == "sb-web 10.5.0.3  sql,db1\n"
    assert cfg.files() == ["net1"]
    assert cfg.read() == {"net1": network}
    assert network.without_entry("sb-web").links == ()
    cfg.write(net(WEB, DB))  # the link went: so does its file
    assert cfg.links_text("net1") is None
    cfg.write(network)
    assert cfg.remove("net1") is True
    assert cfg.links_text("net1") is None


def test_link_names_are_the_sources_only() -> None:
    other = Entry(id="sb-other", names=("other",), ipv4=("10.5.0.5",))
    link = Entry(id="sb-web", names=("sql", "db1"), ipv4=("10.5.0.3",))
    shadow = Entry(id="sb-web", names=("other",), ipv4=("10.5.0.3",))  # an alias that is another's name
    backend = Backend({"net1": attrs.evolve(net(WEB, DB, other), links=(link, shadow))}, [IP("192.0.2.53")])
    assert [item.to_text() for item in reply(backend, "sql").answer[0]] == ["10.5.0.3"]
    assert [item.to_text() for item in reply(backend, "sql.net1").answer[0]] == ["10.5.0.3"]
    assert [item.to_text() for item in reply(backend, "other").answer[0]] == ["10.5.0.3"]  # the link first
    assert isinstance(ask(backend, "sql", source="10.5.0.5"), Forward)  # not the source: not known
    assert [item.to_text() for item in reply(backend, "other", source="10.5.0.5").answer[0]] == ["10.5.0.5"]
    assert isinstance(ask(backend, "sql", source="10.5.0.1"), Forward)  # the host: no links


def ask(backend: Backend, name: str, rdtype: str = "A", source: str = "10.5.0.2", *, tcp: bool = False) -> Any:
    return answer(backend, dns.message.make_query(name, rdtype).to_wire(), IP(source), GW, tcp=tcp)


def reply(backend: Backend, *args: Any, **kwargs: Any) -> dns.message.Message:
    result = ask(backend, *args, **kwargs)
    assert isinstance(result, Reply)
    return dns.message.from_wire(result.wire)


def test_local_answers() -> None:
    backend = Backend({"net1": net(WEB, DB, DB2)}, [IP("192.0.2.53")])
    r = reply(backend, "db")
    assert sorted(item.to_text() for item in r.answer[0]) == ["10.5.0.3", "10.5.0.4"]
    assert r.flags & dns.flags.AA
    assert r.flags & dns.flags.RA
    assert [item.to_text() for item in reply(backend, "www.net1", "AAAA").answer[0]] == ["fd00::2"]
    empty = reply(backend, "db1", "AAAA")
    assert empty.rcode() == dns.rcode.NOERROR
    assert not empty.answer
    assert not reply(backend, "db1", "MX").answer
    ptr = reply(backend, dns.reversename.from_address("fd00::2").to_text(), "PTR")
    assert [item.to_text() for item in ptr.answer[0]] == ["web."]


def test_forwarding_targets() -> None:
    backend = Backend({"net1": net(WEB, DB, DB2)}, [IP("192.0.2.53")])
    forward = ask(backend, "example.com")
    assert isinstance(forward, Forward)
    assert forward.servers == (IP("192.0.2.53"),)
    assert dns.message.from_wire(forward.failure).rcode() == dns.rcode.SERVFAIL
    own = ask(backend, "example.com", source="10.5.0.4")
    assert own.servers == (IP("9.9.9.9"),)
    scoped = Backend({"net1": net(WEB, servers=("1.1.1.1", "8.8.8.8"))}, [IP("192.0.2.53")])
    assert ask(scoped, "example.com").servers == (IP("1.1.1.1"), IP("8.8.8.8"))
    # An unknown PTR is forwarded too.
    assert isinstance(ask(backend, "1.2.0.192.in-addr.arpa", "PTR"), Forward)


def test_internal_networks_forward_nothing() -> None:
    backend = Backend({"net1": net(WEB, DB, internal=True)}, [IP("192.0.2.53")])
    assert reply(backend, "db1").answer
    assert reply(backend, "example.com").rcode() == dns.rcode.SERVFAIL


def test_isolation_and_unknown_sources() -> None:
    other = NetworkDNS(name="net2", listen=("10.6.0.1",), entries=(Entry(id="sb-x", names=("x",), ipv4=("10.6.0.2",)),))
    backend = Backend({"net1": net(WEB), "net2": other})
    assert isinstance(ask(backend, "x"), Reply)  # SERVFAIL: no upstream at all
    assert not reply(backend, "x").answer
    # The host itself (unknown source) sees the names of the network it asks on.
    assert reply(backend, "web", source="10.5.0.1").answer


def test_udp_truncation_and_garbage() -> None:
    many = tuple(Entry(id=f"sb{i}", names=(f"n{i}", "many"), ipv4=(f"10.5.1.{i}",)) for i in range(1, 60))
    backend = Backend({"net1": net(*many)})
    udp = reply(backend, "many")
    assert udp.flags & dns.flags.TC
    assert not udp.answer
    tcp = reply(backend, "many", tcp=True)
    assert len(tcp.answer[0]) == 59
    assert answer(backend, b"\x12", IP("10.5.0.2"), GW, tcp=False) is None
    formerr = answer(backend, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05", IP("10.5.0.2"), GW, tcp=False)
    assert isinstance(formerr, Reply)
    assert formerr.wire[3] & 0x0F == dns.rcode.FORMERR


def test_usable_replies() -> None:
    q = dns.message.make_query("example.com", "A")
    ok = dns.message.make_response(q)
    nx = dns.message.make_response(q)
    nx.set_rcode(dns.rcode.NXDOMAIN)
    bad = dns.message.make_response(q)
    bad.set_rcode(dns.rcode.REFUSED)
    qid = q.to_wire()[0:2]
    assert usable(ok.to_wire(), qid)
    assert usable(nx.to_wire(), qid)
    assert not usable(bad.to_wire(), qid)
    assert not usable(ok.to_wire(), b"\x00\x00" if qid != b"\x00\x00" else b"\x00\x01")


def test_host_nameservers() -> None:
    text = "# c\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver bogus\nsearch x\n"
    assert host_nameservers(text) == (IP("127.0.0.53"), IP("fe80::1"))


def test_resolv_conf_pointing_at_the_resolver() -> None:
    # As Docker writes it for its embedded DNS: one nameserver, the host's search and options, ndots:0.
    host = "nameserver 127.0.0.53\nsearch corp.example\noptions edns0 trust-ad\n"
    assert render_resolver(host, "10.89.0.1") == (
        "nameserver 10.89.0.1\nsearch corp.example\noptions edns0 trust-ad ndots:0\n"
    )
    assert render_resolver("", "10.89.0.1") == "nameserver 10.89.0.1\noptions ndots:0\n"
    assert render_resolver(host, "10.89.0.1", search=["x"], options=["ndots:2"]) == (
        "nameserver 10.89.0.1\nsearch x\noptions ndots:2\n"
    )
