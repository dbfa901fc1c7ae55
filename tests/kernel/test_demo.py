"""The demo as a user runs it (``python -m cnm.demo``): every scenario passes, nothing is left.

The demo makes its own ``cnmdemo-<random>-`` namespaces and state_dir and
prints their names; these tests check that exactly those are gone afterwards,
on success and after SIGINT, and that no process it started survives (the demo
runs in a session of its own, so its processes share its process group).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^(\S+)\s+(PASS|FAIL|STOPPED|NOT RUN)\s")


def _start() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cnm.demo"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _assert_nothing_left(output: str, pgid: int) -> None:
    token = re.search(r"host (cnmdemo-[0-9a-f]+-)h\b", output)
    state = re.search(r"state_dir (\S+);", output)
    assert token, output
    assert state, output
    left = [n for n in os.listdir("/run/netns") if n.startswith(token.group(1))]
    assert not left, f"the demo left namespaces {left}"
    assert not os.path.exists(state.group(1)), f"the demo left {state.group(1)}"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert state.group(1) not in mounts, "the demo left sandbox namespace mounts"
    survivors = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                survivors.append(entry)
    assert not survivors, f"processes of the demo survived: {survivors}"


def _rows(output: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for line in output.splitlines() if (m := ROW.match(line))}


def test_the_demo_passes_every_scenario_and_leaves_nothing() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "cnm.demo", "--list"], cwd=REPO, capture_output=True, text=True, check=True
    )
    keys = [line.split()[0] for line in listed.stdout.splitlines()]
    assert {"bridge", "publish", "masquerade", "isolation", "icc", "internal", "objects"} <= set(keys)
    proc = _start()
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, out + err
    rows = _rows(out)
    assert list(rows) == keys, out
    assert set(rows.values()) == {"PASS"}, out
    for i in range(1, len(keys) + 1):
        assert f"[{i}/{len(keys)}] " in out
    # The evidence a reader is promised: ping lines, the peer a server saw, the firewall's rules.
    assert "64 bytes from" in out
    assert "whose server saw peer 192.0.2.2" in out
    assert "the server saw peer 192.0.2.1" in out
    # The default backend ("auto") is nftables here: the demo says so and shows its map element.
    assert "firewall backend nftables (auto)" in out
    assert re.search(r"the rule: map addr_\S+: tcp \. 8080 : \S+", out)
    assert f"{len(keys)} scenarios: {len(keys)} passed, 0 failed" in out
    _assert_nothing_left(out, proc.pid)


def test_sigint_mid_scenario_cleans_up_everything() -> None:
    proc = _start()
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 60
    # Interrupt once scenario 2 has a server running in a sandbox.
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if "reached web:80" in line:
            break
    assert any("reached web:80" in line for line in seen), "".join(seen)
    os.kill(proc.pid, signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    out = "".join(seen) + rest
    assert proc.returncode == 128 + signal.SIGINT, out + err
    assert "interrupted by SIGINT; cleaning up" in out
    rows = _rows(out)
    assert rows["bridge"] == "PASS"
    assert rows["publish"] == "STOPPED"
    assert rows["objects"] == "NOT RUN"
    assert "cleaned up:" in out, out + err
    _assert_nothing_left(out, proc.pid)
