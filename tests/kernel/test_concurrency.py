"""Threads and processes sharing one state_dir: nothing handed out twice, no lost rule, no deadlock."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cnm import Controller, IPAMConfig, PortBinding, errors
from cnm.kernel.netns import NetNS
from cnm.testing.hosts import iptables_save

pytestmark = pytest.mark.kernel

DURATION = 4.0
"""Seconds each worker keeps creating and deleting."""
BOUND = 120.0
"""Every worker must be done within this many seconds (no deadlock)."""


def churn(ctl: Controller, prefix: str, deadline: float) -> int:
    """Create sandboxes with a published port and delete every other one, until the deadline."""
    alive: list[str] = []
    created = 0
    while time.monotonic() < deadline:
        name = f"{prefix}-{created}"
        ctl.create_sandbox(name, network="busy", ports=[PortBinding(container_port=80)])
        alive.append(name)
        created += 1
        if created % 2 == 0:
            ctl.sandbox(alive.pop(0)).delete()
    return created


def test_threads_and_processes_share_a_state_dir(host_netns: NetNS, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    # iptables, recorded in the store, so every later open ("auto") keeps it: the check reads iptables-legacy-save.
    with Controller(state_dir=state, host_netns=host_netns, firewall="iptables") as ctl:
        ctl.create_network("busy", ipam=IPAMConfig(subnet="10.16.0.0/20"))
    start = time.monotonic()
    deadline = start + DURATION
    children = []
    for p in range(4):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 0
            try:
                with Controller(state_dir=state, host_netns=host_netns, reconcile=False) as child:
                    churn(child, f"p{p}", deadline)
            except BaseException:  # noqa: BLE001 - reported through the exit code
                import traceback

                traceback.print_exc()
                code = 1
            os._exit(code)
        children.append(pid)
    errors_seen: list[BaseException] = []
    counts: list[int] = []
    with Controller(state_dir=state, host_netns=host_netns, reconcile=False) as shared:

        def worker(t: int) -> None:
            try:
                counts.append(churn(shared, f"t{t}", deadline))
            except BaseException as exc:  # noqa: BLE001 - checked below
                errors_seen.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=BOUND)
            assert not thread.is_alive(), "a thread did not finish: deadlock?"
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status)
        assert os.WEXITSTATUS(status) == 0, "a child process failed (see its traceback above)"
    assert not errors_seen, errors_seen
    assert time.monotonic() - start < BOUND
    assert sum(counts) >= 8, "the threads made hardly any progress"

    check_and_clean(state, host_netns)


def check_and_clean(state: str, host_netns: NetNS) -> None:
    with Controller(state_dir=state, host_netns=host_netns, reconcile=False) as ctl:
        endpoints = ctl.network("busy").endpoints()
        assert len(endpoints) >= 12
        addresses = [e.ip for e in endpoints]
        ports = [e.ports[0].host_port for e in endpoints]
        assert len(set(addresses)) == len(addresses), "an address was handed out twice"
        assert len(set(ports)) == len(ports), "a host port was handed out twice"
        rules = iptables_save(host_netns)
        for endpoint in endpoints:
            assert f"--to-destination {endpoint.ip}:80" in rules, f"the DNAT rule of {endpoint.name} was lost"
        assert rules.count("-j DNAT") == len(endpoints), "rules of deleted endpoints remain"
        report = ctl.reconcile()
        assert not report, f"reconcile found something to repair:\n{report}"
        # Rebuilding from the store gives the same rules (in store order rather than creation order).
        assert sorted(iptables_save(host_netns).splitlines()) == sorted(rules.splitlines())
        for sb in ctl.sandboxes():
            sb.delete()
        ctl.network("busy").delete()
        with pytest.raises(errors.NetworkNotFound):
            ctl.network("busy")


def test_operations_on_different_networks_do_not_wait_for_each_other(
    controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    controller.create_network("slow", ipam=IPAMConfig(subnet="10.17.0.0/24"))
    controller.create_network("fast", ipam=IPAMConfig(subnet="10.18.0.0/24"))
    driver = controller.registry.get("bridge")
    original = driver.join
    inside, release = threading.Event(), threading.Event()

    def join(network: Any, endpoint: Any, sandbox: Any, ifname: str) -> Any:
        if network.name == "slow":
            inside.set()
            release.wait(60)
        return original(network, endpoint, sandbox, ifname)

    monkeypatch.setattr(driver, "join", join)
    failures: list[BaseException] = []

    def slow() -> None:
        try:
            controller.create_sandbox("held", network="slow")
        except BaseException as exc:  # noqa: BLE001 - checked below
            failures.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        assert inside.wait(30), "the slow join never started"
        # While an operation on "slow" is stopped inside its driver, one on "fast" runs to the end.
        quick = controller.create_sandbox("quick", network="fast", ports=[PortBinding(container_port=80)])
        assert controller.network("fast").endpoint("quick").ip is not None
        assert thread.is_alive(), "the slow operation ended early; the test proves nothing"
        quick.delete()
    finally:
        release.set()
        thread.join(60)
    assert not failures, failures
    controller.sandbox("held").delete()
    for name in ("slow", "fast"):
        controller.network(name).delete()
