"""Legacy links end to end: the todomvc scenario with real processes, Docker's files and rules.

The scenes are Docker's own (``reference/docker/raw/2-default-bridge-*``,
``1e*``): same subnet, same addresses, hostnames set to the short ids Docker
gave its containers, so the link's /etc/hosts and environment can be compared
with Docker's captures byte for byte (``golden/links/docker_*``). Rule dumps are
compared with ``golden/links/*.rules`` (iptables) and ``*.nft`` (nftables, as sorted JSON lines);
``CNM_UPDATE_GOLDEN=1`` rewrites those. Every test runs on both firewall backends.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cnm import Controller, IPAMConfig, PortBinding, errors
from cnm.handles import Network, Sandbox
from cnm.kernel.netns import NetNS
from cnm.testing.hosts import firewall_rules
from cnm.testing.traffic import probe, serve

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("firewall_backend")]

Track = Callable[[subprocess.Popen[Any]], subprocess.Popen[Any]]

GOLDEN = Path(__file__).parent / "golden" / "links"

# The app of the todomvc example: it finds its database only through the link's environment.
APP = r"""
import os, socket
addr, port = os.environ["DB_PORT_3306_TCP_ADDR"], int(os.environ["DB_PORT_3306_TCP_PORT"])
with socket.create_connection((addr, port), timeout=3) as s:
    print(s.recv(512).decode().strip())
"""


def backend(ctl: Controller) -> str:
    """The name of the controller's firewall backend."""
    return "nftables" if "Nftables" in type(ctl.firewall).__name__ else "iptables"


def rules(ctl: Controller) -> str:
    """The host's rules with network ids replaced by ``<name-id>`` placeholders."""
    text = firewall_rules(ctl.host_netns, backend(ctl)).replace(ctl.owner_id, "<owner>")
    for net in ctl.networks():
        text = text.replace(net.id[:12], f"<{net.name}-id>").replace(net.id[:11], f"<{net.name}-id>")
    return text


