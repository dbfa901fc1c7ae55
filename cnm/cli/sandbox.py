"""``cnm sandbox ...``, ``cnm run`` and ``cnm exec``: sandboxes and the commands run in them."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any, TextIO

from cnm import Controller, PortBinding, errors
from cnm.cli._common import Leaf, RunFailed, UsageError, each, key_value, link, print_inspect, print_json, print_table
from cnm.handles import Sandbox

__all__ = ["add_commands"]


def _port(spec: str) -> PortBinding:
    try:
        return PortBinding.parse(spec)
    except errors.InvalidConfig as exc:  # argparse prints an ArgumentTypeError's own message
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _create_sandbox(ctl: Controller, args: argparse.Namespace, name: str) -> Sandbox:
    return ctl.create_sandbox(
        name,
        hostname=args.hostname,
        network=args.network,
        ports=args.publish,
        dns=args.dns,
        dns_search=args.dns_search,
        dns_options=args.dns_option,
        exposed=args.expose,
        links=args.link,
        aliases=args.network_alias,
    )


def _sandbox_create(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    out.write(_create_sandbox(ctl, args, args.name).id + "\n")
    return 0


def _sandbox_ls(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    boxes = ctl.sandboxes()
    if args.format == "json":
        print_json(
            [
                {
                    "Id": s.id,
                    "Name": s.name,
                    "Hostname": s.hostname,
                    "Mode": s.mode,
                    "NetworkMode": s.network_mode,
                    "SandboxKey": s.netns_path,
                    "Endpoints": [
                        {"Name": e.name, "Network": e.network.name, "Interface": e.ifname, "IPAddress": e.ip}
                        for e in s.endpoints()
                    ],
                }
                for s in boxes
            ],
            out,
        )
        return 0
    rows = []
    for s in boxes:
        joined = [f"{e.network.name}:{e.ifname or '-'}:{e.ip or '-'}" for e in s.endpoints()]
        rows.append([s.id[:12], s.name, s.mode, s.network_mode or "-", ", ".join(joined) or "-"])
    print_table(["SANDBOX ID", "NAME", "MODE", "NETWORK MODE", "ENDPOINTS (network:interface:address)"], rows, out)
    return 0


def _sandbox_inspect(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    print_inspect([ctl.sandbox(ref).inspect() for ref in args.sandboxes], args.format, out)
    return 0


def _sandbox_rm(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    def remove(ref: str) -> None:
        sandbox = ctl.sandbox(ref)
        # As `docker rm` removes a container's endpoints, so the endpoints `network connect`
        # made (named after the sandbox) go with it instead of stranding their network.
        made = [(e.network, e.name) for e in sandbox.endpoints() if e.name == sandbox.name]
        sandbox.delete()
        for network, name in made:
            with contextlib.suppress(errors.EndpointNotFound):  # the sandbox's own went with it
                network.endpoint(name).delete()
        out.write(sandbox.name + "\n")

    return each(args.sandboxes, remove)


# --- run, exec -------------------------------------------------------------------------------------


def _command(args: argparse.Namespace) -> list[str]:
    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError(f"cnm {args.cmd} needs a command to run, after --")
    return argv


def _environment(sandbox: Sandbox, args: argparse.Namespace) -> dict[str, str]:
    # Docker's order: link variables over the inherited environment, -e over both.
    return {**os.environ, **sandbox.link_env(), **dict(args.env)}


@contextlib.contextmanager
def _forwarding_signals(proc: subprocess.Popen[Any]) -> Iterator[None]:
    """While ``proc`` runs, pass SIGINT/SIGTERM/SIGHUP to it instead of dying, so cleanup still happens."""

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, forward) for s in wanted}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _wait(proc: subprocess.Popen[Any]) -> int:
    with _forwarding_signals(proc):
        code = proc.wait()
    return 128 - code if code < 0 else code


def _detached(sandbox: Sandbox, argv: list[str], env: dict[str, str]) -> subprocess.Popen[Any]:
    return sandbox.popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _run(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    argv = _command(args)
    name = args.name or f"run-{secrets.token_hex(4)}"
    try:
        sandbox = _create_sandbox(ctl, args, name)
    except errors.CNMError as exc:
        raise RunFailed(exc) from exc
    env = _environment(sandbox, args)
    if args.detach:
        try:
            proc = _detached(sandbox, argv, env)
        except BaseException:
            sandbox.delete()
            raise
        out.write(sandbox.id + "\n")
        print(f"cnm: started PID {proc.pid} in sandbox {sandbox.name}", file=sys.stderr)
        return 0
    try:
        return _wait(sandbox.popen(argv, env=env))
    finally:
        sandbox.delete()


def _exec(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    argv = _command(args)
    try:
        sandbox = ctl.sandbox(args.sandbox)
    except errors.CNMError as exc:
        raise RunFailed(exc) from exc
    env = _environment(sandbox, args)
    if args.detach:
        out.write(f"{_detached(sandbox, argv, env).pid}\n")
        return 0
    return _wait(sandbox.popen(argv, env=env))


# --- the parser ------------------------------------------------------------------------------------


def _sandbox_options(parser: argparse.ArgumentParser, *, network_default: str | None) -> None:
    parser.add_argument(
        "--network",
        "--net",
        default=network_default,
        metavar="MODE",
        help="a network name or id, none, host, or container:NAME"
        + (f" (default {network_default})" if network_default else ""),
    )
    parser.add_argument(
        "-p",
        "--publish",
        type=_port,
        action="append",
        default=[],
        metavar="[IP:][HOST:]CONTAINER[/udp]",
        help="publish a port (repeatable)",
    )
    parser.add_argument(
        "--expose", action="append", default=[], metavar="PORT[/udp]", help="expose a port to links (repeatable)"
    )
    parser.add_argument(
        "--link", type=link, action="append", default=[], metavar="NAME:ALIAS", help="a legacy link (repeatable)"
    )
    parser.add_argument(
        "--network-alias",
        "--alias",
        action="append",
        default=[],
        metavar="NAME",
        help="a name other sandboxes on --network resolve to this one (user-defined networks; repeatable)",
    )
    parser.add_argument("--hostname", help="the hostname inside (default: the name)")
    parser.add_argument("--dns", action="append", default=[], metavar="IP", help="a DNS server (repeatable)")
    parser.add_argument("--dns-search", action="append", default=[], metavar="DOMAIN", help="a search domain")
    parser.add_argument("--dns-option", action="append", default=[], metavar="OPT", help="a resolv.conf option")


def _env_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-e",
        "--env",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set an environment variable for the command (repeatable)",
    )


def add_commands(commands: Any, leaf: Leaf) -> None:
    """Add ``sandbox`` and its subcommands, ``run`` and ``exec``."""
    sandbox = commands.add_parser("sandbox", help="manage sandboxes", description="Manage sandboxes.")
    sb_cmds = sandbox.add_subparsers(dest="sandbox_cmd", metavar="COMMAND", required=True)
    p = leaf(sb_cmds, "create", _sandbox_create, "create a sandbox (a network namespace), optionally connected")
    p.add_argument("name")
    _sandbox_options(p, network_default=None)
    leaf(sb_cmds, "ls", _sandbox_ls, "list sandboxes", aliases=["list"])
    p = leaf(sb_cmds, "inspect", _sandbox_inspect, "show sandboxes as docker inspect shows a container's networking")
    p.add_argument("sandboxes", nargs="+", metavar="SANDBOX")
    p = leaf(
        sb_cmds,
        "rm",
        _sandbox_rm,
        "delete sandboxes and the endpoints connected for them (stop their processes first)",
        aliases=["remove"],
    )
    p.add_argument("sandboxes", nargs="+", metavar="SANDBOX")

    p = leaf(commands, "run", _run, "run a command in a new sandbox; removed when it exits unless -d")
    _sandbox_options(p, network_default="bridge")
    _env_option(p)
    p.add_argument("--name", help="the sandbox's name (default: run-<random>)")
    p.add_argument("-d", "--detach", action="store_true", help="start the command in the background, keep the sandbox")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    p = leaf(commands, "exec", _exec, "run a command in an existing sandbox")
    p.add_argument("sandbox")
    _env_option(p)
    p.add_argument("-d", "--detach", action="store_true", help="start the command in the background; print its PID")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")
