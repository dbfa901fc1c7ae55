"""Pure logic: value types, bridge options, the registry, the resolv.conf and hosts renderers."""

from __future__ import annotations

import ipaddress
import re

import pytest

from cnm import IPAMConfig, PortBinding, errors, etchosts, resolvconf
from cnm.driverapi import DriverContext
from cnm.firewall.recording import RecordingFirewall
from cnm.kernel.netns import NetNS
from cnm.registry import DriverRegistry
from cnm.types import PortRange
from cnm_drivers.bridge import BridgeOptions
from cnm_drivers.null import NullDriver


def test_ipam_config_converts_and_validates() -> None:
    cfg = IPAMConfig(
        subnet="172.28.0.0/16", gateway="172.28.5.254", ip_range="172.28.5.0/24", aux_addresses={"a": "172.28.1.5"}
    )
    assert cfg.subnet == ipaddress.ip_network("172.28.0.0/16")
    assert cfg.gateway == ipaddress.ip_address("172.28.5.254")
    with pytest.raises(errors.InvalidConfig, match=r"did you mean 172\.28\.0\.0/16"):
        IPAMConfig(subnet="172.28.1.0/16")
    with pytest.raises(errors.InvalidConfig, match="not inside subnet"):
        IPAMConfig(subnet="172.28.0.0/16", ip_range="10.0.0.0/24")
    with pytest.raises(errors.InvalidConfig, match="need an explicit subnet"):
        IPAMConfig(gateway="10.0.0.1")
    with pytest.raises(errors.InvalidConfig, match="network or broadcast"):
        IPAMConfig(subnet="10.0.0.0/24", gateway="10.0.0.255")


def test_port_binding_forms() -> None:
    assert PortBinding(container_port=80).container_port == PortRange(80, 80)
    ranged = PortBinding(container_port="8000-8002", host_port="9000-9002", protocol="UDP")
    assert (len(ranged.container_port), ranged.protocol) == (3, "udp")
    assert list(ranged.container_port) == [8000, 8001, 8002]
    assert str(PortBinding(container_port=80, host_port=8080, host_ip="127.0.0.1")) == "127.0.0.1:8080:80/tcp"
    with pytest.raises(errors.InvalidConfig, match="differ in length"):
        PortBinding(container_port="80-81", host_port="90-92")
    with pytest.raises(errors.InvalidConfig, match="reversed"):
        PortRange.parse("90-80")
    with pytest.raises(errors.InvalidConfig):
        PortRange.parse("http")


def test_a_single_port_is_its_number() -> None:
    binding = PortBinding(container_port=80, host_port=8080)
    assert binding.container_port == 80
    assert binding.host_port == 8080
    assert 8080 == binding.host_port  # noqa: SIM300 - the int on the left is what is checked
    assert binding.host_port != 8081
    assert int(binding.host_port) == 8080
    assert (str(binding.container_port), str(PortRange(8000, 8010))) == ("80", "8000-8010")
    # Equal values hash alike, so a port is found among ints and an int among ports.
    assert hash(PortRange(80, 80)) == hash(80)
    assert 80 in {PortRange(80, 80)}
    assert PortRange(80, 80) in {80, 443}
    assert len({PortRange(80, 80), PortRange(80, 80), PortRange(80, 81)}) == 2
    # A real range is not one number: it equals only the same range, and int() refuses it.
    assert PortRange(80, 81) != 80
    assert PortRange(80, 81) == PortRange(80, 81)
    with pytest.raises(errors.InvalidConfig, match="not a single port"):
        int(PortRange(8000, 8010))
    # Ordering by (start, end), an int n counting as (n, n).
    assert sorted([PortRange(90, 90), PortRange(80, 85), PortRange(80, 80)]) == [80, PortRange(80, 85), 90]
    assert PortRange(80, 80) < 81 <= PortRange(81, 81)
    assert PortRange(80, 90) > 80
    # Not a number: neither equal nor ordered; a bool is not a port.
    assert PortRange(80, 80) != "80"
    assert PortRange(1, 1) != True  # noqa: E712 - the comparison is what is checked
    with pytest.raises(TypeError):
        _ = PortRange(80, 80) < "81"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("80", PortBinding(container_port=80)),
        ("8080:80", PortBinding(container_port=80, host_port=8080)),
        ("127.0.0.1:8080:80/udp", PortBinding(container_port=80, host_port=8080, host_ip="127.0.0.1", protocol="udp")),
        ("127.0.0.1::80", PortBinding(container_port=80, host_ip="127.0.0.1")),
        ("80/udp", PortBinding(container_port=80, protocol="udp")),
        ("8000-8010:80-90", PortBinding(container_port="80-90", host_port="8000-8010")),
        ("8000-8010:80", PortBinding(container_port=80, host_port="8000-8010")),
        (" 8080:80/TCP ", PortBinding(container_port=80, host_port=8080)),
    ],
)
def test_port_binding_parses_dockers_publish_syntax(spec: str, expected: PortBinding) -> None:
    parsed = PortBinding.parse(spec)
    assert parsed == expected
    assert PortBinding.parse(str(parsed)) == parsed  # str() gives back a spec parse() reads


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "invalid port spec"),
        ("8080:", "invalid port spec"),
        ("80/", "invalid port spec"),
        ("http", "invalid port spec 'http'"),
        ("80:http", "invalid port spec '80:http'"),
        ("99999:80", "out of range"),
        ("0:80", "out of range"),
        ("90-80:90-80", "reversed"),
        ("8000-8001:80-82", "differ in length"),
        ("80/sctp", "unknown protocol"),
        ("1.2.3.4:80:81:82", "invalid port spec"),
        ("1.2.3.4:80", "invalid port spec '1.2.3.4:80'"),
        ("localhost:8080:80", "invalid host_ip"),
        ("[::1]:8080:80", "IPv6 host addresses are not supported yet"),
        ("80/tcp/udp", "unknown protocol"),
    ],
)
def test_port_binding_parse_refuses_malformed_specs(spec: str, message: str) -> None:
    with pytest.raises(errors.InvalidConfig, match=re.escape(message)):
        PortBinding.parse(spec)


