"""The pytest side of the kit: the ``driver_conformance`` fixture (the only module here that imports pytest)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cnm.kernel.netns import NetNS
from cnm.registry import DriverFactory
from cnm.testing.conformance import Report, check_driver

__all__ = ["driver_conformance"]


@pytest.fixture
def driver_conformance(netns_factory: Callable[[str], NetNS]) -> Callable[..., Report]:
    """:func:`check_driver` with the test's ``netns_factory``; call it with the driver factory."""

    def run(factory: DriverFactory, **kwargs: Any) -> Report:
        return check_driver(factory, netns_factory=netns_factory, **kwargs)

    return run
