"""Per-container cost and scaling of cnm, side by side with the CNI reference plugins and a kernel floor.

Run as root (``sudo ./run bench [options]``, or ``python benchmarks/bench_cnm.py``). Everything
happens in throwaway namespaces: each implementation gets its own private "host" namespace
(``<prefix><random>-<impl>``), so their bridges and iptables tables never meet each other or the
machine's; all of it is removed at the end, and the worker processes are ended by PID.

What one container costs (ADD, then DEL of the same):

- **cnm**: ``create_sandbox`` + ``create_endpoint`` with one published TCP port + ``join``;
  DEL is ``sandbox.delete()`` + ``endpoint.delete()``.
- **CNI**: Debian's containernetworking-plugins run as a runtime runs them: the runtime makes the
  namespace (in-process, loopback up), then execs ``bridge`` (host-local IPAM, ipMasq, hairpin)
  and ``portmap`` with ``CNI_*`` variables and the JSON config on stdin; DEL runs them in reverse
  with the cached result, then unmounts the namespace. Their iptables is forced to legacy: the
  plugins (go-iptables) look ``iptables`` up on ``$PATH``, so the plugin's PATH starts with a
  directory whose ``iptables`` is ``iptables-legacy``.
- **floor**: the same kernel objects with one ``ip -batch`` in the host namespace (netns add,
  veth born in the namespace, on the bridge, hairpin), one ``ip -n NS -batch`` inside, and one
  ``iptables-legacy-restore --noflush`` with cnm's two nat rules per published port. DEL is measured
  both ways: deleting the veth before the namespace (``floor``) and only unmounting the namespace
  (``floor-unmount``; the kernel destroys it and the veth asynchronously).

The implementations run in worker processes (this file with ``--worker``), one per implementation,
driven in turn by the parent so that machine noise hits them alike. Scaling adds containers to one
network until ``max(k)`` exist; at each ``k`` the ADD and DEL of the k-th container are timed a few
times. The cnm worker also reports its resident memory (VmRSS) with ``max(k)`` endpoints, and a
per-step breakdown of cnm's ADD and DEL, timed by a step observer (``steptimer.StepTimer`` given as
``Controller(observer=...)``): every named step of the core and of the bridge driver, no patching.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import datetime
import ipaddress
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
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import IO, Any

import report
from steptimer import OVERLAPPED, StepTimer

HOST_PORT_BASE = 20000
CONTAINER_PORT = 80
CNI_DIR = "/usr/lib/cni"
SUBNETS = {"cnm": "10.231.0.0/16", "cnm-nft": "10.234.0.0/16", "cni": "10.232.0.0/16", "floor": "10.233.0.0/16"}
IMPLS = ("cnm", "cnm-nft", "cni", "floor")
#: cnm's rows and the firewall backend each runs on ("cnm" is the iptables backend, as before).
CNM_BACKENDS = {"cnm": "iptables", "cnm-nft": "nftables"}
#: Seconds of quiet before each timed call: the kernel finishes what the previous one left (the deferred
#: free of a replaced iptables table, a namespace's teardown), instead of charging it to the next implementation.
SETTLE = 0.05
# What each row of the per-container table is: floor-unmount shares the floor worker.
ROWS = ("cnm", "cnm-nft", "cni", "floor", "floor-unmount")
DEFAULT_KS = (10, 100, 250, 500, 1000)
QUICK_KS = (10, 20)
_CLONE_NEWNET = 0x40000000


# --------------------------------------------------------------------------------------------- helpers
def _setns(path: str) -> None:
    """Move the calling thread (the worker's only one, at start) into the namespace at ``path``."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _run(argv: Sequence[str], stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command; its stdout, or RuntimeError with its stderr."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _address(subnet: str, i: int) -> ipaddress.IPv4Address:
    """Container ``i``'s address (the gateway is .1, containers start at .2)."""
    return ipaddress.IPv4Network(subnet)[i + 2]


def _gateway(subnet: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Network(subnet)[1]


def _mac(ip: ipaddress.IPv4Address) -> str:
    return "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)


def _vm_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in kB."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


class _NsRunner:
    """Runs commands in a namespace (the Runner of cnm.testing.traffic)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(["nsenter", f"--net={self.path}", "--", *argv], check=False, **kwargs)

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(["nsenter", f"--net={self.path}", "--", *argv], **kwargs)


def _verify(netns_path: str, host_path: str, subnet: str, host_port: int) -> None:
    """Real packets: the container pings its gateway, and the host reaches it through the published port."""
    from cnm.testing.traffic import ping, probe, serve

    inside, host = _NsRunner(netns_path), _NsRunner(host_path)
    gateway = str(_gateway(subnet))
    # Up to three tries: a loaded machine may drop or delay the first echo; the check is
    # that packets flow, not how soon (verify is outside the timed part).
    if not any(ping(inside, gateway, wait=2) for _ in range(3)):
        raise RuntimeError(f"container in {netns_path} cannot ping its gateway {gateway}")
    server = serve(inside, "tcp", CONTAINER_PORT)
    try:
        seen = probe(host, "tcp", gateway, host_port)
    finally:
        server.terminate()
        server.wait(timeout=5)
        if server.stdout is not None:
            server.stdout.close()
    if seen is None:
        raise RuntimeError(f"published port {host_port} does not reach the container in {netns_path}")


# --------------------------------------------------------------------------------------------- cnm
class CnmImpl:
    """cnm through its public API, in the worker's host namespace."""

    def __init__(self, tag: str, host_path: str, workdir: str, impl: str = "cnm") -> None:
        from cnm import Controller, IPAMConfig
        from cnm.kernel.netns import NetNS

        self.subnet = SUBNETS[impl]
        self.host_path = host_path
        self.state_dir = os.path.join(workdir, f"{impl}-state")
        self.baseline_rss = _vm_status()
        # The step timer sees cnm's named steps (Controller(observer=)); it times only once enabled.
        self.timer = StepTimer()
        self.timer.enabled = False
        self.ctl = Controller(
            state_dir=self.state_dir,
            host_netns=NetNS(host_path),
            firewall=CNM_BACKENDS[impl],
            predefined=False,
            observer=self.timer,
        )
        self.net = self.ctl.create_network(
            "bench", ipam=IPAMConfig(subnet=self.subnet, gateway=str(_gateway(self.subnet)))
        )
        self.live: dict[int, tuple[Any, Any]] = {}
        self.rss_after_setup = _vm_status()

    def add(self, i: int) -> None:
        from cnm import PortBinding

        sb = self.ctl.create_sandbox(f"c{i}")
        ep = self.net.create_endpoint(
            f"c{i}", ports=[PortBinding(container_port=CONTAINER_PORT, host_port=HOST_PORT_BASE + i)]
        )
        ep.join(sb)
        self.live[i] = (sb, ep)

    def delete(self, i: int, mode: str) -> None:
        sb, ep = self.live.pop(i)
        sb.delete()
        ep.delete()

    def verify(self, i: int) -> None:
        sb, _ = self.live[i]
        _verify(sb.netns_path, self.host_path, self.subnet, HOST_PORT_BASE + i)

    def close(self) -> None:
        from cnm.kernel import netns

        self.ctl.close()
        directory = os.path.join(self.state_dir, "netns")
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(directory):
                netns.remove(os.path.join(directory, name))


# --------------------------------------------------------------------------------------------- CNI
class CniImpl:
    """The CNI reference plugins, executed as a runtime executes them."""

    def __init__(self, tag: str, host_path: str, workdir: str) -> None:
        self.tag = tag
        self.subnet = SUBNETS["cni"]
        self.host_path = host_path
        self.workdir = workdir
        self.ipam_dir = os.path.join(workdir, "cni-ipam")
        # go-iptables runs the first "iptables" on the plugin's PATH: make that the legacy one.
        self.shim = os.path.join(workdir, "cni-legacy-bin")
        os.makedirs(self.shim, exist_ok=True)
        for name in ("iptables", "iptables-save", "iptables-restore"):
            target = "/usr/sbin/" + name.replace("iptables", "iptables-legacy", 1)
            os.symlink(target, os.path.join(self.shim, name))
        self.path_env = f"{self.shim}:/usr/sbin:/usr/bin:/sbin:/bin"
        self.conf = {
            "cniVersion": "1.0.0",
            "name": "cnmbench",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cnib0",
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet, "gateway": str(_gateway(self.subnet))}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.ipam_dir,
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            ],
        }
        self.results: dict[int, dict[str, Any]] = {}

    def _netns_path(self, i: int) -> str:
        return f"/run/netns/{self.tag}-cni-{i}"

    def _exec(self, plugin: dict[str, Any], command: str, i: int, prev: dict[str, Any] | None) -> dict[str, Any]:
        """Exec one plugin the way libcni does: env + the plugin's config (with runtime parts) on stdin."""
        config: dict[str, Any] = {"cniVersion": self.conf["cniVersion"], "name": self.conf["name"], **plugin}
        if plugin["type"] == "portmap":
            config.pop("capabilities")
            mapping = {"hostPort": HOST_PORT_BASE + i, "containerPort": CONTAINER_PORT, "protocol": "tcp"}
            config["runtimeConfig"] = {"portMappings": [mapping]}
        if prev is not None:
            config["prevResult"] = prev
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"{self.tag}-{i}",
            "CNI_NETNS": self._netns_path(i),
            "CNI_IFNAME": "eth0",
            "CNI_PATH": CNI_DIR,
            "PATH": self.path_env,
        }
        out = _run([os.path.join(CNI_DIR, plugin["type"])], stdin=json.dumps(config), env=env)
        return json.loads(out) if out.strip() else {}

    def add(self, i: int) -> None:
        from cnm.kernel import links, netns

        ns = netns.create(self._netns_path(i))  # the runtime makes the namespace, as containerd does
        with ns.netlink() as nl:
            links.set_link(nl, "lo", up=True)
        result: dict[str, Any] | None = None
        for plugin in self.conf["plugins"]:
            result = self._exec(plugin, "ADD", i, result)
        assert result is not None
        self.results[i] = result

    def delete(self, i: int, mode: str) -> None:
        from cnm.kernel import netns

        result = self.results.pop(i)
        for plugin in reversed(self.conf["plugins"]):
            self._exec(plugin, "DEL", i, result)
        netns.remove(self._netns_path(i))

    def verify(self, i: int) -> None:
        _verify(self._netns_path(i), self.host_path, self.subnet, HOST_PORT_BASE + i)

    def close(self) -> None:
        from cnm.kernel import netns

        for i in list(self.results):
            netns.remove(self._netns_path(i))
        self.results.clear()


