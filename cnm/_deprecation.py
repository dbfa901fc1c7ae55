"""Names that moved: the module ``__getattr__`` that still resolves them, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping

__all__ = ["moved_names"]


def moved_names(module: str, moved: Mapping[str, str], *, until: str = "0.3") -> Callable[[str], object]:
    """A module-level ``__getattr__`` for ``module`` whose names in ``moved`` now live elsewhere.

    Args:
        module: the old module's name (its ``__name__``).
        moved: each old name -> the module that holds it now.
        until: the release in which the old names go.

    Each access warns once per call site (Python's default filter), naming the new home, and
    returns the object itself, so ``old.Name is new.Name``.
    """

    def __getattr__(name: str) -> object:
        home = moved.get(name)
        if home is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(
            f"{module}.{name} moved to {home}.{name}: import {name} from {home} (the old name goes in {until})",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(home), name)

    return __getattr__
