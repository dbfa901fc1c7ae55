"""What publishing one port costs each of cnm's firewall backends as published ports accumulate on one network.

Run as root (``sudo ./run bench [options]``, or ``python benchmarks/bench_firewall.py``). Everything
happens in one throwaway host namespace, created with ``cnm.kernel.netns.create`` under a temp
dir and removed at the end; the machine's own namespace and tables are never touched. The xtables
lock is a file in the same temp dir: the namespace is private, so nothing else writes its tables,
and other users of ``/run/xtables.lock`` on the machine cannot add waiting time to the figures.

Both backends run side by side in one run, each in a host namespace of its own: the iptables
backend (:class:`IptablesFirewall`, libiptc) and the nftables backend (:class:`NftablesFirewall`,
libnftables), measured in turn at each ``k``. For each ``k`` (default 10, 100, 250, 500, 1000),
ports are published on one network until ``k`` are there (one ``add_ports`` call per port, as
containers do), then ``add_ports`` and ``remove_ports`` of one more port are timed ``--reps`` times
and the median is reported, as the caller sees it (the round trip to the firewall's worker process
included).

A second firewall in the same namespace, whose worker was forked after timers were wrapped around
the worker's steps (:mod:`cnm.firewall.iptables` and :mod:`cnm.firewall.nftables` are
monkeypatched from here; the library is not changed), gives the phases of the same two calls
inside the worker. For nftables: building the batch, libnftables' ``json_cmd`` (parsing the JSON,
the netlink transaction, the kernel's commit) and any listing. For iptables: waiting for the xtables lock,
reading each table (``iptc_init``: the kernel's copy of the table, parsed by libiptc), building
rules, libiptc lookups (``iptc_check_entry``, ``iptc_is_chain``), Python scans of a chain's rules,
changing the table in memory, committing each table (libiptc compiles the table, the kernel
replaces it), freeing the handles; "ipc" is the caller's time not spent in the worker (pickling,
the socket round trip).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import report
from steptimer import StepTimer

BACKENDS = ("iptables", "nftables")
SETTLE = 1.0  # seconds of quiet before a backend's samples
DEFAULT_KS = (10, 100, 250, 500, 1000)
QUICK_KS = (10, 100)
SUBNET = ipaddress.IPv4Network("10.231.0.0/16")
HOST_PORT_BASE = 20000
CONTAINER_PORT = 80
_PHASES_OP = "bench_phases"


# --------------------------------------------------------------------------------------------- phases
def instrument(phases: StepTimer, backend: str) -> None:
    """Wrap the worker's steps with timers, before the worker is forked (it inherits them)."""
    if backend == "nftables":
        _instrument_nftables(phases)
    else:
        _instrument_iptables(phases)


def _serve_timed(server_class: Any, phases: StepTimer) -> None:
    serve = server_class.__call__

    def call(server: Any, request: Any) -> object:
        # The worker process has its own copy of ``phases`` (fork): this request hands its figures back.
        if getattr(request, "method", None) == _PHASES_OP:
            return phases.take()
        with phases.timed("worker: other (Python glue, building the batch)"):
            return serve(server, request)

    server_class.__call__ = call


def _instrument_nftables(phases: StepTimer) -> None:
    from cnm.firewall import nftables

    _serve_timed(nftables._Server, phases)
    phases.wrap(nftables._Server, "_batch", "libnftables json_cmd: the batch (parse, netlink transaction, commit)")
    phases.wrap(nftables._Server, "_exists", "libnftables: list tables (only after a failed removal)")
    phases.wrap(nftables._Server, "_foreign", "libnftables: list other tables' forward chains")