# --------------------------------------------------------------------------------------------- floor
class FloorImpl:
    """The same kernel objects with the fewest processes: ip -batch per namespace, one iptables-restore."""

    def __init__(self, tag: str, host_path: str, workdir: str) -> None:
        self.tag = tag
        self.subnet = SUBNETS["floor"]
        self.host_path = host_path
        self.bridge = "flb0"
        self.gateway = _gateway(self.subnet)
        prefix = ipaddress.IPv4Network(self.subnet).prefixlen
        _run(
            ["ip", "-batch", "-"],
            stdin=(
                f"link add {self.bridge} type bridge\n"
                f"addr add {self.gateway}/{prefix} dev {self.bridge}\n"
                f"link set {self.bridge} up\n"
            ),
        )
        for key, value in (("net/ipv4/ip_forward", "1"), (f"net/ipv4/conf/{self.bridge}/route_localnet", "1")):
            with open(f"/proc/sys/{key}", "w") as f:
                f.write(value)
        # The network-level rules, once (cnm and CNI make theirs at network creation or first ADD).
        _run(
            ["iptables-legacy-restore", "--noflush"],
            stdin=(
                "*filter\n"
                f"-A FORWARD -o {self.bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
                f"-A FORWARD ! -i {self.bridge} -o {self.bridge} -m conntrack --ctstate DNAT -j ACCEPT\n"
                f"-A FORWARD -i {self.bridge} -j ACCEPT\n"
                "COMMIT\n"
                "*nat\n:FLOOR - [0:0]\n:FLOOR-HAIRPIN - [0:0]\n"
                "-A PREROUTING -m addrtype --dst-type LOCAL -j FLOOR\n"
                "-A OUTPUT -m addrtype --dst-type LOCAL -j FLOOR\n"
                f"-A POSTROUTING -s {self.subnet} ! -o {self.bridge} -j MASQUERADE\n"
                f"-A POSTROUTING -o {self.bridge} -m addrtype --src-type LOCAL -j MASQUERADE\n"
                f"-A POSTROUTING -o {self.bridge} -j FLOOR-HAIRPIN\n"
                "COMMIT\n"
            ),
        )
        self.live: set[int] = set()

    def _name(self, i: int) -> str:
        return f"{self.tag}-floor-{i}"

    def _rules(self, i: int, op: str) -> str:
        ip, hp = _address(self.subnet, i), HOST_PORT_BASE + i
        # cnm's two rules of one published port, bare, in the nat table only (docs/firewall.md):
        # the hairpin masquerade and the DNAT; the filter side is the network's one conntrack ACCEPT.
        return (
            "*nat\n"
            f"{op} FLOOR-HAIRPIN -s {ip}/32 -d {ip}/32 -p tcp -j MASQUERADE\n"
            f"{op} FLOOR -p tcp -m tcp --dport {hp} -j DNAT --to-destination {ip}:{CONTAINER_PORT}\n"
            "COMMIT\n"
        )

    def add(self, i: int) -> None:
        name, ip = self._name(i), _address(self.subnet, i)
        prefix = ipaddress.IPv4Network(self.subnet).prefixlen
        _run(
            ["ip", "-batch", "-"],
            stdin=(
                f"netns add {name}\n"
                f"link add fv{i} mtu 1500 master {self.bridge} up type veth peer name eth0 netns {name} "
                f"address {_mac(ip)}\n"
                f"link set fv{i} type bridge_slave hairpin on\n"
            ),
        )
        self.live.add(i)
        _run(
            ["ip", "-n", name, "-batch", "-"],
            stdin=(
                f"link set lo up\naddr add {ip}/{prefix} dev eth0\nlink set eth0 up\n"
                f"route add default via {self.gateway}\n"
            ),
        )
        _run(["iptables-legacy-restore", "--noflush"], stdin=self._rules(i, "-A"))

    def delete(self, i: int, mode: str) -> None:
        _run(["iptables-legacy-restore", "--noflush"], stdin=self._rules(i, "-D"))
        batch = f"netns del {self._name(i)}\n"
        if mode == "veth":
            batch = f"link del fv{i}\n" + batch
        _run(["ip", "-batch", "-"], stdin=batch)
        self.live.discard(i)

    def verify(self, i: int) -> None:
        _verify(f"/run/netns/{self._name(i)}", self.host_path, self.subnet, HOST_PORT_BASE + i)

    def close(self) -> None:
        from cnm.kernel import netns

        for i in sorted(self.live):
            netns.remove(f"/run/netns/{self._name(i)}")
        self.live.clear()


