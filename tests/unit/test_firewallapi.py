"""Selection by name through entry points: firewall backends (``cnm.firewalls``, "auto") and IPAMs (``cnm.ipams``).

No kernel: "auto"'s rule is checked with fake backends; the kernel tests of the real
ones are tests/kernel/test_firewall_selection.py.
"""

from __future__ import annotations

import functools
import logging
from typing import ClassVar

import pytest

import cnm.firewall
from cnm import firewallapi, ipamapi
from cnm.errors import InvalidConfig, KernelError
from cnm.firewall.none import NoFirewall
from cnm.firewall.recording import RecordingFirewall
from cnm.firewallapi import BACKENDS, ClosableFirewall, Firewall, backend_names, load_backend, open_firewall
from cnm.ipam import LocalIpam
from cnm.kernel.netns import NetNS
from cnm.store import MemoryStore


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


class _Fake(RecordingFirewall):
    """A backend for "auto" to ask: which rules it holds and whether it works are set per name."""

    holding: ClassVar[set[str]] = set()
    broken: ClassVar[dict[str, str]] = {}
    opened: ClassVar[list[str]] = []
    closed: ClassVar[list[str]] = []

    def __init__(self, backend: str, host_netns: NetNS, *, owner: str) -> None:
        super().__init__(host_netns, owner=owner)
        self.name = backend  # type: ignore[misc]
        self.opened.append(backend)

    def holds_rules(self) -> bool:
        return self.name in self.holding

    def check(self) -> None:
        if self.name in self.broken:
            raise KernelError(self.broken[self.name])

    def close(self) -> None:
        self.closed.append(self.name)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> type[_Fake]:
    _Fake.holding, _Fake.broken, _Fake.opened, _Fake.closed = set(), {}, [], []
    monkeypatch.setattr(firewallapi, "load_backend", lambda name: functools.partial(_Fake, name))
    return _Fake


def test_auto_prefers_nftables(fakes: type[_Fake]) -> None:
    assert open_firewall("auto", NetNS.current(), owner="o").name == "nftables"


def test_auto_takes_the_recorded_backend_without_asking(fakes: type[_Fake]) -> None:
    fakes.holding = {"nftables"}
    assert open_firewall("auto", NetNS.current(), owner="o", recorded="iptables").name == "iptables"
    assert fakes.opened == ["iptables"]


def test_auto_keeps_legacy_rules_first(fakes: type[_Fake], caplog: pytest.LogCaptureFixture) -> None:
    fakes.holding = {"iptables", "nftables"}
    with caplog.at_level(logging.INFO, logger="cnm.firewallapi"):
        assert open_firewall("auto", NetNS.current(), owner="o").name == "iptables"
    assert "holds this controller's iptables rules" in caplog.text


def test_auto_does_not_look_for_rules_of_a_state_dir_without_networks(fakes: type[_Fake]) -> None:
    fakes.holding = {"iptables"}
    assert open_firewall("auto", NetNS.current(), owner="o", look=False).name == "nftables"


def test_auto_falls_back_to_iptables_where_nftables_cannot_work(
    fakes: type[_Fake], caplog: pytest.LogCaptureFixture
) -> None:
    fakes.broken = {"nftables": "the kernel refuses an nf_tables table"}
    with caplog.at_level(logging.INFO, logger="cnm.firewallapi"):
        assert open_firewall("auto", NetNS.current(), owner="o").name == "iptables"
    assert "nftables: the kernel refuses an nf_tables table; so iptables works here" in caplog.text
    assert "nftables" in fakes.closed  # the one probed and refused is not left open


def test_auto_says_why_when_no_backend_works(fakes: type[_Fake]) -> None:
    fakes.broken = {"nftables": "no nf_tables", "iptables": "no legacy xtables"}
    with pytest.raises(KernelError, match=r"nftables: no nf_tables; iptables: no legacy xtables.*firewall='none'"):
        open_firewall("auto", NetNS.current(), owner="o")


def test_the_default_ipam_is_found_by_name() -> None:
    store = MemoryStore()
    assert "default" in ipamapi.ipam_names()
    assert isinstance(ipamapi.open_ipam("default", store), LocalIpam)
    with pytest.raises(InvalidConfig, match=r"no IPAM named 'dhcp'; installed IPAMs: .*default.*cnm\.ipams"):
        ipamapi.open_ipam("dhcp", store)
