"""cnm's own OVSDB client (:mod:`cnm.ovsdb`) against Open vSwitch's Python IDL (``ovs.db.idl``), measured.

Run as root (``sudo ./run bench [options]``, which shows Debian's python3-openvswitch to this one
script, or ``PYTHONPATH=DIR python benchmarks/bench_ovsdb.py`` with DIR holding links to the
``ovs`` and ``sortedcontainers`` packages). Each client gets its own throwaway host namespace
with a private ovsdb-server and ovs-vswitchd (userspace ``netdev`` datapath; see
:class:`cnm.testing.ovs.OvsDaemons`), so neither sees the other's rows or load; everything is
removed at the end and the daemons are stopped by PID.

Both clients do the same thing for every change, which is what ``ovs-vsctl`` and ovsdbapp's
vsctl-style transactions do: one transaction that also increments ``next_cfg``, then wait until
ovs-vswitchd reports ``cur_cfg`` at least that high, then check that every interface added has
opened (``ofport`` not -1, no ``error``). The IDL client is written the way ovsdbapp drives the
IDL: one long-lived :class:`ovs.db.idl.Idl` (the four tables cnm touches registered, all
columns), ``Transaction.increment("next_cfg")``, a ``TRY_AGAIN`` answered by retrying until the
call's deadline, every wait bounded by it.

Measured:

- per change, ``-n`` rounds (default 100), the clients alternating: add a bridge (netdev
  datapath, ``external_ids`` on its three rows), add an internal port with ``external_ids``,
  set the port's ``external_ids``, delete the port, delete the bridge: median and p95;
- startup, in fresh child processes (``--reps``, default 5): the client's import time after
  ``import cnm`` (which every cnm user pays anyway), connect + first change, and the process's
  VmRSS after the import, after the first change, and with ``--rss-ports`` (default 100) ports;
- failures: ovsdb-server down (a change attempted, then the time from its restart to a
  committed change), ovsdb-server stopped while a change waits for ovs-vswitchd, ovs-vswitchd
  down; for each: what the caller sees, after how long, and whether the change is in the
  database afterwards (lost, kept, or duplicated).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import report

FAIL_TIMEOUT = 3.0  # seconds a change may take in the failure scenarios (both clients)
TIMEOUT = 10.0  # seconds a change may take otherwise
TABLES = ("Open_vSwitch", "Bridge", "Port", "Interface")
SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"  # cnm.testing.ovs.SCHEMA, not imported: children stay lean
OPS = ("add bridge", "add port", "set external_ids", "delete port", "delete bridge")


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


# --------------------------------------------------------------------------------------------- clients
class CnmClient:
    """cnm.ovsdb, as the OVS driver calls it (one connection per call)."""

    name = "cnm.ovsdb"

    def __init__(self, remote: str, timeout: float) -> None:
        from cnm.ovsdb import Ovsdb, PortSpec

        self._spec = PortSpec
        self.db = Ovsdb(remote, timeout=timeout)

    def add_bridge(self, name: str, ids: Mapping[str, str]) -> None:
        self.db.add_bridge(name, datapath_type="netdev", external_ids=ids)

    def add_port(self, bridge: str, name: str, ids: Mapping[str, str]) -> None:
        self.db.add_port(bridge, self._spec(name=name, type="internal", external_ids=ids))

    def set_ids(self, port: str, ids: Mapping[str, str]) -> None:
        # cnm.ovsdb has no public call for this (the driver never changes a row in place): the
        # benchmark composes it from the same private pieces the public calls use.
        from cnm.ovsdb.rows import to_map

        op = {"op": "update", "table": "Port", "where": [["name", "==", port]], "row": {"external_ids": to_map(ids)}}
        self.db._change(f"set external_ids of OVS port {port}", [op], wait=True)

    def delete_port(self, name: str) -> None:
        self.db.delete_port(name)

    def delete_bridge(self, name: str) -> None:
        self.db.delete_bridge(name)

    def close(self) -> None:
        """Nothing to close: no connection outlives a call."""


class IdlError(Exception):
    """A change through the IDL failed (the IDL itself reports statuses, not exceptions)."""


class IdlClient:
    """ovs.db.idl, driven the way ovsdbapp drives it (one long-lived replica, vsctl-style waits)."""

    name = "ovs IDL"

    def __init__(self, remote: str, timeout: float) -> None:
        import ovs.db.idl
        import ovs.poller

        self._idl_mod = ovs.db.idl
        self._poller = ovs.poller.Poller
        self.timeout = timeout
        helper = ovs.db.idl.SchemaHelper(SCHEMA)
        for table in TABLES:
            helper.register_table(table)
        self.idl = ovs.db.idl.Idl(remote, helper)
        self._run_until(lambda: bool(self.idl.tables["Open_vSwitch"].rows), "the first copy of the database")

    def _run_until(self, done: Callable[[], bool], what: str, deadline: float | None = None) -> None:
        deadline = time.monotonic() + self.timeout if deadline is None else deadline
        while True:
            self.idl.run()
            if done():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise IdlError(f"timed out after {self.timeout:g}s waiting for {what}")
            poller = self._poller()
            self.idl.wait(poller)
            poller.timer_wait(int(left * 1000) + 1)
            poller.block()

    def _root(self) -> Any:
        return next(iter(self.idl.tables["Open_vSwitch"].rows.values()))

    def _row(self, table: str, name: str) -> Any:
        for row in self.idl.tables[table].rows.values():
            if row.name == name:
                return row
        return None

    def _change(self, what: str, build: Callable[[Any], None], check: Sequence[str] = ()) -> None:
        """Commit what ``build`` puts in a transaction, wait for ovs-vswitchd, check ``check``'s interfaces."""
        txn_cls = self._idl_mod.Transaction
        deadline = time.monotonic() + self.timeout
        while True:
            self._run_until(self.idl._session.is_connected, f"{what}: a connection", deadline)
            seqno = self.idl.change_seqno
            txn = txn_cls(self.idl)
            build(txn)
            self._root().increment("next_cfg")
            status = txn.commit()
            while status == txn_cls.INCOMPLETE:
                self.idl.run()
                if time.monotonic() > deadline:
                    txn.abort()
                    raise IdlError(f"{what}: timed out after {self.timeout:g}s committing")
                poller = self._poller()
                self.idl.wait(poller)
                txn.wait(poller)
                poller.timer_wait(int((deadline - time.monotonic()) * 1000) + 1)
                poller.block()
                status = txn.commit()
            if status == txn_cls.SUCCESS:
                break
            if status != txn_cls.TRY_AGAIN:
                raise IdlError(f"{what}: {txn.get_error()}")
            # ovsdbapp's answer to TRY_AGAIN: wait for the replica to change (or reconnect), retry.
            self._run_until(lambda s=seqno: self.idl.change_seqno != s, f"{what}: a retry", deadline)
        target = txn.get_increment_new_value()
        self._run_until(lambda: self._root().cur_cfg >= target, f"{what}: ovs-vswitchd to apply it", deadline)
        for name in check:
            iface = self._row("Interface", name)
            if iface is None or iface.error or iface.ofport == [-1]:
                raise IdlError(f"{what}: ovs-vswitchd could not open interface {name}: {iface and iface.error}")

    def add_bridge(self, name: str, ids: Mapping[str, str]) -> None:
        def build(txn: Any) -> None:
            iface = txn.insert(self.idl.tables["Interface"])
            iface.name, iface.type, iface.external_ids = name, "internal", dict(ids)
            port = txn.insert(self.idl.tables["Port"])
            port.name, port.interfaces, port.external_ids = name, [iface], dict(ids)
            bridge = txn.insert(self.idl.tables["Bridge"])
            bridge.name, bridge.ports, bridge.datapath_type, bridge.external_ids = name, [port], "netdev", dict(ids)
            self._root().addvalue("bridges", bridge)

        self._change(f"add bridge {name}", build, check=[name])

    def add_port(self, bridge: str, name: str, ids: Mapping[str, str]) -> None:
        def build(txn: Any) -> None:
            iface = txn.insert(self.idl.tables["Interface"])
            iface.name, iface.type, iface.external_ids = name, "internal", dict(ids)
            port = txn.insert(self.idl.tables["Port"])
            port.name, port.interfaces, port.external_ids = name, [iface], dict(ids)
            found = self._row("Bridge", bridge)
            if found is None:
                raise IdlError(f"no bridge {bridge}")
            found.addvalue("ports", port)

        self._change(f"add port {name}", build, check=[name])

    def set_ids(self, port: str, ids: Mapping[str, str]) -> None:
        def build(txn: Any) -> None:
            self._row("Port", port).external_ids = dict(ids)

        self._change(f"set external_ids of {port}", build)

    def delete_port(self, name: str) -> None:
        port = self._row("Port", name)
        if port is None:
            return
        bridge = next(b for b in self.idl.tables["Bridge"].rows.values() if port in b.ports)
        self._change(f"delete port {name}", lambda txn: bridge.delvalue("ports", port))

    def delete_bridge(self, name: str) -> None:
        bridge = self._row("Bridge", name)
        if bridge is not None:
            self._change(f"delete bridge {name}", lambda txn: self._root().delvalue("bridges", bridge))

    def close(self) -> None:
        self.idl.close()


