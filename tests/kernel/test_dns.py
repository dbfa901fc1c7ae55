"""Names between sandboxes through a Controller: real lookups (glibc's getent, dnspython over UDP and TCP).

Each test's controller runs in a throwaway host namespace; its resolver listens on the
user-defined networks' gateways there. An outside namespace runs dnsmasq as the upstream
that sandboxes' ``dns=`` servers point at (the machine's own resolvers are never asked).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from cnm import Controller, IPAMConfig
from cnm.errors import InvalidConfig
from cnm.handles import Sandbox
from cnm.testing.hosts import Outside
from cnm.testing.traffic import upstream_resolver_argv

pytestmark = pytest.mark.kernel


@pytest.fixture
def upstream(outside: Outside) -> Iterator[str]:
    """dnsmasq in the outside namespace: ext.test names, NXDOMAIN for other *.test."""
    proc = outside.popen(
        upstream_resolver_argv(outside.address, "--local=/test/", "--address=/ext.test/203.0.113.7"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield str(outside.address)
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def nameservers(sb: Sandbox) -> list[str]:
    return [line.split()[1] for line in read(sb.resolv_conf_path).splitlines() if line.startswith("nameserver")]


def getent(sb: Sandbox, name: str) -> list[str]:
    out = sb.run(["getent", "hosts", name], capture_output=True, text=True, check=False)
    return out.stdout.split()


def query(sb: Sandbox, name: str, *, tcp: bool = False) -> dns.message.Message:
    nameserver = nameservers(sb)[0]
    q = dns.message.make_query(name, "A")
    sock = sb.netns.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    with sock:
        if tcp:
            sock.settimeout(5)
            sock.connect((nameserver, 53))
        sock.setblocking(False)
        if tcp:
            return dns.query.tcp(q, nameserver, timeout=5, sock=sock)
        return dns.query.udp(q, nameserver, timeout=5, sock=sock)


def addresses(reply: dns.message.Message) -> set[str]:
    return {item.to_text() for rrset in reply.answer for item in rrset}


def resolver_pid(ctl: Controller) -> int | None:
    path = os.path.join(ctl.state_dir, "dns", "resolver.pid")
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except FileNotFoundError:
        return None


def test_names_aliases_and_resolv_conf_on_a_user_network(controller: Controller, upstream: str) -> None:
    controller.create_network("app", ipam=IPAMConfig(subnet="10.79.1.0/24"))
    web = controller.create_sandbox("web", network="app", hostname="webhost", dns=[upstream])
    db = controller.create_sandbox("db", network="app", aliases=["postgres", "store"])
    cache = controller.create_sandbox("cache", network="app", aliases=["store"])

    assert nameservers(web) == ["10.79.1.1"]  # the gateway, where the resolver listens
    assert "options ndots:0" in read(web.resolv_conf_path).splitlines()

    db_ip, cache_ip, web_ip = (str(s.endpoints()[0].ip) for s in (db, cache, web))
    assert getent(web, "db") == [db_ip, "db"]
    assert getent(web, "postgres")[0] == db_ip
    assert getent(db, "webhost")[0] == web_ip  # the hostname too
    assert getent(db, "web.app")[0] == web_ip  # <name>.<network>
    assert addresses(query(web, "store")) == {db_ip, cache_ip}  # round-robin alias
    assert addresses(query(web, "store", tcp=True)) == {db_ip, cache_ip}
    assert getent(web, db_ip)[:2] == [db_ip, "db"]  # PTR

    # Forwarded to web's own dns= server (dnsmasq outside), over UDP and TCP, NXDOMAIN as it is.
    assert addresses(query(web, "www.ext.test")) == {"203.0.113.7"}
    assert addresses(query(web, "www.ext.test", tcp=True)) == {"203.0.113.7"}
    assert query(web, "missing.test").rcode() == dns.rcode.NXDOMAIN
    assert getent(web, "www.ext.test")[0] == "203.0.113.7"


def test_isolation_and_a_sandbox_on_two_networks(controller: Controller) -> None:
    front = controller.create_network("front", ipam=IPAMConfig(subnet="10.79.2.0/24"))
    controller.create_network("back", ipam=IPAMConfig(subnet="10.79.3.0/24"))
    a = controller.create_sandbox("a", network="front")
    b = controller.create_sandbox("b", network="back")
    both = controller.create_sandbox("both", network="back")
    ep = front.create_endpoint("both-front", aliases=["gateway-svc"])
    ep.join(both)

    assert getent(a, "b") == []  # b is on back only
    assert getent(b, "a") == []
    assert getent(a, "both")[0] == str(ep.ip)
    assert getent(a, "gateway-svc")[0] == str(ep.ip)
    assert getent(b, "gateway-svc") == []  # the alias is front's
    assert getent(both, "a")[0] == str(a.endpoints()[0].ip)  # both networks' names
    assert getent(both, "b")[0] == str(b.endpoints()[0].ip)


def test_joins_and_leaves_are_visible_at_once(controller: Controller) -> None:
    net = controller.create_network("live", ipam=IPAMConfig(subnet="10.79.4.0/24"))
    a = controller.create_sandbox("a", network="live")
    late = controller.create_sandbox("late")
    assert getent(a, "late") == []
    ep = net.create_endpoint("late-ep", aliases=["newcomer"])
    ep.join(late)
    assert getent(a, "newcomer") == [str(ep.ip), "newcomer"]  # the first lookup after join()
    ep.leave()
    assert getent(a, "newcomer") == []
    late.delete()


def test_resolver_lifecycle_first_endpoint_last_endpoint_and_reconcile(controller: Controller) -> None:
    controller.create_network("life", ipam=IPAMConfig(subnet="10.79.5.0/24"))
    assert resolver_pid(controller) is None
    a = controller.create_sandbox("a", network="life")
    b = controller.create_sandbox("b", network="life")
    pid = resolver_pid(controller)
    assert pid is not None

    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)  # the test process is its parent
    assert getent(a, "b") == []
    report = controller.reconcile()
    assert any("started the DNS resolver" in line for line in report.actions), report
    assert resolver_pid(controller) not in (None, pid)
    assert getent(a, "b")[0] == str(b.endpoints()[0].ip)

    b.delete()
    a.delete()
    assert resolver_pid(controller) is None  # the last endpoint went: stopped


def test_aliases_are_refused_where_no_names_are_served(controller: Controller) -> None:
    net = controller.create_network("named", ipam=IPAMConfig(subnet="10.79.6.0/24"))
    with pytest.raises(InvalidConfig, match="user-defined"):
        controller.network("bridge").create_endpoint("x", aliases=["x"])
    with pytest.raises(InvalidConfig, match="not a valid DNS name"):
        net.create_endpoint("y", aliases=["bad name"])
    with pytest.raises(InvalidConfig, match="add network="):
        controller.create_sandbox("z", aliases=["z"])
    assert not net.endpoints()
    # The predefined bridge keeps the host's servers, never a loopback one.
    sb = controller.create_sandbox("plain", network="bridge")
    servers = nameservers(sb)
    assert servers
    assert not any(s.startswith("127.") for s in servers)


def test_internal_network_answers_names_and_forwards_nothing(controller: Controller, upstream: str) -> None:
    controller.create_network("inner", ipam=IPAMConfig(subnet="10.79.7.0/24"), internal=True)
    a = controller.create_sandbox("a", network="inner", dns=[upstream])
    b = controller.create_sandbox("b", network="inner")
    assert getent(a, "b")[0] == str(b.endpoints()[0].ip)
    assert query(a, "www.ext.test").rcode() == dns.rcode.SERVFAIL


def test_a_link_alias_resolves_for_the_linking_sandbox_only(controller: Controller, upstream: str) -> None:
    # "dbalias.test": the upstream answers NXDOMAIN for *.test, so "not known to the resolver"
    # shows as NXDOMAIN (forwarded), not as a timeout.
    controller.create_network("linked", ipam=IPAMConfig(subnet="10.79.8.0/24"))
    db = controller.create_sandbox("db", network="linked", hostname="dbhost")
    app = controller.create_sandbox("app", network="linked", dns=[upstream])
    third = controller.create_sandbox("third", network="linked", dns=[upstream])
    db_ip = str(db.endpoints()[0].ip)
    assert query(app, "dbalias.test").rcode() == dns.rcode.NXDOMAIN

    app.link("db", "dbalias.test")
    assert addresses(query(app, "dbalias.test")) == {db_ip}  # over DNS, not only /etc/hosts
    assert addresses(query(app, "dbalias.test", tcp=True)) == {db_ip}
    assert getent(app, "dbalias.test")[0] == db_ip
    assert query(third, "dbalias.test").rcode() == dns.rcode.NXDOMAIN  # another sandbox on the network
    assert getent(third, "dbalias.test") == []
    assert getent(third, "dbhost")[0] == db_ip  # the target's own names stay everyone's

    app.unlink("dbalias.test")
    assert query(app, "dbalias.test").rcode() == dns.rcode.NXDOMAIN
    assert getent(app, "dbalias.test") == []

    app.link("db", "dbalias.test")  # the target leaving takes the link, and its name, with it
    assert addresses(query(app, "dbalias.test")) == {db_ip}
    db.delete()
    assert query(app, "dbalias.test").rcode() == dns.rcode.NXDOMAIN
