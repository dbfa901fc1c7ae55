"""What every command module shares: exit statuses, the handler type, output and error printing."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from cnm import Controller, errors

EXIT_ERROR = 1
"""cnm refused the request or failed."""
EXIT_USAGE = 2
"""The command line was malformed (argparse's status)."""
EXIT_CNM_FAILED_TO_RUN = 125
"""``run``/``exec``: cnm failed before the command started (Docker's status for the same case)."""

Handler = Callable[[Controller, argparse.Namespace, TextIO], int]
"""A leaf command: the controller, the parsed arguments, where to print; the exit status."""

Leaf = Callable[..., argparse.ArgumentParser]
"""Adds a leaf command to a subparser group: ``leaf(group, name, handler, help, **kw)``."""


class UsageError(Exception):
    """A command line argparse accepted but the command cannot use."""


class RunFailed(Exception):
    """run/exec: cnm failed before the command started."""

    def __init__(self, cause: errors.CNMError) -> None:
        super().__init__(str(cause))
        self.cause = cause


# --- argument types --------------------------------------------------------------------------------


def key_value(spec: str) -> tuple[str, str]:
    """A ``KEY=VALUE`` argument."""
    key, sep, value = spec.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"invalid {spec!r}; use KEY=VALUE")
    return key, value


def link(spec: str) -> tuple[str, str]:
    """A ``--link NAME[:ALIAS]`` argument."""
    target, _, alias = spec.partition(":")
    if not target:
        raise argparse.ArgumentTypeError(f"invalid link {spec!r}; use NAME:ALIAS (or NAME, aliased as itself)")
    return target, alias or target


# --- errors in the command line's words ------------------------------------------------------------

# Library messages name Python calls; at the command line the same advice is a command.
# The library's messages stay as they are: this is the one place they are reworded.
_CLI_WORDS = (
    ("see Controller.networks()", "see `cnm network ls`"),
    ("see Controller.sandboxes()", "see `cnm sandbox ls`"),
    ("see Network.endpoints()", "see `cnm endpoint ls NETWORK`"),
    ("Controller.reconcile()", "`cnm reconcile`"),
)
_BY_TYPE: tuple[tuple[type[BaseException], str, str], ...] = (
    (
        errors.ActiveEndpoints,
        "delete them first",
        "disconnect them (`cnm network disconnect NETWORK SANDBOX`) or remove them (`cnm endpoint rm NETWORK "
        "ENDPOINT`) first",
    ),
    (errors.EndpointJoined, "leave it first", "disconnect it first (`cnm network disconnect NETWORK SANDBOX`)"),
)


def cli_message(exc: BaseException) -> str:
    """``exc``'s message, its advice given as ``cnm`` commands instead of Python calls."""
    message = str(exc)
    for python, command in _CLI_WORDS:
        message = message.replace(python, command)
    for kind, python, command in _BY_TYPE:
        if isinstance(exc, kind):
            message = message.replace(python, command)
    return message


def _messages(exc: BaseException) -> list[str]:
    if isinstance(exc, BaseExceptionGroup):
        return [m for inner in exc.exceptions for m in _messages(inner)]
    return [cli_message(exc)]


def print_error(exc: BaseException) -> None:
    """One ``cnm: error:`` line per failure (an exception group gives several)."""
    for message in _messages(exc):
        print(f"cnm: error: {message}", file=sys.stderr)


def each(refs: Sequence[str], fn: Callable[[str], None]) -> int:
    """Apply ``fn`` to every ref, as ``docker rm a b`` does: report each failure, go on, fail at the end."""
    status = 0
    for ref in refs:
        try:
            fn(ref)
        except (errors.CNMError, ExceptionGroup) as exc:
            print_error(exc)
            status = EXIT_ERROR
    return status


# --- output ----------------------------------------------------------------------------------------


def print_json(value: object, out: TextIO) -> None:
    """``value`` as indented JSON."""
    json.dump(value, out, indent=4, default=str)
    out.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO) -> None:
    """Rows under headers, in columns as wide as their widest cell."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in [list(headers), *cells]) for i in range(len(headers))]
    for row in [list(headers), *cells]:
        out.write("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _flatten(value: object, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Dotted key paths and scalar values of an inspect() document, for the table view."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            yield from _flatten(item, f"{prefix}.{i}")
    else:
        yield prefix, json.dumps(value) if value in ({}, [], None) or isinstance(value, bool) else str(value)


def print_inspect(documents: list[dict[str, Any]], fmt: str, out: TextIO) -> None:
    """inspect() documents as JSON, or as KEY/VALUE tables."""
    if fmt == "json":
        print_json(documents, out)
        return
    for i, doc in enumerate(documents):
        if i:
            out.write("\n")
        print_table(["KEY", "VALUE"], list(_flatten(doc)), out)