def _instrument_iptables(phases: StepTimer) -> None:
    from cnm.firewall import _iptables_session as session
    from cnm.firewall._libiptc import Table

    p = phases
    serve = session.Server.__call__

    def call(server: Any, request: Any) -> object:
        # The worker process has its own copy of ``phases`` (fork): this request hands its figures back.
        if getattr(request, "method", None) == _PHASES_OP:
            return phases.take()
        with phases.timed("worker: other (Python glue)"):
            return serve(server, request)

    session.Server.__call__ = call  # type: ignore[method-assign]
    p.wrap(session, "xtables_lock", "xtables lock: open + flock")
    p.wrap(Table, "__init__", lambda t: "read table (first: iptc_init + python-iptables setup)")
    p.wrap(Table, "begin", lambda t: f"read {t.name} table (iptc_init)")
    p.wrap(Table, "end", lambda t: f"free {t.name} table (iptc_free)")
    p.wrap(Table, "commit", lambda t: f"commit {t.name} table (compile + kernel replace)")
    p.wrap(Table, "_build", "build rules (python-iptables, cached)")
    p.wrap(Table, "has_chain", "libiptc: iptc_is_chain")
    p.wrap(Table, "contains", "libiptc: iptc_check_entry")
    for attr in ("comments", "position_of"):
        p.wrap(Table, attr, "python scan of a chain's rules")
    for attr in ("insert", "append", "delete", "delete_where", "ensure_chain", "flush_and_delete"):
        p.wrap(Table, attr, "change the table in memory (libiptc)")


# --------------------------------------------------------------------------------------------- the run
def _mapping(i: int) -> Any:
    from cnm.firewallapi import PortMapping
    from cnm.types import PortRange

    # One container per published port, as bench_cnm's containers: address i+2 of the subnet.
    return PortMapping(
        protocol="tcp",
        host_port=PortRange.parse(HOST_PORT_BASE + i),
        container_ip=SUBNET.network_address + 2 + i,
        container_port=PortRange.parse(CONTAINER_PORT),
    )


