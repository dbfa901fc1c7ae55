"""Helpers for drivers that parse their options into an attrs class.

Options arrive as a ``Mapping[str, object]`` (strings from a command line,
or typed values from Python); a driver turns them into its own frozen attrs
class at the boundary with :func:`parse_options`, using the converters here so
that every driver refuses bad values with the same kind of message. (attrs'
mypy plugin wants converters to be named functions: wrap these in one-line
named converters, as the built-in drivers do.)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import TypeVar

import attrs

from cnm.errors import InvalidConfig
from cnm.kernel.links import check_ifname

__all__ = ["parse_options", "to_bool", "to_ifname", "to_int", "to_ipv4"]

_T = TypeVar("_T")

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def parse_options(
    cls: type[_T], options: Mapping[str, object], *, driver: str, aliases: Mapping[str, str] | None = None
) -> _T:
    """Build ``cls`` (an attrs class) from user options, refusing unknown names.

    Args:
        cls: the driver's options class; its converters validate each value.
        options: the user's options.
        driver: the driver's name, for messages.
        aliases: other accepted names (e.g. Docker's long ones) mapped to field names.
    """
    known = {a.name for a in attrs.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, object] = {}
    for key, value in options.items():
        name = (aliases or {}).get(key, key)
        if name not in known:
            raise InvalidConfig(f"unknown {driver} option {key!r}; known options: {', '.join(sorted(known))}")
        values[name] = value
    return cls(**values)


def to_bool(value: object, name: str) -> bool:
    """True/False, or "true"/"false" (also 1/0, yes/no, on/off) as a command line gives them."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidConfig(f"option {name}={value!r} is not a boolean; use true or false")


def to_int(value: object, name: str, low: int, high: int) -> int | None:
    """An int within ``low..high``; an empty value becomes None."""
    if value is None or value == "":
        return None
    try:
        number = int(str(value))
    except ValueError as exc:
        raise InvalidConfig(f"option {name}={value!r} is not a number") from exc
    if not low <= number <= high:
        raise InvalidConfig(f"option {name}={number} is out of range; use {low}-{high}")
    return number


def to_ipv4(value: object, name: str) -> str | None:
    """A normalised IPv4 address string; an empty value becomes None."""
    if value is None or value == "":
        return None
    try:
        return str(ipaddress.IPv4Address(str(value).strip()))
    except ValueError as exc:
        raise InvalidConfig(f"option {name}={value!r} is not an IPv4 address") from exc


def to_ifname(value: object, name: str) -> str | None:
    """A kernel interface name (at most 15 bytes); an empty value becomes None."""
    if value is None or value == "":
        return None
    return check_ifname(str(value), name)
