"""The ``cnm`` command line: ``docker network`` and ``docker run`` conventions over cnm's public API.

::

    cnm [--state-dir DIR] [--host-netns NS] [--format table|json] [--debug] COMMAND ...

    cnm network create|ls|inspect|rm|connect|disconnect|prune
    cnm sandbox create|ls|inspect|rm
    cnm run [--network MODE] [-p [IP:][HOST:]CONTAINER[/udp]] [--expose PORT] [--link NAME:ALIAS]
            [--name N] [--hostname H] [-d] -- CMD...
    cnm exec SANDBOX -- CMD...
    cnm reconcile
    cnm demo [SCENARIO...]

Every command is a call (or a few) of :class:`cnm.Controller` and the objects
it returns; the command line adds only parsing and printing. The global
options may also follow the subcommand (``cnm network ls --format json``).

Exit status: 0 on success; 1 when cnm refused or failed (the one-line message
is the :mod:`cnm.errors` message, which says what to do); 2 for a usage error;
for ``run`` and ``exec``, the command's own status (128+N if a signal N ended
it), and 125 when cnm failed before the command could start, as ``docker run``
does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any, NoReturn, TextIO

from cnm import Controller, IPAMConfig, PortBinding, errors
from cnm.sandbox import Sandbox

__all__ = ["EXIT_CNM_FAILED_TO_RUN", "EXIT_ERROR", "EXIT_USAGE", "build_parser", "main", "parse_port"]

log = logging.getLogger(__name__)

EXIT_ERROR = 1
"""cnm refused the request or failed."""
EXIT_USAGE = 2
"""The command line was malformed (argparse's status)."""
EXIT_CNM_FAILED_TO_RUN = 125
"""``run``/``exec``: cnm failed before the command started (Docker's status for the same case)."""

DEFAULT_STATE_DIR = "/var/lib/cnm"

Handler = Callable[[Controller, argparse.Namespace, TextIO], int]


# --- argument types --------------------------------------------------------------------------------


def parse_port(spec: str) -> PortBinding:
    """A ``-p`` value, ``[host_ip:][host_port:]container_port[/protocol]``, as a PortBinding.

    ``8080:80``, ``127.0.0.1:8080:80/udp``, ``80`` (an ephemeral host port),
    ``127.0.0.1::80`` (an ephemeral host port on one address); ports may be
    ranges (``8000-8010:8000-8010``).
    """
    ports, _, protocol = spec.partition("/")
    parts = ports.split(":")
    if len(parts) > 3 or not parts[-1]:
        raise argparse.ArgumentTypeError(
            f"invalid port spec {spec!r}; use [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/udp], e.g. 8080:80"
        )
    host_ip = parts[0] if len(parts) == 3 else None
    host_port = parts[-2] if len(parts) >= 2 else None
    try:
        return PortBinding(
            container_port=parts[-1],
            host_port=host_port or None,
            protocol=protocol or "tcp",
            host_ip=host_ip or None,
        )
    except errors.CNMError as exc:
        raise argparse.ArgumentTypeError(f"invalid port spec {spec!r}: {exc}") from exc


def _key_value(spec: str) -> tuple[str, str]:
    key, sep, value = spec.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"invalid {spec!r}; use KEY=VALUE")
    return key, value


def _link(spec: str) -> tuple[str, str]:
    target, _, alias = spec.partition(":")
    if not target:
        raise argparse.ArgumentTypeError(f"invalid link {spec!r}; use NAME:ALIAS (or NAME, aliased as itself)")
    return target, alias or target


# --- output ----------------------------------------------------------------------------------------


def _print_json(value: object, out: TextIO) -> None:
    json.dump(value, out, indent=4, default=str)
    out.write("\n")


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO) -> None:
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


def _print_inspect(documents: list[dict[str, Any]], fmt: str, out: TextIO) -> None:
    if fmt == "json":
        _print_json(documents, out)
        return
    for i, doc in enumerate(documents):
        if i:
            out.write("\n")
        _print_table(["KEY", "VALUE"], list(_flatten(doc)), out)


def _each(refs: Sequence[str], fn: Callable[[str], None]) -> int:
    """Apply ``fn`` to every ref, as ``docker rm a b`` does: report each failure, go on, fail at the end."""
    status = 0
    for ref in refs:
        try:
            fn(ref)
        except (errors.CNMError, ExceptionGroup) as exc:
            _error(exc)
            status = EXIT_ERROR
    return status


