"""A real Docker 20.10 engine in a throwaway host namespace, and cnm's plugin serving it.

As /work/shared/reference/docker/README.md describes it: dockerd and its own
containerd run inside a namespace made for them (``ip netns exec``), with data
root, exec root, sockets and logs under a temp dir. The launcher runs in a
mount namespace of its own (``ip netns exec`` makes one) where it mounts the
cgroup v1 hierarchies again (the fresh /sys drops them) and puts tmpfs over
/run and /etc/docker, so nothing the engine writes there (its key.json, plugin
specs, shim sockets) reaches the machine; the plugin is found through the spec
file ``/etc/docker/plugins/cnm-bridge.spec`` in that tmpfs. The only trace
outside the temp dir is the engine's cgroup directories, removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cnm.kernel.netns import NetNS
from cnm.plugin import PluginClient
from cnm.testing.hosts import Outside, link_outside, throwaway_namespaces

DOCKER = "/usr/bin/docker"  # the Debian CLI (20.10), not any other docker on PATH
IMAGE = "cnmbusybox:latest"
PLUGIN = "cnm-bridge"

_LAUNCHER = r"""
set -eu
DK=$1
mount -t tmpfs cnm-cgroups /sys/fs/cgroup
for s in cpu cpuacct cpuset memory devices freezer blkio pids; do
    mkdir -p /sys/fs/cgroup/$s && mount -t cgroup -o $s cgroup /sys/fs/cgroup/$s
done
mkdir -p /sys/fs/cgroup/systemd && mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
mount -t tmpfs cnm-run /run
mkdir -p /run/docker/plugins /run/containerd
mount -t tmpfs cnm-etc-docker /etc/docker
mkdir -p /etc/docker/plugins
echo "unix://$DK/cnm-bridge.sock" >/etc/docker/plugins/cnm-bridge.spec
containerd --config "$DK/ctd/config.toml" >"$DK/containerd.log" 2>&1 &
echo $! >"$DK/containerd.pid"
for i in $(seq 100); do [ -S "$DK/ctd/containerd.sock" ] && break; sleep 0.1; done
exec dockerd --config-file "$DK/daemon.json" --data-root "$DK/data" --exec-root "$DK/exec" \
    --pidfile "$DK/docker.pid" -H "unix://$DK/docker.sock" --containerd "$DK/ctd/containerd.sock" \
    --iptables=true --cgroup-parent "/$2" --debug >"$DK/dockerd.log" 2>&1
"""

_CONTAINERD = """version = 2
root = "{dk}/ctd/root"
state = "{dk}/ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{dk}/ctd/containerd.sock"
[ttrpc]
  address = "{dk}/ctd/containerd.sock.ttrpc"
[debug]
  address = "{dk}/ctd/debug.sock"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{dk}/ctd/opt"
