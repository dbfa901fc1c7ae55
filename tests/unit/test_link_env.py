"""Legacy links' pure parts against Docker: environment, hosts lines, exposed ports, inspect.

Docker's captures (``reference/docker/raw/2-default-bridge-*.txt``) are kept
in ``tests/kernel/golden/links/docker_*``; the kernel tests compare the same
files with what a real sandbox gets.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from cnm import etchosts
from cnm._core import inspect as _inspect
from cnm._core import records as rec
from cnm.errors import InvalidConfig
from cnm.legacy_links import hosts_names, link_env, parse_exposed

DOCKER = Path(__file__).parents[1] / "kernel" / "golden" / "links"


def docker_env(name: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (DOCKER / f"{name}.env").read_text().splitlines())


def test_env_of_one_tcp_port_is_dockers() -> None:
    # docker run --name app0 --link db0:db, db0 --expose 3306, at 172.17.0.2
    assert link_env("app0", "db", "172.17.0.2", [("tcp", 3306)]) == docker_env("docker_app0")


def test_env_of_tcp_and_udp_ports_is_dockers() -> None:
    # docker run --name app --link db:db, db --expose 3306 --expose 5432/udp
    env = link_env("app", "db", "172.17.0.2", [("udp", 5432), ("tcp", 3306)])
    assert env == docker_env("docker_icc_false_app")
    # Docker's order (links.go ToEnv): the default port first, the name last.
    assert next(iter(env)) == "DB_PORT"
    assert list(env)[-1] == "DB_NAME"


def test_lowest_port_is_the_default_and_tcp_wins_a_tie() -> None:
    env = link_env("web", "dns", "10.0.0.9", [("udp", 53), ("tcp", 80), ("tcp", 53)])
    assert env["DNS_PORT"] == "tcp://10.0.0.9:53"
    assert env["DNS_PORT_53_UDP"] == "udp://10.0.0.9:53"


def test_no_exposed_ports_gives_only_the_name() -> None:
    assert link_env("app", "cache", "10.0.0.3", []) == {"CACHE_NAME": "/app/cache"}


def test_three_consecutive_ports_get_dockers_range_variables() -> None:
    env = link_env("app", "my-web", "10.0.0.5", [("tcp", 8000), ("tcp", 8001), ("tcp", 8002)])
    ranges = {k: v for k, v in env.items() if k.endswith(("_START", "_END"))}
    assert ranges == {
        "MY_WEB_PORT_8000_TCP_START": "tcp://10.0.0.5:8000",
        "MY_WEB_PORT_8000_TCP_PORT_START": "8000",
        "MY_WEB_PORT_8000_TCP_END": "tcp://10.0.0.5:8002",
        "MY_WEB_PORT_8000_TCP_PORT_END": "8002",
    }
    assert env["MY_WEB_PORT_8001_TCP_ADDR"] == "10.0.0.5"
    assert env["MY_WEB_NAME"] == "/app/my-web"
    # Two in a row are not a range for Docker.
    assert not any(k.endswith("_START") for k in link_env("a", "b", "10.0.0.5", [("tcp", 1), ("tcp", 2)]))


def test_hosts_lines_are_dockers() -> None:
    link = etchosts.HostEntry(ip_of("172.17.0.2"), hosts_names("db", "85ea1431e404", "db0"))
    own = etchosts.HostEntry(ip_of("172.17.0.3"), ("28917edcc759",))
    assert etchosts.render([own], [link]) == (DOCKER / "docker_app0.hosts").read_text()
    # --link db:db: the name equals the alias and is not repeated.
    link = etchosts.HostEntry(ip_of("172.17.0.2"), hosts_names("db", "78744c2f3528", "db"))
    own = etchosts.HostEntry(ip_of("172.17.0.3"), ("aad5a7598168",))
    assert etchosts.render([own], [link]) == (DOCKER / "docker_icc_false_app.hosts").read_text()


def ip_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (["3306"], ["3306/tcp"]),
        ([3306, "5432/UDP", "3306/tcp"], ["3306/tcp", "5432/udp"]),
        (["8000-8002/udp", "53/tcp"], ["53/tcp", "8000/udp", "8001/udp", "8002/udp"]),
        (["53/udp", "53/tcp"], ["53/tcp", "53/udp"]),
        ([], []),
    ],
)
def test_exposed_ports_are_stored_as_docker_does(given: list[object], stored: list[str]) -> None:
    assert parse_exposed(given) == stored


@pytest.mark.parametrize(("bad", "message"), [("80/sctp", "sctp"), ("0", "out of range"), ("90-80", "reversed")])
def test_bad_exposed_ports_are_refused(bad: str, message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        parse_exposed([bad])


def test_inspect_shows_links_and_exposed_ports_as_docker() -> None:
    network = rec.NetworkRecord(id="n" * 64, name="bridge", driver="bridge", predefined=True)
    db0 = rec.SandboxRecord(id="d" * 64, name="db0", hostname="85ea1431e404", netns_path="", files_dir="")
    app0 = rec.SandboxRecord(id="a" * 64, name="app0", hostname="28917edcc759", netns_path="", files_dir="")
    db_ep = rec.EndpointRecord(id="e" * 64, name="db0", network_id=network.id, address="172.17.0.2/16")
    app_ep = rec.EndpointRecord(id="f" * 64, name="app0", network_id=network.id, address="172.17.0.3/16")
    files = {"hosts_path": "h", "resolv_conf_path": "r", "hostname_path": "n"}
    # db0 --expose 3306 (2-default-bridge-db0.txt): exposed, not published.
    got = _inspect.sandbox(
        rec.SandboxRecord(**{**rec.to_json(db0), "exposed": ["3306/tcp"]}), [(network, db_ep)], **files
    )
    assert got["NetworkSettings"]["Ports"] == {"3306/tcp": None}
    assert got["Config"]["ExposedPorts"] == {"3306/tcp": {}}
    assert got["HostConfig"]["Links"] is None
    # app0 --link db0:db (3-container-inspect-app0-linked.json).
    got = _inspect.sandbox(app0, [(network, app_ep)], links=["/db0:/app0/db"], **files)
    assert got["HostConfig"]["Links"] == ["/db0:/app0/db"]
    assert "ExposedPorts" not in got["Config"]
    assert got["NetworkSettings"]["Ports"] == {}
