"""The conformance kit's plain function works where pytest is not installed (pytest is only a [test] extra)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import cnm.testing.conformance as kit
from cnm.testing.conformance import pytest_plugin

# Runs in a fresh interpreter in which any import of pytest fails, as it would without the extra.
_WITHOUT_PYTEST = textwrap.dedent(
    """
    import sys

    class NoPytest:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("pytest", "_pytest"):
                raise ImportError(f"pytest is not installed (import of {name} blocked)")
            return None

    sys.meta_path.insert(0, NoPytest())
    from cnm.testing.conformance import RULE_IDS, ConformanceFailure, Report, check_driver

    assert callable(check_driver) and RULE_IDS and Report and ConformanceFailure
    assert not [m for m in sys.modules if m.split(".")[0] in ("pytest", "_pytest")]
    try:
        from cnm.testing.conformance import driver_conformance
    except ImportError:
        print("fixture needs pytest")
    """
)


def test_check_driver_imports_without_pytest() -> None:
    result = subprocess.run([sys.executable, "-c", _WITHOUT_PYTEST], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "fixture needs pytest"


def test_the_fixture_is_still_importable_from_the_kit() -> None:
    assert kit.driver_conformance is pytest_plugin.driver_conformance
