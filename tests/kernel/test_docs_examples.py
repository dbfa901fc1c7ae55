"""The code in the docs runs, against throwaway host namespaces, and shows what the page says.

Each page names its host namespace (``"cnm-try"``, ``"cnm-fw"``) and its
state_dir (``"/tmp/cnm-try"``, ``"/tmp/cnm-fw"``) once; the test swaps in a
namespace from netns_factory and a temp dir, and changes nothing else in the
code a reader copies. docs/firewall.md's rule listings are compared with the
real ``iptables-legacy-save`` output, the network id aside.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cnm import Controller, errors
from cnm.kernel import netns
from cnm.kernel.netns import NetNS

pytestmark = pytest.mark.kernel

DOCS = Path(__file__).resolve().parents[2] / "docs"


def blocks(page: str, language: str) -> list[str]:
    """The fenced blocks of one language on a docs page, in order."""
    pattern = re.compile(rf"^```{language}\n(.*?)^```", re.DOTALL | re.MULTILINE)
    return pattern.findall((DOCS / page).read_text())


def python_blocks(page: str) -> list[str]:
    """The ```python blocks of a docs page, in order."""
    return blocks(page, "python")


class Page:
    """Runs a page's python blocks one by one in one scope, with the page's names swapped for the test's."""

    def __init__(self, page: str, substitutions: dict[str, str]) -> None:
        self.page = page
        self.blocks = python_blocks(page)
        self.substitutions = substitutions
        self.scope: dict[str, Any] = {"__name__": page}
        for literal in substitutions:
            found = sum(b.count(literal) for b in self.blocks)
            assert found == 1, f"{page} should name {literal} once in its code, not {found} times"

    def run(self, index: int) -> None:
        code = self.blocks[index]
        for literal, value in self.substitutions.items():
            code = code.replace(literal, value)
        exec(compile(code, f"docs/{self.page} python block {index + 1}", "exec"), self.scope)  # noqa: S102

    def cleanup(self, state_dir: str) -> None:
        for value in self.scope.values():
            if isinstance(value, subprocess.Popen) and value.poll() is None:
                value.terminate()
                value.wait()
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(os.path.join(state_dir, "netns")):
                netns.remove(os.path.join(state_dir, "netns", name))


def test_quickstart_walkthrough_runs(netns_factory: Callable[[str], NetNS], tmp_path: Path) -> None:
    host = netns_factory("docs")
    state_dir = str(tmp_path / "state")
    page = Page("quickstart.md", {'"/tmp/cnm-try"': repr(state_dir), '"cnm-try"': repr(host.path)})
    assert len(page.blocks) >= 5
    try:
        for i in range(len(page.blocks)):
            page.run(i)
        # The teardown block deleted everything: no sandbox namespace is left mounted.
        assert not os.listdir(os.path.join(state_dir, "netns"))
    finally:
        page.cleanup(state_dir)


def _saved_rules(host: NetNS, network_id: str, owner: str) -> str:
    """iptables-legacy-save in ``host``, without its comment lines, with the page's network and owner ids."""
    out = subprocess.run(
        ["nsenter", f"--net={host.path}", "iptables-legacy-save"], capture_output=True, text=True, check=True
    ).stdout
    lines = [line for line in out.splitlines() if not line.startswith("#")]
    # Counters are traffic, not rules: the host's own IGMP reports land in OUTPUT at their own pace.
    text = re.sub(r"\[\d+:\d+\]", "[0:0]", "\n".join(lines) + "\n").replace(f"cnm:{owner}:", f"cnm:{DOC_OWNER}:")
    # The id is in comments, in bridge names (11 digits) and in the network's own chain names.
    return text.replace(network_id[:12], DOC_NETWORK_ID).replace(f"cnm-{network_id[:11]}", "cnm-" + DOC_NETWORK_ID[:11])


DOC_NETWORK_ID = "f409b072a83c"
DOC_OWNER = "5e3b0c9d1a27"


def test_firewall_page_shows_the_real_rules(netns_factory: Callable[[str], NetNS], tmp_path: Path) -> None:
    host = netns_factory("fw")
    state_dir = str(tmp_path / "state")
    page = Page("firewall.md", {'"/tmp/cnm-fw"': repr(state_dir), '"cnm-fw"': repr(host.path)})
    listings = [b for b in blocks("firewall.md", "text") if b.startswith("*nat")]
    assert len(page.blocks) == 3
    assert len(listings) == 2
    try:
        page.run(0)  # a network with a published port
        assert _saved_rules(host, page.scope["net"].id, page.scope["ctl"].owner_id) == listings[0]
        page.run(1)  # the sandbox and the network deleted
        assert _saved_rules(host, page.scope["net"].id, page.scope["ctl"].owner_id) == listings[1]
        page.run(2)  # cleanup
        assert "CNM" not in _saved_rules(host, page.scope["net"].id, page.scope["ctl"].owner_id)
    finally:
        page.cleanup(state_dir)


def _nft_ruleset(host: NetNS, network_id: str, owner: str) -> str:
    """nft list ruleset in ``host``, with the page's network id and owner id."""
    out = subprocess.run(
        ["nsenter", f"--net={host.path}", "nft", "list", "ruleset"], capture_output=True, text=True, check=True
    ).stdout
    out = out.replace(f"cnm_{owner}", f"cnm_{DOC_OWNER}")
    return out.replace(network_id[:12], DOC_NETWORK_ID).replace(f"cnm-{network_id[:11]}", "cnm-" + DOC_NETWORK_ID[:11])


def test_firewall_page_shows_the_real_nftables_table(netns_factory: Callable[[str], NetNS], tmp_path: Path) -> None:
    host = netns_factory("nf")
    state_dir = str(tmp_path / "state")
    page = Page("firewall.md", {'"/tmp/cnm-fw"': repr(state_dir), '"cnm-fw"': repr(host.path)})
    # The page's own program, with the one change the page names.
    assert page.blocks[0].count('firewall="iptables")') == 1
    page.blocks[0] = page.blocks[0].replace('firewall="iptables")', 'firewall="nftables")')
    (listing,) = blocks("firewall.md", "nft")
    try:
        page.run(0)
        assert _nft_ruleset(host, page.scope["net"].id, page.scope["ctl"].owner_id) == listing
        page.run(1)
        page.run(2)  # cleanup deletes the table
        assert _nft_ruleset(host, page.scope["net"].id, page.scope["ctl"].owner_id) == ""
    finally:
        page.cleanup(state_dir)


def test_errors_page_examples_run(controller: Controller) -> None:
    page = Page("errors.md", {})
    page.scope["ctl"] = controller
    for i in range(len(page.blocks)):
        page.run(i)


def test_errors_page_covers_every_error_class() -> None:
    text = (DOCS / "errors.md").read_text()
    headings = set(re.findall(r"^## (\w+)", text, re.MULTILINE))
    bullets = set(re.findall(r"^- \*\*(\w+)\*\*", text, re.MULTILINE))
    missing = [name for name in errors.__all__ if name not in headings | bullets]
    assert not missing, f"docs/errors.md does not describe {missing}"