# --- network ---------------------------------------------------------------------------------------


def _network_create(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    ipam = IPAMConfig(
        subnet=args.subnet, gateway=args.gateway, ip_range=args.ip_range, aux_addresses=dict(args.aux_address)
    )
    net = ctl.create_network(
        args.name,
        driver=args.driver,
        ipam=ipam,
        options=dict(args.opt),
        internal=args.internal,
        labels=dict(args.label),
    )
    out.write(net.id + "\n")
    return 0


def _network_ls(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    nets = ctl.networks()
    if args.format == "json":
        _print_json(
            [
                {
                    "Id": n.id,
                    "Name": n.name,
                    "Driver": n.driver,
                    "Subnet": n.subnet,
                    "Gateway": n.gateway,
                    "Internal": n.internal,
                    "Endpoints": [e.name for e in n.endpoints()],
                }
                for n in nets
            ],
            out,
        )
        return 0
    rows = [
        [
            n.id[:12],
            n.name,
            n.driver,
            n.subnet or "-",
            n.gateway or "-",
            "yes" if n.internal else "no",
            len(n.endpoints()),
        ]
        for n in nets
    ]
    _print_table(["NETWORK ID", "NAME", "DRIVER", "SUBNET", "GATEWAY", "INTERNAL", "ENDPOINTS"], rows, out)
    return 0


def _network_inspect(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    _print_inspect([ctl.network(ref).inspect() for ref in args.networks], args.format, out)
    return 0


def _network_rm(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    def remove(ref: str) -> None:
        net = ctl.network(ref)
        net.delete()
        out.write(net.name + "\n")

    return _each(args.networks, remove)


def _network_connect(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    net = ctl.network(args.network)
    sandbox = ctl.sandbox(args.sandbox)
    # The endpoint is named after the sandbox, as Docker names a container's endpoint.
    endpoint = net.create_endpoint(sandbox.name, ip=args.ip)
    try:
        endpoint.join(sandbox)
    except BaseException:
        endpoint.delete()
        raise
    return 0


def _network_disconnect(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    net = ctl.network(args.network)
    sandbox = ctl.sandbox(args.sandbox)
    joined = [e for e in sandbox.endpoints() if e.network == net]
    if not joined:
        raise errors.EndpointNotFound(
            f"sandbox {sandbox.name!r} is not connected to network {net.name!r}; see cnm sandbox inspect {sandbox.name}"
        )
    for endpoint in joined:
        endpoint.delete()  # leaves first, as docker network disconnect removes the endpoint
    return 0


def _network_prune(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    removed = []
    for net in ctl.networks():
        if net.endpoints():
            continue
        try:
            net.delete()
        except errors.Forbidden:  # the predefined networks stay, as Docker's do
            continue
        removed.append(net.name)
    if removed:
        out.write("Deleted Networks:\n" + "".join(f"{name}\n" for name in removed))
    return 0


# --- sandbox ---------------------------------------------------------------------------------------


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
    )


def _sandbox_create(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    out.write(_create_sandbox(ctl, args, args.name).id + "\n")
    return 0


def _sandbox_ls(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    boxes = ctl.sandboxes()
    if args.format == "json":
        _print_json(
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
    _print_table(["SANDBOX ID", "NAME", "MODE", "NETWORK MODE", "ENDPOINTS (network:interface:address)"], rows, out)
    return 0


def _sandbox_inspect(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    _print_inspect([ctl.sandbox(ref).inspect() for ref in args.sandboxes], args.format, out)
    return 0


def _sandbox_rm(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    def remove(ref: str) -> None:
        sandbox = ctl.sandbox(ref)
        sandbox.delete()
        out.write(sandbox.name + "\n")

    return _each(args.sandboxes, remove)


# --- run, exec -------------------------------------------------------------------------------------


def _command(args: argparse.Namespace) -> list[str]:
    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise _UsageError(f"cnm {args.cmd} needs a command to run, after --")
    return argv


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


def _run(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    argv = _command(args)
    name = args.name or f"run-{secrets.token_hex(4)}"
    try:
        sandbox = _create_sandbox(ctl, args, name)
    except errors.CNMError as exc:
        raise _RunFailed(exc) from exc
    if args.detach:
        try:
            proc = sandbox.popen(
                argv,
                link_env=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            sandbox.delete()
            raise
        out.write(sandbox.id + "\n")
        print(f"cnm: started PID {proc.pid} in sandbox {sandbox.name}", file=sys.stderr)
        return 0
    try:
        return _wait(sandbox.popen(argv, link_env=True))
    finally:
        sandbox.delete()


def _exec(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    argv = _command(args)
    try:
        sandbox = ctl.sandbox(args.sandbox)
    except errors.CNMError as exc:
        raise _RunFailed(exc) from exc
    return _wait(sandbox.popen(argv, link_env=True))


# --- reconcile -------------------------------------------------------------------------------------


def _reconcile(ctl: Controller, args: argparse.Namespace, out: TextIO) -> int:
    report = ctl.reconcile()
    out.write(f"{report}\n")
    return EXIT_ERROR if report.errors else 0


# --- the parser ------------------------------------------------------------------------------------


class _UsageError(Exception):
    """A command line argparse accepted but the command cannot use."""


class _RunFailed(Exception):
    """run/exec: cnm failed before the command started."""

    def __init__(self, cause: errors.CNMError) -> None:
        super().__init__(str(cause))
        self.cause = cause


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
        type=parse_port,
        action="append",
        default=[],
        metavar="[IP:][HOST:]CONTAINER[/udp]",
        help="publish a port (repeatable)",
    )
    parser.add_argument(
        "--expose", action="append", default=[], metavar="PORT[/udp]", help="expose a port to links (repeatable)"
    )
    parser.add_argument(
        "--link", type=_link, action="append", default=[], metavar="NAME:ALIAS", help="a legacy link (repeatable)"
    )
    parser.add_argument("--hostname", help="the hostname inside (default: the name)")
    parser.add_argument("--dns", action="append", default=[], metavar="IP", help="a DNS server (repeatable)")
    parser.add_argument("--dns-search", action="append", default=[], metavar="DOMAIN", help="a search domain")
    parser.add_argument("--dns-option", action="append", default=[], metavar="OPT", help="a resolv.conf option")


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

    _network_commands(commands, leaf)
    _other_commands(commands, leaf)
    return parser


Leaf = Callable[..., argparse.ArgumentParser]


def _network_commands(commands: Any, leaf: Leaf) -> None:
    network = commands.add_parser("network", help="manage networks", description="Manage networks.")
    net_cmds = network.add_subparsers(dest="network_cmd", metavar="COMMAND", required=True)
    p = leaf(net_cmds, "create", _network_create, "create a network")
    p.add_argument("name")
    p.add_argument("-d", "--driver", default="bridge", help="the driver (default %(default)s)")
    p.add_argument("--subnet", help="CIDR, e.g. 172.28.0.0/16 (default: a free pool)")
    p.add_argument("--gateway", help="the gateway address (default: the first host address)")
    p.add_argument("--ip-range", help="allocate endpoint addresses from this CIDR inside the subnet")
    p.add_argument(
        "--aux-address", type=_key_value, action="append", default=[], metavar="NAME=IP", help="reserve an address"
    )
    p.add_argument("--internal", action="store_true", help="no traffic leaves the network")
    p.add_argument(
        "-o", "--opt", type=_key_value, action="append", default=[], metavar="KEY=VALUE", help="a driver option"
    )
    p.add_argument("--label", type=_key_value, action="append", default=[], metavar="KEY=VALUE", help="a label")
    leaf(net_cmds, "ls", _network_ls, "list networks", aliases=["list"])
    p = leaf(net_cmds, "inspect", _network_inspect, "show networks as docker network inspect does")
    p.add_argument("networks", nargs="+", metavar="NETWORK")
    p = leaf(net_cmds, "rm", _network_rm, "delete networks", aliases=["remove"])
    p.add_argument("networks", nargs="+", metavar="NETWORK")
    p = leaf(net_cmds, "connect", _network_connect, "connect a sandbox to a network")
    p.add_argument("network")
    p.add_argument("sandbox")
    p.add_argument("--ip", help="the address to take (default: the next free one)")
    p = leaf(net_cmds, "disconnect", _network_disconnect, "disconnect a sandbox from a network")
    p.add_argument("network")
    p.add_argument("sandbox")
    leaf(net_cmds, "prune", _network_prune, "delete every network without endpoints (not the predefined ones)")


def _other_commands(commands: Any, leaf: Leaf) -> None:

    # sandbox
    sandbox = commands.add_parser("sandbox", help="manage sandboxes", description="Manage sandboxes.")
    sb_cmds = sandbox.add_subparsers(dest="sandbox_cmd", metavar="COMMAND", required=True)
    p = leaf(sb_cmds, "create", _sandbox_create, "create a sandbox (a network namespace), optionally connected")
    p.add_argument("name")
    _sandbox_options(p, network_default=None)
    leaf(sb_cmds, "ls", _sandbox_ls, "list sandboxes", aliases=["list"])
    p = leaf(sb_cmds, "inspect", _sandbox_inspect, "show sandboxes as docker inspect shows a container's networking")
    p.add_argument("sandboxes", nargs="+", metavar="SANDBOX")
    p = leaf(sb_cmds, "rm", _sandbox_rm, "delete sandboxes (stop their processes first)", aliases=["remove"])
    p.add_argument("sandboxes", nargs="+", metavar="SANDBOX")

    # run, exec, reconcile, demo
    p = leaf(commands, "run", _run, "run a command in a new sandbox; removed when it exits unless -d")
    _sandbox_options(p, network_default="bridge")
    p.add_argument("--name", help="the sandbox's name (default: run-<random>)")
    p.add_argument("-d", "--detach", action="store_true", help="start the command in the background, keep the sandbox")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    p = leaf(commands, "exec", _exec, "run a command in an existing sandbox")
    p.add_argument("sandbox")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    leaf(commands, "reconcile", _reconcile, "repair the store and the kernel after a crash; print what was done")
    p = leaf(commands, "demo", None, "run the demo of every scenario, in throwaway namespaces (python -m cnm.demo)")
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="run only these (default: all)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")


# --- main ------------------------------------------------------------------------------------------


def _messages(exc: BaseException) -> list[str]:
    if isinstance(exc, BaseExceptionGroup):
        return [m for inner in exc.exceptions for m in _messages(inner)]
    return [str(exc)]


def _error(exc: BaseException) -> None:
    for message in _messages(exc):
        print(f"cnm: error: {message}", file=sys.stderr)


def _run_demo(args: argparse.Namespace) -> NoReturn:
    # The demo is a program of its own (it makes its own namespaces and state_dir); exec it
    # rather than import it, so its signal handling owns the process.
    argv = [sys.executable, "-m", "cnm.demo", *args.scenarios]
    argv += ["--list"] if args.list else []
    argv += ["--debug"] if args.debug else []
    os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter and module, no shell


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cnm`` command line; the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        # Without --debug only errors are logged: a refused request is the one line _dispatch prints.
        level=logging.DEBUG if args.debug else logging.ERROR,
        stream=sys.stderr,
        format="%(name)s: %(levelname)s: %(message)s" if args.debug else "cnm: %(levelname)s: %(message)s",
    )
    if args.handler is None:
        _run_demo(args)
    try:
        return _dispatch(args)
    except _UsageError as exc:
        command_parser: argparse.ArgumentParser = args.parser
        command_parser.error(str(exc))


_READ_ONLY = {
    ("network", "ls"),
    ("network", "list"),
    ("network", "inspect"),
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
    if args.cmd in ("reconcile", "exec"):
        return False
    sub = getattr(args, "network_cmd", None) or getattr(args, "sandbox_cmd", None)
    return (args.cmd, sub) not in _READ_ONLY


def _dispatch(args: argparse.Namespace) -> int:
    """Open the controller and run the command; every failure becomes one line and a status."""
    failed_status = EXIT_CNM_FAILED_TO_RUN if args.cmd in ("run", "exec") else EXIT_ERROR
    message: str | None = None
    try:
        with Controller(state_dir=args.state_dir, host_netns=args.host_netns, reconcile=_repairs_on_open(args)) as ctl:
            handler: Handler = args.handler
            return handler(ctl, args, sys.stdout)
    except _UsageError:
        raise
    except _RunFailed as exc:
        _debug_traceback(args)
        _error(exc.cause)
        return EXIT_CNM_FAILED_TO_RUN
    except (errors.CNMError, ExceptionGroup) as exc:
        _debug_traceback(args)
        _error(exc)
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


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
