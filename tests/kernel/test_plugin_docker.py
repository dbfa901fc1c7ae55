"""A real, unmodified Docker 20.10 engine using cnm's bridge driver and IPAM through ``cnm plugin serve``.

One engine per pytest worker (tests/kernel/docker_engine.py), in a throwaway
host namespace with an outside namespace linked to it (192.0.2.2). Skipped,
with the reason, only where dockerd cannot run.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import subprocess
from collections.abc import Iterator

import pytest

from cnm.testing.hosts import nft_state
from tests.kernel.docker_engine import IMAGE, PLUGIN, Engine, running_engine, unavailable

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")]


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with running_engine(tmp_path_factory.mktemp("dk")) as e:
        yield e


def _ip_of(engine: Engine, container: str, network: str) -> str:
    fmt = '{{(index .NetworkSettings.Networks "' + network + '").IPAddress}}'
    return engine.docker("inspect", "-f", fmt, container).stdout.strip()


def _ping(engine: Engine, container: str, address: str) -> bool:
    return (
        engine.docker("exec", container, "ping", "-c", "3", "-i", "0.2", "-W", "1", address, check=False).returncode
        == 0
    )


def _host_links(engine: Engine) -> set[str]:
    out = subprocess.run(
        ["ip", "-n", engine.host.path.rsplit("/", 1)[1], "-o", "link", "show"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _http_from_outside(engine: Engine, port: int) -> str:
    get = f"import urllib.request; print(urllib.request.urlopen('http://192.0.2.1:{port}/', timeout=5).read().decode())"
    result = engine.outside.run(["python3", "-c", get], capture_output=True, text=True, timeout=30)
    return result.stdout.strip()


def test_containers_on_a_cnm_network_talk_reach_out_and_publish(engine: Engine) -> None:
    d = engine.docker
    net = "cnmnet1"
    d("network", "create", "-d", PLUGIN, "--ipam-driver", PLUGIN, "--subnet", "10.89.1.0/24", net)
    d("run", "-d", "--name", "a1", "--network", net, IMAGE, "sleep", "600")
    d("run", "-d", "--name", "a2", "--network", net, "-p", "8080:80", IMAGE, "httpd", "-f", "-p", "80", "-h", "/www")
    a2 = _ip_of(engine, "a2", net)
    assert a2.startswith("10.89.1.")
    assert _ping(engine, "a1", a2)
    assert _ping(engine, "a1", "a2")  # Docker's embedded DNS works on a remote network
    assert _ping(engine, "a1", "192.0.2.2")  # the outside namespace, masqueraded by cnm's rules
    assert _http_from_outside(engine, 8080) == "hello from cnm"
    d("rm", "-f", "a1", "a2")
    d("network", "rm", net)
    assert not {n for n in _host_links(engine) if n.startswith("cnm")}
    # (The sandbox namespaces' files under the exec root are dockerd's: its own collector removes them
    # within a minute. With both veth ends gone they hold nothing of cnm's.)
    rules = nft_state(engine.host)
    assert "10.89.1." not in rules
    assert "8080" not in rules


def test_connect_disconnect_and_a_plugin_killed_mid_life(engine: Engine) -> None:
    d = engine.docker
    net = "cnmnet2"
    d("network", "create", "-d", PLUGIN, "--subnet", "10.89.2.0/24", net)
    d("run", "-d", "--name", "b1", "--network", net, IMAGE, "sleep", "600")
    d("run", "-d", "--name", "b2", IMAGE, "sleep", "600")  # on Docker's default bridge
    d("network", "connect", net, "b2")
    b1 = _ip_of(engine, "b1", net)
    assert _ping(engine, "b2", b1)
    assert "eth1" in d("exec", "b2", "ip", "-o", "link").stdout
    d("network", "disconnect", net, "b2")
    assert "eth1" not in d("exec", "b2", "ip", "-o", "link").stdout

    engine.kill_plugin()
    engine.start_plugin()
    assert _ping(engine, "b1", b1)  # the network never depended on the plugin process
    d("network", "connect", net, "b2")  # and Docker's next call finds everything it knew
    assert _ping(engine, "b2", b1)
    d("rm", "-f", "b1", "b2")
    d("network", "rm", net)
    assert not {n for n in _host_links(engine) if n.startswith("cnm")}
    assert "10.89.2." not in nft_state(engine.host)


def test_errors_reach_the_docker_cli(engine: Engine) -> None:
    result = engine.docker("network", "create", "-d", PLUGIN, "-o", "nonsense=1", "cnmbad", check=False)
    assert result.returncode != 0
    assert "remote: unknown bridge option 'nonsense'" in result.stderr
    assert "cnmbad" not in engine.docker("network", "ls").stdout
    assert not {n for n in _host_links(engine) if n.startswith("cnm")}


def test_internal_and_icc_reach_the_driver(engine: Engine) -> None:
    d = engine.docker
    d("network", "create", "-d", PLUGIN, "--internal", "--subnet", "10.89.3.0/24", "cnminternal")
    routes = d("run", "--rm", "--network", "cnminternal", IMAGE, "ip", "route").stdout
    assert "default" not in routes  # the driver gave no gateway: nothing leaves the network
    d("network", "rm", "cnminternal")
    d(
        "network",
        "create",
        "-d",
        PLUGIN,
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        "--subnet",
        "10.89.4.0/24",
        "cnmnoicc",
    )
    d("run", "-d", "--name", "i1", "--network", "cnmnoicc", IMAGE, "sleep", "600")
    d("run", "-d", "--name", "i2", "--network", "cnmnoicc", IMAGE, "sleep", "600")
    assert not _ping(engine, "i1", _ip_of(engine, "i2", "cnmnoicc"))
    assert _ping(engine, "i1", "10.89.4.1")  # the gateway still answers
    d("rm", "-f", "i1", "i2")
    d("network", "rm", "cnmnoicc")


def test_concurrent_containers(engine: Engine) -> None:
    """dockerd calls the plugin from several goroutines at once: every container gets its own address."""
    d = engine.docker
    d("network", "create", "-d", PLUGIN, "--ipam-driver", PLUGIN, "cnmbusy")  # a default pool from cnm's IPAM
    subnet = ipaddress.ip_network(
        d("network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", "cnmbusy").stdout.strip()
    )
    assert not subnet.overlaps(ipaddress.ip_network("172.17.0.0/16"))  # clear of docker0 in the engine's namespace
    names = [f"p{i}" for i in range(5)]
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda n: d("run", "-d", "--name", n, "--network", "cnmbusy", IMAGE, "sleep", "600"), names))
    addresses = {_ip_of(engine, n, "cnmbusy") for n in names}
    assert len(addresses) == len(names)
    assert all(_ping(engine, "p0", a) for a in addresses - {_ip_of(engine, "p0", "cnmbusy")})
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda n: d("rm", "-f", n), names))
    d("network", "rm", "cnmbusy")
    assert not {n for n in _host_links(engine) if n.startswith("cnm")}


def test_the_engine_restarts_with_its_cnm_networks(engine: Engine) -> None:
    """dockerd stopped (its containers with it) and started again: the plugin's network is there and works."""
    d = engine.docker
    d("network", "create", "-d", PLUGIN, "--subnet", "10.89.6.0/24", "cnmkept")
    d("run", "-d", "--name", "k1", "--stop-timeout", "1", "--network", "cnmkept", IMAGE, "sleep", "600")
    engine.stop_engine()
    engine.start()
    assert "cnmkept" in d("network", "ls", "--format", "{{.Name}}").stdout.split()
    d("start", "k1")  # Docker's calls after its restart: CreateEndpoint, Join... for the same network
    assert _ping(engine, "k1", "10.89.6.1")
    d("rm", "-f", "k1")
    d("network", "rm", "cnmkept")
    assert not {n for n in _host_links(engine) if n.startswith("cnm")}