CLIENTS: dict[str, Callable[[str, float], Any]] = {"cnm": CnmClient, "idl": IdlClient}


def _error_types() -> tuple[type[BaseException], ...]:
    from cnm.errors import CNMError

    return (CNMError, IdlError)


# --------------------------------------------------------------------------------------------- hosts
class Host:
    """A throwaway host namespace with its own ovsdb-server and ovs-vswitchd."""

    def __init__(self, workdir: str, label: str) -> None:
        from cnm.kernel import netns
        from cnm.testing.ovs import OvsDaemons

        self.path = os.path.join(workdir, f"{label}-host")
        self.netns = netns.create(self.path, loopback_up=True)
        self.daemons = OvsDaemons(self.netns, Path(workdir) / f"{label}-ovs")
        try:
            self.daemons.start()
        except BaseException:
            self.close()
            raise
        self.remote = self.daemons.remote

    def rows(self, table: str, name: str) -> int:
        """How many rows of ``table`` are called ``name`` (0 or 1: names are indexed)."""
        from cnm.ovsdb import Ovsdb

        db = Ovsdb(self.remote, timeout=TIMEOUT)
        found = {"Bridge": db.bridges, "Port": db.ports, "Interface": db.interfaces}[table]()
        return sum(1 for row in found if row.name == name)

    def close(self) -> None:
        from cnm.kernel import netns

        self.daemons.stop()
        netns.remove(self.path)


