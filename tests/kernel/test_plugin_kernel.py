"""``cnm plugin serve`` as a real process, driven over its Unix socket the way dockerd drives it.

The test plays the engine: it calls the protocol with a real HTTP client, and
does what dockerd does with the replies (moves ``SrcName`` into the sandbox as
eth0, sets the address, MAC and routes; moves it back before Leave). The
plugin serves cnm's bridge driver and IPAM in a throwaway host namespace; real
packets cross the bridge, and the plugin is killed with SIGKILL mid-life.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cnm.kernel.netns import NetNS
from cnm.plugin import PluginClient
from cnm.testing import traffic
from cnm.testing.hosts import Outside, nft_state

pytestmark = pytest.mark.kernel

GATEWAY = {"RequestAddressType": "com.docker.network.gateway"}


def _ip(*argv: str, netns: NetNS) -> str:
    """``ip`` in one of the test's namespaces (never the machine's own)."""
    return subprocess.run(
        ["ip", "-n", os.path.basename(netns.path), *argv], check=True, capture_output=True, text=True
    ).stdout


def _start_plugin(tmp: Path, host: NetNS, track: Callable[[Any], Any]) -> tuple[subprocess.Popen[str], PluginClient]:
    sock = tmp / "cnm-bridge.sock"
    argv = [sys.executable, "-m", "cnm.cli", "--state-dir", str(tmp / "state"), "--host-netns", host.path]
    argv += ["--firewall", "nftables", "plugin", "serve", "--driver", "bridge", "--ipam", "--socket", str(sock)]
    proc: subprocess.Popen[str] = track(subprocess.Popen(argv, stderr=subprocess.PIPE, text=True))
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "cnm plugin cnm-bridge: serving ..." once it listens
    assert "serving NetworkDriver, IpamDriver" in line, line + proc.stderr.read()
    return proc, PluginClient(str(sock))


class _Engine:
    """What dockerd does around the plugin calls, for one sandbox."""

    def __init__(self, client: PluginClient, host: NetNS, network_id: str, pool_id: str) -> None:
        self.client = client
        self.host = host
        self.network_id = network_id
        self.pool_id = pool_id

    def run(self, sandbox: NetNS, endpoint_id: str, *, port_map: list[dict[str, Any]] | None = None) -> str:
        address = self.client.call(
            "IpamDriver.RequestAddress", {"PoolID": self.pool_id, "Address": "", "Options": None}
        )
        ids = {"NetworkID": self.network_id, "EndpointID": endpoint_id}
        options = {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": port_map or []}
        iface = {"Address": address["Address"], "AddressIPv6": "", "MacAddress": ""}
        created = self.client.call("NetworkDriver.CreateEndpoint", {**ids, "Interface": iface, "Options": options})
        joined = self.client.call("NetworkDriver.Join", {**ids, "SandboxKey": sandbox.path, "Options": options})
        src = joined["InterfaceName"]["SrcName"]
        assert joined["InterfaceName"]["DstPrefix"] == "eth"
        # dockerd: move it in, name it eth0, give it the address, the MAC the plugin chose, the gateway.
        _ip("link", "set", src, "netns", os.path.basename(sandbox.path), netns=self.host)
        _ip("link", "set", src, "name", "eth0", "address", created["Interface"]["MacAddress"], netns=sandbox)
        _ip("addr", "add", address["Address"], "dev", "eth0", netns=sandbox)
        _ip("link", "set", "eth0", "up", netns=sandbox)
        _ip("route", "add", "default", "via", joined["Gateway"], netns=sandbox)
        self.client.call("NetworkDriver.ProgramExternalConnectivity", {**ids, "Options": options})
        return address["Address"].split("/")[0]

    def rm(self, sandbox: NetNS, endpoint_id: str, address: str) -> None:
        ids = {"NetworkID": self.network_id, "EndpointID": endpoint_id}
        self.client.call("NetworkDriver.RevokeExternalConnectivity", ids)
        # dockerd moves the interface back to the host under its SrcName before Leave.
        src = "cnmj" + endpoint_id[:11]
        _ip("link", "set", "eth0", "down", netns=sandbox)
        _ip("link", "set", "eth0", "name", src, netns=sandbox)
        _ip("link", "set", src, "netns", os.path.basename(self.host.path), netns=sandbox)
        self.client.call("NetworkDriver.Leave", ids)
        self.client.call("NetworkDriver.DeleteEndpoint", ids)
        self.client.call("IpamDriver.ReleaseAddress", {"PoolID": self.pool_id, "Address": address})


def test_bridge_served_end_to_end_survives_sigkill(
    tmp_path: Path,
    host_netns: NetNS,
    outside: Outside,
    netns_factory: Callable[[str], NetNS],
    processes: Callable[[Any], Any],
) -> None:
    proc, client = _start_plugin(tmp_path, host_netns, processes)
    assert client.call("Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert client.call("NetworkDriver.GetCapabilities") == {"Scope": "local", "ConnectivityScope": "local"}
    pool = client.call("IpamDriver.RequestPool", {"AddressSpace": "CnmLocal", "Pool": "10.88.0.0/24", "V6": False})
    gateway = client.call("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "", "Options": GATEWAY})
    network_id = "ab" * 32
    data = [{"AddressSpace": "CnmLocal", "Pool": pool["Pool"], "Gateway": gateway["Address"]}]
    options = {"com.docker.network.enable_ipv6": False, "com.docker.network.generic": {}}
    client.call("NetworkDriver.CreateNetwork", {"NetworkID": network_id, "Options": options, "IPv4Data": data})
    bridge = "cnm-" + network_id[:11]
    assert "10.88.0.1/24" in _ip("addr", "show", bridge, netns=host_netns)

    engine = _Engine(client, host_netns, network_id, pool["PoolID"])
    c1, c2 = netns_factory("c1"), netns_factory("c2")
    e1, e2 = "c1" * 32, "c2" * 32
    a1 = engine.run(c1, e1)
    port_map = [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}]
    a2 = engine.run(c2, e2, port_map=port_map)
    assert (a1, a2) == ("10.88.0.2", "10.88.0.3")

    runner1, runner2 = _In(c1), _In(c2)
    assert traffic.ping(runner1, a2)
    assert traffic.ping(runner1, str(outside.address))  # out through the bridge, masqueraded
    server = processes(traffic.serve(runner2, "tcp", 80))
    assert traffic.probe(outside, "tcp", str(outside.host_address), 8080) == str(outside.address)

    # SIGKILL the plugin; a new one on the same state carries on.
    proc.kill()
    proc.wait()
    client.close()
    proc, client = _start_plugin(tmp_path, host_netns, processes)
    engine.client = client
    again = client.call("NetworkDriver.Join", {"NetworkID": network_id, "EndpointID": e1, "SandboxKey": c1.path})
    assert again["InterfaceName"]["SrcName"] == "cnmj" + e1[:11]  # the same answer, nothing made twice
    assert client.call("NetworkDriver.EndpointOperInfo", {"NetworkID": network_id, "EndpointID": e2})["Value"][
        "cnm.ports"
    ] == ["8080:80/tcp"]
    assert traffic.ping(runner1, a2)
    assert traffic.probe(outside, "tcp", str(outside.host_address), 8080) == str(outside.address)
    server.kill()

    # docker rm -f both, then docker network rm: nothing of the network is left.
    engine.rm(c1, e1, a1)
    engine.rm(c2, e2, a2)
    client.call("NetworkDriver.DeleteNetwork", {"NetworkID": network_id})
    client.call("IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": "10.88.0.1"})
    client.call("IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]})
    names = {
        line.split(":")[1].strip().split("@")[0] for line in _ip("-o", "link", "show", netns=host_netns).splitlines()
    }
    assert names == {"lo", "uplink0"}
    assert bridge not in nft_state(host_netns)
    assert "8080" not in nft_state(host_netns)
    client.close()


class _In:
    """Runs commands in a namespace the test made (a "container")."""

    def __init__(self, ns: NetNS) -> None:
        self.ns = ns

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(["nsenter", f"--net={self.ns.path}", "--", *argv], **kwargs)  # noqa: PLW1510

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(["nsenter", f"--net={self.ns.path}", "--", *argv], **kwargs)
