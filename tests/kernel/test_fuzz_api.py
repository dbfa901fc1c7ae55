"""The public API driven with random names, subnets, ports and options (issue 18 item 5).

Whatever hypothesis makes up, every failure is a :class:`cnm.errors.CNMError`
(so the caller gets an error that says what failed, never a TypeError from
deep inside), and what a failed or completed call made is gone once the
example's objects are deleted: no network, sandbox or interface is left.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cnm import Controller, IPAMConfig, PortBinding, errors
from cnm.testing.hosts import settled

pytestmark = pytest.mark.kernel

_valid_name = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
_names = st.one_of(
    _valid_name,
    _valid_name,
    _valid_name,
    st.text(max_size=24),
    st.sampled_from(["web", "web\n", "a/b", "../x", "..", "a\x00b", "x" * 129, "ok-1.b_2"]),
)
_valid_subnet = st.integers(0, 255).map(lambda i: f"10.78.{i}.0/24")
_subnets = st.one_of(
    st.none(),
    _valid_subnet,
    _valid_subnet,
    _valid_subnet,
    st.sampled_from(["10.77.0.0/24", "10.77.0.0/33", "garbage", "::1/128", "10.77.1.0/30", "10.77.2.7/24", ""]),
    st.ip_addresses(v=4).map(lambda a: f"{a}/24"),
    st.integers(),
)
_ports = st.fixed_dictionaries(
    {
        "container_port": st.one_of(st.integers(-5, 70000), st.sampled_from(["80", "80-81", "x", "", "81-80"])),
        "host_port": st.one_of(st.none(), st.integers(-5, 70000), st.sampled_from(["8080-8081", "y"])),
        "protocol": st.sampled_from(["tcp", "udp", "sctp", "TCP", ""]),
        "host_ip": st.sampled_from([None, "127.0.0.1", "0.0.0.0", "::1", "bogus", "192.0.2.1"]),
    }
)
_option_keys = st.sampled_from(
    [
        "icc",
        "masquerade",
        "mtu",
        "bridge_name",
        "host_binding_ipv4",
        "gateway_mode",
        "trusted_host_interfaces",
        "com.docker.network.bridge.gateway_mode_ipv4",
        "com.docker.network.driver.mtu",
        "colour",
    ]
)
_option_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.lists(st.text(max_size=5), max_size=3)
)
_valid_options = st.fixed_dictionaries(
    {},
    optional={
        "icc": st.booleans(),
        "mtu": st.integers(1280, 9000),
        "gateway_mode": st.sampled_from(["nat", "nat-unprotected", "routed"]),
        "trusted_host_interfaces": st.sampled_from(["eth0", "eth0:wg0", ""]),
    },
)
# Mostly options that pass, so that the sandbox and its ports are driven too; sometimes anything.
_options = st.one_of(
    _valid_options, _valid_options, _valid_options, st.dictionaries(_option_keys, _option_values, max_size=3)
)


def _links(controller: Controller) -> list[str]:
    argv = ["nsenter", f"--net={controller.host_netns.path}", "--", "ip", "-o", "link"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


def _attempt(controller: Controller, net_name: Any, subnet: Any, *, options: Any, sb_name: Any, ports: Any) -> None:
    """Create a network and a sandbox on it, then delete what was made; CNMErrors are fine."""
    try:
        net = controller.create_network(
            net_name, ipam=None if subnet is None else IPAMConfig(subnet=subnet), options=options
        )
    except errors.CNMError as exc:
        event(f"network refused: {type(exc).__name__}")
        return
    event("network created")
    try:
        sandbox = controller.create_sandbox(sb_name, network=net.name, ports=[PortBinding(**p) for p in ports])
    except errors.CNMError as exc:
        event(f"sandbox refused: {type(exc).__name__}")
    else:
        event("sandbox created")
        sandbox.delete()
    net.delete()


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    net_name=_names,
    subnet=_subnets,
    options=_options,
    sb_name=_names,
    ports=st.lists(_ports, max_size=2),
)
def test_every_failure_is_a_cnm_error_and_nothing_is_left(  # noqa: PLR0917 (hypothesis passes them by name)
    controller: Controller, net_name: Any, subnet: Any, options: Any, sb_name: Any, ports: Any
) -> None:
    networks = sorted(n.name for n in controller.networks())
    links = _links(controller)
    _attempt(controller, net_name, subnet, options=options, sb_name=sb_name, ports=ports)
    assert sorted(n.name for n in controller.networks()) == networks
    assert controller.sandboxes() == []
    # A deleted sandbox's veth goes with its namespace, which the kernel removes moments later.
    assert settled(lambda: _links(controller), lambda now: now == links) == links
