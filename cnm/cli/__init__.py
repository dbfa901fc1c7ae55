"""The ``cnm`` command line: ``docker network`` and ``docker run`` conventions over cnm's public API.

::

    cnm [--state-dir DIR] [--host-netns NS] [--firewall auto|nftables|iptables|none] [--format table|json] [--debug]
        COMMAND ...

    cnm network create|ls|inspect|rm|connect|disconnect|prune
    cnm endpoint ls|rm NETWORK ...
    cnm sandbox create|ls|inspect|rm
    cnm run [--network MODE] [-p [IP:][HOST:]CONTAINER[/udp]] [--expose PORT] [--link NAME:ALIAS]
            [-e KEY=VALUE] [--name N] [--hostname H] [-d] -- CMD...
    cnm exec [-d] [-e KEY=VALUE] SANDBOX -- CMD...
    cnm info
    cnm reconcile
    cnm plugin serve --driver NAME [--ipam] [--socket PATH]
    cnm demo [SCENARIO...]

Every command is a call (or a few) of :class:`cnm.Controller` and the objects
it returns; the command line adds only parsing and printing. The global
options may also follow the subcommand (``cnm network ls --format json``).

Exit status: 0 on success; 1 when cnm refused or failed (the one-line message
is the :mod:`cnm.errors` message, its advice given as ``cnm`` commands); 2 for
a usage error; for ``run`` and ``exec``, the command's own status (128+N if a
signal N ended it), and 125 when cnm failed before the command could start, as
``docker run`` does. Output cut short by its reader (``cnm network ls | head -1``)
ends quietly with 141, the status of a tool ended by SIGPIPE.

The package: this module parses and dispatches; :mod:`cnm.cli.network` and
:mod:`cnm.cli.sandbox` hold the command groups, :mod:`cnm.cli._common` the
output and error helpers.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from cnm import Controller, errors
from cnm.cli import network, plugin, sandbox
from cnm.cli._common import (
    EXIT_CNM_FAILED_TO_RUN,
    EXIT_ERROR,
    EXIT_USAGE,
    Handler,
    RunFailed,
    UsageError,
    print_error,
    print_json,
)
from cnm.firewallapi import AUTO, backend_names

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_CNM_FAILED_TO_RUN", "EXIT_ERROR", "EXIT_USAGE", "build_parser", "main"]

EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""The reader of the output went away (``| head``): the status a tool ended by SIGPIPE has."""

DEFAULT_STATE_DIR = "/var/lib/cnm"


