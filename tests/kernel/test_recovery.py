"""Crash safety: kills at every step and at random, a simulated reboot, a flushed firewall.

A child process (forked from the test, so no start-up cost) drives a
Controller on a shared state_dir and is killed with SIGKILL; a new
Controller then reconciles, and the invariants must hold: no leaked link,
namespace, rule or allocation, and every store row matches the kernel.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cnm import Controller, IPAMConfig, PortBinding, errors
from cnm._core import records as rec
from cnm.firewall.nftables import NftablesFirewall
from cnm.kernel import links
from cnm.kernel.netns import NetNS
from cnm.testing.hosts import Outside, firewall_rules, flush_firewall, iptables_save, nft_state, settled
from cnm.testing.traffic import ping, probe, serve

pytestmark = pytest.mark.kernel

KILLS = int(os.environ.get("CNM_FAULT_KILLS", "96"))
"""Kills across the random fault-injection cases (the step-by-step cases add about 150 more);
raise it for a longer local run, e.g. CNM_FAULT_KILLS=2000."""
SEEDS = 8

_OWN_LINK = re.compile(r"^(cnm0|cnm-[0-9a-f]{11}|cnm[0-9a-f]{12})$")


def check_invariants(ctl: Controller) -> None:
    """The store and the kernel agree, and nothing is held twice or leaked (bridge networks)."""
    rt = ctl._rt
    networks = rt.state.list(rec.NetworkRecord)
    endpoints = rt.state.list(rec.EndpointRecord)
    bridge_ids = {n.id for n in networks if n.driver == "bridge"}
    # Links: exactly the bridges of the networks and the veths of joined endpoints.
    expected = {str(n.options.get("bridge_name") or "cnm-" + n.id[:11]) for n in networks if n.id in bridge_ids}
    expected |= {"cnm" + e.id[:12] for e in endpoints if e.sandbox_id and e.network_id in bridge_ids}

    def own_links() -> set[str]:
        with ctl.host_netns.netlink() as nl:
            return {link.name for link in links.list_links(nl) if _OWN_LINK.match(link.name)}

    # A deleted sandbox's veth goes with its namespace, which the kernel destroys moments later.
    present = settled(own_links, lambda found: found == expected)
    assert present == expected, f"links differ from the store: extra {present - expected}, missing {expected - present}"
    check_common_invariants(ctl)


def check_common_invariants(ctl: Controller) -> None:
    """What holds whatever the drivers: settled records, namespaces, interfaces, allocations, rules."""
    rt = ctl._rt
    networks = rt.state.list(rec.NetworkRecord)
    endpoints = rt.state.list(rec.EndpointRecord)
    sandboxes = rt.state.list(rec.SandboxRecord)
    assert all(r.status == rec.READY for r in networks + endpoints), "an operation was left in flight"
    assert all(s.status in (rec.READY, "dead") for s in sandboxes)
    owners = {s.id for s in sandboxes}
    assert all(e.owner_sandbox_id in owners for e in endpoints if e.owner_sandbox_id), "an owned endpoint outlived"
    # Sandbox namespaces: one live mount per live sandbox, nothing else.
    netns_dir = os.path.join(ctl.state_dir, "netns")
    files = set(os.listdir(netns_dir)) if os.path.isdir(netns_dir) else set()
    assert files == {os.path.basename(s.netns_path) for s in sandboxes}
    for s in sandboxes:
        assert NetNS(s.netns_path).exists() == (s.status == rec.READY)
    for e in endpoints:
        if e.sandbox_id:
            sandbox = rt.state.get(rec.SandboxRecord, e.sandbox_id)
            with NetNS(sandbox.netns_path).netlink() as nl:
                assert links.get_link(nl, e.ifname or "") is not None, f"{e.name} has no {e.ifname} in its sandbox"
    # Addresses and ports: held once, by someone who exists.
    addresses = [e.address for e in endpoints if e.address]
    assert len(addresses) == len(set(addresses))
    for n in networks:
        if n.pool_id:
            owned = {ipaddress.ip_address(a) for a in (n.gateway, *n.aux_addresses.values()) if a}
            owned |= {ipaddress.IPv4Interface(e.address).ip for e in endpoints if e.network_id == n.id and e.address}
            assert set(rt.ipam.allocated(n.pool_id)) == owned
    assert set(rt.ports.held().values()) <= {e.id for e in endpoints}

    # Rules: exactly what the store describes (re-applying changes nothing), DNAT only to live addresses.
    # The backend's own rules (the nftables ruleset only for that backend: reading it costs a process).
    def saved() -> str:
        text = iptables_save(ctl.host_netns)
        return text + nft_state(ctl.host_netns) if isinstance(ctl.firewall, NftablesFirewall) else text

    rules = saved()
    ctl.reapply_firewall()
    assert saved() == rules, "rules differ from what the store describes"
    live = {ipaddress.IPv4Interface(e.address).ip for e in endpoints if e.address and e.sandbox_id}
    # iptables DNATs, and nftables DNAT map elements ("tcp", port) -> address.
    targets = re.findall(r"--to-destination ([0-9.]+):", rules)
    targets += re.findall(r'\[\{"concat": \[[^]]*"(?:tcp|udp)", \d+\]\}, "(\d+\.\d+\.\d+\.\d+)"\]', rules)
    for target in targets:
        assert ipaddress.ip_address(target) in live, f"DNAT to {target}, which no joined endpoint has"


class KillSwitch:
    """A step observer (``Controller(observer=...)``) that kills the process after the ``at``-th finished step.

    It sees every named step of the core's operations (records, namespaces, interfaces,
    routes, files, published ports) and of the drivers' (bridges, veths, OVSDB rows,
    firewall rules), which pass the controller's observer to their own steps; killing
    after each in turn is a kill between every pair of them.
    """

    def __init__(self, at: int) -> None:
        self.at = at
        self.count = 0
        self.steps: list[str] = []

    def step_started(self, operation: str, step: str) -> None:
        """Nothing: the kill comes once a step is done."""

    def step_finished(self, operation: str, step: str, seconds: float) -> None:
        """Count the step; kill the process at the chosen one."""
        self.count += 1
        self.steps.append(f"{operation}: {step}")
        if self.count == self.at:
            os.kill(os.getpid(), signal.SIGKILL)

    def step_failed(self, operation: str, step: str, error: BaseException) -> None:
        """Nothing: a failing step is the operation's business."""