# --------------------------------------------------------------------------------------------- latency
def _round(client: Any, bridge: str, port: str, ids: Mapping[str, str]) -> dict[str, float]:
    """One of each change through ``client``; seconds per change."""
    steps: list[tuple[str, Callable[[], None]]] = [
        ("add bridge", lambda: client.add_bridge(bridge, ids)),
        ("add port", lambda: client.add_port(bridge, port, ids)),
        ("set external_ids", lambda: client.set_ids(port, {**ids, "cnm-bench": "changed"})),
        ("delete port", lambda: client.delete_port(port)),
        ("delete bridge", lambda: client.delete_bridge(bridge)),
    ]
    took = {}
    for op, step in steps:
        start = time.perf_counter()
        step()
        took[op] = time.perf_counter() - start
    return took


def measure_latency(clients: Mapping[str, Any], hosts: Mapping[str, Host], n: int, log: Any) -> dict[str, Any]:
    """``n`` rounds of every change, the clients alternating which goes first."""
    samples: dict[str, dict[str, list[float]]] = {label: {op: [] for op in OPS} for label in clients}
    labels = list(clients)
    for i in range(n):
        for label in labels if i % 2 == 0 else labels[::-1]:
            ids = {"cnm-network": secrets.token_hex(32), "cnm-owner": "bench"}
            for op, seconds in _round(clients[label], f"bb{i}", f"bp{i}", ids).items():
                samples[label][op].append(seconds)
        if (i + 1) % 25 == 0:
            print(f"latency: {i + 1}/{n} rounds", file=log)
    for label, host in hosts.items():
        left = host.rows("Bridge", "bb0") + host.rows("Port", "bp0")
        assert left == 0, f"{label}: rows left after the rounds"
    return {label: {op: _stats(values) for op, values in ops.items()} for label, ops in samples.items()}


