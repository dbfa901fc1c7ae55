"""Choosing the firewall backend ("auto"), recording it in the store, and migrating a state_dir between backends.

Real kernel, a throwaway host namespace per test; the rules are read with
``iptables-legacy-save`` and ``nft list ruleset`` inside it, and a published
port is reached from an outside namespace after each migration.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cnm import Controller, IPAMConfig, PortBinding
from cnm._core.firewall_choice import recorded_firewall
from cnm._core.state import State
from cnm.kernel.netns import NetNS
from cnm.store import SqliteStore
from cnm.testing.hosts import Outside, iptables_save, unmount_sandboxes
from cnm.testing.traffic import probe, serve

pytestmark = pytest.mark.kernel

Track = Callable[[subprocess.Popen[Any]], subprocess.Popen[Any]]


def nft_ruleset(ns: NetNS) -> str:
    return subprocess.run(
        ["nsenter", f"--net={ns.path}", "--", "nft", "list", "ruleset"], capture_output=True, text=True, check=True
    ).stdout


def legacy_cnm_rules(ns: NetNS, owner: str) -> list[str]:
    return [line for line in iptables_save(ns).splitlines() if f"cnm:{owner}:" in line]


def recorded(state: Path) -> tuple[str, tuple[str, ...]] | None:
    store = SqliteStore(str(state / "cnm.db"))
    try:
        found = recorded_firewall(State(store))
    finally:
        store.close()
    return None if found is None else (found.name, found.previous)


def forget_the_record(state: Path) -> None:
    """Make the state_dir look like one from before backends were recorded."""
    store = SqliteStore(str(state / "cnm.db"))
    try:
        with store.transaction() as tx:
            tx.delete("controller", "firewall")
    finally:
        store.close()


def test_auto_takes_nftables_on_a_fresh_state_dir_and_records_it(host_netns: NetNS, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Controller(state_dir=str(state), host_netns=host_netns, predefined=False) as ctl:
        assert ctl.firewall.name == "nftables"
        ctl.create_network("n", ipam=IPAMConfig(subnet="172.25.0.0/24"))
        assert f"table inet cnm_{ctl.owner_id}" in nft_ruleset(host_netns)
        assert legacy_cnm_rules(host_netns, ctl.owner_id) == []
    assert recorded(state) == ("nftables", ())
    with Controller(state_dir=str(state), host_netns=host_netns, predefined=False) as ctl:
        assert ctl.firewall.name == "nftables"
        ctl.network("n").delete()


def test_auto_keeps_the_recorded_backend(host_netns: NetNS, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Controller(state_dir=str(state), host_netns=host_netns, firewall="iptables", predefined=False) as ctl:
        assert ctl.firewall.name == "iptables"
    assert recorded(state) == ("iptables", ())
    with Controller(state_dir=str(state), host_netns=host_netns, firewall="auto", predefined=False) as ctl:
        assert ctl.firewall.name == "iptables"


def test_auto_keeps_an_installations_legacy_rules_until_migrated(
    host_netns: NetNS, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    with Controller(state_dir=str(state), host_netns=host_netns, firewall="iptables", predefined=False) as ctl:
        net = ctl.create_network("n", ipam=IPAMConfig(subnet="172.25.1.0/24"))
        owner = ctl.owner_id
    forget_the_record(state)  # as a state_dir from before the record was kept
    with caplog.at_level(logging.INFO, logger="cnm"), Controller(state_dir=str(state), host_netns=host_netns) as ctl:
        assert ctl.firewall.name == "iptables"
        assert "holds this controller's iptables rules" in caplog.text
        assert legacy_cnm_rules(host_netns, owner)
        assert f"cnm_{owner}" not in nft_ruleset(host_netns)
    assert recorded(state) == ("iptables", ())
    with Controller(state_dir=str(state), host_netns=host_netns, predefined=False) as ctl:
        ctl.network(net.id).delete()


def test_an_explicit_backend_on_an_unrecorded_installation_migrates_its_legacy_rules(
    host_netns: NetNS, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with Controller(state_dir=str(state), host_netns=host_netns, firewall="iptables", predefined=False) as ctl:
        ctl.create_network("n", ipam=IPAMConfig(subnet="172.25.2.0/24"))
        owner = ctl.owner_id
    forget_the_record(state)
    with Controller(state_dir=str(state), host_netns=host_netns, firewall="nftables", predefined=False) as ctl:
        assert legacy_cnm_rules(host_netns, owner) == []
        assert "172.25.2.0/24" in nft_ruleset(host_netns)
        ctl.network("n").delete()
    assert recorded(state) == ("nftables", ())


def _published(ctl: Controller, outside: Outside, port: int) -> bool:
    return probe(outside, "tcp", str(outside.host_address), port) == str(outside.address)


def test_migrating_iptables_to_nftables_and_back_moves_the_rules_and_keeps_ports_working(
    host_netns: NetNS, outside: Outside, tmp_path: Path, processes: Track
) -> None:
    state = tmp_path / "state"

    def open_with(backend: str) -> Controller:
        return Controller(state_dir=str(state), host_netns=host_netns, firewall=backend, predefined=False)

    with open_with("iptables") as ctl:
        owner = ctl.owner_id
        ctl.create_network("web", ipam=IPAMConfig(subnet="172.25.3.0/24"))
        srv = ctl.create_sandbox("srv", network="web", ports=[PortBinding(container_port=80, host_port=8095)])
        processes(serve(srv, "tcp", 80))
        assert _published(ctl, outside, 8095)
        assert legacy_cnm_rules(host_netns, owner)
    try:
        with open_with("nftables") as ctl:
            assert ctl.firewall.name == "nftables"
            assert recorded(state) == ("nftables", ())
            assert legacy_cnm_rules(host_netns, owner) == []  # the old backend's rules are gone
            assert "cnm" not in iptables_save(host_netns)  # its shared chains too: no other owner here
            ruleset = nft_ruleset(host_netns)
            assert f"table inet cnm_{owner}" in ruleset
            assert "8095" in ruleset
            assert _published(ctl, outside, 8095)
        with open_with("iptables") as ctl:
            assert ctl.firewall.name == "iptables"
            assert recorded(state) == ("iptables", ())
            assert "cnm" not in nft_ruleset(host_netns)
            assert legacy_cnm_rules(host_netns, owner)
            assert "--dport 8095 -j DNAT" in iptables_save(host_netns)  # a port's rules sit in its network's chain
            assert _published(ctl, outside, 8095)
            ctl.sandbox("srv").delete()
            ctl.network("web").delete()
    finally:
        unmount_sandboxes(str(state))


def test_a_migration_cut_short_is_finished_by_the_next_open(host_netns: NetNS, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Controller(state_dir=str(state), host_netns=host_netns, firewall="nftables", predefined=False) as ctl:
        ctl.create_network("n", ipam=IPAMConfig(subnet="172.25.4.0/24"))
        owner = ctl.owner_id
    # What a crash after the record's first write leaves: iptables recorded, nftables still pending removal.
    store = SqliteStore(str(state / "cnm.db"))
    with store.transaction() as tx:
        tx.put("controller", "firewall", {"name": "iptables", "previous": ["nftables"]})
    store.close()
    with Controller(state_dir=str(state), host_netns=host_netns, predefined=False) as ctl:  # auto
        assert ctl.firewall.name == "iptables"
        assert f"cnm_{owner}" not in nft_ruleset(host_netns)
        assert legacy_cnm_rules(host_netns, owner)
        ctl.network("n").delete()
    assert recorded(state) == ("iptables", ())


def test_none_writes_nothing_and_migrating_to_it_removes_the_rules(host_netns: NetNS, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Controller(state_dir=str(state), host_netns=host_netns, firewall="nftables", predefined=False) as ctl:
        ctl.create_network("n", ipam=IPAMConfig(subnet="172.25.5.0/24"))
    with Controller(state_dir=str(state), host_netns=host_netns, firewall="none", predefined=False) as ctl:
        assert ctl.firewall.name == "none"
        assert nft_ruleset(host_netns) == ""
        assert "cnm" not in iptables_save(host_netns)
        ctl.network("n").delete()
    assert recorded(state) == ("none", ())


def test_cnm_info_shows_the_backend_and_says_when_none_writes_nothing(host_netns: NetNS, tmp_path: Path) -> None:
    def cnm(*args: str, env: dict[str, str] | None = None) -> str:
        argv = [
            sys.executable,
            "-m",
            "cnm.cli",
            "--state-dir",
            str(tmp_path / "state"),
            "--host-netns",
            host_netns.path,
        ]
        result = subprocess.run(
            [*argv, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}, check=False
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    shown = cnm("info")  # the default: auto
    assert "Firewall Backend: nftables\n" in shown
    assert "Rules:" not in shown
    shown = cnm("info", env={"CNM_FIREWALL": "none"})
    assert "Firewall Backend: none\n  Rules: none: cnm writes no firewall rules" in shown
    info = json.loads(cnm("info", "--format", "json"))  # auto keeps what is recorded
    assert info["FirewallBackend"]["Driver"] == "none"
    assert [key for key, _ in info["FirewallBackend"]["Info"]] == ["Rules"]
    assert info["HostNetns"] == host_netns.path
