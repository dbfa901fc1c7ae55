"""bench_dns's quick mode runs end to end, so it never rots; its numbers are never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnm.testing import namespace_prefix

pytestmark = pytest.mark.kernel

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_dns.py"


def test_quick_dns_benchmark_runs_and_writes_its_json(tmp_path: Path) -> None:
    prefix = namespace_prefix() + "dnsb-"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(tmp_path / "bench.json"), "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "bench.dns.json").read_text())  # beside ./run bench's other results
    cnm = result["cnm"]
    for key in ("local_udp", "local_tcp", "round_robin_udp", "forwarded_udp"):
        assert cnm[key]["n"] == 30
    assert set(cnm["add"]) == {"10", "100"}
    assert "| cnm |" in proc.stdout
    assert not [name for name in os.listdir("/run/netns") if name.startswith(prefix)]
