"""Every built-in driver passes the conformance kit: no built-in driver is exempt.

The drivers are taken from the ``cnm.drivers`` entry points, exactly as a
user's driver would be, and each rule runs as its own test so a failure names
the rule it broke.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from cnm.kernel.netns import NetNS
from cnm.plugin import open_plugin
from cnm.registry import ENTRY_POINT_GROUP, DriverFactory
from cnm.testing.conformance import RULE_IDS, Report
from cnm.testing.fixtures import FIREWALL_BACKENDS
from cnm.testing.ovs import OvsDaemons

pytestmark = pytest.mark.kernel

CheckDriver = Callable[..., Report]
OvsFactory = Callable[[NetNS], OvsDaemons]

BUILTIN = ("bridge", "null", "host", "ovs", "remote")
"""Every driver this distribution registers; a new one must be added here (see the last test)."""

NEEDS_OVS = {"ovs"}
"""Drivers that need private Open vSwitch daemons in each host namespace of the kit."""

WRITE_RULES = {"bridge", "ovs"}
"""Drivers that ask the firewall for rules: the kit checks them on every backend (the others on one)."""


def _factory(name: str) -> DriverFactory:
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    assert found, f"built-in driver {name!r} is not registered under the {ENTRY_POINT_GROUP!r} entry points"
    factory: DriverFactory = found[0].load()
    return factory


def _ovs_hooks(request: pytest.FixtureRequest) -> dict[str, object]:
    """setup_host starts private OVS daemons per host namespace; leftovers lists cnm's OVSDB rows."""
    ovs_factory: OvsFactory = request.getfixturevalue("ovs_factory")
    daemons: dict[str, OvsDaemons] = {}

    def setup_host(host: NetNS) -> Mapping[str, object]:
        daemons[host.path] = ovs_factory(host)
        return {"ovsdb": daemons[host.path].remote}

    def leftovers(host: NetNS) -> Sequence[str]:
        db = daemons[host.path].db
        rows = [f"OVS bridge {b.name}" for b in db.bridges() if "cnm-network" in b.external_ids]
        rows += [f"OVS port {p.name}" for p in db.ports() if "cnm-network" in p.external_ids]
        rows += [f"OVS interface {i.name}" for i in db.interfaces() if "cnm-network" in i.external_ids]
        return rows

    return {"setup_host": setup_host, "leftovers": leftovers}


def _remote_hooks(request: pytest.FixtureRequest) -> dict[str, object]:
    """setup_host serves cnm's bridge driver with ``cnm plugin serve``'s server in each host namespace."""
    tmp: Path = request.getfixturevalue("tmp_path")

    def setup_host(host: NetNS) -> Mapping[str, object]:
        where = tmp / f"plugin-{len(list(tmp.glob('plugin-*')))}"
        plugin = open_plugin("bridge", state_dir=str(where), socket_path=str(where / "p.sock"), host_netns=host)
        plugin.start()

        def stop() -> None:
            plugin.shutdown()
            plugin.close()

        request.addfinalizer(stop)
        return {"socket": plugin.socket_path}

    return {"setup_host": setup_host}


_CASES = [
    pytest.param(
        name, rule, firewall, id=f"{name}-{rule}-{firewall}", marks=[pytest.mark.ovs] if name in NEEDS_OVS else []
    )
    for name in BUILTIN
    for rule in RULE_IDS
    for firewall in (FIREWALL_BACKENDS if name in WRITE_RULES else FIREWALL_BACKENDS[:1])
]


@pytest.mark.parametrize(("driver", "rule", "firewall"), _CASES)
def test_builtin_driver_keeps_the_contract(
    driver_conformance: CheckDriver, request: pytest.FixtureRequest, driver: str, rule: str, firewall: str
) -> None:
    hooks = _ovs_hooks(request) if driver in NEEDS_OVS else _remote_hooks(request) if driver == "remote" else {}
    report = driver_conformance(_factory(driver), rules=[rule], firewall=firewall, **hooks)
    assert report.passed, str(report)


def test_every_builtin_driver_is_checked() -> None:
    """A driver registered by this distribution but missing from BUILTIN would escape the kit."""
    ours = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.value.startswith("cnm_drivers.")}
    assert ours == set(BUILTIN), f"built-in drivers and the conformance run differ: registered {sorted(ours)}"
