"""The tutorials, the guides and the CLI page run as written, in throwaway namespaces.

The convention of these pages: ```python and ```sh blocks are run, in page
order (python blocks in one shared scope, each sh block by ``bash -euo
pipefail``); ```text blocks are output or synopses and are not run. A page
names its host namespace ``cnm-tut`` (``cnm-tut-out``, ``cnm-tut-a``… for
more) and its state_dir ``/tmp/cnm-tut``; the test swaps in a name with this
worker's namespace prefix and a temp dir, creates nothing else, and removes
whatever namespaces carry that name afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cnm.kernel import netns
from cnm.testing import namespace_prefix
from cnm.testing.ovs import OvsDaemons

pytestmark = pytest.mark.kernel

DOCS = Path(__file__).resolve().parents[2] / "docs"
TUTORIALS = sorted(p.name for p in (DOCS / "tutorials").glob("*.md"))
# The guides whose examples follow this convention (quickstart, firewall and errors
# are run by test_docs_examples.py).
GUIDES = ("modes.md", "unix-sockets.md", "links.md", "writing-a-driver.md")
BLOCK = re.compile(r"^```(python|sh)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _blocks(page: Path) -> list[tuple[str, str]]:
    return BLOCK.findall(page.read_text())


def _run_page(page: Path, tmp_path: Path) -> None:
    name = f"{namespace_prefix()}{secrets.token_hex(3)}"
    state_dir = str(tmp_path / "state")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    scope: dict[str, Any] = {"__name__": page.name}
    blocks = _blocks(page)
    assert blocks, f"{page} has no runnable block"
    try:
        for i, (language, text) in enumerate(blocks, 1):
            code = text.replace("/tmp/cnm-tut", state_dir).replace("cnm-tut", name)
            where = f"{page.relative_to(DOCS)} {language} block {i}"
            if language == "python":
                exec(compile(code, where, "exec"), scope)  # noqa: S102 - the page's own example
            else:
                result = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", code],
                    check=False,
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=120,
                )
                assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"
    finally:
        _cleanup(scope, state_dir, name)


def _cleanup(scope: dict[str, Any], state_dir: str, name: str) -> None:
    values = list(scope.values())
    values += [v for d in scope.values() if isinstance(d, dict) for v in d.values()]
    for value in values:
        if isinstance(value, subprocess.Popen) and value.poll() is None:
            value.terminate()
            value.wait()
        elif isinstance(value, OvsDaemons):
            value.stop()
    for root, dirs, _ in os.walk(state_dir):
        if os.path.basename(root) == "netns":
            for entry in os.listdir(root):
                with contextlib.suppress(OSError):
                    netns.remove(os.path.join(root, entry))
            dirs.clear()
    for entry in os.listdir(netns.NETNS_RUN_DIR):
        if entry.startswith(name):
            netns.remove(os.path.join(netns.NETNS_RUN_DIR, entry))


def test_every_chapter_scenario_has_a_tutorial() -> None:
    assert set(TUTORIALS) >= {
        "default-bridge.md",
        "published-ports.md",
        "modes.md",
        "unix-sockets.md",
        "multi-network.md",
        "icc-off.md",
        "ovs-two-hosts.md",
    }


@pytest.mark.parametrize("page", TUTORIALS)
def test_tutorial_runs(page: str, tmp_path: Path) -> None:
    _run_page(DOCS / "tutorials" / page, tmp_path)


@pytest.mark.parametrize("page", GUIDES)
def test_guide_runs(page: str, tmp_path: Path) -> None:
    _run_page(DOCS / page, tmp_path)


def test_cli_page_session_runs(tmp_path: Path) -> None:
    _run_page(DOCS / "cli.md", tmp_path)
