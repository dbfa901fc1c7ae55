"""The demo's harness: what a scenario works with, the registry, running and reporting, the environment.

:class:`Demo` is what a scenario gets; :func:`scenario` registers one;
:func:`main` makes the throwaway :class:`Environment`, runs the chosen
scenarios with Ctrl-C and SIGTERM turned into a clean stop, prints the
results table, and removes everything it made.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import Any

import attrs

from cnm import Controller
from cnm.kernel import links, netns, netns_dirs
from cnm.kernel.netns import NetNS
from cnm.testing import traffic
from cnm.testing.hosts import HOST_UPLINK_ADDRESS, OUTSIDE_ADDRESS, link_outside, stop_process

__all__ = [
    "PREFIX",
    "SCENARIOS",
    "Demo",
    "Environment",
    "Namespace",
    "Result",
    "Scenario",
    "ScenarioFailed",
    "expect",
    "main",
    "print_table",
    "run_scenario",
    "scenario",
]

log = logging.getLogger(__name__)

PREFIX = "cnmdemo-"
"""Name prefix of every namespace and directory the demo makes."""

_INDENT = "      "


class ScenarioFailed(Exception):
    """A scenario's check did not hold; the message says what was expected and what happened."""


class _Signalled(BaseException):
    """SIGINT or SIGTERM arrived; unwinds to the cleanup like KeyboardInterrupt does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Interrupts:
    """Turns SIGINT/SIGTERM into :class:`_Signalled` at the demo's safe points.

    An exception raised in the middle of a cnm call or of traffic.serve could
    leave a child process the demo never got the PID of (a server not yet
    returned, a firewall worker not yet reaped). So the first signal is only
    noted, and :meth:`check` raises it between steps; a second one raises at
    once, for a step that hangs.
    """

    def __init__(self) -> None:
        self.pending: int | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler."""
        if self.pending is not None:
            raise _Signalled(signum)
        self.pending = signum

    def check(self) -> None:
        """Raise the noted signal, if any."""
        if self.pending is not None:
            raise _Signalled(self.pending)


def expect(condition: bool, message: str) -> None:
    """Raise :class:`ScenarioFailed` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ScenarioFailed(message)


@attrs.frozen
class Namespace:
    """Runs commands in a namespace the demo made (the host or the outside); a :class:`traffic.Runner`."""

    netns: NetNS

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` to completion in the namespace; takes :func:`subprocess.run`'s keywords."""
        return subprocess.run(["nsenter", f"--net={self.netns.path}", "--", *argv], **kwargs)  # noqa: PLW1510

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in the namespace; takes :class:`subprocess.Popen`'s keywords."""
        return subprocess.Popen(["nsenter", f"--net={self.netns.path}", "--", *argv], **kwargs)


