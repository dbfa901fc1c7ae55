"""ARCHITECTURE.md stays true: its layer table and contract list match the import-linter configuration."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _contracts() -> list[dict[str, Any]]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["tool"]["importlinter"]["contracts"])


def _table(name: str) -> list[str]:
    """The first column of ARCHITECTURE.md's table between its ``name`` begin/end markers, unescaped."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    found = re.search(rf"<!-- {name}: begin -->\n(.*?)<!-- {name}: end -->", text, re.S)
    assert found, f"ARCHITECTURE.md has no {name} markers"
    rows = [line for line in found.group(1).splitlines() if line.startswith("| `")]
    return [re.match(r"\| `(.*?)` \|", row).group(1).replace("\\|", "|") for row in rows]  # type: ignore[union-attr]


def test_the_layer_table_is_the_layers_contract_in_order() -> None:
    (layers,) = [c["layers"] for c in _contracts() if c["id"] == "layers"]
    assert _table("layers-table") == layers


def test_the_contract_list_names_every_contract_once() -> None:
    ids = [c["id"] for c in _contracts()]
    listed = _table("contracts-table")
    assert sorted(listed) == sorted(ids)
    assert len(listed) == len(set(listed))


def test_the_sublayer_lines_are_the_core_and_ops_contracts() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    found = re.search(r"<!-- sublayers: begin -->\n```\n(.*?)```\n<!-- sublayers: end -->", text, re.S)
    assert found, "ARCHITECTURE.md has no sublayers block"
    lines = dict(line.split(": ", 1) for line in found.group(1).splitlines())
    contracts = {c["id"]: c["layers"] for c in _contracts() if c["id"] in lines}
    assert contracts.keys() == lines.keys()
    for cid, layers in contracts.items():
        assert lines[cid].split(" > ") == layers, cid