def _reconcile(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    report = ctl.reconcile()
    out.write(f"{report}\n")
    return EXIT_ERROR if report.errors else 0


def _info(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    info = ctl.info()
    if args.format == "json":
        print_json(info, out)
        return 0
    backend = info["FirewallBackend"]
    out.write(f"ID: {info['ID']}\nState dir: {info['StateDir']}\nHost netns: {info['HostNetns']}\n")
    out.write(f"Firewall Backend: {backend['Driver']}\n")
    for key, value in backend["Info"]:
        out.write(f"  {key}: {value}\n")
    return 0


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # On the top-level parser they carry the defaults; repeated on each subcommand with
    # SUPPRESS, so that `cnm network ls --format json` works and does not reset them.
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--state-dir",
        default=default(os.environ.get("CNM_STATE_DIR", DEFAULT_STATE_DIR)),
        help="where cnm keeps its store and sandbox files ($CNM_STATE_DIR, default %(default)s)"
        if defaults
        else argparse.SUPPRESS,
    )
    parser.add_argument(
        "--host-netns",
        default=default(os.environ.get("CNM_HOST_NETNS") or None),
        metavar="NS",
        help="the network namespace to treat as the host: a name under /run/netns or a path "
        "($CNM_HOST_NETNS; default: cnm's own)"
        if defaults
        else argparse.SUPPRESS,
    )
    parser.add_argument(
        "--firewall",
        choices=(AUTO, *backend_names()),
        default=default(os.environ.get("CNM_FIREWALL") or AUTO),
        help="the firewall backend: auto (the recorded one, else nftables where it works), nftables, iptables, "
        "or none to write no rules; another than recorded migrates ($CNM_FIREWALL; default %(default)s)"
        if defaults
        else argparse.SUPPRESS,
    )
    parser.add_argument(
        "--format",
        choices=("table", "json"),
        default=default("table"),
        help="output of ls and inspect (default %(default)s)" if defaults else argparse.SUPPRESS,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="log cnm's steps and show tracebacks" if defaults else argparse.SUPPRESS,
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``cnm`` argument parser; each leaf command sets ``handler``."""
    parser = argparse.ArgumentParser(
        prog="cnm",
        description="Docker's Container Network Model without a daemon: networks, sandboxes, published ports.",
        epilog="Exit status: 0 ok, 1 cnm refused or failed, 2 usage error; run/exec: the command's status "
        "(125 if cnm failed before starting it).",
    )
    _global_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    def leaf(group: Any, name: str, handler: Handler | None, help_text: str, **kw: Any) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, help=help_text, description=help_text, **kw)
        _global_options(sub, defaults=False)
        sub.set_defaults(handler=handler, parser=sub)
        return sub

    network.add_commands(commands, leaf)
    sandbox.add_commands(commands, leaf)
    plugin.add_commands(commands, leaf)
    leaf(commands, "info", _info, "show the controller: its id, state_dir, host namespace and firewall backend")
    leaf(commands, "reconcile", _reconcile, "repair the store and the kernel after a crash; print what was done")
    p = leaf(commands, "demo", None, "run the demo of every scenario, in throwaway namespaces (python -m cnm.demo)")
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="run only these (default: all)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser


def _run_demo(args: argparse.Namespace) -> NoReturn:
    # The demo is a program of its own (it makes its own namespaces and state_dir); exec it
    # rather than import it, so its signal handling owns the process.
    argv = [sys.executable, "-m", "cnm.demo", *args.scenarios]
    argv += ["--list"] if args.list else []
    argv += ["--debug"] if args.debug else []
    os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter and module, no shell


def _configure_logging(debug: bool) -> None:
    # Without --debug only errors are logged: a refused request is the one line _dispatch prints.
    # With it, cnm's (and its drivers') steps; pyroute2 would log whole netlink dumps at DEBUG.
    logging.basicConfig(
        level=logging.WARNING if debug else logging.ERROR,
        stream=sys.stderr,
        format="%(name)s: %(levelname)s: %(message)s" if debug else "cnm: %(levelname)s: %(message)s",
    )
    if debug:
        for name in ("cnm", "cnm_drivers"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        logging.getLogger("pyroute2").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cnm`` command line; the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.debug)
    if args.handler is None:
        _run_demo(args)
    try:
        standalone = getattr(args, "standalone", None)  # a command that needs no Controller (plugin serve)
        return standalone(args) if standalone is not None else _dispatch(args)
    except UsageError as exc:
        command_parser: argparse.ArgumentParser = args.parser
        command_parser.error(str(exc))
    except BrokenPipeError:
        # The reader left (`| head -1`): end as quietly as a tool SIGPIPE ends. stdout points
        # at /dev/null from here on, so the interpreter's last flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


_READ_ONLY = {
    ("network", "ls"),
    ("network", "list"),
    ("network", "inspect"),
    ("endpoint", "ls"),
    ("endpoint", "list"),
    ("sandbox", "ls"),
    ("sandbox", "list"),
    ("sandbox", "inspect"),
}


def _repairs_on_open(args: argparse.Namespace) -> bool:
    """Whether the Controller reconciles when it opens (the library's default).

    Commands that change something do, so they start from a repaired state.
    Listing, inspecting and exec only read: they skip it, which saves the
    firewall rebuild (about a second) on every call. ``cnm reconcile`` opens
    without it so that its report shows what it repaired.
    """
    if args.cmd in ("reconcile", "exec", "info"):
        return False
    sub = (
        getattr(args, "network_cmd", None) or getattr(args, "endpoint_cmd", None) or getattr(args, "sandbox_cmd", None)
    )
    return (args.cmd, sub) not in _READ_ONLY


def _dispatch(args: argparse.Namespace) -> int:
    """Open the controller and run the command; every failure becomes one line and a status."""
    failed_status = EXIT_CNM_FAILED_TO_RUN if args.cmd in ("run", "exec") else EXIT_ERROR
    message: str | None = None
    try:
        with Controller(
            state_dir=args.state_dir,
            host_netns=args.host_netns,
            firewall=args.firewall,
            reconcile=_repairs_on_open(args),
        ) as ctl:
            handler: Handler = args.handler
            status = handler(ctl, args, sys.stdout)
            sys.stdout.flush()  # a reader that left fails here, inside the handling below
            return status
    except (UsageError, BrokenPipeError):
        raise
    except RunFailed as exc:
        _debug_traceback(args)
        print_error(exc.cause)
        return EXIT_CNM_FAILED_TO_RUN
    except (errors.CNMError, ExceptionGroup) as exc:
        _debug_traceback(args)
        print_error(exc)
        return failed_status
    except PermissionError as exc:
        message = f"{exc}; cnm works with namespaces and the firewall: run it as root"
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's boundary: one line, the traceback only with --debug
        message = f"{type(exc).__name__}: {exc}" + ("" if args.debug else "; rerun with --debug for the traceback")
    _debug_traceback(args)
    print(f"cnm: error: {message}", file=sys.stderr)
    return failed_status


def _debug_traceback(args: argparse.Namespace) -> None:
    if args.debug:
        traceback.print_exc()
