"""inspect() against Docker's own output, field by field; no privileges needed.

Records are built to describe the scenes Docker was captured in (same ids,
names, addresses, options), and cnm's inspect views of them must print what
Docker printed, key for key; where cnm has no equivalent (aliases, the
container's image...), only the shape is compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cnm._core import inspect as _inspect
from cnm._core import records as rec
from cnm.controller import DEFAULT_BRIDGE, DEFAULT_BRIDGE_OPTIONS
from cnm.types import PortBinding

DOCKER = Path(__file__).parent / "docker_inspect"


def _load(name: str) -> Any:
    return json.loads((DOCKER / name).read_text())


def _network_record(docker: dict[str, Any], **overrides: Any) -> rec.NetworkRecord:
    config = docker["IPAM"]["Config"]
    fields: dict[str, Any] = {
        "id": docker["Id"],
        "name": docker["Name"],
        "driver": docker["Driver"],
        "created": docker["Created"],
        "internal": docker["Internal"],
        "labels": docker["Labels"],
        "user_options": docker["Options"],
        "predefined": docker["IPAM"]["Options"] is None,
    }
    if config:
        subnet = config[0]["Subnet"]
        fields.update(
            subnet=subnet,
            gateway=subnet.rsplit(".", 2)[0] + ".0.1",
            user_gateway="Gateway" in config[0],
            pool_id="pool",
        )
    fields.update(overrides)
    return rec.NetworkRecord(**fields)


def _scene(docker: dict[str, Any]) -> tuple[list[rec.EndpointRecord], dict[str, rec.SandboxRecord]]:
    """The endpoint and sandbox records behind a ``Containers`` map."""
    endpoints, sandboxes = [], {}
    for sandbox_id, c in docker["Containers"].items():
        endpoints.append(
            rec.EndpointRecord(
                id=c["EndpointID"],
                name=c["Name"],
                network_id=docker["Id"],
                address=c["IPv4Address"] or None,
                mac=c["MacAddress"] or None,
                sandbox_id=sandbox_id,
            )
        )
        sandboxes[sandbox_id] = rec.SandboxRecord(
            id=sandbox_id, name=c["Name"], hostname=sandbox_id[:12], netns_path="", files_dir=""
        )
    return endpoints, sandboxes


@pytest.mark.parametrize(
    "name",
    [
        "3-network-inspect-bridge-empty.json",
        "3-network-inspect-bridge-2containers.json",
        "3-network-inspect-bridge-icc-false.json",
        "3-network-inspect-net1-empty.json",
        "3-network-inspect-net1-2containers.json",
        "3-network-inspect-neticc.json",
        "3-network-inspect-none-host.json",
    ],
)
def test_network_inspect_prints_what_docker_printed(name: str) -> None:
    for docker in _load(name):
        endpoints, sandboxes = _scene(docker)
        got = _inspect.network(_network_record(docker), endpoints, sandboxes)
        assert list(got) == list(docker), "same keys, in Docker's order"
        for key in docker:
            assert got[key] == docker[key], key


def test_default_bridge_options_are_dockers_list() -> None:
    docker = _load("3-network-inspect-bridge-empty.json")[0]["Options"]
    ours = {k: str(v) for k, v in DEFAULT_BRIDGE_OPTIONS.items()}
    assert ours == {k: v.replace("docker0", DEFAULT_BRIDGE) for k, v in docker.items()}


def test_network_inspect_quirks() -> None:
    base = _load("3-network-inspect-net1-empty.json")[0]
    # Options as given, values as strings; a gateway asked for shows; Python's UTC suffix becomes Z.
    record = _network_record(
        base,
        user_options={"icc": False, "mtu": 1400},
        user_gateway=True,
        ip_range="172.28.5.0/24",
        aux_addresses={"router": "172.28.0.5"},
        created="2026-11-27T21:09:05.056981+00:00",
    )
    # An endpoint not joined to any sandbox shows under "ep-<id>" with its own name.
    loose = rec.EndpointRecord(id="e" * 64, name="loose", network_id=record.id, address="172.28.0.9/16")
    got = _inspect.network(record, [loose], {})
    assert got["Options"] == {"icc": "false", "mtu": "1400"}
    assert got["IPAM"]["Config"] == [
        {
            "Subnet": "172.28.0.0/16",
            "IPRange": "172.28.5.0/24",
            "Gateway": "172.28.0.1",
            "AuxiliaryAddresses": {"router": "172.28.0.5"},
        }
    ]
    assert got["Created"] == "2026-11-27T21:09:05.056981Z"
    assert got["Containers"] == {
        "ep-" + "e" * 64: {
            "Name": "loose",
            "EndpointID": "e" * 64,
            "MacAddress": "",
            "IPv4Address": "172.28.0.9/16",
            "IPv6Address": "",
        }
    }
    assert got["Scope"] == "local"


def _sandbox_from(container: dict[str, Any], **fields: Any) -> rec.SandboxRecord:
    return rec.SandboxRecord(
        id=container["Id"],
        name=container["Name"].lstrip("/"),
        hostname=container["Config"]["Hostname"],
        netns_path="/var/lib/cnm/netns/" + container["NetworkSettings"]["SandboxKey"].rsplit("/", 1)[-1],
        files_dir="/var/lib/cnm/sandboxes/" + container["Id"],
        created=container["Created"],
        network_mode=container["HostConfig"]["NetworkMode"],
        **fields,
    )


def _joined(settings: dict[str, Any], sandbox_id: str) -> list[tuple[rec.NetworkRecord, rec.EndpointRecord]]:
    joined = []
    for name, n in settings["Networks"].items():
        network = rec.NetworkRecord(id=n["NetworkID"], name=name, driver="bridge", predefined=name == "bridge")
        address = f"{n['IPAddress']}/{n['IPPrefixLen']}" if n["IPAddress"] else None
        endpoint = rec.EndpointRecord(
            id=n["EndpointID"],
            name=name,
            network_id=n["NetworkID"],
            address=address,
            mac=n["MacAddress"] or None,
            gateway=n["Gateway"] or None,
            sandbox_id=sandbox_id,
            aliases=[a for a in n["Aliases"] or () if a != sandbox_id[:12]],
            ports=rec.ports_to_json(
                [
                    PortBinding(container_port=int(p.split("/")[0]), host_port=int(b["HostPort"]), host_ip=b["HostIp"])
                    for p, bindings in settings["Ports"].items()
                    for b in bindings
                    if ":" not in b["HostIp"]  # cnm publishes on IPv4 only
                ]
            ),
        )
        joined.append((network, endpoint))
    return joined


# Docker's values cnm does not model: per-endpoint IPAM requests and driver options.
_UNMODELLED = {"IPAMConfig", "DriverOpts"}


@pytest.mark.parametrize(
    "name", ["3-container-inspect-c2.json", "3-container-inspect-app0-linked.json", "3-container-inspect-web.json"]
)
def test_sandbox_inspect_matches_docker_container_networking(name: str) -> None:
    container = _load(name)[0]
    settings = container["NetworkSettings"]
    sandbox = _sandbox_from(container)
    got = _inspect.sandbox(
        sandbox,
        _joined(settings, sandbox.id),
        hosts_path=container["HostsPath"],
        resolv_conf_path=container["ResolvConfPath"],
        hostname_path=container["HostnamePath"],
    )
    # Top level: a subset of Docker's container keys, with Docker's values.
    assert set(got) <= set(container)
    assert set(got["HostConfig"]) <= set(container["HostConfig"])
    assert set(got["Config"]) <= set(container["Config"])
    for key in ("Id", "Created", "ResolvConfPath", "HostnamePath", "HostsPath"):
        assert got[key] == container[key], key
    assert got["Name"] == container["Name"].lstrip("/")
    assert got["HostConfig"]["NetworkMode"] == container["HostConfig"]["NetworkMode"]
    # NetworkSettings: every key of Docker's, in its order, and equal values.
    ours = got["NetworkSettings"]
    assert list(ours) == list(settings)
    for key in settings:
        if key in ("Networks", "SandboxKey", "SandboxID"):
            continue
        if key == "Ports":
            ipv4 = {p: [b for b in bs if ":" not in b["HostIp"]] for p, bs in settings["Ports"].items()}
            assert ours["Ports"] == ipv4
            continue
        assert ours[key] == settings[key], key
    assert list(ours["Networks"]) == list(settings["Networks"])
    for net_name, entry in settings["Networks"].items():
        mine = ours["Networks"][net_name]
        assert list(mine) == list(entry)
        for key in entry:
            if key not in _UNMODELLED:
                assert mine[key] == entry[key], (net_name, key)


@pytest.mark.parametrize(
    ("mode", "name"),
    [
        ("none", "2-network-none.networksettings.json"),
        ("host", "2-network-host.networksettings.json"),
        ("container", "2-network-container-c2.networksettings.json"),
    ],
)
def test_mode_network_settings_match_docker(mode: str, name: str) -> None:
    docker = _load(name)
    if mode == "container":
        record = rec.SandboxRecord(
            id="1" * 64,
            name="k1",
            hostname="c2",
            netns_path="/var/lib/cnm/netns/222222222222",
            files_dir="/var/lib/cnm/sandboxes/" + "2" * 64,
            mode=rec.CONTAINER,
            shares="2" * 64,
            network_mode="container:" + "2" * 64,
        )
        joined = []
    else:
        record = rec.SandboxRecord(
            id=docker["SandboxID"],
            name="n1",
            hostname="n1",
            netns_path="/run/netns/host" if mode == "host" else "/var/lib/cnm/netns/" + docker["SandboxID"][:12],
            files_dir="/var/lib/cnm/sandboxes/x",
            mode=rec.HOST if mode == "host" else rec.PRIVATE,
            network_mode=mode,
        )
        (net_name, entry), *_ = docker["Networks"].items()
        network = rec.NetworkRecord(
            id=entry["NetworkID"], name=net_name, driver=mode.replace("none", "null"), predefined=True
        )
        joined = [(network, rec.EndpointRecord(id=entry["EndpointID"], name="n1", network_id=network.id))]
    got = _inspect.sandbox(record, joined, hosts_path="h", resolv_conf_path="r", hostname_path="n")["NetworkSettings"]
    assert list(got) == list(docker)
    for key in docker:
        if key == "SandboxKey" and mode != "container":
            assert got[key] == record.netns_path
        elif key == "SandboxID" and mode != "container":
            assert got[key] == record.id
        else:
            assert got[key] == docker[key], key


def test_endpoint_inspect_is_a_networks_entry() -> None:
    container = _load("3-container-inspect-c2.json")[0]
    entry = container["NetworkSettings"]["Networks"]["net1"]
    network = rec.NetworkRecord(id=entry["NetworkID"], name="net1", driver="bridge")
    unjoined = rec.EndpointRecord(id=entry["EndpointID"], name="c2", network_id=network.id, address="172.28.0.3/16")
    got = _inspect.endpoint_settings(network, unjoined)
    assert list(got) == list(entry)
    # Not joined: no gateway yet.
    assert (got["IPAddress"], got["IPPrefixLen"], got["Gateway"]) == ("172.28.0.3", 16, "")
