"""The firewall contract's selection by name, through the ``cnm.firewalls`` entry points (no kernel)."""

from __future__ import annotations

import pytest

import cnm.firewall
from cnm.errors import InvalidConfig
from cnm.firewall.none import NoFirewall
from cnm.firewall.recording import RecordingFirewall
from cnm.firewallapi import BACKENDS, ClosableFirewall, Firewall, backend_names, load_backend, open_firewall
from cnm.kernel.netns import NetNS


def test_the_built_in_backends_are_entry_points() -> None:
    assert set(BACKENDS) | {"recording"} <= set(backend_names())
    assert load_backend("none") is NoFirewall


def test_open_firewall_builds_the_named_backend_for_its_owner() -> None:
    fw = open_firewall("recording", NetNS.current(), owner="abc")
    assert isinstance(fw, RecordingFirewall)
    assert isinstance(fw, ClosableFirewall)
    assert fw.owner == "abc"
    assert fw.name == "recording"
    fw.close()


def test_none_is_a_firewall_that_says_its_name() -> None:
    fw = open_firewall("none", NetNS.current(), owner="abc")
    assert isinstance(fw, Firewall)
    assert fw.name == "none"
    assert fw.cleanup() == 0


def test_an_unknown_backend_names_the_installed_ones() -> None:
    with pytest.raises(
        InvalidConfig, match=r"no firewall backend named 'pf'; installed backends: .*iptables.*cnm\.firewalls"
    ):
        open_firewall("pf", NetNS.current(), owner="abc")


def test_the_contracts_old_home_still_resolves_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match=r"cnm\.firewall\.Firewall moved to cnm\.firewallapi\.Firewall"):
        old = cnm.firewall.Firewall
    assert old is Firewall
    with pytest.warns(DeprecationWarning, match=r"cnm\.firewall\.none"):
        assert cnm.firewall.NoFirewall is NoFirewall
    with pytest.raises(AttributeError):
        _ = cnm.firewall.Nothing  # type: ignore[attr-defined]