def _count_rules(host_path: str, backend: str) -> dict[str, int]:
    if backend == "nftables":
        listed = subprocess.run(
            ["nsenter", f"--net={host_path}", "nft", "-j", "list", "ruleset"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        items = json.loads(listed)["nftables"]
        elements = sum(len(body.get("elem", [])) for item in items for body in item.values() if isinstance(body, dict))
        return {"rules": sum(1 for item in items if "rule" in item), "elements": elements}
    counts = {}
    for table in ("filter", "nat"):
        saved = subprocess.run(
            ["nsenter", f"--net={host_path}", "iptables-legacy-save", "-t", table],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        counts[table] = sum(1 for line in saved.splitlines() if line.startswith("-A "))
    return counts


def _open(backend: str, host: Any, lock: str) -> Any:
    from cnm.firewall.iptables import IptablesFirewall
    from cnm.firewall.nftables import NftablesFirewall

    return NftablesFirewall(host) if backend == "nftables" else IptablesFirewall(host, lock_path=lock)


class _Backend:
    """One backend's host namespace and its two firewalls: a plain one (timed) and an instrumented one."""

    def __init__(self, backend: str, workdir: str, phases: StepTimer) -> None:
        from cnm.firewallapi import FirewallNetwork
        from cnm.kernel import netns

        self.name = backend
        self.host_path = os.path.join(workdir, f"host-{backend}")
        lock = os.path.join(workdir, "xtables.lock")
        self.firewalls: list[Any] = []
        host = netns.create(self.host_path)
        self.network = FirewallNetwork(
            id=secrets.token_hex(32), interface="cnmb-" + secrets.token_hex(5), subnet=SUBNET
        )
        self.plain = _open(backend, host, lock)
        self.firewalls.append(self.plain)
        self.plain.setup_network(self.network)  # forks the plain worker before any timer is wrapped
        instrument(phases, backend)
        self.timed = _open(backend, host, lock)
        self.firewalls.append(self.timed)
        self.timed.setup_network(self.network)  # forks the instrumented worker
        self.timed._worker.call(_request(_PHASES_OP))
        self.published = 0

    def fill(self, k: int, extra: Any) -> None:
        """Publish up to ``k`` ports, then one untimed add and remove of ``extra`` (the kernel settles)."""
        while self.published < k:
            self.plain.add_ports(self.network, [_mapping(self.published)])
            self.published += 1
        self.plain.add_ports(self.network, [extra])
        self.plain.remove_ports(self.network, [extra])

    def sample(self, extra: Any) -> tuple[float, float]:
        """One timed add and remove of ``extra``, seconds."""
        start = time.perf_counter()
        self.plain.add_ports(self.network, [extra])
        middle = time.perf_counter()
        self.plain.remove_ports(self.network, [extra])
        return middle - start, time.perf_counter() - middle

    def row(self, k: int, adds: list[float], removes: list[float], reps: int, extra: Any) -> dict[str, Any]:
        """The figures at ``k``: median and minimum of the samples, rule counts, the worker's phases."""
        row: dict[str, Any] = {
            "k": k,
            "add_ms": statistics.median(adds) * 1e3,
            "remove_ms": statistics.median(removes) * 1e3,
            "add_min_ms": min(adds) * 1e3,
            "remove_min_ms": min(removes) * 1e3,
            "rules": _count_rules(self.host_path, self.name),
        }
        for verb in ("add", "remove"):
            row[f"{verb}_phases"] = _phase_sample(self.timed, verb, self.network, extra, reps)
        return row

    def close(self) -> None:
        from cnm.kernel import netns

        for firewall in self.firewalls:
            firewall.close()
        netns.remove(self.host_path)


def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """For each backend, publish ports up to max(k), timing one more port's add and remove at each k."""
    from cnm.kernel import netns_dirs

    ks = sorted(set(args.k))
    workdir = tempfile.mkdtemp(prefix=f"{args.prefix}{secrets.token_hex(3)}-")
    backends: list[_Backend] = []
    try:
        phases = StepTimer(single_thread=True)  # each worker serves requests in one thread of its own
        for name in BACKENDS:
            backends.append(_Backend(name, workdir, phases))
        rows: dict[str, list[dict[str, Any]]] = {b.name: [] for b in backends}
        extra = _mapping(max(ks) + 1)  # never among the k
        for k in ks:
            samples: dict[str, tuple[list[float], list[float]]] = {b.name: ([], []) for b in backends}
            for backend in backends:
                backend.fill(k, extra)
            for backend in backends:
                # Each backend's samples apart, after a pause: the kernel's deferred freeing of a replaced
                # iptables table (megabytes at k=1000) would otherwise land on the other backend's calls.
                time.sleep(SETTLE)
                for _ in range(args.reps):
                    add, remove = backend.sample(extra)
                    samples[backend.name][0].append(add)
                    samples[backend.name][1].append(remove)
            for backend in backends:
                row = backend.row(k, *samples[backend.name], args.reps, extra)
                rows[backend.name].append(row)
                print(f"{backend.name} k={k}: add {row['add_ms']:.2f} ms, remove {row['remove_ms']:.2f} ms", file=log)
        return {"backends": {name: {"rows": r} for name, r in rows.items()}}
    finally:
        for backend in backends:
            backend.close()
        netns_dirs.release_directory(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


def _request(method: str, *args: Any) -> Any:
    from cnm.kernel.worker import Request

    return Request(method=method, what=method, args=args)


def _phase_sample(firewall: Any, verb: str, network: Any, port: Any, reps: int) -> dict[str, float]:
    """Median exclusive ms per phase of ``reps`` add_ports (or remove_ports) calls through ``firewall``."""
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(reps):
        if verb == "remove":
            firewall.add_ports(network, [port])
        firewall._worker.call(_request(_PHASES_OP))  # start from zero
        start = time.perf_counter()
        if verb == "add":
            firewall.add_ports(network, [port])
        else:
            firewall.remove_ports(network, [port])
        total = time.perf_counter() - start
        steps = firewall._worker.call(_request(_PHASES_OP))
        inside = sum(seconds for seconds, _ in steps.values())
        for name, (seconds, _) in steps.items():
            samples[name].append(seconds)
        samples["ipc (pickle + socket round trip)"].append(total - inside)
        samples["total"].append(total)
        if verb == "add":
            firewall.remove_ports(network, [port])
    return {name: statistics.median(values) * 1e3 for name, values in samples.items() if len(values) == reps}


# --------------------------------------------------------------------------------------------- report
def render(result: dict[str, Any]) -> str:
    """The results as Markdown tables: both backends side by side, then each one's phases."""
    per = {name: body["rows"] for name, body in result["backends"].items()}
    names = list(per)
    lines = [
        "### One port's add_ports / remove_ports with k ports already published (median ms)",
        "",
        "| k | " + " | ".join(f"{n} add | {n} remove | {n} {_size_label(n)}" for n in names) + " |",
        "|---|" + "---|---|---|" * len(names),
    ]
    for index, row in enumerate(per[names[0]]):
        cells = []
        for name in names:
            r = per[name][index]
            size = " / ".join(str(v) for v in r["rules"].values())
            cells.append(f"{r['add_ms']:.2f} | {r['remove_ms']:.2f} | {size}")
        lines.append(f"| {row['k']} | " + " | ".join(cells) + " |")
    lines.append("")
    for name in names:
        first, last = per[name][0], per[name][-1]
        lines.append(
            f"- {name}: add_ports at k={last['k']} / k={first['k']}: {last['add_ms'] / first['add_ms']:.2f} "
            f"(minimum {last['add_min_ms'] / first['add_min_ms']:.2f}); "
            f"remove_ports: {last['remove_ms'] / first['remove_ms']:.2f} "
            f"(minimum {last['remove_min_ms'] / first['remove_min_ms']:.2f})"
        )
    for name in names:
        rows = per[name]
        last = rows[-1]
        for verb in ("add", "remove"):
            phase_names = sorted(
                {phase for row in rows for phase in row[f"{verb}_phases"]} - {"total"},
                key=lambda phase: -last[f"{verb}_phases"].get(phase, 0.0),
            )
            lines += [
                "",
                f"### {name}: phases of {verb}_ports inside the instrumented worker (median exclusive ms)",
                "",
                "| phase | " + " | ".join(f"k={row['k']}" for row in rows) + " |",
                "|---" * (len(rows) + 1) + "|",
            ]
            for phase in [*phase_names, "total"]:
                cells = " | ".join(f"{row[f'{verb}_phases'].get(phase, 0.0):.3f}" for row in rows)
                lines.append(f"| {phase} | {cells} |")
    return "\n".join(lines)


def _size_label(backend: str) -> str:
    return "rules / elements" if backend == "nftables" else "rules filter / nat"


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; ``./run bench`` passes every benchmark the same options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-k", type=int, nargs="+", default=list(DEFAULT_KS), help="published ports to time at (default %(default)s)"
    )
    parser.add_argument("--reps", type=int, default=15, help="timed add/remove pairs at each k (default 15)")
    parser.add_argument("--quick", action="store_true", help=f"k={QUICK_KS}, 3 reps (for CI)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    parser.add_argument("--prefix", default="cnmbench-", help="name prefix of the temp dir (default %(default)s)")
    # bench_cnm's options, accepted so that one ``./run bench ARGS`` line drives both benchmarks.
    parser.add_argument("-n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile-n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.k, args.reps = list(QUICK_KS), 3
    if args.reps < 1 or min(args.k) < 1:
        parser.error("-k and --reps must be positive")
    if args.json:
        # bench_cnm writes the --json path too: keep both results by suffixing this one's.
        root, ext = os.path.splitext(args.json)
        args.json = f"{root}.firewall{ext or '.json'}"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench_firewall: needs root (it creates a network namespace): sudo ./run bench")
    if any(shutil.which(tool) is None for tool in ("nsenter", "iptables-legacy-save", "nft")):
        sys.exit("bench_firewall: nsenter, iptables-legacy-save and nft must be on PATH")
    os.environ.setdefault("XTABLES_LIBDIR", "/usr/lib/x86_64-linux-gnu/xtables")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # through run()'s cleanup
    started = datetime.datetime.now(datetime.UTC)
    result = run(args, sys.stderr)
    result["meta"] = {
        "date": started.isoformat(timespec="seconds"),
        "wall_seconds": round((datetime.datetime.now(datetime.UTC) - started).total_seconds(), 1),
        "k": sorted(set(args.k)),
        "reps": args.reps,
    }
    return report.emit(render(result), result, args.json)


if __name__ == "__main__":
    sys.exit(main())
