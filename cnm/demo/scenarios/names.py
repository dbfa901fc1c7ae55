"""Names instead of addresses: a compose-like pair on a user-defined network."""

from __future__ import annotations

from collections.abc import Iterator

from cnm import IPAMConfig
from cnm.demo.harness import Demo, expect, scenario
from cnm.testing import traffic


@scenario("names", "web reaches db by name and by alias on a user-defined network (cnm's resolver)")
def _names(demo: Demo) -> Iterator[str]:
    net = demo.ctl.create_network("app", ipam=IPAMConfig(subnet="10.89.7.0/24"))
    demo.defer(net.delete)
    db = demo.ctl.create_sandbox("db", network="app", aliases=["postgres"])
    demo.defer(db.delete)
    web = demo.ctl.create_sandbox("web", network="app")
    demo.defer(web.delete)
    resolv = web.run(["cat", "/etc/resolv.conf"], capture_output=True, text=True).stdout.split()
    expect(resolv[:2] == ["nameserver", str(net.gateway)], f"web's resolv.conf: {resolv!r}")
    yield f"web's resolv.conf: nameserver {net.gateway} (cnm's resolver on the gateway)"
    found = web.run(["getent", "hosts", "postgres"], capture_output=True, text=True).stdout.split()
    db_ip = str(net.endpoint("db").ip)
    expect(found[:1] == [db_ip], f"getent hosts postgres in web gave {found!r}, not {db_ip}")
    yield f"web: getent hosts postgres -> {' '.join(found)}"
    demo.serve(db, "tcp", 5432)
    peer = traffic.probe(web, "tcp", "postgres", 5432)
    expect(peer == str(net.endpoint("web").ip), f"web -> postgres:5432 got {peer!r}")
    yield f"web -> postgres:5432 connected (db's server saw {peer})"
    other = demo.ctl.create_network("other", ipam=IPAMConfig(subnet="10.89.8.0/24"))
    demo.defer(other.delete)
    stranger = demo.ctl.create_sandbox("stranger", network="other")
    demo.defer(stranger.delete)
    found = stranger.run(["getent", "hosts", "db"], capture_output=True, text=True).stdout.strip()
    expect(not found, f"a sandbox on another network resolved db: {found!r}")
    yield "stranger (network other): getent hosts db -> nothing (names are per network)"