"""


def unavailable() -> str | None:
    """Why a Docker engine cannot run here, or None."""
    if os.geteuid() != 0:
        return "a Docker engine needs root"
    missing = [p for p in (DOCKER, "/usr/sbin/dockerd", "/usr/bin/containerd", "/bin/busybox") if not os.path.exists(p)]
    if missing:
        return f"missing {', '.join(missing)}: install docker.io and busybox-static (./run setup does)"
    if not os.path.isdir("/sys/fs/cgroup/memory"):
        return "the engine set-up here needs the cgroup v1 hierarchies (/sys/fs/cgroup/memory)"
    return None


class Engine:
    """A running dockerd with cnm's plugin, in host namespace ``host`` linked to ``outside``."""

    def __init__(self, root: Path, host: NetNS, outside: Outside) -> None:
        self.root = root
        self.host = host
        self.outside = outside
        self.cgroup = "cnmdk-" + secrets.token_hex(4)
        self.plugin: subprocess.Popen[str] | None = None
        self._dockerd: subprocess.Popen[bytes] | None = None

    # --- the engine -----------------------------------------------------------------------
    def start(self) -> None:
        """Start containerd and dockerd (again, after :meth:`stop_engine`); import the image the first time."""
        dk = self.root
        first = not (dk / "ctd").exists()
        (dk / "ctd").mkdir(parents=True, exist_ok=True)
        (dk / "ctd" / "config.toml").write_text(_CONTAINERD.format(dk=dk))
        (dk / "daemon.json").write_text('{"storage-driver": "overlay2", "shutdown-timeout": 1}\n')
        (dk / "launch.sh").write_text(_LAUNCHER)
        self._dockerd = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                os.path.basename(self.host.path),
                "sh",
                str(dk / "launch.sh"),
                str(dk),
                self.cgroup,
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while self.docker("version", check=False).returncode != 0:
            if self._dockerd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start: {self.log()[-3000:]}")
            time.sleep(0.2)
        if first:
            self._import_image()

    def _import_image(self) -> None:
        rootfs = self.root / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        for d in ("etc", "tmp", "proc", "sys", "dev", "www"):
            (rootfs / d).mkdir()
        shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
        applets = subprocess.run(["/bin/busybox", "--list"], check=True, capture_output=True, text=True).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / "www" / "index.html").write_text("hello from cnm\n")
        tar = self.root / "rootfs.tar"
        with tarfile.open(tar, "w") as t:
            t.add(rootfs, arcname=".")
        with tar.open("rb") as f:
            self.docker("import", "-", IMAGE, stdin=f)

    def docker(self, *argv: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this engine."""
        result = subprocess.run(
            [DOCKER, "-H", f"unix://{self.root}/docker.sock", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def log(self) -> str:
        """The engine's log."""
        with contextlib.suppress(FileNotFoundError):
            return (self.root / "dockerd.log").read_text()
        return ""

    # --- the plugin --------------------------------------------------------------------------
    def start_plugin(self) -> None:
        """Start ``cnm plugin serve`` for this engine; return once it listens."""
        argv = [sys.executable, "-m", "cnm.cli", "--state-dir", str(self.root / "cnm"), "--host-netns", self.host.path]
        argv += ["--firewall", "nftables", "plugin", "serve", "--driver", "bridge", "--ipam"]
        argv += ["--socket", str(self.root / f"{PLUGIN}.sock")]
        self.plugin = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        assert self.plugin.stderr is not None
        line = self.plugin.stderr.readline()
        assert "serving NetworkDriver, IpamDriver" in line, line + self.plugin.stderr.read()

    def kill_plugin(self) -> None:
        """SIGKILL the plugin, as a crash would."""
        assert self.plugin is not None
        self.plugin.kill()
        self.plugin.wait()
        if self.plugin.stderr is not None:
            self.plugin.stderr.close()
        self.plugin = None

    def plugin_client(self) -> PluginClient:
        """A protocol client of the plugin."""
        return PluginClient(str(self.root / f"{PLUGIN}.sock"))

    # --- the end ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop everything started, by PID, and remove the engine's cgroup directories."""
        if self._dockerd is not None and self._dockerd.poll() is None:
            with contextlib.suppress(subprocess.CalledProcessError, AssertionError, subprocess.TimeoutExpired):
                ids = self.docker("ps", "-aq", check=False).stdout.split()
                if ids:
                    self.docker("rm", "-f", *ids, check=False)
        self.stop_engine()
        if self.plugin is not None:
            self.plugin.terminate()
            self.plugin.wait(timeout=10)
            if self.plugin.stderr is not None:
                self.plugin.stderr.close()
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            top = hierarchy / self.cgroup
            if top.is_dir():
                for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        d.rmdir()
                with contextlib.suppress(OSError):
                    top.rmdir()

    def stop_engine(self) -> None:
        """Stop dockerd (as systemd would: SIGTERM; it stops its containers) and then containerd, by PID."""
        if self._dockerd is not None and self._dockerd.poll() is None:
            self._dockerd.send_signal(signal.SIGTERM)
            try:
                self._dockerd.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._dockerd.kill()
                self._dockerd.wait()
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            pid_file = self.root / "containerd.pid"
            pid = int(pid_file.read_text())
            pid_file.unlink()  # a second stop must not signal a recycled PID
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not _alive(pid):
                    return
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: containerd is orphaned when dockerd exits, and may stay a zombie for a while."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def running_engine(root: Path) -> Iterator[Engine]:
    """A Docker engine in a throwaway host namespace, an outside namespace, and cnm's plugin."""
    with throwaway_namespaces("cnmdk-") as make:
        host = make("host")
        engine = Engine(root, host, link_outside(host, make("out")))
        try:
            engine.start_plugin()
            engine.start()
            yield engine
        finally:
            engine.stop()