def clear(ctl: Controller, network: str) -> None:
    """Delete every sandbox, then every endpoint of ``network``."""
    for sb in ctl.sandboxes():
        sb.delete()
    for ep in ctl.network(network).endpoints():
        ep.delete()


def run_child(work: Callable[[], None], *, kill_at: int = 0, kill_after: float = 0.0) -> bool:
    """Run ``work`` in a forked child; True if it finished, False if it was killed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            work()
        except BaseException:  # noqa: BLE001 - report through the exit code
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    if kill_after:
        deadline = time.monotonic() + kill_after
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.002)
        else:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    else:
        _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return False
    assert os.WEXITSTATUS(status) == 0, "the child's operations failed (see its traceback above)"
    return True


def reopen(state: str, host: NetNS, firewall: str = "iptables") -> Controller:
    return Controller(state_dir=state, host_netns=host, firewall=firewall)


def scenario_create_join(ctl: Controller) -> None:
    net = ctl.network("n1")
    sb = ctl.create_sandbox("s1")
    ep = net.create_endpoint(
        "e1", ports=[PortBinding(container_port=80), PortBinding(container_port=53, protocol="udp")]
    )
    ep.join(sb)
    ctl.create_sandbox("s2", network="n1", ports=[PortBinding(container_port=80, host_port=8080)])


def scenario_teardown(ctl: Controller) -> None:
    ctl.network("n1").endpoint("e1").leave()
    ctl.network("n1").endpoint("e1").delete()
    ctl.sandbox("s2").delete()
    ctl.sandbox("s1").delete()
    ctl.create_network("n2", ipam=IPAMConfig(subnet="10.12.0.0/24"), options={"icc": False})
    ctl.network("n2").delete()


def scenario_compound(ctl: Controller) -> None:
    ctl.create_sandbox("c1", network="n1", ports=[PortBinding(container_port=80, host_port=8081)], links=[("t1", "db")])


def check_compound(ctl: Controller) -> None:
    """The compound ``create_sandbox("c1", ...)`` is all there and working, or not there at all."""
    held = ctl._rt.ports.held()
    names = {s.name for s in ctl.sandboxes()}
    if "c1" in names:
        c1 = ctl.sandbox("c1")
        assert c1._record.status == rec.READY
        assert [(e.name, e.ifname) for e in c1.endpoints()] == [("c1", "eth0")]
        assert [int(str(p.host_port)) for p in c1.endpoints()[0].ports] == [8081]
        assert [lk.alias for lk in c1.links()] == ["db"]
        assert ping(c1, "db")
    else:
        assert "c1" not in {e.name for e in ctl.network("n1").endpoints()}, "the killed call left its endpoint"
        assert not any("/8081/" in key for key in held), "the killed call left its host port"
    assert not ctl.reconcile(), "a second reconcile still found something to repair"


SCENARIOS: dict[str, Callable[[Controller], None]] = {
    "create_join": scenario_create_join,
    "teardown": scenario_teardown,
    "compound": scenario_compound,
}


# A kill and a reconcile at every step pair is minutes of work on a busy 2-core machine; the
# suite-wide 120 s timeout is a hang guard, and this test's own is the same guard scaled to it.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("firewall", ["iptables", "nftables"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_kill_between_every_pair_of_steps(host_netns: NetNS, tmp_path: Path, scenario: str, firewall: str) -> None:
    state = str(tmp_path / "state")
    with reopen(state, host_netns, firewall) as ctl:
        ctl.create_network("n1", ipam=IPAMConfig(subnet="10.11.0.0/24"))
    kill_at = 1
    while True:
        with reopen(state, host_netns, firewall) as ctl:
            check_invariants(ctl)
            if scenario == "compound":
                check_compound(ctl)
            # Bring the state back to the scenario's start before each kill.
            clear(ctl, "n1")
            with contextlib.suppress(errors.NetworkNotFound):
                ctl.network("n2").delete()
            if scenario == "teardown":
                scenario_create_join(ctl)
            if scenario == "compound":
                ctl.create_sandbox("t1", network="n1")
        switch = KillSwitch(kill_at)

        def work(switch: KillSwitch = switch) -> None:
            with Controller(
                state_dir=state, host_netns=host_netns, reconcile=False, firewall=firewall, observer=switch
            ) as child:
                SCENARIOS[scenario](child)

        finished = run_child(work)
        if finished:
            break
        kill_at += 1
        assert kill_at < 400, "the scenario never finished"
    with reopen(state, host_netns, firewall) as ctl:
        check_invariants(ctl)
        if scenario == "compound":
            check_compound(ctl)
            assert "c1" in {s.name for s in ctl.sandboxes()}
        clear(ctl, "n1")
        ctl.network("n1").delete()
        check_invariants(ctl)
    print(f"{scenario}: killed at each of {kill_at - 1} steps")
    assert kill_at > 20, f"only {kill_at} kill points: the step hooks are not reached"


def random_operations(ctl: Controller, rng: random.Random, count: int) -> None:
    for _ in range(count):
        choice = rng.randrange(6)
        name = f"x{rng.randrange(6)}"
        with contextlib.suppress(errors.CNMError):
            if choice == 0:
                ports = [
                    PortBinding(container_port=rng.choice([80, 443])),
                    PortBinding(container_port=53, protocol="udp"),
                ]
                ctl.create_sandbox(name, network="rnd", ports=ports[: rng.randrange(3)])
            elif choice == 1:
                ctl.sandbox(name).delete()
            elif choice == 2:
                ctl.network("rnd").create_endpoint(name, ports=[PortBinding(container_port=22)])
            elif choice == 3:
                ctl.network("rnd").endpoint(name).join(ctl.create_sandbox(name + "b"))
            elif choice == 4:
                ctl.network("rnd").endpoint(name).leave()
            else:
                ctl.network("rnd").endpoint(name).delete()
                with contextlib.suppress(errors.CNMError):
                    ctl.sandbox(name + "b").delete()


@pytest.mark.parametrize("seed", range(SEEDS))
def test_random_kills_then_reconcile(host_netns: NetNS, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    state = str(tmp_path / "state")
    with reopen(state, host_netns) as ctl:
        ctl.create_network("rnd", ipam=IPAMConfig(subnet="10.13.0.0/24"))
    kills = 0
    for _ in range(KILLS // SEEDS):
        ops_seed = rng.randrange(1 << 30)
        delay = rng.uniform(0.005, 0.25)

        def work(ops_seed: int = ops_seed) -> None:
            with Controller(state_dir=state, host_netns=host_netns, reconcile=False) as child:
                random_operations(child, random.Random(ops_seed), 40)

        if not run_child(work, kill_after=delay):
            kills += 1
        with reopen(state, host_netns) as ctl:
            check_invariants(ctl)
    assert kills >= (KILLS // SEEDS) // 2, f"only {kills} kills happened; the delays are too long"
    with reopen(state, host_netns) as ctl:
        clear(ctl, "rnd")
        ctl.network("rnd").delete()
        check_invariants(ctl)


def test_reboot_restores_networks(
    host_netns: NetNS,
    outside: Outside,
    tmp_path: Path,
    processes: Callable[[subprocess.Popen[Any]], Any],
    firewall_backend: str,
) -> None:
    state = str(tmp_path / "state")
    with reopen(state, host_netns, firewall_backend) as ctl:
        ctl.create_network("boot", ipam=IPAMConfig(subnet="10.14.0.0/24"))
        ctl.create_sandbox("old", network="boot", ports=[PortBinding(container_port=80, host_port=8080)])
        bridge = "cnm-" + ctl.network("boot").id[:11]
    # The "reboot": every cnm link and rule vanishes and the sandbox mounts are gone; the store stays.
    with host_netns.netlink() as nl:
        for name in (bridge, "cnm0"):
            links.delete_link(nl, name)
    flush_firewall(host_netns, firewall_backend)
    for entry in os.listdir(os.path.join(state, "netns")):
        subprocess.run(["umount", os.path.join(state, "netns", entry)], check=True)
    with reopen(state, host_netns, firewall_backend) as ctl:
        assert ctl.sandbox("old")._record.status == "dead"
        a = ctl.create_sandbox("a", network="boot", ports=[PortBinding(container_port=80, host_port=8080)])
        b = ctl.create_sandbox("b", network="boot")
        assert ping(b, str(ctl.network("boot").endpoint("a").ip))
        processes(serve(a, "tcp", 80))
        assert probe(outside, "tcp", str(outside.host_address), 8080) == str(outside.address)
        check_invariants(ctl)
        for s in ctl.sandboxes():
            s.delete()
        ctl.network("boot").delete()


def test_reapply_after_a_flushed_firewall(
    controller: Controller, outside: Outside, processes: Callable[[subprocess.Popen[Any]], Any], firewall_backend: str
) -> None:
    controller.create_network("fl", ipam=IPAMConfig(subnet="10.15.0.0/24"))
    web = controller.create_sandbox("web", network="fl", ports=[PortBinding(container_port=80, host_port=8080)])
    processes(serve(web, "tcp", 80))
    processes(serve(outside, "tcp", 7000))
    before = firewall_rules(controller.host_netns, firewall_backend)
    flush_firewall(controller.host_netns, firewall_backend)
    assert probe(outside, "tcp", str(outside.host_address), 8080, timeout=1) is None
    controller.reapply_firewall()
    assert firewall_rules(controller.host_netns, firewall_backend) == before
    assert probe(outside, "tcp", str(outside.host_address), 8080) == str(outside.address)
    assert probe(web, "tcp", str(outside.address), 7000) == str(outside.host_address)
    web.delete()
    controller.network("fl").delete()


def test_an_owned_endpoint_goes_with_its_sandbox_even_after_a_leave(controller: Controller) -> None:
    net = controller.create_network("own", ipam=IPAMConfig(subnet="10.16.0.0/24"))
    sb = controller.create_sandbox("a", network="own", ports=[PortBinding(container_port=80, host_port=8082)])
    (ep,) = sb.endpoints()
    address = ep.ip
    ep.leave()
    sb.delete()
    assert net.endpoints() == []
    assert controller._rt.ports.held() == {}
    assert address not in set(controller._rt.ipam.allocated(net._record.pool_id or ""))
    assert not controller.reconcile()
    net.delete()


def test_reconcile_deletes_an_owned_endpoint_whose_sandbox_is_gone(controller: Controller) -> None:
    from cnm.kernel import netns

    net = controller.create_network("orph", ipam=IPAMConfig(subnet="10.17.0.0/24"))
    sb = controller.create_sandbox("a", network="orph", ports=[PortBinding(container_port=80, host_port=8083)])
    sb.endpoints()[0].leave()
    # What an older cnm's delete left: the sandbox gone, the endpoint it made still there.
    netns.remove(sb.netns_path)
    controller._rt.state.remove(sb._record)
    report = controller.reconcile()
    assert "deleted endpoint a, whose sandbox is gone" in report.actions
    assert net.endpoints() == []
    assert controller._rt.ports.held() == {}
    net.delete()


def test_a_rejoin_keeps_the_interface_names(controller: Controller) -> None:
    controller.create_network("if1", ipam=IPAMConfig(subnet="10.18.0.0/24"))
    second = controller.create_network("if2", ipam=IPAMConfig(subnet="10.19.0.0/24"))
    sb = controller.create_sandbox("a", network="if1")
    second.create_endpoint("b").join(sb)
    before = {e.name: e.ifname for e in sb.endpoints()}
    assert sorted(before.values()) == ["eth0", "eth1"]
    # The sandbox's interfaces are lost (its namespace kept): reconcile joins both again.
    with sb.netns.netlink() as nl:
        for ifname in before.values():
            links.delete_link(nl, ifname)
    report = controller.reconcile()
    assert len([a for a in report.actions if "joined sandbox a again" in a]) == 2
    assert {e.name: e.ifname for e in sb.endpoints()} == before
    with sb.netns.netlink() as nl:
        assert all(links.get_link(nl, ifname) is not None for ifname in before.values())
    sb.delete()
    for net in controller.networks():
        if net.name in ("if1", "if2"):
            for ep in net.endpoints():
                ep.delete()
            net.delete()