def _stats(seconds: Sequence[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in seconds)
    p95 = statistics.quantiles(ms, n=20, method="inclusive")[18] if len(ms) > 1 else ms[0]
    return {"median": statistics.median(ms), "p95": p95, "min": ms[0], "max": ms[-1], "n": len(ms)}


# --------------------------------------------------------------------------------------------- startup
def child(kind: str, remote: str, ports: int) -> dict[str, Any]:
    """In a fresh process: import, connect + first change, memory with ``ports`` ports; all undone."""
    rss = {"python": _rss_kb()}
    start = time.perf_counter()
    # Every cnm user has cnm imported anyway; the client's own cost is what comes after.
    import cnm

    cnm_ms = (time.perf_counter() - start) * 1e3
    rss["cnm"] = _rss_kb()
    start = time.perf_counter()
    if kind == "cnm":
        import cnm.ovsdb  # noqa: F401
    else:
        import ovs.db.idl
        import ovs.poller  # noqa: F401
    import_ms = (time.perf_counter() - start) * 1e3
    rss["import"] = _rss_kb()
    ids = {"cnm-network": secrets.token_hex(32), "cnm-owner": "bench"}
    start = time.perf_counter()
    client = CLIENTS[kind](remote, TIMEOUT)
    client.add_bridge("bs", ids)
    first_ms = (time.perf_counter() - start) * 1e3
    rss["first change"] = _rss_kb()
    for j in range(ports):
        client.add_port("bs", f"bs{j}", ids)
    rss[f"{ports} ports"] = _rss_kb()
    client.delete_bridge("bs")
    client.close()
    return {"import cnm ms": cnm_ms, "import ms": import_ms, "connect + first change ms": first_ms, "rss_kb": rss}


def measure_startup(hosts: Mapping[str, Host], reps: int, ports: int, log: Any) -> dict[str, Any]:
    """``reps`` fresh child processes per client, alternating."""
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in hosts}
    for rep in range(reps):
        for label, host in hosts.items():
            argv = [sys.executable, os.path.abspath(__file__), "--child", label, host.remote, str(ports)]
            out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
            if out.returncode != 0:
                raise RuntimeError(f"startup child {label} failed:\n{out.stderr}")
            runs[label].append(json.loads(out.stdout))
        print(f"startup: {rep + 1}/{reps}", file=log)
    result: dict[str, Any] = {}
    for label, samples in runs.items():
        row = {key: statistics.median(s[key] for s in samples) for key in samples[0] if key != "rss_kb"}
        row["rss_kb"] = {key: statistics.median(s["rss_kb"][key] for s in samples) for key in samples[0]["rss_kb"]}
        result[label] = row
    return result


# --------------------------------------------------------------------------------------------- failures
def _attempt(step: Callable[[], None]) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        step()
    except _error_types() as exc:
        return {"outcome": f"{type(exc).__name__}: {exc}", "ok": False, "seconds": time.perf_counter() - start}
    return {"outcome": "ok", "ok": True, "seconds": time.perf_counter() - start}


