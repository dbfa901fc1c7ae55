"""cnm's plugin against a real Docker engine's calls: every captured request replayed, every reply compared.

The capture (tests/unit/docker_plugin/) is a Docker 20.10 engine talking to a
test plugin. Here the same raw requests, with the same headers, go over a
Unix socket to cnm's plugin server (a recording driver behind it, cnm's IPAM
on a store in tmp_path), and each reply must have exactly the captured reply's
keys and values, except where the captured plugin chose a value of its own
(its interface names, its MACs, its pool ids, its notes). No root needed.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cnm.ipam import LocalIpam
from cnm.kernel.netns import NetNS
from cnm.plugin import IpamPlugin, NetworkPlugin, PluginClient, PluginError, PluginServer
from cnm.plugin.network import sandbox_ifname
from cnm.plugin.state import ENDPOINT, NETWORK
from cnm.store import SqliteStore
from cnm.types import PortBinding
from tests.unit.plugin_fakes import FakeDriver, NoPortsDriver

CAPTURE = Path(__file__).parent / "docker_plugin" / "4-plugin-calls.jsonl"
HOST = NetNS("/run/netns/plugin-test-host")

# Values the captured plugin chose itself; cnm's plugin chooses its own.
LOOSE = {
    ("NetworkDriver.Join", "InterfaceName", "SrcName"),
    ("NetworkDriver.CreateEndpoint", "Interface", "MacAddress"),
    ("IpamDriver.RequestPool", "PoolID"),
    ("IpamDriver.GetDefaultAddressSpaces", "LocalDefaultAddressSpace"),
    ("IpamDriver.GetDefaultAddressSpaces", "GlobalDefaultAddressSpace"),
    ("NetworkDriver.CreateNetwork", "Err"),
}


def _calls() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CAPTURE.read_text().splitlines() if line.strip()]


class _Raw(http.client.HTTPConnection):
    """Sends a captured body byte for byte, as dockerd did."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)

    def post(self, path: str, raw: str, headers: dict[str, str]) -> tuple[int, str, dict[str, Any]]:
        body = raw.encode()
        sent = {k: v for k, v in headers.items() if k != "Host"} | {"Content-Length": str(len(body))}
        self.request("POST", path, body=body, headers=sent)
        response = self.getresponse()
        return response.status, response.getheader("Content-Type", ""), json.loads(response.read())


def _same(ours: object, theirs: object, where: tuple[str, ...]) -> None:
    """Every key and value as captured, recursively, except the values in LOOSE (only their type)."""
    if where in LOOSE:
        assert type(ours) is type(theirs), f"{where}: {ours!r} vs captured {theirs!r}"
        return
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), f"{where}: {ours!r} vs captured {theirs!r}"
        assert sorted(ours) == sorted(theirs), f"{where}: keys {sorted(ours)} vs captured {sorted(theirs)}"
        for key in theirs:
            _same(ours[key], theirs[key], (*where, key))
    elif isinstance(theirs, list):
        assert isinstance(ours, list), f"{where}: {ours!r} vs captured {theirs!r}"
        assert len(ours) == len(theirs), f"{where}: {ours!r} vs captured {theirs!r}"
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _same(a, b, (*where, str(i)))
    else:
        assert ours == theirs, f"{where}: {ours!r} vs captured {theirs!r}"


