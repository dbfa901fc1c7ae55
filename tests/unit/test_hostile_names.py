"""Hostile names are refused before they reach a path, a file or a rule (issue 18 item 5, in part).

A trailing newline passed ``re.match`` with a ``$`` anchor, so ``"web\\n"`` was a
valid network or sandbox name, and a valid DNS name (one line more in a hosts file).
"""

from __future__ import annotations

import pytest

from cnm import errors
from cnm._core.records import validate_name
from cnm.dns.config import is_dns_name

HOSTILE = ["web\n", "web\nevil", "a/b", "../x", "..", ".", "a\x00b", "", "x" * 129, "x" * 1_000_000, "-a", "é"]


def _id(value: object) -> str:
    """A short test id that is the same in every pytest-xdist worker (no memory address, no megabyte)."""
    text = repr(value) if not isinstance(value, str) or len(value) < 40 else f"str of {len(value)}"
    return type(value).__name__ if " at 0x" in text else text


@pytest.mark.parametrize("name", HOSTILE, ids=_id)
def test_hostile_object_names_are_refused(name: str) -> None:
    with pytest.raises(errors.InvalidConfig, match="invalid network name"):
        validate_name(name, "network")


@pytest.mark.parametrize("name", [object(), None, 7, b"web"], ids=_id)
def test_names_of_other_types_are_refused(name: object) -> None:
    with pytest.raises(errors.InvalidConfig, match="invalid sandbox name"):
        validate_name(name, "sandbox")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["web\n", "web\nevil", "a b", "a/b", "a\x00b", "x" * 300], ids=_id)
def test_hostile_dns_names_are_not_served(name: str) -> None:
    assert not is_dns_name(name)


def test_ordinary_names_still_pass() -> None:
    assert validate_name("web-1.prod_2", "network") == "web-1.prod_2"
    assert is_dns_name("web-1.prod")
