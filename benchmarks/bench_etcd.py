"""What the global store on etcd costs: IPAM allocations through EtcdStore, beside SqliteStore.

Run as any user (``./run bench [options]``, or ``python benchmarks/bench_etcd.py``). It starts
its own etcd members (Debian's ``etcd-server``) on free loopback ports in a temp dir and stops
them by PID; nothing else is touched.

Measured, for a one-member etcd, a three-member etcd and SQLite (the local store):

* the latency of one ``LocalIpam.request_address`` with nobody else writing (median, p90);
* ``--threads`` threads allocating ``--per-thread`` addresses each in one pool at once: the
  wall time per allocation, and (etcd) how many transaction bodies ran again after a conflict.
  Every allocation rewrites the pool's first-free hints, so these all contend for one key.

Every run checks that no address was handed out twice.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnm.ipam import LocalIpam
from cnm.store import SqliteStore, Store
from cnm.store.etcd import EtcdStore
from cnm.testing.etcd import start_cluster


def _serial(store: Store, n: int) -> dict[str, float]:
    ipam = LocalIpam(store)
    pool = ipam.request_pool(owner="serial")
    times = []
    for _ in range(n):
        start = time.perf_counter()
        ipam.request_address(pool.id)
        times.append((time.perf_counter() - start) * 1000)
    assert len(ipam.allocated(pool.id)) == n
    return {"median_ms": statistics.median(times), "p90_ms": statistics.quantiles(times, n=10)[-1], "n": n}


def _contended(store: Store, threads: int, each: int) -> dict[str, float]:
    ipam = LocalIpam(store)
    pool = ipam.request_pool(owner="contended")
    got: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        mine = [str(ipam.request_address(pool.id)) for _ in range(each)]
        with lock:
            got.extend(mine)

    before = getattr(store, "conflicts", 0)
    workers = [threading.Thread(target=work) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    assert len(got) == len(set(got)) == threads * each, "an address was handed out twice"
    return {
        "allocations": len(got),
        "wall_ms_per_allocation": wall * 1000 / len(got),
        "retried_bodies": getattr(store, "conflicts", 0) - before,
    }


def _measure(name: str, open_store: Callable[[], Store], args: argparse.Namespace) -> dict[str, Any]:
    store = open_store()
    try:
        row = {"serial": _serial(store, args.n), "contended": _contended(store, args.threads, args.per_thread)}
    finally:
        store.close()
    print(f"{name}: {json.dumps(row)}", file=sys.stderr)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="serial allocations (default %(default)s)")
    parser.add_argument("--threads", type=int, default=8, help="contending threads (default %(default)s)")
    parser.add_argument("--per-thread", type=int, default=50, help="allocations per thread (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="n=20, 4 threads x 5 (for CI)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON here (suffixed .etcd)")
    parser.add_argument("--prefix", default="cnmbench-", help="name prefix of the temp dir (default %(default)s)")
    args, _ = parser.parse_known_args()  # ./run bench passes every benchmark the same options
    if args.quick:
        args.n, args.threads, args.per_thread = 20, 4, 5
    work = Path(tempfile.mkdtemp(prefix=args.prefix + "etcd-"))
    results: dict[str, Any] = {}
    try:
        results["sqlite"] = _measure("sqlite", lambda: SqliteStore(str(work / "cnm.db")), args)
        for size in (1, 3):
            cluster = start_cluster(work / f"etcd{size}", size=size)
            try:
                results[f"etcd-{size}"] = _measure(f"etcd-{size}", lambda c=cluster: EtcdStore(c.endpoints), args)
            finally:
                cluster.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| store | one allocation, median (p90) | contended, per allocation | bodies retried |")
    print("| --- | --- | --- | --- |")
    for name, row in results.items():
        s, c = row["serial"], row["contended"]
        print(
            f"| {name} | {s['median_ms']:.2f} ms ({s['p90_ms']:.2f}) | {c['wall_ms_per_allocation']:.2f} ms "
            f"({c['allocations']} by {args.threads} threads) | {c['retried_bodies']} |"
        )
    if args.json:
        path = Path(args.json)
        Path(f"{path}.etcd" if path.suffix != ".etcd" else path).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
