"""The ``cnm`` command as a user runs it: a real process, a throwaway host namespace and state_dir.

Each test drives ``python -m cnm.cli --state-dir <tmp> --host-netns <throwaway>``
(and once the installed console script), parses the JSON output, and checks
exit codes and one-line messages for bad input.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cnm import Controller, PortBinding
from cnm import cli as cnm_cli
from cnm.kernel import netns
from cnm.kernel.netns import NetNS
from cnm.testing import traffic
from cnm.testing.hosts import Outside

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
Cli = Callable[..., subprocess.CompletedProcess[str]]


def _one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert lines, "no error message"
    assert lines[-1].startswith(("cnm: error: ", "usage: cnm", "cnm ")), result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.fixture
def cli(host_netns: NetNS, tmp_path: Path) -> Iterator[Cli]:
    """Run ``cnm`` against the test's host namespace and state_dir; check the exit status given."""
    state_dir = tmp_path / "state"

    def run(*args: str, status: int | None = 0, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "cnm.cli", "--state-dir", str(state_dir), "--host-netns", host_netns.path]
        result = subprocess.run(
            [*argv, *args],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if status is not None:
            assert result.returncode == status, f"cnm {' '.join(args)}: {result.returncode}\n{result.stderr}"
        return result

    yield run
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(state_dir / "netns"):
            netns.remove(str(state_dir / "netns" / name))


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def test_network_commands(cli: Cli) -> None:
    created = cli("network", "create", "net1", "--subnet", "172.28.0.0/16", "-o", "icc=false", "--label", "tier=web")
    net_id = created.stdout.strip()
    assert len(net_id) == 64
    listed = {n["Name"]: n for n in _json(cli("network", "ls", "--format", "json"))}
    assert set(listed) == {"bridge", "host", "none", "net1"}
    assert listed["net1"]["Subnet"] == "172.28.0.0/16"
    assert listed["net1"]["Gateway"] == "172.28.0.1"
    # --format before the subcommand works too; table by default.
    assert _json(cli("--format", "json", "network", "ls"))[0]["Name"] == "bridge"
    [doc] = _json(cli("network", "inspect", "net1", "--format", "json"))
    assert doc["Id"] == net_id
    assert doc["Options"] == {"icc": "false"}
    assert doc["Labels"] == {"tier": "web"}
    assert doc["IPAM"]["Config"] == [{"Subnet": "172.28.0.0/16"}]
    assert "IPAM.Config.0.Subnet" in cli("network", "inspect", "net1").stdout
    # Bad input: refused with the cnm.errors message, exit 1, nothing created.
    overlap = cli("network", "create", "net2", "--subnet", "172.28.5.0/24", status=1)
    _one_line_error(overlap, "overlaps", "pick a subnet")
    bad_cidr = cli("network", "create", "net2", "--subnet", "172.28.5.1/24", status=1)
    _one_line_error(bad_cidr, "did you mean 172.28.5.0/24")
    _one_line_error(cli("network", "rm", "bridge", status=1), "predefined")
    cli("network", "create", "spare", "--subnet", "10.77.0.0/24", "--internal")
    assert cli("network", "prune").stdout.split() == ["Deleted", "Networks:", "net1", "spare"]
    table = cli("network", "ls").stdout.splitlines()
    assert table[0].split()[:3] == ["NETWORK", "ID", "NAME"]
    assert [line.split()[1] for line in table[1:]] == ["bridge", "host", "none"]
    _one_line_error(cli("network", "rm", "net1", status=1), "not found")


def test_sandboxes_run_exec_connect(cli: Cli) -> None:
    cli("network", "create", "net1", "--subnet", "10.78.0.0/24")
    sandbox_id = cli("sandbox", "create", "c1", "--network", "net1", "--hostname", "web1").stdout.strip()
    [box] = _json(cli("sandbox", "ls", "--format", "json"))
    assert box["Id"] == sandbox_id
    assert box["Mode"] == "private"
    assert box["Endpoints"] == [{"Name": "c1", "Network": "net1", "Interface": "eth0", "IPAddress": "10.78.0.2"}]
    [doc] = _json(cli("sandbox", "inspect", "c1", "--format", "json"))
    assert doc["Config"]["Hostname"] == "web1"
    assert doc["NetworkSettings"]["Networks"]["net1"]["IPAddress"] == "10.78.0.2"
    # run: the command's output and status; the sandbox is gone afterwards.
    ping = cli("run", "--name", "c2", "--network", "net1", "--", "ping", "-c1", "-W2", "10.78.0.2")
    assert "64 bytes from 10.78.0.2" in ping.stdout
    assert cli("run", "--network", "net1", "--", "sh", "-c", "exit 7", status=7).returncode == 7
    assert [b["Name"] for b in _json(cli("sandbox", "ls", "--format", "json"))] == ["c1"]
    # exec; connect and disconnect a second network.
    assert cli("exec", "c1", "--", "hostname").stdout.strip() == "web1"
    cli("network", "connect", "bridge", "c1")
    addrs = cli("exec", "c1", "--", "ip", "-o", "-4", "addr").stdout
    assert " eth1 " in addrs
    cli("network", "disconnect", "bridge", "c1")
    assert " eth1 " not in cli("exec", "c1", "--", "ip", "-o", "-4", "addr").stdout
    _one_line_error(cli("network", "disconnect", "bridge", "c1", status=1), "not connected")
    # Modes: none, host, container.
    links = cli("run", "--network", "none", "--", "ip", "-o", "link").stdout.splitlines()
    assert [line.split(":")[1].strip() for line in links] == ["lo"]
    cli("sandbox", "create", "side", "--network", "container:c1")
    assert cli("exec", "side", "--", "hostname").stdout.strip() == "web1"
    _one_line_error(cli("sandbox", "rm", "c1", status=1), "shared by 'side'")
    cli("sandbox", "create", "agent", "--network", "host")
    assert "uplink0" not in cli("exec", "agent", "--", "ip", "-o", "link").stdout
    assert cli("sandbox", "rm", "side", "c1", "agent").stdout.split() == ["side", "c1", "agent"]
    assert _json(cli("sandbox", "ls", "--format", "json")) == []
    cli("network", "rm", "net1")


def test_run_detached_with_a_published_port(cli: Cli, outside: Outside) -> None:
    server = [sys.executable, "-c", traffic._SERVER, "tcp", "80"]
    started = cli("run", "-d", "--name", "web", "-p", "8080:80", "--", *server)
    pid = int(started.stderr.split("started PID ")[1].split()[0])
    try:
        assert started.stdout.strip() == _json(cli("sandbox", "inspect", "web", "--format", "json"))[0]["Id"]
        peer = None
        deadline = time.monotonic() + 10
        while peer is None and time.monotonic() < deadline:
            peer = traffic.probe(outside, "tcp", str(outside.host_address), 8080, timeout=0.5)
        assert peer == str(outside.address)
        [doc] = _json(cli("sandbox", "inspect", "web", "--format", "json"))
        assert doc["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}
        _one_line_error(cli("run", "-p", "8080:80", "--", "true", status=125), "8080")
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    cli("sandbox", "rm", "web")


def test_bad_command_lines_and_exit_codes(cli: Cli, tmp_path: Path) -> None:
    _one_line_error(cli("run", "-p", "80:http", "--", "true", status=2), "invalid port spec '80:http'")
    _one_line_error(cli("run", "--network", "none", status=2), "needs a command to run")
    _one_line_error(cli("sandbox", "create", "x", "--network", "nosuch", status=1), "'nosuch' not found")
    _one_line_error(cli("sandbox", "create", "x", "--hostname", "bad host", status=1), "invalid hostname")
    _one_line_error(cli("run", "--network", "nosuch", "--", "true", status=125), "'nosuch' not found")
    _one_line_error(cli("exec", "nosuch", "--", "true", status=125), "'nosuch' not found")
    _one_line_error(cli("sandbox", "inspect", "nosuch", status=1), "not found")
    # A command that does not exist inside the sandbox: its status, as the shell gives it.
    assert cli("run", "--network", "none", "--", "no-such-program-cnm", status=None).returncode == 127
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnm.cli",
            "--state-dir",
            str(tmp_path / "s2"),
            "--host-netns",
            "/nonexistent/ns",
            "network",
            "ls",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 1
    _one_line_error(missing, "does not exist")
    # --debug: the traceback too.
    debug = cli("--debug", "sandbox", "inspect", "nosuch", status=1)
    assert "Traceback" in debug.stderr


def test_reconcile_and_the_console_script(cli: Cli, host_netns: NetNS, tmp_path: Path) -> None:
    cli("sandbox", "create", "c1", "--network", "bridge")
    [box] = _json(cli("sandbox", "ls", "--format", "json"))
    netns.remove(box["SandboxKey"])  # the namespace vanishes behind cnm's back, as after a reboot
    # `reconcile` opens the store without repairing it first, so it reports what it repairs.
    report = cli("reconcile").stdout
    assert "c1" in report
    assert cli("reconcile").stdout.strip() == "nothing to do"
    script = Path(sys.executable).parent / "cnm"
    assert script.exists(), "the console script is not installed; pip install -e ."
    listed = subprocess.run(
        [str(script), "--state-dir", str(tmp_path / "state"), "--host-netns", host_netns.path, "sandbox", "ls"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert listed.stdout.splitlines()[0].startswith("SANDBOX ID")
    demo = subprocess.run([str(script), "demo", "--list"], capture_output=True, text=True, check=True)
    assert demo.stdout.split()[0] == "bridge"


def test_legacy_links_and_expose(cli: Cli) -> None:
    cli("sandbox", "create", "db", "--network", "bridge", "--expose", "5432")
    out = cli(
        "run", "--network", "bridge", "--link", "db:pg", "--", "sh", "-c", 'echo "$PG_PORT"; grep -w pg /etc/hosts'
    ).stdout.splitlines()
    [db] = _json(cli("sandbox", "ls", "--format", "json"))
    ip = db["Endpoints"][0]["IPAddress"]
    assert out[0] == f"tcp://{ip}:5432"
    assert out[1].split() == [ip, "pg", "db", "db"]
    _one_line_error(cli("run", "--link", "nosuch:x", "--", "true", status=125), "'nosuch' not found")
    cli("sandbox", "rm", "db")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["network", "create"], "the following arguments are required: name"),
        (["run", "-p", "99999:80", "--", "true"], "out of range"),
        (["run", "-p", "1.2.3.4:80:81:82", "--", "true"], "invalid port spec"),
        (["network", "ls", "--format", "xml"], "invalid choice: 'xml'"),
        (["network", "create", "n", "-o", "icc"], "use KEY=VALUE"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2_before_anything_opens(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cnm_cli.main(args)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_cli_parses_ports_with_the_public_parser() -> None:
    args = cnm_cli.build_parser().parse_args(["run", "-p", "127.0.0.1:8080:80/udp", "-p", "80", "--", "true"])
    assert args.publish == [PortBinding.parse("127.0.0.1:8080:80/udp"), PortBinding(container_port=80)]


def test_an_endpoint_left_by_connect_then_sandbox_rm_is_removable(cli: Cli, host_netns: NetNS, tmp_path: Path) -> None:
    cli("network", "create", "net1", "--subnet", "10.79.0.0/24")
    # `sandbox rm` removes the endpoint `network connect` made for it, as `docker rm` does.
    cli("sandbox", "create", "c1")
    cli("network", "connect", "net1", "c1")
    cli("sandbox", "rm", "c1")
    assert _json(cli("endpoint", "ls", "net1", "--format", "json")) == []
    # An endpoint whose sandbox went behind the CLI's back (here: deleted through the
    # library, which keeps endpoints it did not make): `network disconnect` by the sandbox's name.
    cli("sandbox", "create", "c2")
    cli("network", "connect", "net1", "c2")
    _strand(host_netns, tmp_path, "c2")
    [left] = _json(cli("endpoint", "ls", "net1", "--format", "json"))
    assert (left["Name"], left["Sandbox"]) == ("c2", None)
    cli("network", "disconnect", "net1", "c2")
    # And `endpoint rm`, for any endpoint, joined or not.
    cli("sandbox", "create", "c3")
    cli("network", "connect", "net1", "c3")
    _strand(host_netns, tmp_path, "c3")
    refused = cli("network", "rm", "net1", status=1)
    _one_line_error(refused, "still has endpoints c3", "cnm endpoint rm NETWORK ENDPOINT")
    assert "delete them first" not in refused.stderr
    assert cli("endpoint", "rm", "net1", "c3").stdout.split() == ["c3"]
    cli("sandbox", "create", "c4", "--network", "net1")
    assert cli("endpoint", "rm", "net1", "c4").stdout.split() == ["c4"]  # leaves the sandbox first
    assert _json(cli("sandbox", "ls", "--format", "json"))[0]["Endpoints"] == []
    _one_line_error(cli("endpoint", "rm", "net1", "nosuch", status=1), "'nosuch' not found", "cnm endpoint ls")
    _one_line_error(cli("network", "disconnect", "net1", "nosuch", status=1), "not connected")
    cli("sandbox", "rm", "c4")
    cli("network", "rm", "net1")


def _strand(host_netns: NetNS, tmp_path: Path, name: str) -> None:
    """Delete sandbox ``name`` through the library, as another program would: its connected endpoints stay."""
    with Controller(state_dir=str(tmp_path / "state"), host_netns=host_netns.path) as ctl:
        ctl.sandbox(name).delete()


def test_connect_with_links_and_aliases(cli: Cli) -> None:
    cli("network", "create", "net1", "--subnet", "10.80.0.0/24")
    cli("sandbox", "create", "db", "--network", "net1", "--expose", "5432")
    cli("sandbox", "create", "app")
    cli("network", "connect", "net1", "app", "--link", "db:pg")
    db_ip = next(b for b in _json(cli("sandbox", "ls", "--format", "json")) if b["Name"] == "db")["Endpoints"][0]
    out = cli("exec", "app", "--", "sh", "-c", 'echo "$PG_PORT"; grep -w pg /etc/hosts').stdout.splitlines()
    assert out[0] == f"tcp://{db_ip['IPAddress']}:5432"
    assert out[1].split() == [db_ip["IPAddress"], "pg", "db", "db"]
    # A link that cannot be made undoes the whole connect: no endpoint, no half link.
    cli("network", "disconnect", "net1", "app")
    _one_line_error(cli("network", "connect", "net1", "app", "--link", "nosuch:x", status=1), "'nosuch' not found")
    assert [e["Name"] for e in _json(cli("endpoint", "ls", "net1", "--format", "json"))] == ["db"]
    # A network-scoped alias: resolved by the others on the network (docs/dns.md).
    cli("network", "connect", "net1", "app", "--alias", "web")
    app_ip = next(e for e in _json(cli("endpoint", "ls", "net1", "--format", "json")) if e["Name"] == "app")
    assert cli("exec", "db", "--", "getent", "hosts", "web").stdout.split() == [app_ip["IPAddress"], "web"]
    run = cli("run", "--network", "net1", "--network-alias", "job", "--", "getent", "hosts", "job", "app")
    assert run.stdout.split()[1::2] == ["job", "app"]
    cli("sandbox", "rm", "app", "db")
    cli("network", "rm", "net1")


def test_exec_detached_and_with_environment(cli: Cli, tmp_path: Path) -> None:
    cli("sandbox", "create", "c1", "--network", "none")
    out = cli("exec", "-e", "GREETING=hello", "-e", "EMPTY=", "c1", "--", "sh", "-c", 'echo "$GREETING:${EMPTY-unset}"')
    assert out.stdout.strip() == "hello:"
    # -d: started in the background, its PID printed; it runs in the sandbox's namespace.
    seen = tmp_path / "seen"
    script = f'echo "$$ $(readlink /proc/self/ns/net) $MARK" > {seen}.tmp; mv {seen}.tmp {seen}; exec sleep 30'
    started = cli("exec", "-d", "-e", "MARK=detached", "c1", "--", "sh", "-c", script)
    pid = int(started.stdout.strip())
    try:
        deadline = time.monotonic() + 10
        while not seen.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        [box] = _json(cli("sandbox", "ls", "--format", "json"))
        inode = os.stat(box["SandboxKey"]).st_ino
        assert seen.read_text().split() == [str(pid), f"net:[{inode}]", "detached"]
    finally:
        os.kill(pid, signal.SIGTERM)
    _one_line_error(cli("exec", "-e", "NOEQUALS", "c1", "--", "true", status=2), "use KEY=VALUE")
    cli("sandbox", "rm", "c1")


def test_output_cut_short_by_head_ends_quietly(cli: Cli, host_netns: NetNS, tmp_path: Path) -> None:
    cli("network", "create", "n0", "--subnet", "10.81.0.0/24")
    argv = [sys.executable, "-m", "cnm.cli", "--state-dir", str(tmp_path / "state"), "--host-netns", host_netns.path]
    # About 600 kB, far more than the pipe buffer and head's read: the writer is still writing
    # when head has gone, whatever the scheduling, so it meets the closed pipe every time.
    refs = ["n0"] * 1000
    assert len(cli("network", "inspect", *refs).stdout) > 500_000
    script = f"{subprocess.list2cmdline([*argv, 'network', 'inspect', *refs])} | head -1"
    piped = subprocess.run(
        ["bash", "-o", "pipefail", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert piped.stdout.split() == ["KEY", "VALUE"]
    assert piped.stderr == ""
    assert piped.returncode == cnm_cli.EXIT_BROKEN_PIPE
    cli("network", "rm", "n0")


def test_errors_name_cli_commands_not_python_calls(cli: Cli) -> None:
    _one_line_error(cli("network", "inspect", "nosuch", status=1), "see `cnm network ls`")
    _one_line_error(cli("sandbox", "rm", "nosuch", status=1), "see `cnm sandbox ls`")
    assert "Controller." not in cli("network", "connect", "nosuch", "x", status=1).stderr


def test_a_library_warning_is_silent_without_logging_configured() -> None:
    program = (
        "import logging, cnm, cnm_drivers; "
        "logging.getLogger('cnm.reconcile').warning('cnm-warned'); "
        "logging.getLogger('cnm_drivers.bridge').warning('driver-warned')"
    )
    ran = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=REPO)
    assert ran.stderr == ""


def test_debug_shows_cnm_steps_not_netlink_dumps(cli: Cli) -> None:
    debug = cli("--debug", "network", "create", "n1", "--subnet", "10.82.0.0/24").stderr
    assert "cnm." in debug
    assert "pyroute2" not in debug
    cli("network", "rm", "n1")
