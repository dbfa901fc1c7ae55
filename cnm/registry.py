"""The driver registry: driver name -> driver class, loaded from entry points.

Drivers are found through the entry-point group ``cnm.drivers``; built-in
drivers are registered there exactly as a pip-installed one is. A registry
is an ordinary object: each :class:`~cnm.controller.Controller` has its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from importlib.metadata import entry_points

from cnm.driverapi import Driver, DriverContext
from cnm.errors import DriverNotFound, InvalidConfig

__all__ = ["ENTRY_POINT_GROUP", "DriverFactory", "DriverRegistry"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "cnm.drivers"

DriverFactory = Callable[[DriverContext], Driver]


class DriverRegistry:
    """Maps driver names to factories and keeps one driver instance per name.

    Args:
        context_for: builds the :class:`DriverContext` for a driver by name.
        load_entry_points: whether to read the ``cnm.drivers`` entry points.
    """

    def __init__(self, context_for: Callable[[str], DriverContext], *, load_entry_points: bool = True) -> None:
        self._context_for = context_for
        self._factories: dict[str, DriverFactory | str] = {}
        self._instances: dict[str, Driver] = {}
        self._lock = threading.Lock()
        if load_entry_points:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                self._factories.setdefault(ep.name, ep.value)

    def register(self, name: str, factory: DriverFactory) -> None:
        """Register (or replace) a driver factory under ``name``."""
        with self._lock:
            self._factories[name] = factory
            self._instances.pop(name, None)

    def names(self) -> list[str]:
        """The installed driver names, sorted."""
        return sorted(self._factories)

    def get(self, name: str) -> Driver:
        """The driver instance for ``name``, constructed on first use.

        Raises:
            DriverNotFound: no driver of that name is installed; the message lists those that are.
        """
        with self._lock:
            driver = self._instances.get(name)
            if driver is not None:
                return driver
            factory = self._factories.get(name)
            if factory is None:
                raise DriverNotFound(
                    f"no network driver named {name!r}; installed drivers: {', '.join(self.names()) or 'none'}. "
                    f"Install one that registers under the {ENTRY_POINT_GROUP!r} entry point"
                )
            if isinstance(factory, str):
                factory = self._load(name, factory)
                self._factories[name] = factory
            driver = factory(self._context_for(name))
            if not isinstance(driver, Driver):
                raise InvalidConfig(f"driver {name!r} does not implement cnm.driverapi.Driver; fix its class")
            self._instances[name] = driver
            log.debug("loaded driver %s", name)
            return driver

    @staticmethod
    def _load(name: str, target: str) -> DriverFactory:
        for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
            if ep.value == target:
                loaded: DriverFactory = ep.load()
                return loaded
        raise DriverNotFound(f"driver {name!r} ({target}) disappeared from the installed entry points")
