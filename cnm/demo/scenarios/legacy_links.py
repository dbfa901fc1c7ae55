"""Docker's legacy links: environment variables, a hosts entry, a hole in icc=false."""

from __future__ import annotations

from collections.abc import Iterator

from cnm import IPAMConfig
from cnm.demo.harness import Demo, expect, scenario
from cnm.testing import traffic


@scenario("links", "a legacy link (todomvc -> db): environment variables, a hosts entry, a hole in icc=false")
def _links(demo: Demo) -> Iterator[str]:
    net = demo.ctl.create_network("todo", ipam=IPAMConfig(subnet="10.89.10.0/24"), options={"icc": False})
    demo.defer(net.delete)
    db = demo.ctl.create_sandbox("db", network="todo", exposed=["6379/tcp"])
    demo.defer(db.delete)
    other = demo.ctl.create_sandbox("other", network="todo")
    demo.defer(other.delete)
    app = demo.ctl.create_sandbox("todomvc", network="todo", links=[("db", "db")])
    demo.defer(app.delete)
    ip = net.endpoint("db").ip
    env = app.run(["env"], capture_output=True, text=True, link_env=True).stdout.splitlines()
    wanted = f"DB_PORT=tcp://{ip}:6379"
    expect(wanted in env, f"todomvc's environment lacks {wanted}: {env}")
    yield "todomvc's environment: " + ", ".join(sorted(ln for ln in env if ln.startswith("DB_")))
    hosts = app.run(["grep", "-w", "db", "/etc/hosts"], capture_output=True, text=True).stdout.strip()
    expect(hosts.split()[:2] == [str(ip), "db"], f"todomvc's /etc/hosts has {hosts!r} for db")
    yield f"todomvc's /etc/hosts: {hosts}"
    demo.serve(db, "tcp", 6379)
    demo.serve(db, "tcp", 6380)
    # By name, as a Docker user would: "db" is the link's alias (hosts line, and cnm's resolver for
    # todomvc only) and the sandbox's name on this user-defined network.
    peer = traffic.probe(app, "tcp", "db", 6379)
    expect(peer is not None, "todomvc cannot reach db:6379 through its link")
    yield f"todomvc -> db:6379 (exposed, linked) on an icc=false network: the server saw {peer}"
    for who, port in ((app, 6380), (other, 6379)):
        peer = traffic.probe(who, "tcp", "db", port, timeout=1)
        expect(peer is None, f"{who.name} reached db:{port}: {peer!r}")
    yield "todomvc -> db:6380 (not exposed) and other -> db:6379 (not linked): no answer"
    yield "the rule: " + demo.rule(
        net.id, "--dport 6379", "-j ACCEPT", f"-d {ip}/32", "-s ", nft=("set links_", f". {ip} . tcp . 6379")
    )
