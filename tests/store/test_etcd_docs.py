"""docs/multi-host.md's examples run against a real etcd, and the etcd benchmark's quick mode runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from cnm.store.etcd_membership import MemberEvent
from cnm.testing.etcd import EtcdCluster

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "multi-host.md"
DOC_ENDPOINTS = '["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"]'


def test_the_pages_examples_run(etcd_server: EtcdCluster, cluster_name: str) -> None:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)
    assert len(blocks) == 2
    assert DOC_ENDPOINTS in blocks[0]
    seen: list[MemberEvent] = []
    scope: dict[str, object] = {"on_event": seen.append}
    code = blocks[0].replace(DOC_ENDPOINTS, repr(etcd_server.endpoints)).replace('"prod"', repr(cluster_name))
    for index, block in enumerate([code, blocks[1]]):
        exec(compile(block, f"docs/multi-host.md python block {index + 1}", "exec"), scope)  # noqa: S102
    scope["store"].close()  # type: ignore[attr-defined]
    assert seen[0] == MemberEvent("join", "host-a", "192.0.2.1")


def test_the_benchmarks_quick_mode_runs(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_etcd.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(Path(f"{out}.etcd").read_text())
    assert set(result) == {"sqlite", "etcd-1", "etcd-3"}
    assert all(row["contended"]["allocations"] == 20 for row in result.values())
    assert "| etcd-3 " in proc.stdout
