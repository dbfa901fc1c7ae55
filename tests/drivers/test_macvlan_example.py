"""The out-of-tree example driver: installed with pip, found and used exactly like a built-in one.

The package in docs/examples/cnm-macvlan is copied to a temp directory (so the
build leaves nothing in the repository), built and installed with pip into a
private directory that is put on ``sys.path`` for this module only: cnm finds
it through the ``cnm.drivers`` entry point like any installed distribution.
Each xdist worker installs its own copy; everything goes with the temp dirs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from cnm import Controller, IPAMConfig
from cnm.errors import InvalidConfig
from cnm.kernel import links
from cnm.kernel.netns import NetNS
from cnm.registry import ENTRY_POINT_GROUP, DriverFactory
from cnm.testing.conformance import RULE_IDS, Report
from cnm.testing.fixtures import Outside
from cnm.testing.traffic import ping, probe, serve

pytestmark = pytest.mark.kernel

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "cnm-macvlan"
CheckDriver = Callable[..., Report]
Track = Callable[[subprocess.Popen[Any]], subprocess.Popen[Any]]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """pip-install the example into a private site directory and put it on sys.path for this module."""
    work = tmp_path_factory.mktemp("cnm-macvlan")
    source = work / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = work / "site"
    # Offline and without build isolation: the build uses this environment's setuptools and wheel.
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run(
        [*pip, "--disable-pip-version-check", "--target", str(site), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(site))
        yield site
        for name in [m for m in sys.modules if m == "cnm_macvlan" or m.startswith("cnm_macvlan.")]:
            del sys.modules[name]


def _entry_point_factory() -> DriverFactory:
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == "macvlan"]
    assert [ep.value for ep in found] == ["cnm_macvlan:MacvlanDriver"]
    factory: DriverFactory = found[0].load()
    return factory


def _parent(host: NetNS) -> dict[str, object]:
    """A parent for the kit's host namespaces: a veth pair with both ends up (macvlan needs carrier)."""
    with host.netlink() as nl:
        links.add_veth(nl, "mvparent0", "mvparent0p", host)
        links.set_link(nl, "mvparent0", up=True)
        links.set_link(nl, "mvparent0p", up=True)
    return {"parent": "mvparent0"}


def test_installed_with_pip_and_found_through_the_entry_point(installed: Path) -> None:
    assert (installed / "cnm_macvlan" / "driver.py").is_file()
    assert _entry_point_factory().__module__ == "cnm_macvlan.driver"


@pytest.mark.parametrize("rule", RULE_IDS)
def test_the_example_keeps_the_contract(installed: Path, driver_conformance: CheckDriver, rule: str) -> None:
    report = driver_conformance(_entry_point_factory(), rules=[rule], setup_host=_parent)
    assert report.passed, str(report)


def test_sandboxes_on_the_lan_of_the_parent(
    installed: Path, tmp_path: Path, host_netns: NetNS, outside: Outside, processes: Track
) -> None:
    # A controller made after the install, with the default registry: entry points only, as a user's would be.
    with Controller(state_dir=str(tmp_path / "state"), host_netns=host_netns) as ctl:
        assert "macvlan" in ctl.registry.names()
        host_links = _link_names(host_netns)
        with pytest.raises(InvalidConfig, match="needs a parent"):
            ctl.create_network("nope", driver="macvlan")
        with pytest.raises(InvalidConfig, match="'nosuch0' does not exist"):
            ctl.create_network("nope", driver="macvlan", options={"parent": "nosuch0"})
        # The host's uplink to the outside namespace is the parent: sandboxes join that LAN directly.
        lan = ctl.create_network(
            "lan",
            driver="macvlan",
            options={"parent": "uplink0"},
            ipam=IPAMConfig(subnet="192.0.2.0/24", gateway="192.0.2.1", ip_range="192.0.2.128/25"),
        )
        assert lan.options == {"parent": "uplink0", "mode": "bridge", "mtu": None}
        sb1 = ctl.create_sandbox("c1", network="lan")
        sb2 = ctl.create_sandbox("c2", network="lan")
        ip1, ip2 = str(lan.endpoint("c1").ip), str(lan.endpoint("c2").ip)
        assert (ip1, ip2) == ("192.0.2.128", "192.0.2.129")
        links_in_c1 = sb1.run(["ip", "-o", "link", "show", "eth0"], capture_output=True, text=True).stdout
        assert "macvlan" in sb1.run(["ip", "-d", "link", "show", "eth0"], capture_output=True, text=True).stdout
        assert "02:42:c0:00:02:80" in links_in_c1
        # Between two sandboxes on one parent (bridge mode), with the sender's own address.
        assert ping(sb1, ip2)
        processes(serve(sb2, "tcp", 8000))
        assert probe(sb1, "tcp", ip2, 8000) == ip1
        # And to another machine on the parent's LAN, which sees the sandbox itself: no NAT.
        processes(serve(outside, "tcp", 8001))
        assert probe(sb2, "tcp", str(outside.address), 8001) == ip2
        assert ping(outside, ip1)
        sb1.delete()
        sb2.delete()
        lan.delete()
        assert _link_names(host_netns) == host_links


def _link_names(ns: NetNS) -> set[str]:
    with ns.netlink() as nl:
        return {link.name for link in links.list_links(nl)}
