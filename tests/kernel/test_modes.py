"""Docker's ``--net`` modes through ``Controller.create_sandbox(network=...)``: none, host, container.

Each test runs its controller in a throwaway host namespace; the host-mode
sandbox is that namespace, never the machine's own.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cnm import Controller, IPAMConfig, PortBinding
from cnm.errors import Conflict, InvalidConfig, SandboxNotFound
from cnm.etchosts import HOST_HOSTS, STANDARD_BLOCK
from cnm.handles import Sandbox
from cnm.kernel import routes
from cnm.kernel.netns import NetNS
from cnm.resolvconf import HOST_RESOLV_CONF, read_host, render
from cnm.testing.hosts import Outside
from cnm.testing.traffic import probe, serve

pytestmark = pytest.mark.kernel

Track = Callable[[subprocess.Popen[Any]], subprocess.Popen[Any]]
DOCKER = Path(__file__).parent.parent / "unit" / "docker_inspect"

# A TCP server on 127.0.0.1 only: reachable only from its own namespace.
_LOOPBACK_SERVER = r"""
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(4)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"loopback-ok\n")
    c.close()
"""


def _text(path: str) -> str:
    with open(path) as f:
        return f.read()


def _out(sandbox: Sandbox, argv: list[str]) -> str:
    return str(sandbox.run(argv, capture_output=True, text=True, check=True).stdout)


def _netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def test_none_mode_has_loopback_only(controller: Controller) -> None:
    sb = controller.create_sandbox("n1", network="none")
    assert sb.mode == "private"
    assert sb.network_mode == "none"
    links = _out(sb, ["ip", "-o", "link"]).splitlines()
    assert [line.split(":")[1].strip() for line in links] == ["lo"]
    assert _out(sb, ["ip", "-4", "route"]) == ""
    # Docker's files for --network none: the standard hosts block, the host's resolvers.
    assert _text(sb.hosts_path) == STANDARD_BLOCK
    assert _text(sb.resolv_conf_path) == render(read_host())
    assert _out(sb, ["cat", "/etc/hosts"]) == STANDARD_BLOCK
    ep = controller.network("none").endpoint("n1")
    assert (ep.ip, ep.mac, ep.ifname) == (None, None, None)
    entry = controller.network("none").inspect()["Containers"][sb.id]
    assert entry == {"Name": "n1", "EndpointID": ep.id, "MacAddress": "", "IPv4Address": "", "IPv6Address": ""}
    # none excludes every other network, as in Docker.
    controller.create_network("other", ipam=IPAMConfig(subnet="10.61.0.0/24"))
    extra = controller.network("other").create_endpoint("n1-other")
    with pytest.raises(InvalidConfig, match="null network"):
        extra.join(sb)
    extra.delete()
    path = sb.netns_path
    sb.delete()
    assert not os.path.exists(path)
    assert controller.network("none").endpoints() == []


@pytest.mark.usefixtures("firewall_backend")  # the host's own traffic crosses whatever rules cnm keeps there
def test_host_mode_is_the_host_namespace(controller: Controller, outside: Outside, processes: Track) -> None:
    # The host's own default route must survive the sandbox's join, leave and delete.
    with controller.host_netns.netlink() as nl:
        routes.replace_default_route(nl, outside.address, "uplink0")
    host_links_before = set(_host_links(controller.host_netns))
    sb = controller.create_sandbox("h1", network="host")
    assert sb.mode == "host"
    assert sb.netns_path == controller.host_netns.path
    assert _netns_inode(sb.netns_path) == _netns_inode(controller.host_netns.path)
    # It sees the host namespace's interfaces: the uplink to the outside host.
    assert "uplink0" in _out(sb, ["ip", "-o", "link"])
    assert str(outside.host_address) in _out(sb, ["ip", "-4", "-o", "addr"])
    # Copies of the host's files, and the host's hostname.
    assert _text(sb.hosts_path) == _text(HOST_HOSTS)
    assert _text(sb.resolv_conf_path) == _text(HOST_RESOLV_CONF)
    assert sb.hostname == socket.gethostname()
    assert _out(sb, ["hostname"]).strip() == socket.gethostname()
    # A server in it listens on the host's own port: the outside host reaches it directly.
    processes(serve(sb, "tcp", 7100))
    assert probe(outside, "tcp", str(outside.host_address), 7100) == str(outside.address)
    settings = sb.inspect()["NetworkSettings"]
    assert settings["SandboxKey"] == controller.host_netns.path
    assert list(settings["Networks"]) == ["host"]
    # Host mode takes no ports and no other network; others cannot take the host network.
    net = controller.create_network("hnet", ipam=IPAMConfig(subnet="10.62.0.0/24"))
    ep = net.create_endpoint("h1-hnet")
    with pytest.raises(InvalidConfig, match="host's own stack"):
        ep.join(sb)
    private = controller.create_sandbox("p1")
    with pytest.raises(InvalidConfig, match="host's own stack"):
        controller.network("host").create_endpoint("p1-host").join(private)
    with pytest.raises(InvalidConfig, match="publish"):
        controller.create_sandbox("h2", network="host", ports=[PortBinding(container_port=80)])
    assert [s.name for s in controller.sandboxes()] == ["h1", "p1"]
    # Deleting it never removes (or changes) the host's namespace.
    sb.delete()
    assert NetNS(controller.host_netns.path).exists()
    assert f"default via {outside.address} dev uplink0" in _out_host(controller.host_netns, ["ip", "route"])
    assert probe(outside, "tcp", str(outside.host_address), 7100) == str(outside.address)
    controller.network("host").endpoint("p1-host").delete()
    ep.delete()
    private.delete()
    net.delete()
    assert set(_host_links(controller.host_netns)) == host_links_before


def _out_host(ns: NetNS, argv: list[str]) -> str:
    return subprocess.run(
        ["nsenter", f"--net={ns.path}", "--", *argv], capture_output=True, text=True, check=True
    ).stdout


def _host_links(ns: NetNS) -> list[str]:
    return [line.split(":")[1].strip().split("@")[0] for line in _out_host(ns, ["ip", "-o", "link"]).splitlines()]


def test_container_mode_shares_namespace_files_and_loopback(controller: Controller, processes: Track) -> None:
    controller.create_network("net1", ipam=IPAMConfig(subnet="10.63.0.0/24"))
    owner = controller.create_sandbox("c2", network="net1", dns=["192.0.2.53"])
    k1 = controller.create_sandbox("k1", network="container:c2")
    assert (k1.mode, k1.network_mode, k1.shares) == ("container", f"container:{owner.id}", owner)
    assert _netns_inode(k1.netns_path) == _netns_inode(owner.netns_path)
    for argv in (
        ["ip", "-o", "addr"],
        ["ip", "route"],
        ["hostname"],
        ["cat", "/etc/hosts"],
        ["cat", "/etc/resolv.conf"],
    ):
        assert _out(k1, argv) == _out(owner, argv), argv
    # The same files, not copies: a change to the owner's shows in the sharer.
    assert (k1.hosts_path, k1.resolv_conf_path) == (owner.hosts_path, owner.resolv_conf_path)
    assert "10.63.0.2\tc2" in _out(k1, ["cat", "/etc/hosts"])
    # A server bound to 127.0.0.1 in one is reached from the other, and from no one else.
    server = processes(owner.popen([sys.executable, "-c", _LOOPBACK_SERVER, "7200"], stdout=subprocess.PIPE, text=True))
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "ready"
    assert _loopback_probe(k1, 7200) == "loopback-ok"
    stranger = controller.create_sandbox("stranger", network="net1")
    assert _loopback_probe(stranger, 7200) is None
    settings = k1.inspect()["NetworkSettings"]
    assert (settings["SandboxID"], settings["SandboxKey"], settings["Networks"]) == ("", "", {})
    assert owner.sharers() == [k1]
    stranger.delete()


def _loopback_probe(sandbox: Sandbox, port: int) -> str | None:
    client = (
        "import socket,sys\n"
        "s=socket.create_connection(('127.0.0.1',int(sys.argv[1])),timeout=2)\n"
        "print(s.recv(64).decode().strip())\n"
    )
    result = sandbox.run([sys.executable, "-c", client, str(port)], capture_output=True, text=True, timeout=30)
    return result.stdout.strip() if result.returncode == 0 else None


def test_owner_cannot_be_deleted_while_shared(controller: Controller) -> None:
    owner = controller.create_sandbox("own")
    k1 = controller.create_sandbox("k1", network="container:own")
    # Sharing a sharer shares its owner.
    k2 = controller.create_sandbox("k2", network="container:k1")
    assert k2.shares == owner
    with pytest.raises(Conflict, match="'k1', 'k2'"):
        owner.delete()
    assert owner.netns.exists()
    assert [s.name for s in controller.sandboxes()] == ["k1", "k2", "own"]
    # A sharer joins nothing itself, and takes neither hostname nor DNS settings.
    controller.create_network("kn", ipam=IPAMConfig(subnet="10.64.0.0/24"))
    ep = controller.network("kn").create_endpoint("k1-kn")
    with pytest.raises(InvalidConfig, match="connect 'own'"):
        ep.join(k1)
    ep.join(owner)
    assert "10.64.0.2" in _out(k1, ["ip", "-4", "-o", "addr"])
    for kwargs in ({"hostname": "x"}, {"dns": ["192.0.2.53"]}, {"ports": [PortBinding(container_port=80)]}):
        with pytest.raises(InvalidConfig):
            controller.create_sandbox("bad", network="container:own", **kwargs)
    with pytest.raises(SandboxNotFound):
        controller.create_sandbox("bad", network="container:missing")
    # Deleting the sharers removes nothing of the owner's; then the owner goes.
    k1.delete()
    k2.delete()
    assert owner.netns.exists()
    assert os.path.exists(owner.hosts_path)
    assert _out(owner, ["cat", "/etc/hosts"]).endswith("10.64.0.2\town\n")
    path = owner.netns_path
    owner.delete()
    assert not os.path.exists(path)
    assert ep.sandbox is None
    ep.delete()
    assert controller.sandboxes() == []


def test_failed_mode_creation_leaves_nothing(controller: Controller) -> None:
    netns_dir = os.path.join(controller.state_dir, "netns")
    with pytest.raises(InvalidConfig):
        controller.create_sandbox("n1", network="none", ports=[PortBinding(container_port=80)])
    # Refused by the endpoint after the namespace was made: the namespace goes again.
    internal = controller.create_network("inside", ipam=IPAMConfig(subnet="10.65.0.0/24"), internal=True)
    with pytest.raises(InvalidConfig, match="internal"):
        controller.create_sandbox("i1", network="inside", ports=[PortBinding(container_port=80)])
    assert controller.sandboxes() == []
    assert controller.network("none").endpoints() == internal.endpoints() == []
    assert not os.path.isdir(netns_dir) or os.listdir(netns_dir) == []
    assert os.listdir(os.path.join(controller.state_dir, "sandboxes")) == []
    internal.delete()


def test_predefined_networks_inspect_like_docker(controller: Controller) -> None:
    docker = {n["Name"]: n for n in json.loads((DOCKER / "3-network-inspect-none-host.json").read_text())}
    docker["bridge"] = json.loads((DOCKER / "3-network-inspect-bridge-empty.json").read_text())[0]
    for name, want in docker.items():
        got = controller.network(name).inspect()
        assert set(got) == set(want), name
        for key in ("Scope", "Driver", "EnableIPv6", "IPAM", "Internal", "Attachable", "Ingress", "ConfigFrom"):
            if key == "IPAM" and name == "bridge":
                assert got["IPAM"]["Options"] is None
                assert [set(c) for c in got["IPAM"]["Config"]] == [set(c) for c in want["IPAM"]["Config"]]
                continue
            assert got[key] == want[key], (name, key)
        want_options = {k: v.replace("docker0", "cnm0") for k, v in want["Options"].items()}
        assert got["Options"] == want_options, name
