"""The resolver adapter (cnm.dns) against the real kernel, with real lookups.

The world: a host namespace with two bridges (net1 10.77.1.0/24, net2
10.77.2.0/24, gateways .1), sandbox namespaces on them, and an outside
namespace (192.0.2.2) running dnsmasq as the "upstream" resolver. The
resolver runs in the host namespace on the gateways, port 53. Clients are
dnspython sockets opened inside the sandboxes, and glibc's ``getent hosts``.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import os
import select
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from cnm.dns import Entry, NetworkDNS, Resolver
from cnm.errors import ResolverError
from cnm.kernel import addresses, links, netns, netns_dirs, routes
from cnm.kernel.netns import NetNS
from cnm.kernel.process import command_in
from cnm.testing.hosts import Outside
from cnm.testing.traffic import upstream_resolver_argv

pytestmark = pytest.mark.kernel

NET1 = ipaddress.ip_network("10.77.1.0/24")
NET2 = ipaddress.ip_network("10.77.2.0/24")
GW1 = ipaddress.ip_address("10.77.1.1")
GW2 = ipaddress.ip_address("10.77.2.1")
BIG_TXT = ["x" * 200, "y" * 200, "z" * 200]  # 600+ bytes: more than a plain UDP answer may carry


@attrs.frozen
class Sandbox:
    name: str
    netns: NetNS
    address: ipaddress.IPv4Address
    gateway: ipaddress.IPv4Address

    def query(self, name: str, rdtype: str = "A", *, tcp: bool = False, to: Any = None) -> dns.message.Message:
        """Ask ``to`` (default: this sandbox's gateway) from inside the sandbox."""
        where = str(to or self.gateway)
        q = dns.message.make_query(name, rdtype)
        kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
        sock = self.netns.socket(socket.AF_INET, kind)
        with sock:
            sock.setblocking(False)  # dnspython waits with its own timeout on a non-blocking socket
            if tcp:
                sock.settimeout(5)
                sock.connect((where, 53))
                sock.setblocking(False)
                return dns.query.tcp(q, where, timeout=5, sock=sock)
            return dns.query.udp(q, where, timeout=5, sock=sock, ignore_trailing=False)

    def addresses_of(self, name: str, *, tcp: bool = False) -> set[str]:
        reply = self.query(name, tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR, (name, dns.rcode.to_text(reply.rcode()))
        return {item.to_text() for rrset in reply.answer for item in rrset}


@attrs.define
class World:
    host: NetNS
    outside: Outside
    make_ns: Callable[[str], NetNS]
    tmp: str
    sandboxes: dict[str, Sandbox] = attrs.Factory(dict)

    def sandbox(self, name: str, network: ipaddress.IPv4Network, host_number: int) -> Sandbox:
        ns = self.make_ns(name)
        bridge = "brd1" if network == NET1 else "brd2"
        gateway = next(network.hosts())
        address = network[host_number]
        with self.host.netlink() as nl:
            links.add_veth(nl, f"vd{name}", "eth0", ns, master=bridge)
        with ns.netlink() as nl:
            addresses.add_address(nl, "eth0", ipaddress.ip_interface(f"{address}/{network.prefixlen}"))
            links.set_link(nl, "eth0", up=True)
            routes.replace_default_route(nl, gateway, "eth0")
        sb = Sandbox(name, ns, address, gateway)  # type: ignore[arg-type]
        self.sandboxes[name] = sb
        return sb


@pytest.fixture
def world(host_netns: NetNS, outside: Outside, netns_factory: Callable[[str], NetNS], tmp_path: Any) -> Iterator[World]:
    with host_netns.netlink() as nl:
        for bridge, gateway, network in (("brd1", GW1, NET1), ("brd2", GW2, NET2)):
            links.ensure_bridge(nl, bridge)
            addresses.add_address(nl, bridge, ipaddress.ip_interface(f"{gateway}/{network.prefixlen}"))
    upstream = outside.popen(
        upstream_resolver_argv(
            outside.address,
            "--no-daemon",
            "--local=/test/",
            "--address=/ext.test/203.0.113.7",
            "--txt-record=big.test," + ",".join(BIG_TXT),
            "--log-facility=-",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield World(host_netns, outside, netns_factory, str(tmp_path))
    finally:
        upstream.terminate()
        upstream.wait(timeout=5)


@pytest.fixture
def resolver(world: World) -> Iterator[Resolver]:
    resolv_conf = os.path.join(world.tmp, "host-resolv.conf")
    with open(resolv_conf, "w") as f:
        f.write(f"nameserver {world.outside.address}\n")
    res = Resolver(os.path.join(world.tmp, "dns"), world.host, resolv_conf=resolv_conf, upstream_timeout=2.0)
    try:
        yield res
    finally:
        res.stop()


def entry(sb: Sandbox, *names: str, dns_servers: tuple[str, ...] = ()) -> Entry:
    return Entry(id=f"ep-{sb.name}", names=(sb.name, *names), ipv4=(sb.address,), dns_servers=dns_servers)


def publish(res: Resolver, net: str, gateway: Any, *entries: Entry, internal: bool = False) -> None:
    res.config.write(NetworkDNS(name=net, listen=(gateway,), entries=entries, internal=internal))
    if res.alive():
        res.reload()
    else:
        res.start()


def test_names_aliases_round_robin_and_ptr(world: World, resolver: Resolver) -> None:
    web = world.sandbox("web", NET1, 2)
    db1 = world.sandbox("db1", NET1, 3)
    db2 = world.sandbox("db2", NET1, 4)
    publish(resolver, "net1", GW1, entry(web), entry(db1, "db", "postgres"), entry(db2, "db"))

    assert web.addresses_of("db1") == {"10.77.1.3"}
    assert web.addresses_of("postgres") == {"10.77.1.3"}
    assert web.addresses_of("DB1.net1.") == {"10.77.1.3"}  # case-insensitive, and <name>.<network>
    assert web.addresses_of("db") == {"10.77.1.3", "10.77.1.4"}
    # Round-robin: over many answers, each address comes first at least once.
    firsts = {web.query("db").answer[0][0].to_text() for _ in range(40)}
    assert firsts == {"10.77.1.3", "10.77.1.4"}

    reply = web.query("db1")
    assert reply.flags & dns.flags.AA
    assert reply.answer[0].ttl == 600
    # A known name without an IPv6 address: an empty NOERROR, not forwarded.
    aaaa = web.query("db1", "AAAA")
    assert aaaa.rcode() == dns.rcode.NOERROR
    assert not aaaa.answer

    ptr = web.query(dns.reversename.from_address("10.77.1.3").to_text(), "PTR")
    assert [r.to_text() for r in ptr.answer[0]] == ["db1."]  # one name, the sandbox's, as Docker


def test_udp_and_tcp_and_getent(world: World, resolver: Resolver) -> None:
    a = world.sandbox("a", NET1, 2)
    b = world.sandbox("b", NET1, 3)
    publish(resolver, "net1", GW1, entry(a), entry(b, "bee"))

    assert a.addresses_of("bee", tcp=True) == {"10.77.1.3"}
    assert a.addresses_of("bee", tcp=False) == {"10.77.1.3"}

    conf = os.path.join(world.tmp, "resolv.conf")
    hosts = os.path.join(world.tmp, "hosts")
    with open(conf, "w") as f:
        f.write(f"nameserver {GW1}\noptions ndots:0\n")
    with open(hosts, "w") as f:
        f.write("127.0.0.1\tlocalhost\n")
    argv = command_in(a.netns, ["getent", "hosts", "bee"], files={"/etc/resolv.conf": conf, "/etc/hosts": hosts})
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["10.77.1.3", "bee"]
    argv = command_in(a.netns, ["getent", "hosts", "10.77.1.3"], files={"/etc/resolv.conf": conf, "/etc/hosts": hosts})
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["10.77.1.3", "b"]


def test_isolation_between_networks(world: World, resolver: Resolver) -> None:
    one = world.sandbox("one", NET1, 2)
    two = world.sandbox("two", NET2, 2)
    both = world.sandbox("both", NET1, 3)
    # "both" is on net2 too, with a second address there (a second veth).
    with world.host.netlink() as nl:
        links.add_veth(nl, "vdboth2", "eth1", both.netns, master="brd2")
    with both.netns.netlink() as nl:
        addresses.add_address(nl, "eth1", ipaddress.ip_interface("10.77.2.3/24"))
        links.set_link(nl, "eth1", up=True)
    publish(resolver, "net1", GW1, entry(one), entry(both))
    publish(
        resolver,
        "net2",
        GW2,
        entry(two),
        Entry(id="ep-both", names=("both",), ipv4=("10.77.2.3",)),
    )

    assert one.addresses_of("both") == {"10.77.1.3"}
    assert two.addresses_of("both") == {"10.77.2.3"}
    # one is not on net2: "two" is unknown to it, so it goes upstream, which has no such name.
    assert not one.query("two").answer
    assert not two.query("one").answer
    # A sandbox on both networks sees both, even asking on one gateway.
    both_net1 = Sandbox("both", both.netns, both.address, GW1)
    assert both_net1.addresses_of("two") == {"10.77.2.2"}
    assert both_net1.addresses_of("one") == {"10.77.1.2"}


def test_forwarding_nxdomain_and_truncation_pass_through(world: World, resolver: Resolver) -> None:
    a = world.sandbox("a", NET1, 2)
    publish(resolver, "net1", GW1, entry(a))

    assert a.addresses_of("host.ext.test") == {"203.0.113.7"}
    assert a.addresses_of("host.ext.test", tcp=True) == {"203.0.113.7"}
    nx = a.query("missing.test")
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert a.query("missing.test", tcp=True).rcode() == dns.rcode.NXDOMAIN

    # What the upstream says to a plain (no EDNS) UDP query, the sandbox gets: TC set...
    from_host = Sandbox("host", world.host, world.outside.host_address, world.outside.address)
    direct = from_host.query("big.test", "TXT")
    relayed = a.query("big.test", "TXT")
    assert direct.flags & dns.flags.TC
    assert relayed.flags & dns.flags.TC
    # ... and over TCP the whole answer.
    full = a.query("big.test", "TXT", tcp=True)
    assert not full.flags & dns.flags.TC
    texts = sorted(s.decode() for rrset in full.answer for r in rrset for s in r.strings)
    assert texts == sorted(BIG_TXT)


def test_own_servers_and_internal_networks(world: World, resolver: Resolver) -> None:
    custom = world.sandbox("custom", NET1, 2)
    plain = world.sandbox("plain", NET1, 3)
    inner = world.sandbox("inner", NET2, 2)
    inner2 = world.sandbox("inner2", NET2, 3)
    # custom's own server is one that does not answer: its queries fail (SERVFAIL), plain's work.
    publish(resolver, "net1", GW1, entry(custom, dns_servers=("192.0.2.99",)), entry(plain))
    publish(resolver, "net2", GW2, entry(inner), entry(inner2), internal=True)

    assert plain.addresses_of("host.ext.test") == {"203.0.113.7"}
    assert custom.query("host.ext.test").rcode() == dns.rcode.SERVFAIL
    # An internal network answers its names and forwards nothing.
    assert inner.addresses_of("inner2") == {"10.77.2.3"}
    assert inner.query("host.ext.test").rcode() == dns.rcode.SERVFAIL
    assert inner.query("host.ext.test", tcp=True).rcode() == dns.rcode.SERVFAIL


def test_join_and_leave_visible_at_once(world: World, resolver: Resolver) -> None:
    a = world.sandbox("a", NET1, 2)
    b = world.sandbox("b", NET1, 3)
    publish(resolver, "net1", GW1, entry(a))
    pid = resolver.pid()
    assert not a.query("b").answer

    net = resolver.config.get("net1")
    assert net is not None
    resolver.config.write(net.with_entry(entry(b)))
    resolver.reload()
    assert a.addresses_of("b") == {"10.77.1.3"}  # the first query after reload() returned
    assert resolver.pid() == pid  # reloaded, not restarted

    resolver.config.write(net.with_entry(entry(b)).without_entry("ep-b"))
    resolver.reload()
    assert not a.query("b").answer


def test_sigkill_then_restart(world: World, resolver: Resolver) -> None:
    a = world.sandbox("a", NET1, 2)
    publish(resolver, "net1", GW1, entry(a, "alpha"))
    pid = resolver.pid()
    assert pid is not None
    assert resolver.alive()

    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)  # it is this test process's child
    assert not resolver.alive()
    with pytest.raises(ResolverError, match="not running"):
        resolver.reload()

    assert resolver.ensure() is True
    assert resolver.pid() not in (None, pid)
    assert a.addresses_of("alpha") == {"10.77.1.2"}
    assert resolver.ensure() is False

    assert resolver.stop() is True
    assert not resolver.alive()
    assert not os.path.exists(resolver.pid_file)
    assert resolver.stop() is False


def test_a_reused_pid_is_never_signalled(world: World, resolver: Resolver, processes: Any) -> None:
    a = world.sandbox("a", NET1, 2)
    publish(resolver, "net1", GW1, entry(a))
    resolver.stop()
    # The pid file names a live process that is not the resolver (same PID, other start time).
    other = processes(subprocess.Popen(["sleep", "60"]))
    with open(resolver.pid_file, "w") as f:
        f.write(f"{other.pid} 1\n")
    assert not resolver.alive()
    assert resolver.stop() is False
    assert other.poll() is None


def test_a_taken_port_is_logged_and_the_rest_served(world: World, tmp_path: Any) -> None:
    res = Resolver(str(tmp_path / "dns-bad"), world.host, port=53, start_timeout=5)
    res.config.write(NetworkDNS(name="net1", listen=(GW1,)))
    # Port 53 on the gateway is taken by someone else: the server logs it and still starts,
    # since its other networks may work.
    holder = world.host.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with holder:
        holder.bind((str(GW1), 53))
        pid = res.start()
        assert pid
        assert res.alive()
        res.stop()
    with open(res.log_file) as f:
        assert "cannot listen on 10.77.1.1 port 53" in f.read()


def test_apply_starts_reloads_and_stops_once_for_all_callers(world: World, resolver: Resolver) -> None:
    a = world.sandbox("a", NET1, 2)
    resolver.config.write(NetworkDNS(name="net1", listen=(GW1,), entries=(entry(a),)))
    # Callers in several threads at once: one resolver process, every one of them served.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert all(pool.map(lambda _: resolver.apply(), range(4)))
    pid = resolver.pid()
    assert pid is not None
    assert a.addresses_of("a") == {"10.77.1.2"}
    resolver.config.write(NetworkDNS(name="net1", listen=(GW1,), entries=(entry(a, "again"),)))
    assert resolver.apply() is True
    assert resolver.pid() == pid
    assert a.addresses_of("again") == {"10.77.1.2"}
    resolver.config.remove("net1")
    assert resolver.apply() is False  # no network left: stopped
    assert not resolver.alive()


def test_the_resolver_exits_when_its_host_namespace_is_gone(tmp_path: Any) -> None:
    # In a directory of its own: the namespace directory becomes a mount of itself (released below).
    os.makedirs(tmp_path / "ns")
    host = netns.create(str(tmp_path / "ns" / "host"), loopback_up=True)
    res = Resolver(str(tmp_path / "dns"), host)
    try:
        res.config.write(NetworkDNS(name="net1", listen=("127.0.0.1",)))
        pid = res.start()
        fd = os.pidfd_open(pid)
        netns.remove(host.path)
        # It checks about once a second; give a loaded machine plenty.
        assert select.select([fd], [], [], 30)[0], "the resolver outlived its host namespace"
        os.close(fd)
        os.waitpid(pid, 0)
        assert not res.alive()
    finally:
        res.stop()
        netns.remove(host.path)
        netns_dirs.release_directory(str(tmp_path / "ns"))
