"""Real etcd servers for tests: one member or a cluster, on free loopback ports, in a temp dir.

Debian's ``etcd-server`` package provides the ``etcd`` binary. Each member is a
child process of the test process, stopped by its PID; its data directory is
under the directory given. Nothing else on the machine is touched: the members
listen on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import attrs

__all__ = ["EtcdCluster", "EtcdMember", "free_port", "start_cluster"]

_START_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@attrs.define
class EtcdMember:
    """One etcd process of a test cluster."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<client port>``."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """The URL the other members reach this one at."""
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, initial_cluster: str, state: str = "new") -> None:
        """Start the process (not waiting for it to serve)."""
        argv = [
            _binary(),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls=http://{self.endpoint}",
            f"--advertise-client-urls=http://{self.endpoint}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={initial_cluster}",
            f"--initial-cluster-state={state}",
            "--initial-cluster-token=cnm-test",
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--logger=zap",
            "--log-level=warn",
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def serving(self) -> bool:
        """Whether this member answers /health as healthy."""
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as resp:
                return b'"true"' in resp.read()
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        """SIGKILL the process (a crash) and reap it."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        """SIGTERM the process, then SIGKILL it if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None


@attrs.define
class EtcdCluster:
    """A running test cluster; stop it with :meth:`stop`."""

    members: list[EtcdMember]

    @property
    def endpoints(self) -> list[str]:
        """Every member's client endpoint."""
        return [member.endpoint for member in self.members]

    def stop(self) -> None:
        """Stop every member."""
        for member in self.members:
            member.stop()


def _binary() -> str:
    found = shutil.which("etcd") or shutil.which("etcd", path="/usr/bin:/usr/sbin")
    if found is None:
        raise FileNotFoundError("etcd is not installed; install Debian's etcd-server (./run setup does)")
    return found


def start_cluster(directory: Path, size: int = 1, names: Sequence[str] = ()) -> EtcdCluster:
    """Start ``size`` members on free loopback ports under ``directory`` and wait until all serve.

    Raises:
        RuntimeError: a member did not serve within a minute (its log is named).
    """
    directory.mkdir(parents=True, exist_ok=True)
    members = [
        EtcdMember(
            name=names[i] if i < len(names) else f"m{i}",
            client_port=free_port(),
            peer_port=free_port(),
            data_dir=directory / f"m{i}",
            log=directory / f"m{i}.log",
        )
        for i in range(size)
    ]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    cluster = EtcdCluster(members)
    for member in members:
        member.start(initial)
    deadline = time.monotonic() + _START_TIMEOUT
    try:
        for member in members:
            while not member.serving():
                if member.process is None or member.process.poll() is not None:
                    raise RuntimeError(f"etcd member {member.name} exited; see {member.log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"etcd member {member.name} did not serve in {_START_TIMEOUT:g}s; see {member.log}"
                    )
                time.sleep(0.05)
    except BaseException:
        cluster.stop()
        raise
    return cluster