class _Plugins:
    """The two captured plugins (net, ipam) as cnm plugins, restartable on the same store."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.driver = FakeDriver()
        self.servers: dict[str, PluginServer] = {}
        self.stores: list[SqliteStore] = []
        self.start()

    def start(self) -> None:
        net_store = SqliteStore(str(self.tmp / "net.db"))
        ipam_store = SqliteStore(str(self.tmp / "ipam.db"))
        self.stores += [net_store, ipam_store]
        self.network = NetworkPlugin(self.driver, net_store, host_netns=HOST)
        self.servers = {
            "net": PluginServer(str(self.tmp / "net.sock"), [self.network]),
            "ipam": PluginServer(str(self.tmp / "ipam.sock"), [IpamPlugin(LocalIpam(ipam_store))]),
        }
        for server in self.servers.values():
            server.start()
        self.conns = {name: _Raw(server.socket_path) for name, server in self.servers.items()}

    def stop(self) -> None:
        for conn in self.conns.values():
            conn.close()
        for server in self.servers.values():
            server.shutdown()
        for store in self.stores:
            store.close()
        self.stores = []


@pytest.fixture
def plugins(tmp_path: Path) -> Iterator[_Plugins]:
    p = _Plugins(tmp_path)
    yield p
    p.stop()


def test_every_captured_call_gets_the_captured_reply(plugins: _Plugins) -> None:
    pool_ids: dict[str, str] = {}  # the captured plugin's pool ids -> cnm's
    default_pools: dict[str, ipaddress.IPv4Network] = {}  # cnm's pool ids of default pools -> subnet
    replayed = 0
    for call in _calls():
        if "marker" in call:
            if call["marker"].startswith("./start.sh"):
                plugins.stop()  # the engine restarted; restart the plugins too, on their stores
                plugins.start()
            continue
        method = call["path"].lstrip("/")
        raw = call["raw_body"]
        for theirs, ours in pool_ids.items():
            raw = raw.replace(json.dumps(theirs)[1:-1], ours)
        status, content_type, reply = plugins.conns[call["plugin"]].post(call["path"], raw, call["headers"])
        assert status == 200, (method, reply)
        assert content_type == "application/vnd.docker.plugins.v1+json"
        captured = call["reply"]
        if method == "IpamDriver.RequestPool":
            pool_ids[captured["PoolID"]] = reply["PoolID"]
            if json.loads(raw)["Pool"] == "":
                # A default pool: the captured plugin had its own; cnm's is its first default pool.
                default_pools[reply["PoolID"]] = ipaddress.IPv4Network(reply["Pool"])
                captured = captured | {"Pool": reply["Pool"]}
            captured = captured | {"Data": {}}  # the captured plugin added a note of its own
        elif method == "IpamDriver.RequestAddress" and json.loads(raw)["PoolID"] in default_pools:
            # The same host numbers (.1 the gateway, then .2) in cnm's own default pool.
            subnet = default_pools[json.loads(raw)["PoolID"]]
            host = int(ipaddress.ip_interface(captured["Address"]).ip) & 0xFF
            captured = captured | {"Address": f"{subnet.network_address + host}/{subnet.prefixlen}"}
        elif method == "NetworkDriver.EndpointOperInfo":
            assert isinstance(reply["Value"], dict)
            captured = {"Value": reply["Value"]}
        _same(reply, captured, (method,))
        replayed += 1
    assert replayed == 69  # every call of the capture
    # Everything Docker removed is gone from the "kernel" and from the store.
    assert plugins.driver.networks == set()
    assert plugins.driver.interfaces == {}
    assert plugins.driver.published == {}
    with plugins.network._store.transaction() as txn:
        assert txn.list(NETWORK) == []
        assert txn.list(ENDPOINT) == []


def _replay_until(plugins: _Plugins, stop_after: int) -> list[dict[str, Any]]:
    calls = [c for c in _calls() if "marker" not in c and c["plugin"] == "net"]
    for call in calls[:stop_after]:
        plugins.conns["net"].post(call["path"], call["raw_body"], call["headers"])
    return calls


def test_the_driver_gets_what_docker_sent(plugins: _Plugins) -> None:
    calls = _replay_until(plugins, 12)  # pnet with p1 and p2 (p2: --ip, --mac-address, -p 8083:80)
    driver = plugins.driver
    created = next(arg for verb, arg in driver.calls if verb == "create_network")
    assert created.options == {"dk.opt": "1"}  # type: ignore[attr-defined]
    assert str(created.ipv4[0].pool) == "172.30.0.0/24"  # type: ignore[attr-defined]
    assert str(created.ipv4[0].gateway) == "172.30.0.1/24"  # type: ignore[attr-defined]
    endpoints = [arg for verb, arg in driver.calls if verb == "create_endpoint"]
    assert [str(e.address) for e in endpoints] == ["172.30.0.2/24", "172.30.0.50/24"]  # type: ignore[attr-defined]
    # Docker gave no MAC for p1: cnm's, as Docker makes them; p2's --mac-address is kept.
    assert [e.mac for e in endpoints] == ["02:42:ac:1e:00:02", "02:42:de:ad:be:ef"]  # type: ignore[attr-defined]
    joins = [arg for verb, arg in driver.calls if verb == "join"]
    for (endpoint, sandbox, ifname), call in zip(joins, [calls[4], calls[9]], strict=True):  # type: ignore[misc]
        assert ifname == sandbox_ifname(endpoint.id)
        assert sandbox.netns == HOST  # Docker moves the interface in itself
        assert sandbox.id == call["body"]["SandboxKey"].rsplit("/", 1)[1]
    published = [arg for verb, arg in driver.calls if verb == "publish_ports"]
    assert [p.ports for p in published] == [  # type: ignore[attr-defined]
        (PortBinding(container_port=80, host_port=8083, protocol="tcp"),)
    ]


def test_repeated_calls_change_nothing_more(plugins: _Plugins) -> None:
    calls = _replay_until(plugins, 6)  # pnet; p1 created, joined, programmed
    driver = plugins.driver
    before = driver.verbs()
    for call in calls[2:6]:  # CreateNetwork, CreateEndpoint, Join, ProgramExternalConnectivity again
        status, _, reply = plugins.conns["net"].post(call["path"], call["raw_body"], call["headers"])
        assert status == 200
        assert "Err" not in reply
    assert driver.verbs() == before
    # Deletes of what is not there succeed.
    client = PluginClient(plugins.servers["net"].socket_path)
    assert client.call("NetworkDriver.DeleteEndpoint", {"NetworkID": "n" * 64, "EndpointID": "e" * 64}) == {}
    assert client.call("NetworkDriver.Leave", {"NetworkID": "n" * 64, "EndpointID": "e" * 64}) == {}
    assert client.call("NetworkDriver.DeleteNetwork", {"NetworkID": "n" * 64}) == {}
    client.close()


def test_a_killed_plugin_restarts_with_its_state_and_undoes_half_made_work(plugins: _Plugins) -> None:
    calls = _replay_until(plugins, 6)
    plugins.stop()
    # Simulate a plugin killed in the middle of a join and of a create: the intents are in the store.
    store = SqliteStore(str(plugins.tmp / "net.db"))
    with store.transaction() as txn:
        record = txn.get(ENDPOINT, calls[3]["body"]["EndpointID"])
        assert record is not None
        assert record["join"]["state"] == "joined"
        txn.put(
            NETWORK,
            "f" * 64,
            {
                "name": "f" * 12,
                "options": {},
                "ipv4": [{"pool": "10.9.0.0/24"}],
                "internal": False,
                "state": "creating",
            },
        )
    store.close()
    plugins.driver.networks.add("f" * 64)
    plugins.start()
    assert "f" * 64 not in plugins.driver.networks  # the half-made network was undone
    # The finished join survives the restart: Docker's next call finds it.
    status, _, reply = plugins.conns["net"].post(calls[4]["path"], calls[4]["raw_body"], calls[4]["headers"])
    assert status == 200
    assert reply["InterfaceName"]["SrcName"] == sandbox_ifname(calls[3]["body"]["EndpointID"])


def test_errors_reach_docker_as_err_and_nothing_is_left(plugins: _Plugins) -> None:
    calls = _replay_until(plugins, 3)
    client = PluginClient(plugins.servers["net"].socket_path)
    plugins.driver.fail_on = "join"
    endpoint = calls[3]["body"]
    client.call("NetworkDriver.CreateEndpoint", endpoint)
    with pytest.raises(PluginError, match="join refused"):
        client.call("NetworkDriver.Join", calls[4]["body"])
    assert plugins.driver.interfaces == {}
    with plugins.network._store.transaction() as txn:
        assert txn.get(ENDPOINT, endpoint["EndpointID"])["join"] is None  # type: ignore[index]
    plugins.driver.fail_on = None
    assert client.call("NetworkDriver.Join", calls[4]["body"])["Gateway"] == "172.30.0.1"
    # A second container asking for a host port the first holds is refused, and holds nothing.
    program = calls[10]["body"]  # p2's ProgramExternalConnectivity, -p 8083:80
    client.call("NetworkDriver.ProgramExternalConnectivity", {**program, "EndpointID": endpoint["EndpointID"]})
    other = {**calls[8]["body"], "EndpointID": "a" * 64}
    client.call("NetworkDriver.CreateEndpoint", other)
    with pytest.raises(PluginError, match="host port 8083/tcp is already published"):
        client.call("NetworkDriver.ProgramExternalConnectivity", {**program, "EndpointID": "a" * 64})
    # -p 80 without a host port takes one of Docker's ephemeral range.
    any_port = json.loads(json.dumps(program).replace('"HostPort": 8083, "HostPortEnd": 8083', '"HostPort": 0'))
    client.call("NetworkDriver.ProgramExternalConnectivity", {**any_port, "EndpointID": "a" * 64})
    assert plugins.driver.published["a" * 64][0].host_port == 49153  # type: ignore[attr-defined]
    client.close()


def test_malformed_requests_and_unknown_methods(plugins: _Plugins) -> None:
    conn = plugins.conns["net"]
    headers = {"Accept": "application/vnd.docker.plugins.v1.2+json"}
    status, _, reply = conn.post("/NetworkDriver.CreateNetwork", '{"NetworkID": 7}', headers)
    assert status == 200
    assert "field 'NetworkID' is int" in reply["Err"]
    status, _, reply = conn.post("/NetworkDriver.Join", "{not json", headers)
    assert "not JSON" in reply["Err"]
    status, _, reply = conn.post("/NetworkDriver.Unheard", "{}", headers)
    assert status == 404  # Docker takes 404 as "not implemented" for optional methods


def test_ports_need_a_driver_that_publishes(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    plugin = NetworkPlugin(NoPortsDriver(), store, host_netns=HOST)
    calls = [c for c in _calls() if "marker" not in c and c["plugin"] == "net"]
    for call in calls[2:4] + calls[8:10]:
        plugin.routes()[call["path"].lstrip("/")](call["body"])
    with pytest.raises(Exception, match="cannot publish ports"):
        plugin.program_external_connectivity(calls[10]["body"])
    store.close()


def test_the_ipam_refuses_a_taken_subnet_and_answers_retries(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    ipam = IpamPlugin(LocalIpam(store))
    pool = ipam.request_pool(
        {"AddressSpace": "CnmLocal", "Pool": "10.7.0.0/24", "SubPool": "10.7.0.128/25", "V6": False}
    )
    assert pool == {"PoolID": pool["PoolID"], "Pool": "10.7.0.0/24", "Data": {}}
    gateway = {"PoolID": pool["PoolID"], "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}
    assert ipam.request_address(gateway)["Address"] == "10.7.0.1/24"  # the subnet's first, not the range's
    assert (
        ipam.request_address({"PoolID": pool["PoolID"], "Address": "", "Options": None})["Address"] == "10.7.0.128/24"
    )
    with pytest.raises(Exception, match=r"10\.7\.0\.0/24"):
        ipam.request_pool({"Pool": "10.7.0.0/24"})
    assert ipam.release_address({"PoolID": pool["PoolID"], "Address": "10.7.0.128"}) == {}
    assert ipam.release_address({"PoolID": pool["PoolID"], "Address": "10.7.0.128"}) == {}
    assert ipam.release_pool({"PoolID": pool["PoolID"]}) == {}
    store.close()


def test_internal_is_read_where_libnetwork_puts_it() -> None:
    from cnm.plugin.messages import CreateNetworkRequest

    body = {
        "NetworkID": "a" * 64,
        "Options": {
            "com.docker.network.enable_ipv6": False,
            "com.docker.network.generic": {"com.docker.network.bridge.enable_icc": "false"},
            "com.docker.network.internal": True,
        },
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}],
        "IPv6Data": [],
    }
    req = CreateNetworkRequest.parse(body)
    assert req.internal
    assert req.options == {"com.docker.network.bridge.enable_icc": "false"}
