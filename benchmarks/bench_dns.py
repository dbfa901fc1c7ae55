"""What name resolution between sandboxes costs: lookup latency and the extra cost per ADD.

Run as root (``sudo ./run bench [options]``, or ``python benchmarks/bench_dns.py``). Everything
happens in throwaway namespaces (prefix ``--prefix``): a host namespace with a bridge
(10.78.0.1/24), a client sandbox on it, and an outside namespace (192.0.2.2) where dnsmasq
plays the upstream resolver. The machine's own namespace is never touched.

Measured, for cnm's resolver (:mod:`cnm.dns`) and, when Debian's ``aardvark-dns`` is
installed, for aardvark-dns 1.4.0 on the same world (UDP only: 1.4 has no TCP):

* lookup latency seen by a client in the sandbox, one query at a time (median and p90 over
  ``--queries``): a local name over UDP, a local name over TCP (a new connection each), a
  forwarded name over UDP (dnsmasq answers from its own table);
* the extra cost per ADD with ``k`` sandboxes already on the network: writing the network's
  file with one more entry plus the reload, until the new name is served (cnm: ``reload()``
  returns once the server has loaded it; aardvark: SIGHUP, then queries every 50 ms until one
  answers: aardvark 1.4 closes and rebinds its sockets on a reload, so a query sent meanwhile
  is lost and the figure is about one client retry);
* the time for ``Resolver.start()`` to return (the process listens);
* through a Controller: ``create_sandbox(name, network=...)`` and ``delete()`` of the k-th sandbox
  on a user-defined network (names served: the resolver is told before the call returns, and
  resolv.conf names it) against the same on the predefined ``bridge`` (no names); the
  difference is what names cost an ADD and a DEL.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import dns.exception
import dns.message
import dns.query
import report

from cnm.dns import Entry, NetworkDNS, Resolver
from cnm.kernel import addresses, links, routes
from cnm.kernel.netns import NetNS
from cnm.testing.hosts import link_outside, throwaway_namespaces
from cnm.testing.traffic import upstream_resolver_argv

AARDVARK = "/usr/lib/podman/aardvark-dns"
GATEWAY = ipaddress.ip_address("10.78.0.1")
CLIENT = ipaddress.ip_address("10.78.0.2")
DEFAULT_KS = (10, 100, 1000)
QUICK_KS = (10, 100)


def _entries(k: int) -> list[Entry]:
    entries = [Entry(id="sb-client", names=("client",), ipv4=(CLIENT,))]
    for i in range(k):
        entries.append(
            Entry(
                id=f"sb-{i}",
                names=(f"c{i}", "pool" if i < 3 else f"x{i}"),
                ipv4=(f"10.78.{4 + i // 250}.{1 + i % 250}",),
            )
        )
    return entries


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(values), 3),
        "p90_ms": round(_percentile(values, 0.9), 3),
        "n": len(values),
    }


def _query(
    client: NetNS, name: str, *, tcp: bool = False, timeout: float = 2.0, sock: socket.socket | None = None
) -> dns.message.Message:
    q = dns.message.make_query(name, "A")
    if sock is not None:
        return dns.query.udp(q, str(GATEWAY), timeout=timeout, sock=sock)
    own = client.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    with own:
        if tcp:
            own.settimeout(timeout)
            own.connect((str(GATEWAY), 53))
            own.setblocking(False)
            return dns.query.tcp(q, str(GATEWAY), timeout=timeout, sock=own)
        own.setblocking(False)
        return dns.query.udp(q, str(GATEWAY), timeout=timeout, sock=own)


def _latency(client: NetNS, name: str, n: int, *, tcp: bool = False) -> dict[str, float]:
    # UDP: one client socket for the series (as a stub resolver keeps one); TCP: a connection each.
    udp = None if tcp else client.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if udp is not None:
        udp.setblocking(False)
    times = []
    try:
        for _ in range(3):  # warm-up
            _query(client, name, tcp=tcp, sock=udp)
        for _ in range(n):
            t0 = time.perf_counter()
            reply = _query(client, name, tcp=tcp, sock=udp)
            times.append((time.perf_counter() - t0) * 1000)
            if not reply.answer:
                raise RuntimeError(f"no answer for {name}: {reply}")
    finally:
        if udp is not None:
            udp.close()
    return _summary(times)


def _until_answered(client: NetNS, name: str, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if _query(client, name, timeout=0.05).answer:
                return
        except dns.exception.Timeout:
            pass
    raise RuntimeError(f"{name} never resolved")


def bench_cnm(client: NetNS, host: NetNS, work: str, args: argparse.Namespace) -> dict[str, Any]:
    resolv = os.path.join(work, "resolv.conf")
    with open(resolv, "w") as f:
        f.write("nameserver 192.0.2.2\n")
    res = Resolver(os.path.join(work, "cnm-dns"), host, resolv_conf=resolv)
    out: dict[str, Any] = {"add": {}}
    try:
        res.config.write(NetworkDNS(name="bench", listen=(GATEWAY,), entries=_entries(max(args.k))))
        t0 = time.perf_counter()
        res.start()
        out["start_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        out["local_udp"] = _latency(client, "c1", args.queries)
        out["local_tcp"] = _latency(client, "c1", args.queries, tcp=True)
        out["round_robin_udp"] = _latency(client, "pool", args.queries)
        out["forwarded_udp"] = _latency(client, "host.ext.test", args.queries)
        for k in args.k:
            base = NetworkDNS(name="bench", listen=(GATEWAY,), entries=_entries(k))
            res.config.write(base)
            res.reload()
            times = []
            for rep in range(args.reps):
                new = Entry(id=f"sb-new{rep}", names=(f"new{rep}",), ipv4=(f"10.78.9.{rep + 1}",))
                t0 = time.perf_counter()
                res.config.write(base.with_entry(new))
                res.reload()
                times.append((time.perf_counter() - t0) * 1000)
                if not _query(client, f"new{rep}").answer:
                    raise RuntimeError("the new name is not served after reload()")
            out["add"][str(k)] = _summary(times)
    finally:
        res.stop()
    return out


def bench_aardvark(client: NetNS, host: NetNS, work: str, args: argparse.Namespace) -> dict[str, Any]:
    config = os.path.join(work, "aardvark")
    os.makedirs(config)

    def write(k: int, extra: Sequence[Entry] = ()) -> None:
        # Network-scoped upstreams (1.4.0's second column) point it at the bench's upstream.
        net = NetworkDNS(name="bench", listen=(GATEWAY,), entries=[*_entries(k), *extra], dns_servers=("192.0.2.2",))
        tmp = os.path.join(config, ".bench.tmp")
        with open(tmp, "w") as f:
            f.write(net.render())
        os.replace(tmp, os.path.join(config, "bench"))

    write(max(args.k))
    out: dict[str, Any] = {"add": {}}
    t0 = time.perf_counter()
    subprocess.run(
        ["nsenter", f"--net={host.path}", "--", AARDVARK, "--config", config, "-p", "53", "run"],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    with open(os.path.join(config, "aardvark.pid")) as f:
        pid = int(f.read().strip())
    try:
        _until_answered(client, "c1")
        out["start_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        out["local_udp"] = _latency(client, "c1", args.queries)
        out["round_robin_udp"] = _latency(client, "pool", args.queries)
        out["forwarded_udp"] = _latency(client, "host.ext.test", args.queries)
        try:
            _query(client, "c1", tcp=True, timeout=1.0)
            out["local_tcp"] = "answered"
        except (OSError, dns.exception.DNSException) as exc:
            out["local_tcp"] = f"no TCP ({type(exc).__name__})"
        for k in args.k:
            write(k)
            os.kill(pid, signal.SIGHUP)
            _until_answered(client, "c1")
            times = []
            for rep in range(args.reps):
                new = Entry(id=f"sb-new{rep}", names=(f"new{rep}",), ipv4=(f"10.78.9.{rep + 1}",))
                t0 = time.perf_counter()
                write(k, [new])
                os.kill(pid, signal.SIGHUP)
                _until_answered(client, f"new{rep}")
                times.append((time.perf_counter() - t0) * 1000)
            out["add"][str(k)] = _summary(times)
    finally:
        os.kill(pid, signal.SIGTERM)
    return out


def bench_controller(host: NetNS, work: str, args: argparse.Namespace) -> dict[str, Any]:
    from cnm import Controller, IPAMConfig

    out: dict[str, Any] = {}
    state = os.path.join(work, "ctl")
    with Controller(state_dir=state, host_netns=host) as ctl:
        ctl.create_network("named", ipam=IPAMConfig(subnet="10.79.0.0/16"))
        for network in ("bridge", "named"):
            made = []
            rows: dict[str, Any] = {}
            for k in sorted(args.k):
                while len(made) < k - 1:
                    made.append(ctl.create_sandbox(f"{network}-{len(made)}", network=network))
                adds, dels = [], []
                for rep in range(args.reps):
                    t0 = time.perf_counter()
                    sb = ctl.create_sandbox(f"{network}-new{rep}", network=network)
                    t1 = time.perf_counter()
                    sb.delete()
                    dels.append((time.perf_counter() - t1) * 1000)
                    adds.append((t1 - t0) * 1000)
                rows[str(k)] = {"add": _summary(adds), "del": _summary(dels)}
            for sb in made:
                sb.delete()
            out[network] = rows
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix=args.prefix)
    upstream: subprocess.Popen[bytes] | None = None
    try:
        with throwaway_namespaces(args.prefix) as make:
            host, client, outside_ns = make("h"), make("c"), make("o")
            outside = link_outside(host, outside_ns)
            with host.netlink() as nl:
                links.ensure_bridge(nl, "brbench")
                addresses.add_address(nl, "brbench", ipaddress.ip_interface(f"{GATEWAY}/16"))
                links.add_veth(nl, "vbench", "eth0", client, master="brbench")
            with client.netlink() as nl:
                addresses.add_address(nl, "eth0", ipaddress.ip_interface(f"{CLIENT}/16"))
                links.set_link(nl, "eth0", up=True)
                routes.replace_default_route(nl, GATEWAY, "eth0")
            upstream = outside.popen(
                upstream_resolver_argv(outside.address, "--address=/ext.test/203.0.113.7"),
                stderr=subprocess.DEVNULL,
            )
            result: dict[str, Any] = {"cnm": bench_cnm(client, host, work, args)}
            if os.path.exists(AARDVARK):
                result["aardvark-dns 1.4.0"] = bench_aardvark(client, host, work, args)
            result["controller"] = bench_controller(host, work, args)
            return result
    finally:
        if upstream is not None:
            upstream.terminate()
            upstream.wait(timeout=5)
        shutil.rmtree(work, ignore_errors=True)


def render(result: dict[str, Any]) -> str:
    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if isinstance(value, dict):
            return f"{value['median_ms']:.3f} / {value['p90_ms']:.3f}"
        return str(value) if value is not None else "-"

    lines = [
        "| resolver | start (ms) | local UDP | local TCP | round-robin UDP | forwarded UDP |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result.items():
        if name in ("meta", "controller"):
            continue
        lines.append(
            f"| {name} | {row['start_ms']} | {cell(row, 'local_udp')} | {cell(row, 'local_tcp')} "
            f"| {cell(row, 'round_robin_udp')} | {cell(row, 'forwarded_udp')} |"
        )
    lines += ["", "| resolver | " + " | ".join(f"ADD at k={k}" for k in result["meta"]["k"]) + " |"]
    lines.append("|---|" + "---|" * len(result["meta"]["k"]))
    for name, row in result.items():
        if name not in ("meta", "controller"):
            lines.append(f"| {name} | " + " | ".join(cell(row["add"], str(k)) for k in result["meta"]["k"]) + " |")
    ctl = result.get("controller", {})
    if ctl:
        lines += [
            "",
            "| Controller, k-th sandbox | " + " | ".join(f"k={k} ADD / DEL" for k in result["meta"]["k"]) + " |",
        ]
        lines.append("|---|" + "---|" * len(result["meta"]["k"]))
        for network, label in (("bridge", "bridge (no names)"), ("named", "user network (names)")):
            cells = [
                f"{ctl[network][str(k)]['add']['median_ms']:.1f} / {ctl[network][str(k)]['del']['median_ms']:.1f}"
                for k in result["meta"]["k"]
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n(latencies: median / p90 ms; Controller rows: medians)"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; ``./run bench`` passes every benchmark the same options (others' are ignored)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", type=int, nargs="+", default=list(DEFAULT_KS), help="sandboxes present for the ADD cost")
    parser.add_argument("--reps", type=int, default=7, help="ADDs timed at each k (default 7)")
    parser.add_argument("--queries", type=int, default=300, help="queries per latency figure (default 300)")
    parser.add_argument("--quick", action="store_true", help=f"k={QUICK_KS}, 3 reps, 30 queries (for CI)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON here (suffixed .dns)")
    parser.add_argument("--prefix", default="cnmbench-", help="name prefix of namespaces and the temp dir")
    args, _ = parser.parse_known_args(argv)
    if args.quick:
        args.k, args.reps, args.queries = list(QUICK_KS), 3, 30
    if args.json:
        root, ext = os.path.splitext(args.json)
        args.json = f"{root}.dns{ext or '.json'}"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench_dns: needs root (it creates network namespaces): sudo ./run bench")
    if shutil.which("dnsmasq") is None:
        sys.exit("bench_dns: dnsmasq (Debian's dnsmasq-base) must be on PATH")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = datetime.datetime.now(datetime.UTC)
    result = run(args)
    result["meta"] = {
        "date": started.isoformat(timespec="seconds"),
        "k": args.k,
        "reps": args.reps,
        "queries": args.queries,
    }
    return report.emit(render(result), result, args.json)


if __name__ == "__main__":
    sys.exit(main())
