"""Private Open vSwitch daemons for tests: one ovsdb-server and ovs-vswitchd per host namespace.

Each :class:`OvsDaemons` has its own database (made with ``ovsdb-tool`` from
the installed schema), run directory, sockets and logs under the test's temp
directory, so several "hosts" can run side by side without reaching the
machine's own Open vSwitch. ovs-vswitchd runs inside the host namespace (it
makes its bridges' netdevs there); both daemons are children of the test
process, run in the foreground and are stopped by PID.

Opt in with ``pytest_plugins = ["cnm.testing.ovs"]``; the fixture is
:func:`ovs_factory`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cnm.errors import KernelError
from cnm.kernel import addresses, links, sysctl
from cnm.kernel.netns import NetNS
from cnm.ovsdb import Ovsdb, PortSpec
from cnm.testing.hosts import stop_process

__all__ = ["SCHEMA", "OvsDaemons", "add_underlay_bridge", "ovs_available", "ovs_factory"]

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
_DAEMONS = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd")


def ovs_available() -> str | None:
    """None if the daemons can run here, else why not (for a skip reason)."""
    missing = [name for name in _DAEMONS if shutil.which(name) is None and not os.path.exists(f"/usr/sbin/{name}")]
    if missing:
        return f"Open vSwitch is not installed ({', '.join(missing)} missing); apt-get install openvswitch-switch"
    if not os.path.exists(SCHEMA):
        return f"the Open vSwitch schema {SCHEMA} is missing; apt-get install openvswitch-common"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing; the userspace datapath needs TUN/TAP"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class OvsDaemons:
    """An ovsdb-server and an ovs-vswitchd serving one host namespace.

    Attributes:
        netns: the namespace ovs-vswitchd runs in.
        directory: database, sockets, pid-less run dir and logs.
        remote: the database socket, as cnm's ``ovsdb`` option takes it.
        db: a client of that database.
    """

    def __init__(self, netns: NetNS, directory: Path) -> None:
        self.netns = netns
        self.directory = directory
        self.remote = f"unix:{directory / 'db.sock'}"
        self.db = Ovsdb(self.remote, timeout=10)
        self._server: subprocess.Popen[bytes] | None = None
        self._switch: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        d = str(self.directory)
        # Without a private OVS_RUNDIR, ovs-vswitchd would put its <bridge>.mgmt sockets in
        # /var/run/openvswitch, shared with every other instance on the machine.
        return {**os.environ, "OVS_RUNDIR": d, "OVS_DBDIR": d, "OVS_LOGDIR": d, "OVS_SYSCONFDIR": d}

    def start(self, timeout: float = 10.0) -> None:
        """Create the database, start both daemons, and return once ovs-vswitchd is connected."""
        self.directory.mkdir(parents=True, exist_ok=True)
        d = self.directory
        db_file = d / "conf.db"
        if not db_file.exists():
            subprocess.run([_binary("ovsdb-tool"), "create", str(db_file), SCHEMA], check=True, capture_output=True)
        self.start_server(timeout)
        self.db.initialise()
        self.start_switch(timeout)

    def start_server(self, timeout: float = 10.0) -> None:
        """Start ovsdb-server on the existing database; return once it answers."""
        d = self.directory
        with contextlib.suppress(FileNotFoundError):
            (d / "db.sock").unlink()
        argv = [
            _binary("ovsdb-server"),
            str(d / "conf.db"),
            "-vconsole:off",  # before --log-file, or "opened log file" lands on stderr
            f"--log-file={d / 'ovsdb-server.log'}",
            f"--remote=punix:{d / 'db.sock'}",
            f"--unixctl={d / 'ovsdb-server.ctl'}",
            "--no-chdir",
        ]
        self._server = subprocess.Popen(argv, env=self._env(), stdin=subprocess.DEVNULL)
        self._wait(lambda: isinstance(self.db.status(), dict), "ovsdb-server to answer", self._server, timeout)

    def start_switch(self, timeout: float = 10.0) -> None:
        """Start ovs-vswitchd inside the host namespace; return once it has written its version."""
        d = self.directory
        argv = [
            "nsenter",
            f"--net={self.netns.path}",
            "--",
            _binary("ovs-vswitchd"),
            self.remote,
            "-vconsole:off",
            f"--log-file={d / 'ovs-vswitchd.log'}",
            f"--unixctl={d / 'ovs-vswitchd.ctl'}",
            "--no-chdir",
        ]
        # nsenter without --fork execs the daemon: the child's PID is ovs-vswitchd's.
        self._switch = subprocess.Popen(argv, env=self._env(), stdin=subprocess.DEVNULL)
        # Ready once it has applied the database as it is now (ovs_version alone may be a
        # previous run's); until then every change would still be ahead of it.
        self._wait(self._synced, "ovs-vswitchd to apply the database", self._switch, timeout)

    def _synced(self) -> bool:
        Ovsdb(self.remote, timeout=0.5).sync()
        return True

    def _wait(self, ready: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"gave up waiting for {what}: it exited with {proc.returncode}; see the logs in {self.directory}"
                )
            with contextlib.suppress(KernelError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}; see the logs in {self.directory}")
            time.sleep(0.02)

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes] | None) -> None:
        if proc is not None:
            stop_process(proc)

    def stop_switch(self) -> None:
        """Stop ovs-vswitchd (by PID); its netdevs stay until the namespace goes."""
        self._stop(self._switch)

    def stop_server(self) -> None:
        """Stop ovsdb-server (by PID)."""
        self._stop(self._server)

    def stop(self) -> None:
        """Stop both daemons."""
        self.stop_switch()
        self.stop_server()


def add_underlay_bridge(
    daemons: OvsDaemons, *, bridge: str, uplink: str, address: ipaddress.IPv4Interface, datapath_type: str = "netdev"
) -> None:
    """Host preparation for tunnels: an OVS bridge with ``uplink`` as a port and the underlay address on it.

    OVS's userspace tunnels route through its own bridges only: the underlay
    address must sit on an OVS bridge's LOCAL port, not on the uplink. The
    uplink stops answering ARP for addresses it does not hold, so that OVS
    learns the peer's bridge MAC and not the uplink's.
    """
    sysctl.set_sysctl(daemons.netns, f"net/ipv4/conf/{uplink}/arp_ignore", "1")
    sysctl.set_sysctl(daemons.netns, f"net/ipv6/conf/{uplink}/disable_ipv6", "1")
    with daemons.netns.netlink() as nl:
        links.set_link(nl, uplink, up=True)
    daemons.db.add_bridge(bridge, datapath_type=datapath_type, external_ids={"cnm-test": "underlay"})
    daemons.db.add_port(bridge, PortSpec(name=uplink, external_ids={"cnm-test": "underlay"}))
    with daemons.netns.netlink() as nl:
        addresses.add_address(nl, bridge, address)
        links.set_link(nl, bridge, up=True)


@pytest.fixture
def ovs_factory(tmp_path: Path) -> Iterator[Callable[[NetNS], OvsDaemons]]:
    """Start private OVS daemons for a host namespace: ``ovs_factory(host_netns)``; all are stopped at teardown."""
    reason = ovs_available()
    if reason is not None:
        pytest.skip(reason)
    started: list[OvsDaemons] = []

    def start(netns: NetNS) -> OvsDaemons:
        daemons = OvsDaemons(netns, tmp_path / f"ovs{len(started)}")
        started.append(daemons)
        daemons.start()
        return daemons

    yield start
    for daemons in reversed(started):
        daemons.stop()
