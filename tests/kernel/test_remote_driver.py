"""The ``remote`` cnm driver (a client of Docker's plugin protocol) against cnm's own ``plugin serve``.

A Controller's network of driver ``remote`` is served by a plugin that serves
cnm's bridge driver: the controller keeps the IPAM and the sandboxes, the
plugin makes the bridge and the veths, and the remote driver moves each
interface into its sandbox the way dockerd does. Real packets, in throwaway
namespaces.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnm import Controller, IPAMConfig, PortBinding, errors
from cnm.kernel.netns import NetNS
from cnm.plugin import Plugin, open_plugin
from cnm.testing import traffic
from cnm.testing.hosts import Outside, nft_state, stop_process, unmount_sandboxes

pytestmark = pytest.mark.kernel


@pytest.fixture
def plugin(tmp_path: Path, host_netns: NetNS) -> Iterator[Plugin]:
    p = open_plugin(
        "bridge", state_dir=str(tmp_path / "plugin"), socket_path=str(tmp_path / "p.sock"), host_netns=host_netns
    )
    p.start()
    yield p
    p.shutdown()
    p.close()


@pytest.fixture
def ctl(tmp_path: Path, host_netns: NetNS) -> Iterator[Controller]:
    state_dir = str(tmp_path / "state")
    c = Controller(state_dir=state_dir, host_netns=host_netns, firewall="nftables")
    yield c
    c.close()
    unmount_sandboxes(state_dir)


def _links(ns: NetNS) -> set[str]:
    out = subprocess.run(
        ["ip", "-n", ns.path.rsplit("/", 1)[1], "-o", "link", "show"], check=True, capture_output=True, text=True
    ).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_a_network_served_by_a_plugin(plugin: Plugin, ctl: Controller, host_netns: NetNS, outside: Outside) -> None:
    net = ctl.create_network(
        "r1", driver="remote", ipam=IPAMConfig(subnet="10.90.0.0/24"), options={"socket": plugin.socket_path}
    )
    bridge = "cnm-" + net.id[:11]  # the served bridge driver's name for it, in the plugin
    assert bridge in _links(host_netns)
    s1 = ctl.create_sandbox("s1", network="r1")
    s2 = ctl.create_sandbox("s2", network="r1", ports=[PortBinding(container_port=80, host_port=8082)])
    (e2,) = [e for e in net.endpoints() if e.name.startswith("s2")]
    assert e2.ip is not None
    assert traffic.ping(s1, str(e2.ip))
    assert traffic.ping(s1, str(outside.address))  # masqueraded by the plugin's bridge driver
    server = traffic.serve(s2, "tcp", 80)
    try:
        assert traffic.probe(outside, "tcp", str(outside.host_address), 8082) == str(outside.address)
    finally:
        stop_process(server)
    s1.delete()
    s2.delete()
    net.delete()
    assert bridge not in _links(host_netns)
    assert not {n for n in _links(host_netns) if n.startswith("cnmj")}
    assert "10.90.0." not in nft_state(host_netns)


def test_refusals_of_the_plugin_reach_the_caller(plugin: Plugin, ctl: Controller, host_netns: NetNS) -> None:
    with pytest.raises(errors.CNMError, match="remote plugin: unknown bridge option 'nonsense'"):
        ctl.create_network("r2", driver="remote", options={"socket": plugin.socket_path, "nonsense": "1"})
    with pytest.raises(errors.InvalidConfig, match="exactly one of the options plugin=NAME and socket=PATH"):
        ctl.create_network("r3", driver="remote")
    with pytest.raises(errors.InvalidConfig, match="no Docker plugin named 'cnm-nowhere'"):
        ctl.create_network("r4", driver="remote", options={"plugin": "cnm-nowhere"})
    assert [n.name for n in ctl.networks() if n.name.startswith("r")] == []