def test_bridge_options_accept_docker_names_and_refuse_unknown() -> None:
    opts = BridgeOptions.parse(
        {"com.docker.network.bridge.enable_icc": "false", "mtu": "1400", "com.docker.network.bridge.name": "br1"}
    )
    assert (opts.icc, opts.mtu, opts.bridge_name, opts.masquerade) == (False, 1400, "br1", True)
    with pytest.raises(errors.InvalidConfig, match="known options"):
        BridgeOptions.parse({"colour": "blue"})
    with pytest.raises(errors.InvalidConfig, match="not a boolean"):
        BridgeOptions.parse({"icc": "maybe"})
    with pytest.raises(errors.InvalidConfig, match="at most 15 bytes"):
        BridgeOptions.parse({"bridge_name": "x" * 16})


def test_bridge_options_gateway_mode_and_trusted_interfaces() -> None:
    assert (BridgeOptions.parse({}).gateway_mode, BridgeOptions.parse({}).trusted_host_interfaces) == ("nat", ())
    opts = BridgeOptions.parse(
        {
            "com.docker.network.bridge.gateway_mode_ipv4": "routed",
            "com.docker.network.bridge.trusted_host_interfaces": "eth0:eth1",
        }
    )
    assert (opts.gateway_mode, opts.trusted_host_interfaces) == ("routed", ("eth0", "eth1"))
    # As stored (JSON) and read back.
    assert BridgeOptions.parse(opts.to_json()) == opts
    with pytest.raises(errors.InvalidConfig, match="gateway_mode must be one of nat, nat-unprotected, routed"):
        BridgeOptions.parse({"gateway_mode": "isolated"})
    with pytest.raises(errors.InvalidConfig, match="at most 15 bytes"):
        BridgeOptions.parse({"trusted_host_interfaces": "eth0:" + "x" * 16})
    with pytest.raises(errors.InvalidConfig, match="trusted_host_interfaces"):
        BridgeOptions.parse({"trusted_host_interfaces": 7})


def test_registry_loads_entry_points_and_names_the_installed_drivers(tmp_path: object) -> None:
    def context(name: str) -> DriverContext:
        return DriverContext(host_netns=NetNS.current(), firewall=RecordingFirewall(), state_dir="/nonexistent")

    registry = DriverRegistry(context)
    assert {"bridge", "null", "host"} <= set(registry.names())
    assert isinstance(registry.get("null"), NullDriver)
    assert registry.get("null") is registry.get("null")
    with pytest.raises(errors.DriverNotFound, match=r"installed drivers: .*bridge"):
        registry.get("nope")
    registry.register("mine", NullDriver)
    assert isinstance(registry.get("mine"), NullDriver)


def test_resolv_conf_drops_loopback_servers() -> None:
    host = "nameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch example.org\noptions edns0\n"
    assert resolvconf.render(host) == "nameserver 10.0.0.2\nsearch example.org\noptions edns0\n"
    only_loopback = resolvconf.render("nameserver 127.0.0.1\n")
    assert only_loopback == "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    custom = resolvconf.render(host, nameservers=["1.1.1.1"], search=["corp"], options=["ndots:2"])
    assert custom == "nameserver 1.1.1.1\nsearch corp\noptions ndots:2\n"


# /etc/hosts of Docker 20.10's container db0 on the default bridge (captured with `docker exec db0 cat /etc/hosts`).
DOCKER_DB0_HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
    "172.17.0.2\t85ea1431e404\n"
)


def test_hosts_file_matches_dockers_layout() -> None:
    text = etchosts.render([etchosts.HostEntry(ipaddress.ip_address("172.17.0.2"), ("85ea1431e404",))])
    assert text == DOCKER_DB0_HOSTS


def test_errors_are_also_builtin_exceptions() -> None:
    assert issubclass(errors.NetworkNotFound, LookupError)
    assert issubclass(errors.InvalidConfig, ValueError)
    assert issubclass(errors.KernelError, OSError)
    err = errors.KernelError("create veth failed", 17)
    assert str(err) == "create veth failed [EEXIST]"
    import pickle

    assert pickle.loads(pickle.dumps(err)).errno == 17  # noqa: S301 - our own bytes