def _later(delay: float, *steps: Callable[[], None]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        for step in steps:
            step()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def server_down(kind: str, host: Host) -> dict[str, Any]:
    """ovsdb-server stops: a change while it is down; then from its restart to a committed change."""
    client = CLIENTS[kind](host.remote, FAIL_TIMEOUT)
    ids = {"cnm-owner": "bench"}
    client.add_bridge("fb1", ids)  # the session is live (the IDL's replica too) before the stop
    host.daemons.stop_server()
    down = _attempt(lambda: client.add_port("fb1", "fp1", ids))
    host.daemons.start_server()
    restarted = time.perf_counter()
    after_down = host.rows("Port", "fp1")
    tries: list[dict[str, Any]] = []
    while time.perf_counter() - restarted < 20:
        tries.append(_attempt(lambda: client.add_port("fb1", "fp1", ids)))
        if tries[-1]["ok"] or "identical values" in tries[-1]["outcome"]:
            break
    recovered = time.perf_counter() - restarted
    result = {
        "while down": down,
        "rows after the failed change": after_down,
        "after restart": {
            "tries": len(tries),
            "seconds to the last": recovered,
            "first": tries[0]["outcome"],
            "last": tries[-1]["outcome"],
        },
        "rows at the end": host.rows("Port", "fp1"),
    }
    client.delete_bridge("fb1")
    client.close()
    return result


def server_stops_mid_change(kind: str, host: Host) -> dict[str, Any]:
    """ovsdb-server stops 0.5 s into a change that waits for a stopped ovs-vswitchd; both back at 1 s."""
    client = CLIENTS[kind](host.remote, FAIL_TIMEOUT)
    ids = {"cnm-owner": "bench"}
    client.add_bridge("fb2", ids)
    host.daemons.stop_switch()
    thread = _later(0.5, host.daemons.stop_server)
    thread2 = _later(1.0, host.daemons.start_server, host.daemons.start_switch)
    change = _attempt(lambda: client.add_port("fb2", "fp2", ids))
    thread.join()
    thread2.join()
    result: dict[str, Any] = {"change": change, "rows once both are back": host.rows("Port", "fp2")}
    if not change["ok"]:
        result["a retry"] = _attempt(lambda: client.add_port("fb2", "fp2", ids))["outcome"]
        result["rows after the retry"] = host.rows("Port", "fp2")
    client.delete_bridge("fb2")
    client.close()
    return result


def switch_down(kind: str, host: Host) -> dict[str, Any]:
    """ovs-vswitchd stops: a change while it is down, then what is in the database before and after it is back."""
    client = CLIENTS[kind](host.remote, FAIL_TIMEOUT)
    ids = {"cnm-owner": "bench"}
    client.add_bridge("fb3", ids)
    host.daemons.stop_switch()
    change = _attempt(lambda: client.add_port("fb3", "fp3", ids))
    rows_down = host.rows("Port", "fp3")
    host.daemons.start_switch()
    from cnm.ovsdb import Ovsdb

    opened = [i.ofport for i in Ovsdb(host.remote).interfaces() if i.name == "fp3"]
    result = {
        "change": change,
        "rows while it is down": rows_down,
        "rows once it is back": host.rows("Port", "fp3"),
        "ofport once it is back": opened,
    }
    client.delete_bridge("fb3")
    client.close()
    return result


SCENARIOS: dict[str, Callable[[str, Host], dict[str, Any]]] = {
    "ovsdb-server down, then restarted": server_down,
    "ovsdb-server stops during a change": server_stops_mid_change,
    "ovs-vswitchd down": switch_down,
}


# --------------------------------------------------------------------------------------------- report
def render(result: Mapping[str, Any]) -> str:
    """The results as Markdown."""
    labels = {"cnm": CnmClient.name, "idl": IdlClient.name}
    lat = result["latency"]
    lines = [
        f"### Latency per change (ms; N={lat['cnm'][OPS[0]]['n']}, committed and applied by ovs-vswitchd)",
        "",
        "| change | " + " | ".join(f"{labels[k]} median | p95" for k in lat) + " |",
        "|---" * (1 + 2 * len(lat)) + "|",
    ]
    for op in OPS:
        cells = " | ".join(f"{lat[k][op]['median']:.2f} | {lat[k][op]['p95']:.2f}" for k in lat)
        lines.append(f"| {op} | {cells} |")
    start = result["startup"]
    lines += [
        "",
        f"### Startup and memory (median of {result['meta']['reps']} fresh processes)",
        "",
        "| | " + " | ".join(labels[k] for k in start) + " |",
        "|---" * (1 + len(start)) + "|",
    ]
    keys = ["import cnm ms", "import ms", "connect + first change ms"]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(f"{start[k][key]:.1f}" for k in start) + " |")
    for key in start["cnm"]["rss_kb"]:
        lines.append(
            f"| VmRSS after {key} (MiB) | " + " | ".join(f"{start[k]['rss_kb'][key] / 1024:.1f}" for k in start) + " |"
        )
    for scenario, per in result["failures"].items():
        lines += ["", f"### {scenario}", ""]
        for kind, reps in per.items():
            for rep, found in enumerate(reps, 1):
                lines.append(f"- {labels[kind]} #{rep}: {_brief(found)}")
    return "\n".join(lines)


def _brief(found: Mapping[str, Any]) -> str:
    """One scenario's outcome on one line: errors cut to their class and first words, times in s."""
    return "{" + "; ".join(f"{key}: {_brief_value(value)}" for key, value in found.items()) + "}"


