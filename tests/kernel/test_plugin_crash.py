"""The plugin SIGKILLed before and after every step of Docker's calls; a restarted plugin and Docker's retries finish.

A forked child serves cnm's bridge driver (the handlers, as the server calls
them) and kills itself at the N-th step it sees, for N = 1, 2, ... until the
scenario completes unharmed. After each kill the parent opens the plugin again
on the same state (which reconciles) and replays the whole scenario as dockerd
would retry it; every call must succeed, and at the end nothing of the network
may be left in the host namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from cnm.kernel.netns import NetNS
from cnm.plugin import Plugin, open_plugin

pytestmark = pytest.mark.kernel

NETWORK = "7e" * 32
ENDPOINT = "e7" * 32
IDS = {"NetworkID": NETWORK, "EndpointID": ENDPOINT}
PORTS = {
    "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}],
    "com.docker.network.portmap": [
        {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8090, "HostPortEnd": 8090}
    ],
}
SCENARIO: list[tuple[str, dict[str, object]]] = [
    (
        "NetworkDriver.CreateNetwork",
        {
            "NetworkID": NETWORK,
            "Options": {"com.docker.network.enable_ipv6": False, "com.docker.network.generic": {}},
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.92.0.0/24", "Gateway": "10.92.0.1/24"}],
            "IPv6Data": [],
        },
    ),
    (
        "NetworkDriver.CreateEndpoint",
        {**IDS, "Interface": {"Address": "10.92.0.2/24", "AddressIPv6": "", "MacAddress": ""}, "Options": PORTS},
    ),
    ("NetworkDriver.Join", {**IDS, "SandboxKey": "/var/run/docker/netns/0123456789ab", "Options": PORTS}),
    ("NetworkDriver.ProgramExternalConnectivity", {**IDS, "Options": PORTS}),
    ("NetworkDriver.RevokeExternalConnectivity", IDS),
    ("NetworkDriver.Leave", IDS),
    ("NetworkDriver.DeleteEndpoint", IDS),
    ("NetworkDriver.DeleteNetwork", {"NetworkID": NETWORK}),
]


class _KillSwitch:
    """Kills the process at the ``at``-th step start or finish it sees."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.count = 0

    def _tick(self) -> None:
        self.count += 1
        if self.count == self.at:
            os.kill(os.getpid(), signal.SIGKILL)

    def step_started(self, operation: str, step: str) -> None:
        self._tick()

    def step_finished(self, operation: str, step: str, seconds: float) -> None:
        self._tick()

    def step_failed(self, operation: str, step: str, error: BaseException) -> None:
        """Nothing to count."""


def _open(state: Path, host: NetNS, observer: _KillSwitch | None = None) -> Plugin:
    return open_plugin(
        "bridge", state_dir=str(state), socket_path=str(state / "p.sock"), host_netns=host, observer=observer
    )


def _play(plugin: Plugin, stop_before: int = len(SCENARIO)) -> None:
    assert plugin.network is not None
    routes = plugin.network.routes()
    for method, body in SCENARIO[:stop_before]:
        reply = routes[method](body)
        assert "Err" not in reply, (method, reply)


def _links(host: NetNS) -> set[str]:
    out = subprocess.run(
        ["ip", "-n", os.path.basename(host.path), "-o", "link", "show"], check=True, capture_output=True, text=True
    )
    return {line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()}


def _child(state: Path, host: NetNS, at: int) -> bool:
    """Play the scenario in a forked child killed at step ``at``; True if it was not killed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            with _open(state, host, _KillSwitch(at)) as plugin:
                _play(plugin)
        except BaseException:  # noqa: BLE001 - reported through the exit code
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return False
    assert os.WEXITSTATUS(status) == 0, "the child's calls failed (see its traceback above)"
    return True


def test_killed_at_every_step(tmp_path: Path, host_netns: NetNS) -> None:
    at = 1
    while True:
        state = tmp_path / f"kill-{at}"
        state.mkdir()
        finished = _child(state, host_netns, at)
        with _open(state, host_netns) as plugin:  # the restart: reconcile, then Docker's retries
            _play(plugin)
        assert _links(host_netns) == {"lo"}, f"killed at step {at}: left {_links(host_netns) - {'lo'}}"
        if finished:
            break
        at += 1
        assert at < 200, "the scenario never finished"
    print(f"plugin killed at each of {at - 1} steps")
    assert at > 20, f"only {at} kill points: the steps are not observed"
