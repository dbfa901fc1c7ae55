"""The import-linter contracts refuse an upward import at every level of the core (run on a copy of the tree)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")

# An upward import for each level: (module that gets it, the import, the contract that must refuse it).
UPWARD = [
    ("cnm/_core/state.py", "import cnm.handles", "layers"),
    ("cnm/_core/records.py", "import cnm._core.state", "core-layers"),
    ("cnm/_core/ops/refresh.py", "import cnm._core.ops.attach", "ops-layers"),
    ("cnm/_core/ops/attach.py", "import cnm._core.reconcile", "core-layers"),
    ("cnm/handles.py", "import cnm.controller", "layers"),
]


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "cnm", tree / "cnm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "drivers", tree / "cnm_drivers", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def _lint(tree: Path, contract: str) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS is not None
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(tree / "pyproject.toml"), "--contract", contract, "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is a dev extra: pip install -e .[dev]")
@pytest.mark.parametrize(("module", "line", "contract"), UPWARD)
def test_an_upward_import_breaks_its_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    tree = _copy(tmp_path)
    assert _lint(tree, contract).returncode == 0, "the copy of the tree should keep its contracts"
    target = tree / module
    target.write_text(target.read_text() + f"\n{line}  # the deliberate upward import\n")
    result = _lint(tree, contract)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout


def test_the_package_list_names_every_package() -> None:
    """pyproject.toml lists the packages (drivers/ installs as cnm_drivers, which setuptools' find cannot map)."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(path.parent.relative_to(ROOT).parts).replace("drivers", "cnm_drivers", 1)
        if path.parts[len(ROOT.parts)] == "drivers"
        else ".".join(path.parent.relative_to(ROOT).parts)
        for top in ("cnm", "drivers")
        for path in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in path.parts
    }
    assert listed == found
