"""The 0.1 module names still work for one release, with a DeprecationWarning naming the new home."""

from __future__ import annotations

import importlib

import pytest

from cnm import etchosts, handles, legacy_links, types

MOVED = [
    ("cnm.network", "Network", handles),
    ("cnm.endpoint", "Endpoint", handles),
    ("cnm.sandbox", "Sandbox", handles),
    ("cnm.sandbox", "HOST_HOSTS", etchosts),
    ("cnm.links", "Link", handles),
    ("cnm.links", "link_env", legacy_links),
    ("cnm.links", "parse_exposed", legacy_links),
    ("cnm.links", "hosts_names", legacy_links),
    ("cnm.reconcile", "ReconcileReport", types),
]


@pytest.mark.parametrize(("old", "name", "home"), MOVED)
def test_old_names_warn_and_give_the_same_object(old: str, name: str, home: object) -> None:
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"import {name} from {home.__name__}"):  # type: ignore[attr-defined]
        found = getattr(module, name)
    assert found is getattr(home, name)


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        importlib.import_module("cnm.network").create_network  # noqa: B018 - the access is the test