class Demo:
    """What a scenario works with: the controller, the host and outside namespaces, and helpers.

    Attributes:
        ctl: a Controller whose host is the demo's host namespace.
        host: runs commands in the host namespace.
        outside: runs commands in the outside namespace (192.0.2.2, linked to the host's 192.0.2.1).
        outside_address: the outside namespace's address.
        host_address: the host namespace's address on the link to the outside.
    """

    def __init__(
        self,
        ctl: Controller,
        host: Namespace,
        outside: Namespace,
        interrupts: _Interrupts | None = None,
        make_namespace: Callable[[str], NetNS] | None = None,
    ) -> None:
        self.ctl = ctl
        self._make_namespace = make_namespace
        self._interrupts = interrupts or _Interrupts()
        self.host = host
        self.outside = outside
        self.outside_address = OUTSIDE_ADDRESS.ip
        self.host_address = HOST_UPLINK_ADDRESS.ip
        self._processes: list[subprocess.Popen[Any]] = []
        self._undo: list[Callable[[], object]] = []

    def defer(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` when the current scenario ends (last deferred first), pass or fail."""
        self._undo.append(fn)
        self.checkpoint()

    def checkpoint(self) -> None:
        """Stop here if Ctrl-C or SIGTERM arrived: a safe point, where every process started is known."""
        self._interrupts.check()

    def finish_scenario(self) -> list[Exception]:
        """Run the deferred calls of the scenario that just ended; the errors they raised."""
        errors: list[Exception] = []
        while self._undo:
            fn = self._undo.pop()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - every undo runs; the caller reports them all
                errors.append(exc)
        return errors

    def namespace(self, label: str) -> NetNS:
        """A new namespace ``cnmdemo-<token>-<label>`` with loopback up, removed when the demo ends."""
        if self._make_namespace is None:
            raise RuntimeError("this Demo was made without a namespace factory; give make_namespace=")
        return self._make_namespace(label)

    def track(self, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        """Stop ``proc`` by PID when the current scenario ends (and on Ctrl-C)."""
        self._processes.append(proc)
        self.defer(lambda: stop_process(proc))
        return proc

    def serve(self, where: traffic.Runner, protocol: str, port: int) -> subprocess.Popen[str]:
        """Start a traffic server (it answers with the peer's address); stopped by PID when the scenario ends."""
        return self.track(traffic.serve(where, protocol, port))

    def stop_processes(self) -> None:
        """End every process the demo started, by PID."""
        for proc in self._processes:
            stop_process(proc)

    def ping(self, where: traffic.Runner, address: object) -> tuple[bool, str]:
        """Ping ``address`` once from ``where``: whether it answered, and ping's telling line."""
        result = where.run(
            ["ping", "-n", "-c", "1", "-W", "1", str(address)], capture_output=True, text=True, timeout=30
        )
        lines = result.stdout.splitlines() + result.stderr.splitlines()
        wanted = "bytes from" if result.returncode == 0 else "packet loss"
        line = next((ln for ln in lines if wanted in ln), lines[-1] if lines else "(no output)")
        return result.returncode == 0, line.strip()

    def rules(self) -> list[str]:
        """The host namespace's rules from the backend in use, one line each.

        iptables: as ``iptables-legacy-save`` prints them. nftables: cnm's table as
        ``nft list table`` prints it, each rule and each set or map element on a line
        of its own, prefixed with its chain, set or map (``map addr_<net>: tcp . 8080 : 10.89.1.2``).
        """
        if self.ctl.firewall.name == "nftables":
            table = f"cnm_{self.ctl.owner_id}"
            result = self.host.run(["nft", "list", "table", "inet", table], capture_output=True, text=True, timeout=30)
            expect(result.returncode == 0, f"nft list table inet {table} failed: {result.stderr.strip()}")
            return _nft_lines(result.stdout)
        result = self.host.run(["iptables-legacy-save"], capture_output=True, text=True, timeout=30)
        expect(result.returncode == 0, f"iptables-legacy-save failed: {result.stderr.strip()}")
        output: str = result.stdout
        return output.splitlines()

    def rule(self, network_id: str, *needles: str, nft: Sequence[str] = ()) -> str:
        """The one rule of a network that contains every needle (``nft``'s with the nftables backend).

        A network's rules carry its id (``cnm:<owner>:<id>`` comments, its own chains, sets and maps).
        """
        tag = network_id[:12]
        wanted = tuple(nft) if self.ctl.firewall.name == "nftables" else needles
        found = [ln for ln in self.rules() if tag in ln and all(n in ln for n in wanted)]
        expect(len(found) == 1, f"expected one rule of network {tag} with {wanted}, found {found}")
        return found[0]


def _nft_lines(listing: str) -> list[str]:
    """``nft list table`` output flattened: each rule and element on one line, after its chain, set or map."""
    lines: list[str] = []
    block = ""
    elements: list[str] | None = None
    for raw in listing.splitlines():
        text = raw.strip()
        if elements is not None:  # inside "elements = { a, b, ... }"
            elements += [e.strip() for e in text.rstrip("}").split(",") if e.strip()]
            if text.endswith("}"):
                lines += [f"{block}: {e}" for e in elements]
                elements = None
            continue
        if text.startswith(("chain ", "set ", "map ")) and text.endswith("{"):
            block = text[:-1].strip()
        elif text.startswith("elements = {"):
            elements = []
            rest = text[len("elements = {") :]
            elements += [e.strip() for e in rest.rstrip("}").split(",") if e.strip()]
            if rest.endswith("}"):
                lines += [f"{block}: {e}" for e in elements]
                elements = None
        elif block.startswith("chain ") and text and text != "}" and not text.startswith("type "):
            lines.append(f"{block}: {text}")
    return lines


# --- the registry ---------------------------------------------------------------------------------


@attrs.frozen
class Scenario:
    """One demo scenario.

    Attributes:
        key: a short name, used on the command line and in the results table.
        title: one line saying what the scenario shows.
        run: the function; returns or yields evidence lines, raises ScenarioFailed.
    """

    key: str
    title: str
    run: Callable[[Demo], Iterable[str]]


SCENARIOS: dict[str, Scenario] = {}
"""Every registered scenario, in the order it runs."""


def scenario(key: str, title: str) -> Callable[[Callable[[Demo], Iterable[str]]], Callable[[Demo], Iterable[str]]]:
    """Register a scenario function under ``key``; scenarios run in registration order."""

    def register(fn: Callable[[Demo], Iterable[str]]) -> Callable[[Demo], Iterable[str]]:
        if key in SCENARIOS:
            raise ValueError(f"demo scenario {key!r} is registered twice; pick another key")
        SCENARIOS[key] = Scenario(key, title, fn)
        return fn

    return register


# --- running --------------------------------------------------------------------------------------


@attrs.frozen
class Result:
    """How one scenario ended."""

    scenario: Scenario
    passed: bool
    seconds: float
    detail: str = ""


def _say(text: str = "") -> None:
    print(text, flush=True)


def run_scenario(demo: Demo, sc: Scenario, position: str) -> Result:
    """Run one scenario, printing its progress line and evidence; then run its deferred cleanup."""
    _say(f"{position} {sc.key}: {sc.title}")
    start = time.monotonic()
    failure = ""
    try:
        for line in sc.run(demo):
            _say(f"{_INDENT}{line}")
            demo.checkpoint()
    except ScenarioFailed as exc:
        failure = str(exc)
    except Exception as exc:
        log.debug("scenario %s raised", sc.key, exc_info=True)
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        undo_errors = demo.finish_scenario()
    if undo_errors and not failure:
        failure = "cleanup failed: " + "; ".join(f"{type(e).__name__}: {e}" for e in undo_errors)
    seconds = time.monotonic() - start
    _say(f"{_INDENT}{'PASS' if not failure else 'FAIL: ' + failure} ({seconds:.1f} s)")
    return Result(sc, not failure, seconds, failure)


def print_table(results: Sequence[Result], not_run: Sequence[Scenario] = (), *, stopped: bool = False) -> None:
    """The closing table: one row per scenario with its result.

    ``not_run`` are the scenarios an interrupt kept from finishing; with
    ``stopped`` the first of them was running (STOPPED), the others never
    started (NOT RUN).
    """
    rows = [(r.scenario.key, "PASS" if r.passed else "FAIL", f"{r.seconds:.1f}s", r.scenario.title) for r in results]
    rows += [(s.key, "STOPPED" if stopped and i == 0 else "NOT RUN", "-", s.title) for i, s in enumerate(not_run)]
    widths = [max(len(row[i]) for row in [("scenario", "result", "time", ""), *rows]) for i in range(3)]
    _say()
    _say(f"{'scenario':<{widths[0]}}  {'result':<{widths[1]}}  {'time':>{widths[2]}}  what it shows")
    for key, result, seconds, title in rows:
        _say(f"{key:<{widths[0]}}  {result:<{widths[1]}}  {seconds:>{widths[2]}}  {title}")
    passed = sum(r.passed for r in results)
    failed = len(results) - passed
    _say(f"{len(rows)} scenarios: {passed} passed, {failed} failed, {len(not_run)} not finished")


class Environment:
    """The throwaway world the demo runs in; :meth:`close` removes all of it."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(3)
        self.state_dir: str | None = None
        self.namespaces: list[NetNS] = []
        self.ctl: Controller | None = None
        self.demo: Demo | None = None

    def open(self, interrupts: _Interrupts) -> Demo:
        """Make the host and outside namespaces, the link between them, and the controller."""
        self.state_dir = tempfile.mkdtemp(prefix=f"{PREFIX}{self.token}-")
        host = self._namespace("h")
        outside = self._namespace("o")
        link_outside(host, outside)
        self.ctl = Controller(state_dir=self.state_dir, host_netns=host)
        self.demo = Demo(self.ctl, Namespace(host), Namespace(outside), interrupts, self._namespace)
        interrupts.check()
        return self.demo

    def _namespace(self, label: str) -> NetNS:
        path = os.path.join(netns.NETNS_RUN_DIR, f"{PREFIX}{self.token}-{label}")
        ns = netns.create(path)
        self.namespaces.append(ns)
        with ns.netlink() as nl:
            links.set_link(nl, "lo", up=True)
        return ns

    def close(self) -> list[str]:
        """Remove everything made, each step independent of the others; what could not be removed."""
        problems: list[str] = []

        def step(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep removing the rest, report at the end
                problems.append(f"{what}: {exc}")

        if self.demo is not None:
            step("the scenario's own cleanup", lambda: _raise_all(self.demo.finish_scenario() if self.demo else []))
            step("processes", self.demo.stop_processes)
        if self.ctl is not None:
            step("the controller", self.ctl.close)
        if self.state_dir is not None:
            sandboxes = os.path.join(self.state_dir, "netns")
            for name in sorted(os.listdir(sandboxes)) if os.path.isdir(sandboxes) else []:
                path = os.path.join(sandboxes, name)
                step(f"sandbox namespace {path}", lambda p=path: netns.remove(p))  # type: ignore[misc]
            # Scenarios run controllers of their own under state_dir (ovs-a/state, ...).
            for top, dirs, _ in os.walk(self.state_dir):
                if "netns" in dirs:
                    path = os.path.join(top, "netns")
                    step(f"the mount of {path}", lambda p=path: netns_dirs.release_directory(p))  # type: ignore[misc]
        for ns in reversed(self.namespaces):
            step(f"namespace {ns.path}", lambda n=ns: netns.remove(n.path))  # type: ignore[misc]
        if self.state_dir is not None:
            step(f"state dir {self.state_dir}", lambda: shutil.rmtree(self.state_dir or "", ignore_errors=False))
        return problems


def _raise_all(errors: Sequence[Exception]) -> None:
    if errors:
        raise ExceptionGroup("deferred cleanup failed", list(errors))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; the process exit status (0 when every scenario passed)."""
    parser = argparse.ArgumentParser(
        prog="python -m cnm.demo",
        description="cnm's scenarios with real packets, in throwaway namespaces (needs root).",
    )
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="run only these (default: all)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--debug", action="store_true", help="log cnm's steps to stderr")
    args = parser.parse_args(argv)
    if args.list:
        for sc in SCENARIOS.values():
            _say(f"{sc.key:<12}{sc.title}")
        return 0
    unknown = [k for k in args.scenarios if k not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    chosen = [SCENARIOS[k] for k in (args.scenarios or SCENARIOS)]
    if os.geteuid() != 0:
        print("the demo creates network namespaces: run it as root (sudo ./run demo)", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, stream=sys.stderr)

    env = Environment()
    results: list[Result] = []
    running: Scenario | None = None
    status = 1
    interrupts = _Interrupts()
    previous = {s: signal.signal(s, interrupts.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        demo = env.open(interrupts)
        host, outside = (ns.name for ns in env.namespaces[:2])
        _say(f"cnm demo in throwaway namespaces: host {host}, outside {outside} ({OUTSIDE_ADDRESS.ip})")
        _say(
            f"{_INDENT}state_dir {env.state_dir}; firewall backend {demo.ctl.firewall.name} (auto); "
            "the machine's own network is not touched"
        )
        for i, sc in enumerate(chosen, 1):
            interrupts.check()
            running = sc
            results.append(run_scenario(demo, sc, f"[{i}/{len(chosen)}]"))
            running = None
        print_table(results)
        status = 0 if all(r.passed for r in results) else 1
    except _Signalled as exc:
        _say()
        _say(f"interrupted by {exc}; cleaning up")
        print_table(results, chosen[len(results) :], stopped=running is not None)
        status = 128 + exc.signum
    except Exception as exc:
        log.debug("demo setup failed", exc_info=True)
        print(f"the demo could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        status = 1
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        problems = env.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    for problem in problems:
        print(f"cleanup: could not remove {problem}", file=sys.stderr)
    if problems:
        return status or 1
    _say(f"cleaned up: namespaces {PREFIX}{env.token}-*, sandbox mounts, processes and the state dir are gone")
    return status
