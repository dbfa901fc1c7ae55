"""The benchmark's quick mode runs end to end, so it never rots; its numbers are never asserted.

It runs as a subprocess (it drives its own worker processes and namespaces), with a
name prefix that carries this xdist worker's, so the leak check covers what it makes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnm.testing import namespace_prefix

pytestmark = pytest.mark.kernel

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_cnm.py"
FIREWALL_BENCH = BENCH.with_name("bench_firewall.py")


def _quick(script: Path, out: Path, prefix: str, *, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a benchmark's quick mode as ``./run bench --quick --json OUT`` would."""
    return subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out), "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "XTABLES_LIBDIR": os.environ.get("XTABLES_LIBDIR", "/usr/lib/x86_64-linux-gnu/xtables")},
    )


def test_quick_benchmark_runs_every_implementation_and_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    prefix = namespace_prefix() + "bench-"
    proc = _quick(BENCH, out, prefix, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "verified:" in proc.stderr  # every implementation passed its ping and published-port check
    result = json.loads(out.read_text())
    rows = {"cnm", "cnm-nft", "cni", "floor", "floor-unmount"}
    assert set(result["per_container"]) == rows
    assert all(result["per_container"][row][op]["n"] == 5 for row in rows for op in ("add", "del"))
    assert all(set(result["scaling"][row]) == {"10", "20"} for row in rows)
    for impl in ("cnm", "cnm-nft"):  # both firewall backends, side by side
        assert result["memory"][impl]["endpoints"] == 20
        assert result["breakdown"][impl]["add"]["steps"]
        assert result["breakdown"][impl]["del"]["steps"]
    assert "add cnm/CNI" in result["ratios"]
    assert any(name.startswith("add cnm-nft/cnm") for name in result["ratios"])
    assert "| cnm " in proc.stdout
    assert not [name for name in os.listdir("/run/netns") if name.startswith(prefix)]


def test_quick_firewall_benchmark_runs_and_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = _quick(FIREWALL_BENCH, out, namespace_prefix() + "fwb-", timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # Like ./run bench, a --json path gets the firewall's figures beside it, not over it.
    result = json.loads((tmp_path / "bench.firewall.json").read_text())
    assert set(result["backends"]) == {"iptables", "nftables"}
    for backend in result["backends"].values():
        assert [row["k"] for row in backend["rows"]] == result["meta"]["k"]
        assert all(row["add_ms"] > 0 and row["remove_ms"] > 0 for row in backend["rows"])
    assert "nftables add" in proc.stdout