def _brief_value(value: Any) -> str:
    if isinstance(value, Mapping):
        return _brief(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    return text[:90] + "..." if len(text) > 90 else text


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; ``./run bench`` passes every benchmark the same options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100, help="rounds of every change (default %(default)s)")
    parser.add_argument("--reps", type=int, default=5, help="fresh processes per client for startup (default 5)")
    parser.add_argument("--rss-ports", type=int, default=100, help="ports in the memory figure (default 100)")
    parser.add_argument("--fail-reps", type=int, default=3, help="runs of each failure scenario (default 3)")
    parser.add_argument("--quick", action="store_true", help="N=10, 2 processes, 20 ports, 1 failure run (for CI)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    parser.add_argument("--prefix", default="cnmbench-", help="name prefix of the temp dir (default %(default)s)")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "REMOTE", "PORTS"), help=argparse.SUPPRESS)
    # The other benchmarks' options, accepted so that one ``./run bench ARGS`` line drives them all.
    parser.add_argument("-k", type=int, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--profile-n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--queries", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--per-thread", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.reps, args.rss_ports, args.fail_reps = 10, 2, 20, 1
    if args.json:
        root, ext = os.path.splitext(args.json)
        args.json = f"{root}.ovsdb{ext or '.json'}"
    return args


def _versions() -> dict[str, str]:
    import ovs.version

    server = subprocess.run(["ovsdb-server", "--version"], capture_output=True, text=True, check=False).stdout
    commit = subprocess.run(
        ["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "ovs python": ovs.version.VERSION,
        "ovsdb-server": server.splitlines()[0] if server else "?",
        "cnm commit": commit or "?",
    }


def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Both hosts, then latency, startup and the failure scenarios; everything removed at the end."""
    workdir = tempfile.mkdtemp(prefix=f"{args.prefix}{secrets.token_hex(3)}-")
    hosts: dict[str, Host] = {}
    clients: dict[str, Any] = {}
    try:
        for label in CLIENTS:
            hosts[label] = Host(workdir, label)
        for label, make in CLIENTS.items():
            clients[label] = make(hosts[label].remote, TIMEOUT)
        result: dict[str, Any] = {"latency": measure_latency(clients, hosts, args.n, log)}
        for client in clients.values():
            client.close()
        clients.clear()
        result["startup"] = measure_startup(hosts, args.reps, args.rss_ports, log)
        result["failures"] = {}
        for scenario, measure in SCENARIOS.items():
            result["failures"][scenario] = {label: [] for label in hosts}
            for _ in range(args.fail_reps):
                for label, host in hosts.items():
                    result["failures"][scenario][label].append(measure(label, host))
            print(f"failures: {scenario} done", file=log)
        return result
    finally:
        for client in clients.values():
            client.close()
        for host in hosts.values():
            host.close()
        from cnm.kernel import netns_dirs

        netns_dirs.release_directory(workdir)  # the self-mount netns.create made of it, or rmtree fails
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if args.child:
        kind, remote, ports = args.child
        print(json.dumps(child(kind, remote, int(ports))))
        return 0
    if os.geteuid() != 0:
        sys.exit("bench_ovsdb: needs root (it creates network namespaces): sudo ./run bench")
    try:
        import ovs.db.idl  # noqa: F401
    except ImportError:
        sys.exit(
            "bench_ovsdb: the ovs package (Debian: python3-openvswitch) is not importable; "
            "run it through ./run bench, which shows it to this script"
        )
    from cnm.testing.ovs import ovs_available

    reason = ovs_available()
    if reason is not None:
        sys.exit(f"bench_ovsdb: {reason}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # through run()'s cleanup
    started = datetime.datetime.now(datetime.UTC)
    result = run(args, sys.stderr)
    result["meta"] = {
        "date": started.isoformat(timespec="seconds"),
        "wall_seconds": round((datetime.datetime.now(datetime.UTC) - started).total_seconds(), 1),
        "n": args.n,
        "reps": args.reps,
        "rss_ports": args.rss_ports,
        "fail_timeout": FAIL_TIMEOUT,
        "fail_reps": args.fail_reps,
        **_versions(),
    }
    return report.emit(render(result), result, args.json)


if __name__ == "__main__":
    sys.exit(main())