# --------------------------------------------------------------------------------------------- cnm breakdown
def instrument(target: CnmImpl) -> StepTimer:
    """Turn on the step timer the worker's Controller was given as its observer; no patching."""
    target.timer.enabled = True
    return target.timer


# --------------------------------------------------------------------------------------------- worker
class _Served:
    """One worker's state and its commands, each returning the reply's payload."""

    def __init__(self, impl: str, host_path: str, tag: str, workdir: str) -> None:
        self.impl, self.host_path, self.tag, self.workdir = impl, host_path, tag, workdir
        self.target: Any = None
        self.profiler: StepTimer | None = None

    def setup(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if self.impl in CNM_BACKENDS:
            self.target = CnmImpl(self.tag, self.host_path, self.workdir, self.impl)
        else:
            classes = {"cni": CniImpl, "floor": FloorImpl}
            self.target = classes[self.impl](self.tag, self.host_path, self.workdir)
        return {}

    def _timed(self, what: str, i: int, mode: str) -> float:
        start = time.perf_counter()
        if what == "add":
            self.target.add(i)
        else:
            self.target.delete(i, mode)
        return time.perf_counter() - start

    def add(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"seconds": self._timed("add", cmd["i"], "")}

    def delete(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"seconds": self._timed("del", cmd["i"], cmd.get("mode", "veth"))}

    def verify(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.target.verify(cmd["i"])
        return {}

    def rss(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"now": _vm_status(), "baseline": self.target.baseline_rss, "after_setup": self.target.rss_after_setup}

    def instrument(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(self.target, CnmImpl):
            raise RuntimeError("only cnm's worker has steps to time")
        self.profiler = instrument(self.target)
        return {}

    def profile(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if self.profiler is None:
            raise RuntimeError("profile before instrument")
        self.profiler.take()
        seconds = self._timed(cmd["what"], cmd["i"], "veth")
        return {"seconds": seconds, "steps": self.profiler.take()}

    def close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if self.target is not None:
            self.target.close()
            self.target = None
        return {}


def worker_main(impl: str, host_path: str, tag: str, workdir: str) -> int:
    """Serve the parent's commands (JSON lines on stdin) from inside ``host_path``."""
    _setns(host_path)
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    served = _Served(impl, host_path, tag, workdir)
    ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "setup": served.setup,
        "add": served.add,
        "del": served.delete,
        "verify": served.verify,
        "rss": served.rss,
        "instrument": served.instrument,
        "profile": served.profile,
        "close": served.close,
    }
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            try:
                payload = {"ok": True, **ops[cmd["op"]](cmd)}
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops the run
                payload = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(payload) + "\n")
            out.flush()
            if cmd["op"] == "close":
                break
    finally:
        served.close({})  # the parent went away: still remove what this worker made
    return 0


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, impl: str, host_path: str, tag: str, workdir: str) -> None:
        self.impl = impl
        env = dict(os.environ)
        env.setdefault("XTABLES_LIBDIR", _xtables_libdir())
        self.proc = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--worker",
                impl,
                "--host-netns",
                host_path,
                "--tag",
                tag,
                "--workdir",
                workdir,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def call(self, **cmd: Any) -> dict[str, Any]:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(json.dumps(cmd) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"{self.impl} worker (pid {self.proc.pid}) died during {cmd}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"{self.impl} worker: {cmd['op']} failed: {answer.get('error')}")
        return answer

    def stop(self) -> None:
        """Ask it to clean up and exit; end it by PID if it does not."""
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.call(op="close")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _xtables_libdir() -> str:
    for candidate in ("/usr/lib/x86_64-linux-gnu/xtables", "/usr/lib/aarch64-linux-gnu/xtables", "/usr/lib/xtables"):
        if os.path.isdir(candidate):
            return candidate
    return ""


# --------------------------------------------------------------------------------------------- parent
def _stats(samples: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {"median": statistics.median(ms), "min": min(ms), "max": max(ms), "n": len(ms)}


def _versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "unknown"

    def deb(pkg: str) -> str:
        return first_line(["dpkg-query", "-W", "-f=${Version}", pkg])

    from importlib import metadata

    def py(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "unknown"

    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {
        "kernel": platform.release(),
        "os": first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "cpu": cpu,
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "pyroute2": py("pyroute2"),
        "python-iptables": py("python-iptables"),
        "containernetworking-plugins": deb("containernetworking-plugins"),
        "iptables": first_line(["iptables-legacy", "--version"]),
        "iproute2": first_line(["ip", "-V"]),
        "cnm git": first_line(["git", "-C", root, "describe", "--always", "--dirty"]),
    }


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        sys.exit("bench_cnm: needs root (it creates network namespaces): sudo ./run bench")
    missing = [p for p in ("bridge", "host-local", "portmap") if not os.access(os.path.join(CNI_DIR, p), os.X_OK)]
    if missing:
        sys.exit(
            f"bench_cnm: CNI plugins {missing} missing from {CNI_DIR}: apt-get install containernetworking-plugins"
        )
    for tool in ("ip", "iptables-legacy-restore", "nsenter"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_cnm: {tool} not found on PATH")


def run(args: argparse.Namespace, log: IO[str]) -> dict[str, Any]:
    """The whole benchmark: setup, per-container, scaling, memory, breakdown; then cleanup."""
    from cnm.kernel import netns, netns_dirs

    tag = args.prefix + secrets.token_hex(3)
    workdir = tempfile.mkdtemp(prefix=f"{tag}-")
    hosts = {impl: f"{netns.NETNS_RUN_DIR}/{tag}-{impl}-host" for impl in IMPLS}
    workers: dict[str, Worker] = {}
    try:
        for impl, path in hosts.items():
            netns.create(path)
            workers[impl] = Worker(impl, path, tag, workdir)
        for w in workers.values():
            w.call(op="setup")
        return _measure(args, workers, log)
    finally:
        for w in workers.values():
            w.stop()
        for name in os.listdir(netns.NETNS_RUN_DIR):
            if name.startswith(tag + "-"):
                netns.remove(os.path.join(netns.NETNS_RUN_DIR, name))
        for impl in CNM_BACKENDS:
            directory = os.path.join(workdir, f"{impl}-state", "netns")
            with contextlib.suppress(FileNotFoundError):  # cnm's sandboxes, should a worker have died
                for name in os.listdir(directory):
                    netns.remove(os.path.join(directory, name))
            netns_dirs.release_directory(directory)
        shutil.rmtree(workdir, ignore_errors=True)


def _rows_for(impl: str) -> list[tuple[str, str]]:
    """(row, DEL mode) pairs an implementation's worker serves."""
    return [("floor", "veth"), ("floor-unmount", "unmount")] if impl == "floor" else [(impl, "veth")]


def _measure(args: argparse.Namespace, workers: dict[str, Worker], log: IO[str]) -> dict[str, Any]:
    next_id = dict.fromkeys(IMPLS, 0)

    def new_id(impl: str) -> int:
        next_id[impl] += 1
        return next_id[impl]

    # 0. Every implementation really works: ping and DNAT with real packets, then gone.
    for impl, w in workers.items():
        i = new_id(impl)
        w.call(op="add", i=i)
        w.call(op="verify", i=i)
        w.call(op="del", i=i, mode="veth")
    print("verified: every implementation pings its gateway and forwards its published port", file=log)

    # 1. Per-container ADD and DEL, interleaved, the order rotating each round.
    adds: dict[str, list[float]] = {row: [] for row in ROWS}
    dels: dict[str, list[float]] = {row: [] for row in ROWS}
    jobs = [(impl, row, mode) for impl in IMPLS for row, mode in _rows_for(impl)]
    for n in range(args.n):
        for impl, row, mode in jobs[n % len(jobs) :] + jobs[: n % len(jobs)]:
            i = new_id(impl)
            time.sleep(SETTLE)
            adds[row].append(workers[impl].call(op="add", i=i)["seconds"])
            time.sleep(SETTLE)
            dels[row].append(workers[impl].call(op="del", i=i, mode=mode)["seconds"])
    per_container = {row: {"add": _stats(adds[row]), "del": _stats(dels[row])} for row in ROWS}
    print(f"per-container: {args.n} rounds done", file=log)

    # 2. Scaling on one network: the k-th container's ADD and DEL, with k-1 already there.
    scaling: dict[str, dict[str, dict[str, float]]] = {row: {} for row in ROWS}
    present = 0
    for k in sorted(args.k):
        while present < k - 1:
            for impl, w in workers.items():
                w.call(op="add", i=new_id(impl))
            present += 1
        samples: dict[str, tuple[list[float], list[float]]] = {row: ([], []) for row in ROWS}
        for _ in range(args.reps):
            for impl, row, mode in jobs:
                i = new_id(impl)
                time.sleep(SETTLE)
                samples[row][0].append(workers[impl].call(op="add", i=i)["seconds"])
                time.sleep(SETTLE)
                samples[row][1].append(workers[impl].call(op="del", i=i, mode=mode)["seconds"])
        for row, (a, d) in samples.items():
            scaling[row][str(k)] = {"add": statistics.median(a) * 1000, "del": statistics.median(d) * 1000}
        print(f"scaling: k={k} done", file=log)

    # 3. cnm's resident memory with max(k) endpoints, on each firewall backend.
    while present < max(args.k):
        for impl in CNM_BACKENDS:
            workers[impl].call(op="add", i=new_id(impl))
        present += 1
    memory = _memory(workers, present)
    # 4. cnm's per-step breakdown (instrumented, so a separate pass), at max(k) endpoints present.
    breakdown = {impl: _breakdown(args, workers[impl], present, new_id) for impl in CNM_BACKENDS}
    return {"per_container": per_container, "scaling": scaling, "memory": memory, "breakdown": breakdown}


def _memory(workers: dict[str, Worker], present: int) -> dict[str, Any]:
    """VmRSS of each cnm worker, with ``present`` endpoints."""
    memory = {}
    for impl in CNM_BACKENDS:
        rss = workers[impl].call(op="rss")
        memory[impl] = {
            "endpoints": present,
            "vmrss_kb": rss["now"]["VmRSS"],
            "vmhwm_kb": rss["now"]["VmHWM"],
            "baseline_kb": rss["baseline"]["VmRSS"],
            "after_controller_kb": rss["after_setup"]["VmRSS"],
        }
    return memory


def _breakdown(args: argparse.Namespace, worker: Worker, present: int, new_id: Callable[[str], int]) -> dict[str, Any]:
    """cnm's per-step breakdown: an instrumented pass of its own, with ``present`` containers there."""
    worker.call(op="instrument")
    breakdown: dict[str, Any] = {}
    for what in ("add", "del"):
        breakdown[what] = {"steps": defaultdict(lambda: [0.0, 0]), "total": 0.0}
    for _ in range(args.profile_n):
        i = new_id(worker.impl)
        for what in ("add", "del"):
            answer = worker.call(op="profile", what=what, i=i)
            breakdown[what]["total"] += answer["seconds"]
            for step, (seconds, calls) in answer["steps"].items():
                breakdown[what]["steps"][step][0] += seconds
                breakdown[what]["steps"][step][1] += calls
    for what in ("add", "del"):
        b = breakdown[what]
        total = b["total"]
        steps = {
            name: {"ms": s * 1000 / args.profile_n, "calls": c / args.profile_n} for name, (s, c) in b["steps"].items()
        }
        steps["other (Python glue between the steps)"] = {
            "ms": (total - sum(s for name, (s, _) in b["steps"].items() if not name.startswith(OVERLAPPED)))
            * 1000
            / args.profile_n,
            "calls": 0.0,
        }
        breakdown[what] = {
            "total_ms": total * 1000 / args.profile_n,
            "containers_present": present,
            "steps": dict(sorted(steps.items(), key=lambda kv: -kv[1]["ms"])),
        }
    return breakdown


def _ratios(result: dict[str, Any]) -> dict[str, float]:
    pc, sc = result["per_container"], result["scaling"]
    cnm_add, cnm_del = pc["cnm"]["add"]["median"], pc["cnm"]["del"]["median"]
    ks = sorted(int(k) for k in sc["cnm"])
    out = {
        "add cnm/CNI": cnm_add / pc["cni"]["add"]["median"],
        "del cnm/CNI": cnm_del / pc["cni"]["del"]["median"],
        "add cnm/floor": cnm_add / pc["floor"]["add"]["median"],
        "del cnm/floor (veth delete)": cnm_del / pc["floor"]["del"]["median"],
        "del cnm/floor-unmount": cnm_del / pc["floor-unmount"]["del"]["median"],
        "add cnm-nft/cnm (nftables / iptables backend)": pc["cnm-nft"]["add"]["median"] / cnm_add,
        "del cnm-nft/cnm (nftables / iptables backend)": pc["cnm-nft"]["del"]["median"] / cnm_del,
    }
    for row in ROWS:
        first, last = sc[row][str(ks[0])], sc[row][str(ks[-1])]
        out[f"{row} add k={ks[-1]}/k={ks[0]}"] = last["add"] / first["add"]
    return out


def render(result: dict[str, Any]) -> str:
    """The tables, as Markdown."""
    pc, sc, mem, ratios = result["per_container"], result["scaling"], result["memory"], result["ratios"]
    lines = ["| who | ADD median | min | max | DEL median | min | max |", "|---|---|---|---|---|---|---|"]
    labels = {
        "cnm": "cnm, iptables backend (sandbox + endpoint + join + 1 port)",
        "cnm-nft": "cnm, nftables backend (the same)",
        "cni": "CNI bridge + host-local + portmap (iptables-legacy)",
        "floor": "floor: ip -batch + iptables-legacy-restore, DEL deletes the veth",
        "floor-unmount": "floor, DEL only unmounts the netns",
    }
    for row in ROWS:
        a, d = pc[row]["add"], pc[row]["del"]
        lines.append(
            f"| {labels[row]} | {a['median']:.1f} ms | {a['min']:.1f} | {a['max']:.1f} "
            f"| {d['median']:.1f} ms | {d['min']:.1f} | {d['max']:.1f} |"
        )
    ks = sorted(sc["cnm"], key=int)
    lines += [
        "",
        "| k-th container (median ms) | " + " | ".join(f"k={k} ADD / DEL" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    for row in ROWS:
        lines.append(
            f"| {row} | " + " | ".join(f"{sc[row][k]['add']:.1f} / {sc[row][k]['del']:.1f}" for k in ks) + " |"
        )
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in ratios.items()]
    for impl, m in mem.items():
        lines += [
            "",
            f"{impl} worker VmRSS with {m['endpoints']} endpoints: {m['vmrss_kb'] / 1024:.1f} MB "
            f"(peak {m['vmhwm_kb'] / 1024:.1f} MB; {m['baseline_kb'] / 1024:.1f} MB after imports, "
            f"{m['after_controller_kb'] / 1024:.1f} MB with the Controller and its network)",
        ]
    for impl, what in ((impl, what) for impl in result["breakdown"] for what in ("add", "del")):
        b = result["breakdown"][impl][what]
        lines += [
            "",
            f"{impl} ({CNM_BACKENDS[impl]}) {what.upper()} per step, {b['total_ms']:.1f} ms instrumented, "
            f"{b['containers_present']} containers present (exclusive ms per container, calls):",
            "",
            "| step | ms | calls |",
            "|---|---|---|",
        ]
        lines += [f"| {name} | {s['ms']:.2f} | {s['calls']:g} |" for name, s in b["steps"].items()]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=50, help="containers for the per-container figures (default 50)")
    parser.add_argument(
        "-k", type=int, nargs="+", default=list(DEFAULT_KS), help="scaling points (default %(default)s)"
    )
    parser.add_argument("--reps", type=int, default=3, help="ADD/DEL samples of the k-th container at each k")
    parser.add_argument("--profile-n", type=int, default=10, help="containers timed step by step for the breakdown")
    parser.add_argument("--quick", action="store_true", help=f"N=5, k={QUICK_KS}, 2 reps, 3 profiled (for CI)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    parser.add_argument(
        "--prefix", default="cnmbench-", help="name prefix of every namespace made (default %(default)s)"
    )
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--host-netns", help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.k, args.reps, args.profile_n = 5, list(QUICK_KS), 2, 3
    if args.n < 1 or args.reps < 1 or args.profile_n < 1 or min(args.k) < 1:
        parser.error("-n, -k, --reps and --profile-n must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the benchmark, or (with --worker) one implementation's worker."""
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.host_netns, args.tag, args.workdir)
    _check_prerequisites()
    # SIGTERM ends the run through the cleanup in run()'s finally.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = datetime.datetime.now(datetime.UTC)
    result = run(args, sys.stderr)
    result["ratios"] = _ratios(result)
    result["meta"] = {
        "date": started.isoformat(timespec="seconds"),
        "wall_seconds": round((datetime.datetime.now(datetime.UTC) - started).total_seconds(), 1),
        "n": args.n,
        "k": sorted(args.k),
        "reps": args.reps,
        "profile_n": args.profile_n,
        "machine": platform.node(),
        "versions": _versions(),
    }
    return report.emit(render(result), result, args.json)


if __name__ == "__main__":
    sys.exit(main())