def check_golden(name: str, text: str, ctl: Controller) -> None:
    path = GOLDEN / (name if backend(ctl) == "iptables" else name.replace(".rules", ".nft"))
    if os.environ.get("CNM_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"differs from {path}; CNM_UPDATE_GOLDEN=1 regenerates it"


def docker_env(name: str) -> dict[str, str]:
    """Docker's captured link variables (``golden/links/<name>.env``)."""
    lines = (GOLDEN / f"{name}.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def link_rows(ctl: Controller) -> list[tuple[str, str]]:
    with sqlite3.connect(os.path.join(ctl.state_dir, "cnm.db")) as db:
        return sorted(db.execute("SELECT kind, key FROM records WHERE kind LIKE 'link%'"))


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


@pytest.fixture
def ctl(tmp_path: Path, host_netns: NetNS, firewall_backend: str) -> Iterator[Controller]:
    """A controller without predefined networks, so that a network can take Docker's 172.17.0.0/16."""
    from cnm.testing.hosts import unmount_sandboxes

    state = str(tmp_path / "state")
    controller = Controller(state_dir=state, host_netns=host_netns, firewall=firewall_backend, predefined=False)
    try:
        yield controller
    finally:
        controller.close()
        unmount_sandboxes(state)


def icc_false_scene(ctl: Controller) -> tuple[Network, Sandbox, Sandbox]:
    """Docker's ``--icc=false`` scene before the link: db (exposes 3306/tcp, 5432/udp) and pub (-p 8082:80).

    pub is created before app but takes Docker's .4, so app gets Docker's .3.
    """
    net = ctl.create_network("icc", ipam=IPAMConfig(subnet="172.17.0.0/16"), options={"icc": False})
    db = ctl.create_sandbox("db", hostname="78744c2f3528", network="icc", exposed=["3306/tcp", "5432/udp"])
    pub = ctl.create_sandbox("pub")
    net.create_endpoint("pub", ip="172.17.0.4", ports=[PortBinding(container_port=80, host_port=8082)]).join(pub)
    return net, db, pub


def test_todomvc_link_on_icc_false_network(ctl: Controller, processes: Track) -> None:
    net, db, pub = icc_false_scene(ctl)
    before_link = rules(ctl)
    check_golden("icc_false_no_links.rules", before_link, ctl)

    app = ctl.create_sandbox("app", hostname="aad5a7598168", network="icc", links=[("db", "db")])
    db_ip = str(net.endpoint("db").ip)
    app_ip = str(net.endpoint("app").ip)
    assert (db_ip, app_ip) == ("172.17.0.2", "172.17.0.3")
    # What Docker wrote for `docker run --link db:db app`, byte for byte.
    assert read(app.hosts_path) == (GOLDEN / "docker_icc_false_app.hosts").read_text()
    assert app.link_env() == docker_env("docker_icc_false_app")
    assert app.inspect()["HostConfig"]["Links"] == ["/db:/app/db"]
    [link] = app.links()
    assert (link.name, link.ports, link.target, link.network) == ("/app/db", ("3306/tcp", "5432/udp"), db, net)
    check_golden("icc_false_with_links.rules", rules(ctl), ctl)

    for proto, port in (("tcp", 3306), ("udp", 5432), ("tcp", 8000)):
        processes(serve(db, proto, port))
    # The app reaches the database through the address its environment names.
    result = app.run([sys.executable, "-c", APP], link_env=True, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == app_ip
    assert probe(app, "udp", db_ip, 5432) == app_ip
    # Only the exposed ports: not another port of db, and nothing for a sandbox without the link.
    assert probe(app, "tcp", db_ip, 8000, timeout=1) is None
    for proto, port in (("tcp", 3306), ("udp", 5432), ("tcp", 8000)):
        assert probe(pub, proto, db_ip, port, timeout=1) is None, (proto, port)

    # A restart keeps the link: a second controller on the same state_dir sees it and changes nothing.
    with Controller(
        state_dir=ctl.state_dir, host_netns=ctl.host_netns, firewall=backend(ctl), predefined=False
    ) as again:
        app2 = again.sandbox("app")
        assert app2.link_env() == docker_env("docker_icc_false_app")
        assert [lk.alias for lk in app2.links()] == ["db"]
        check_golden("icc_false_with_links.rules", rules(again), again)
        # Someone flushes the link's rules (cnm's CNM chain, or its nftables links set): the link is cut;
        # reapply_firewall brings them back.
        if backend(again) == "iptables":
            flush = ["iptables-legacy", "-F", "CNM"]
        else:
            flush = ["nft", "flush", "set", "inet", f"cnm_{again.owner_id}", f"links_{net.id[:12]}"]
        subprocess.run(["nsenter", f"--net={again.host_netns.path}", "--", *flush], check=True)
        assert probe(app2, "tcp", db_ip, 3306, timeout=1) is None
        again.reapply_firewall()
        check_golden("icc_false_with_links.rules", rules(again), again)
        assert probe(app2, "tcp", db_ip, 3306) == app_ip
        again.reconcile()
        check_golden("icc_false_with_links.rules", rules(again), again)

    app.unlink("db")
    assert rules(ctl) == before_link
    assert app.link_env() == {}
    assert f"{db_ip}\tdb" not in read(app.hosts_path)
    assert probe(app, "tcp", db_ip, 3306, timeout=1) is None
    assert link_rows(ctl) == []
    for s in (app, pub, db):
        s.delete()
    ctl.network("icc").endpoint("pub").delete()
    net.delete()


REMOVALS: dict[str, Callable[[Controller, Network], None]] = {
    "unlink": lambda ctl, net: ctl.sandbox("app").unlink("db"),
    "link delete": lambda ctl, net: ctl.sandbox("app").links()[0].delete(),
    "delete source": lambda ctl, net: ctl.sandbox("app").delete(),
    "delete target": lambda ctl, net: ctl.sandbox("db").delete(),
    "source leaves": lambda ctl, net: net.endpoint("app").leave(),
    "target leaves": lambda ctl, net: net.endpoint("db").leave(),
}


@pytest.mark.parametrize("how", list(REMOVALS))
def test_links_go_away_cleanly(ctl: Controller, how: str) -> None:
    net = ctl.create_network("quiet", ipam=IPAMConfig(subnet="10.70.0.0/24"), options={"icc": False})
    ctl.create_sandbox("db", network="quiet", exposed=["3306", "53/udp"])
    app = ctl.create_sandbox("app", network="quiet")
    before = rules(ctl)
    hosts_before = read(app.hosts_path)
    app.link("db", "db")
    assert app.links()[0].ports == ("53/udp", "3306/tcp")
    assert rules(ctl) != before
    assert read(app.hosts_path) != hosts_before
    REMOVALS[how](ctl, net)
    assert rules(ctl) == before
    assert link_rows(ctl) == []
    if how != "delete source":
        assert app.link_env() == {}
        assert app.links() == []
        if how != "source leaves":
            assert read(app.hosts_path) == hosts_before
        assert "\tdb " not in read(app.hosts_path)
    for s in ctl.sandboxes():
        s.delete()
    for e in net.endpoints():
        e.delete()
    net.delete()


def test_default_bridge_link_matches_docker_and_adds_no_rules(controller: Controller) -> None:
    # Docker's 1c2 scene: db0 --expose 3306, app0 --link db0:db on the default bridge (icc on).
    db0 = controller.create_sandbox("db0", hostname="85ea1431e404", network="bridge", exposed=[3306])
    before = rules(controller)
    app0 = controller.create_sandbox("app0", hostname="28917edcc759", network="bridge", links=[("db0", "db")])
    assert read(app0.hosts_path) == (GOLDEN / "docker_app0.hosts").read_text()
    assert app0.link_env() == docker_env("docker_app0")
    assert rules(controller) == before
    assert app0.inspect()["HostConfig"]["Links"] == ["/db0:/app0/db"]
    db_inspect = db0.inspect()
    assert db_inspect["NetworkSettings"]["Ports"] == {"3306/tcp": None}
    assert db_inspect["Config"]["ExposedPorts"] == {"3306/tcp": {}}
    # The caller's own env wins over the link's; the link's over the inherited environment.
    out = app0.run(
        ["sh", "-c", "echo $DB_PORT $DB_NAME"],
        link_env=True,
        env={"PATH": os.environ["PATH"], "DB_NAME": "mine"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == "tcp://172.17.0.2:3306 mine\n"
    app0.delete()
    db0.delete()


def test_bad_links_are_refused_and_leave_nothing(controller: Controller) -> None:
    a = controller.create_network("a", ipam=IPAMConfig(subnet="10.71.0.0/24"), options={"icc": False})
    b = controller.create_network("b", ipam=IPAMConfig(subnet="10.72.0.0/24"))
    app = controller.create_sandbox("app", network="a")
    controller.create_sandbox(
        "db", network="a", exposed=["3306"], ports=[PortBinding(container_port=53, protocol="udp")]
    )
    controller.create_sandbox("far", network="b")
    before = (rules(controller), read(app.hosts_path), link_rows(controller))
    with pytest.raises(errors.SandboxNotFound, match="ghost"):
        app.link("ghost", "g")
    with pytest.raises(errors.InvalidConfig, match="no network"):
        app.link("far", "far")
    with pytest.raises(errors.InvalidConfig, match="itself"):
        app.link("app", "me")
    with pytest.raises(errors.InvalidConfig, match="link alias"):
        app.link("db", "no spaces")
    with pytest.raises(errors.InvalidConfig, match="no address on network 'b'"):
        app.link("db", "db", network="b")
    with pytest.raises(errors.SandboxNotFound):
        controller.create_sandbox("new", network="a", links=[("ghost", "g")])
    with pytest.raises(errors.InvalidConfig, match="'db' has no address on network 'b'"):
        controller.create_sandbox("new", network="b", links=[("db", "db")])
    assert "new" not in [s.name for s in controller.sandboxes()]
    assert (rules(controller), read(app.hosts_path), link_rows(controller)) == before
    # A published port is exposed too.
    assert app.link("db", "db").ports == ("53/udp", "3306/tcp")
    with pytest.raises(errors.AlreadyExists, match="already has a link named 'db'"):
        app.link("db", "db")
    # Two aliases for one target share rules: removing one keeps the other's.
    app.link("db", "database")
    with_links = rules(controller)
    app.unlink("database")
    assert rules(controller) == with_links
    app.unlink("database")  # already gone: fine
    app.delete()
    assert link_rows(controller) == []
    for s in controller.sandboxes():
        s.delete()
    a.delete()
    b.delete()
