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
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import attrs

__all__ = ["EtcdCluster", "EtcdMember", "EtcdTls", "free_port", "make_tls", "start_cluster"]

_START_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@attrs.frozen
class EtcdTls:
    """A test CA, a certificate for 127.0.0.1 that members serve with, and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_tls(directory: Path) -> EtcdTls:
    """Make a throwaway CA and the server and client certificates it signs (openssl, one day)."""
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=cnm-test-ca",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))  # fmt: skip
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=cnm-test-{name}",
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "1",
                 "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.crt"))  # fmt: skip
    return EtcdTls(
        ca=d / "ca.crt",
        server_cert=d / "server.crt",
        server_key=d / "server.key",
        client_cert=d / "client.crt",
        client_key=d / "client.key",
    )


@attrs.define
class EtcdMember:
    """One etcd process of a test cluster."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    tls: EtcdTls | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<client port>``, or ``https://127.0.0.1:<client port>`` with TLS."""
        return f"{self._scheme}127.0.0.1:{self.client_port}"

    @property
    def _scheme(self) -> str:
        return "https://" if self.tls is not None else ""

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
            f"--listen-client-urls={self._url}",
            f"--advertise-client-urls={self._url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={initial_cluster}",
            f"--initial-cluster-state={state}",
            "--initial-cluster-token=cnm-test",
            "--heartbeat-interval=100",
            "--election-timeout=1000",
            "--logger=zap",
            "--log-level=warn",
        ]
        if self.tls is not None:
            argv += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.ca}",
                "--client-cert-auth",
            ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    @property
    def _url(self) -> str:
        return f"{'https' if self.tls is not None else 'http'}://127.0.0.1:{self.client_port}"

    def serving(self) -> bool:
        """Whether this member answers /health as healthy."""
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        try:
            # Our own member's loopback URL, http or https.
            with urllib.request.urlopen(f"{self._url}/health", timeout=1, context=context) as resp:  # noqa: S310
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


def start_cluster(
    directory: Path, size: int = 1, names: Sequence[str] = (), *, tls: EtcdTls | None = None
) -> EtcdCluster:
    """Start ``size`` members on free loopback ports under ``directory`` and wait until all serve.

    With ``tls``, clients must use https and present the client certificate (peers talk plain HTTP).

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
            tls=tls,
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
