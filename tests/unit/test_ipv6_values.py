"""Pure logic: IPAMConfig of both families and NetworkAddressing, the checked form of ``ipam=``."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from cnm import IPAMConfig, PortBinding, errors
from cnm.types import NetworkAddressing

net = ipaddress.ip_network
addr = ipaddress.ip_address


def test_an_ipv6_config_converts_and_validates_like_an_ipv4_one() -> None:
    cfg = IPAMConfig(
        subnet="fd00:1:2::/64",
        gateway="fd00:1:2::1",
        ip_range="fd00:1:2::100/120",
        aux_addresses={"router": "fd00:1:2::fe"},
    )
    assert (cfg.subnet, cfg.gateway, cfg.ip_range) == (
        net("fd00:1:2::/64"),
        addr("fd00:1:2::1"),
        net("fd00:1:2::100/120"),
    )
    assert cfg.aux_addresses == {"router": addr("fd00:1:2::fe")}
    assert cfg.version == 6
    assert IPAMConfig(subnet="10.0.0.0/8").version == 4
    assert IPAMConfig().version is None


def test_ipv6_cidr_errors_are_clean_and_say_what_to_do() -> None:
    with pytest.raises(errors.InvalidConfig, match=r"did you mean fd00:1::/64"):
        IPAMConfig(subnet="fd00:1::5/64")
    with pytest.raises(errors.InvalidConfig, match="CIDR form"):
        IPAMConfig(subnet="fd00:1::")
    with pytest.raises(errors.InvalidConfig, match="invalid subnet 'fd00:::/64'"):
        IPAMConfig(subnet="fd00:::/64")
    with pytest.raises(errors.InvalidConfig, match="invalid gateway"):
        IPAMConfig(subnet="fd00:1::/64", gateway="fd00:1::zz")


def test_an_ipv6_gateway_may_be_the_last_address_but_not_the_anycast_one() -> None:
    # No broadcast in IPv6: the all-ones host is an address like any other; the all-zero one is reserved.
    assert IPAMConfig(subnet="fd00::/64", gateway="fd00::ffff:ffff:ffff:ffff").gateway is not None
    with pytest.raises(errors.InvalidConfig, match="subnet-router anycast"):
        IPAMConfig(subnet="fd00::/64", gateway="fd00::")
    with pytest.raises(errors.InvalidConfig, match="network or broadcast"):
        IPAMConfig(subnet="10.0.0.0/24", gateway="10.0.0.255")
    # /127 (RFC 6164): both addresses are hosts.
    assert IPAMConfig(subnet="fd00::/127", gateway="fd00::").gateway == addr("fd00::")


@pytest.mark.parametrize(
    ("kwargs", "what"),
    [
        ({"subnet": "10.0.0.0/24", "gateway": "fd00::1"}, r"gateway fd00::1 is IPv6 but subnet 10\.0\.0\.0/24 is IPv4"),
        ({"subnet": "fd00::/64", "gateway": "10.0.0.1"}, r"gateway 10\.0\.0\.1 is IPv4 but subnet fd00::/64 is IPv6"),
        ({"subnet": "10.0.0.0/24", "ip_range": "fd00::/80"}, r"ip_range fd00::/80 is IPv6"),
        ({"subnet": "fd00::/64", "aux_addresses": {"a": "10.0.0.9"}}, r"aux address a 10\.0\.0\.9 is IPv4"),
    ],
)
def test_a_value_of_the_other_family_names_both_families_and_the_fix(kwargs: dict[str, object], what: str) -> None:
    with pytest.raises(errors.InvalidConfig, match=what) as caught:
        IPAMConfig(**kwargs)  # type: ignore[arg-type]
    assert "second IPAMConfig" in str(caught.value)


def test_ipv6_values_outside_the_subnet_are_refused() -> None:
    with pytest.raises(errors.InvalidConfig, match="not inside subnet"):
        IPAMConfig(subnet="fd00:1::/64", gateway="fd00:2::1")
    with pytest.raises(errors.InvalidConfig, match="not inside subnet"):
        IPAMConfig(subnet="fd00:1::/64", ip_range="fd00:1::/48")
    with pytest.raises(errors.InvalidConfig, match="not inside subnet"):
        IPAMConfig(subnet="fd00:1::/64", aux_addresses={"x": "fd00:2::1"})


def test_addressing_of_one_ipv4_config_is_ipv4_only() -> None:
    one = IPAMConfig(subnet="10.1.0.0/16")
    assert NetworkAddressing.of(one) == NetworkAddressing(v4=one, v6=None)
    assert NetworkAddressing.of(None) == NetworkAddressing(v4=IPAMConfig(), v6=None)
    assert NetworkAddressing.of([]).configs == (IPAMConfig(),)


def test_enable_ipv6_without_an_ipv6_config_asks_for_a_default_pool() -> None:
    got = NetworkAddressing.of(IPAMConfig(subnet="10.1.0.0/16"), enable_ipv6=True)
    assert got.v4 == IPAMConfig(subnet="10.1.0.0/16")
    assert got.v6 == IPAMConfig()
    assert NetworkAddressing.of(enable_ipv6=True) == NetworkAddressing(v4=IPAMConfig(), v6=IPAMConfig())


def test_dual_stack_takes_one_config_per_family_in_any_order() -> None:
    v4, v6 = IPAMConfig(subnet="10.1.0.0/16"), IPAMConfig(subnet="fd00:1::/64", gateway="fd00:1::1")
    assert NetworkAddressing.of([v6, v4], enable_ipv6=True) == NetworkAddressing(v4=v4, v6=v6)
    assert NetworkAddressing.of((v4, v6), enable_ipv6=True).configs == (v4, v6)
    # A config without a subnet stands for IPv4 beside an explicit IPv6 one.
    assert NetworkAddressing.of([IPAMConfig(), v6], enable_ipv6=True) == NetworkAddressing(v4=IPAMConfig(), v6=v6)


def test_two_configs_of_one_family_are_refused() -> None:
    with pytest.raises(errors.InvalidConfig, match=r"two IPv6 IPAM configs.*at most one subnet per address family"):
        NetworkAddressing.of([IPAMConfig(subnet="fd00:1::/64"), IPAMConfig(subnet="fd00:2::/64")], enable_ipv6=True)
    with pytest.raises(
        errors.InvalidConfig, match=r"two IPv4 IPAM configs given \(10\.1\.0\.0/16 and a default pool\)"
    ):
        NetworkAddressing.of([IPAMConfig(subnet="10.1.0.0/16"), IPAMConfig()])


def test_an_ipv6_subnet_needs_enable_ipv6() -> None:
    with pytest.raises(errors.InvalidConfig, match=r"fd00:1::/64 is IPv6.*pass enable_ipv6=True"):
        NetworkAddressing.of(IPAMConfig(subnet="fd00:1::/64"))


def test_ipv6_only_networks_have_no_ipv4_family() -> None:
    v6 = IPAMConfig(subnet="fd00:1::/64")
    assert NetworkAddressing.of(v6, ipv6_only=True) == NetworkAddressing(v4=None, v6=v6)
    # A config without a subnet is the IPv6 default pool there.
    assert NetworkAddressing.of(IPAMConfig(), ipv6_only=True) == NetworkAddressing(v4=None, v6=IPAMConfig())
    assert NetworkAddressing.of(ipv6_only=True, enable_ipv6=False).configs == (IPAMConfig(),)
    with pytest.raises(errors.InvalidConfig, match=r"10\.1\.0\.0/16 is IPv4 but the network is ipv6_only"):
        NetworkAddressing.of([IPAMConfig(subnet="10.1.0.0/16"), v6], ipv6_only=True)


def test_malformed_ipam_arguments_are_refused() -> None:
    with pytest.raises(errors.InvalidConfig, match="enable_ipv6 must be True or False"):
        NetworkAddressing.of(enable_ipv6="yes")  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidConfig, match="ipam must be an IPAMConfig"):
        NetworkAddressing.of("fd00::/64")  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidConfig, match="is neither"):
        NetworkAddressing.of([IPAMConfig(), {"subnet": "fd00::/64"}])  # type: ignore[list-item]


def test_an_ipv6_host_ip_is_a_clean_error_not_a_socket_error() -> None:
    # Before, PortBinding(host_ip="::1") was accepted and creating the endpoint failed in the port
    # mapper with a raw socket.gaierror (address family not supported).
    with pytest.raises(errors.InvalidConfig, match=r"host_ip ::1 is IPv6.*give an IPv4 host_ip"):
        PortBinding(container_port=80, host_ip="::1")
    with pytest.raises(errors.InvalidConfig, match="IPv6 host addresses are not supported yet"):
        PortBinding.parse("[::1]:8080:80")
    assert PortBinding(container_port=80, host_ip="127.0.0.1").host_ip == addr("127.0.0.1")


def test_the_ipam_examples_of_docs_ipv6_run() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "ipv6.md").read_text()
    ipam_section = page.split("\n## IPAM\n", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"^```python\n(.*?)^```", ipam_section, re.DOTALL | re.MULTILINE)
    assert len(code) == 2
    for block in code:
        exec(compile(block, "docs/ipv6.md", "exec"), {})  # noqa: S102 - the page's own example
