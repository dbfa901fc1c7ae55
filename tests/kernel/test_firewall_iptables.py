"""IptablesFirewall against the real kernel, compared with golden rule dumps.

Each test gets its own throwaway namespace ("host") holding one rule that is
not cnm's (``-A FORWARD -s 10.9.9.9/32 -j ACCEPT``), which every golden file
shows surviving. Set ``CNM_UPDATE_GOLDEN=1`` to rewrite the golden files.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cnm.errors import KernelError
from cnm.firewall.iptables import IptablesFirewall
from cnm.firewallapi import Firewall, FirewallNetwork, LinkRule, NetworkRules
from cnm.kernel.netns import NetNS
from tests.kernel.firewall_cases import NET_A, NET_B, NET_INTERNAL, NET_NOICC, port

pytestmark = pytest.mark.kernel

GOLDEN = Path(__file__).parent / "golden" / "firewall"
OWNER = "0123456789ab"  # a fixed owner id, so that rule tags are stable in the golden files
FOREIGN_RULE = "-A FORWARD -s 10.9.9.9/32 -j ACCEPT"

PORTS_A = (
    port("tcp", "8080", "172.28.0.2", "80"),
    port("udp", "9000-9010", "172.28.0.2", "900-910", host_ip="192.0.2.1"),
    port("tcp", "7000-7002", "172.28.0.3", "70"),
)
PORTS_B = (port("tcp", "8443", "172.29.0.2", "443"),)
LINK = LinkRule(
    source_ip=ipaddress.IPv4Address("172.30.0.3"),
    target_ip=ipaddress.IPv4Address("172.30.0.2"),
    ports=(("tcp", 3306), ("udp", 5432)),
)
PORTS_NOICC = (port("tcp", "8081", "172.30.0.2", "80"),)


def _ipt(ns: NetNS, *args: str) -> str:
    result = subprocess.run(["ip", "netns", "exec", ns.name, *args], capture_output=True, text=True, check=True)
    return result.stdout


def _normalise(text: str) -> str:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return "\n".join(re.sub(r"\s*\[\d+:\d+\]", "", line) for line in lines) + "\n"


def saved(ns: NetNS, *tables: str) -> str:
    """The namespace's legacy rules, normalised: no comments, no counters, order kept."""
    if not tables:
        return _normalise(_ipt(ns, "iptables-legacy-save"))
    return "".join(_normalise(_ipt(ns, "iptables-legacy-save", "-t", table)) for table in tables)


def assert_golden(ns: NetNS, case: str) -> None:
    """Compare the filter, nat and raw tables with ``golden/firewall/<case>.rules``."""
    actual = saved(ns, "filter", "nat", "raw")
    path = GOLDEN / f"{case}.rules"
    if os.environ.get("CNM_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
    assert path.exists(), f"no golden file {path}; run with CNM_UPDATE_GOLDEN=1 to create it"
    assert actual == path.read_text(), f"rules differ from {path}"
    assert FOREIGN_RULE in actual


@pytest.fixture
def host(netns_factory: Callable[[str], NetNS]) -> NetNS:
    """A throwaway "host" namespace with one rule that is not cnm's."""
    ns = netns_factory("fw")
    _ipt(ns, "iptables-legacy", "-A", "FORWARD", "-s", "10.9.9.9", "-j", "ACCEPT")
    return ns


@pytest.fixture
def fw(host: NetNS) -> Iterator[IptablesFirewall]:
    firewall = IptablesFirewall(host, owner=OWNER)
    yield firewall
    firewall.close()


def test_is_a_firewall(fw: IptablesFirewall) -> None:
    assert isinstance(fw, Firewall)


def test_one_network(host: NetNS, fw: IptablesFirewall) -> None:
    fw.setup_network(NET_A)
    assert_golden(host, "one_network")


def test_published_ports(host: NetNS, fw: IptablesFirewall) -> None:
    fw.setup_network(NET_A)
    fw.add_ports(NET_A, PORTS_A)
    assert_golden(host, "published_ports")


def test_a_lost_dnat_accept_comes_back_before_the_networks_drop(host: NetNS, fw: IptablesFirewall) -> None:
    fw.setup_network(NET_A)
    fw.add_ports(NET_A, PORTS_A)
    accept = [line for line in saved(host, "filter").splitlines() if "--ctstate DNAT" in line]
    assert len(accept) == 1
    _ipt(host, "iptables-legacy", *shlex.split(accept[0].replace("-A", "-D", 1)))
    # Appended again, it would follow the DROP and every published port would be dropped.
    fw.setup_network(NET_A)
    assert_golden(host, "published_ports")


def test_icc_false_with_link(host: NetNS, fw: IptablesFirewall) -> None:
    fw.setup_network(NET_NOICC)
    fw.add_ports(NET_NOICC, PORTS_NOICC)
    fw.add_link(NET_NOICC, LINK)
    assert_golden(host, "icc_false_link")


def test_link_on_icc_true_network_adds_nothing(host: NetNS, fw: IptablesFirewall) -> None:
    fw.setup_network(NET_A)
    fw.add_link(NET_A, LINK)
    assert_golden(host, "one_network")


def test_internal_network(host: NetNS, fw: IptablesFirewall) -> None:
    fw.setup_network(NET_INTERNAL)
    fw.add_ports(NET_INTERNAL, PORTS_A)  # an internal network publishes nothing
    assert_golden(host, "internal")


def test_two_networks_are_isolated(host: NetNS, fw: IptablesFirewall) -> None:
    fw.setup_network(NET_A)
    fw.setup_network(NET_B)
    assert_golden(host, "two_networks")


def _build_everything(fw: IptablesFirewall) -> None:
    fw.setup_network(NET_A)
    fw.add_ports(NET_A, PORTS_A)
    fw.setup_network(NET_B)
    fw.add_ports(NET_B, PORTS_B)
    fw.setup_network(NET_NOICC)
    fw.add_ports(NET_NOICC, PORTS_NOICC)
    fw.add_link(NET_NOICC, LINK)
    fw.setup_network(NET_INTERNAL)


EVERYTHING = (
    NetworkRules(network=NET_A, ports=PORTS_A),
    NetworkRules(network=NET_B, ports=PORTS_B),
    NetworkRules(network=NET_NOICC, ports=PORTS_NOICC, links=(LINK,)),
    NetworkRules(network=NET_INTERNAL),
)


def test_teardown_then_cleanup_restores_the_original_tables(host: NetNS, fw: IptablesFirewall) -> None:
    # Saving "-t nat" brings the (empty) nat table into being first, as cnm's first NAT rule will:
    # a legacy table, once instantiated in a namespace, stays listed until the namespace goes.
    before = saved(host, "filter", "nat")
    _build_everything(fw)
    assert_golden(host, "everything")
    for network in (NET_A, NET_B, NET_NOICC, NET_INTERNAL):
        fw.teardown_network(network)
    assert_golden(host, "after_teardown")
    assert "cnm:" not in saved(host)
    removed = fw.cleanup()
    # the shared rules: filter 2 FORWARD jumps, 3 chain tails, 1 stage-1 jump; nat 3 jumps; raw 1 jump, 1 tail
    assert removed == 11
    assert saved(host, "filter", "nat") == before


def test_setup_and_add_are_idempotent(host: NetNS, fw: IptablesFirewall) -> None:
    for _ in range(2):
        fw.setup_network(NET_NOICC)
        fw.add_ports(NET_NOICC, PORTS_NOICC)
        fw.add_link(NET_NOICC, LINK)
    assert_golden(host, "icc_false_link")


def test_remove_is_idempotent(host: NetNS, fw: IptablesFirewall) -> None:
    fw.setup_network(NET_NOICC)
    only_network = saved(host)
    fw.add_ports(NET_NOICC, PORTS_NOICC)
    fw.add_link(NET_NOICC, LINK)
    for _ in range(2):
        fw.remove_ports(NET_NOICC, PORTS_NOICC)
        fw.remove_link(NET_NOICC, LINK)
    assert saved(host) == only_network
    for _ in range(2):
        fw.teardown_network(NET_NOICC)
    assert_golden(host, "after_teardown")


def test_each_port_of_a_sandbox_keeps_its_own_hairpin_rule(host: NetNS, fw: IptablesFirewall) -> None:
    fw.setup_network(NET_A)
    web, admin = port("tcp", "8080", "172.28.0.2", "80"), port("tcp", "8081", "172.28.0.2", "81")
    hairpin = "-A CNM-HAIRPIN-a1a1a1a1a1a1 -s 172.28.0.2/32 -d 172.28.0.2/32 -p tcp -j MASQUERADE"
    fw.add_ports(NET_A, [web, admin])
    fw.add_ports(NET_A, [web])  # already published: nothing added
    assert saved(host, "nat").count(hairpin) == 2
    fw.remove_ports(NET_A, [web])
    fw.remove_ports(NET_A, [web])  # already withdrawn: admin's copy stays
    nat = saved(host, "nat")
    assert nat.count(hairpin) == 1
    assert "--dport 8081 -j DNAT" in nat
    assert "--dport 8080 -j DNAT" not in nat
    fw.remove_ports(NET_A, [admin])
    assert hairpin not in saved(host, "nat")
    assert_golden(host, "one_network")


def test_publishing_changes_only_the_nat_table(host: NetNS, fw: IptablesFirewall) -> None:
    fw.setup_network(NET_A)
    before = saved(host, "filter")
    fw.add_ports(NET_A, PORTS_A)
    assert saved(host, "filter") == before
    fw.remove_ports(NET_A, PORTS_A)
    assert saved(host, "filter") == before


def test_ports_published_before_their_network_land_in_its_chains(host: NetNS, fw: IptablesFirewall) -> None:
    fw.add_ports(NET_A, PORTS_A)  # the chains and the jumps into them come first
    fw.setup_network(NET_A)
    assert_golden(host, "published_ports")


def test_removing_from_a_namespace_cnm_never_used_succeeds(host: NetNS, fw: IptablesFirewall) -> None:
    before = saved(host)  # every table, byte for byte: removing must not even instantiate the nat table
    fw.remove_ports(NET_A, PORTS_A)
    fw.remove_link(NET_NOICC, LINK)
    fw.teardown_network(NET_A)
    assert fw.cleanup() == 0
    assert saved(host) == before


def test_a_block_found_in_part_is_rebuilt_whole(host: NetNS, fw: IptablesFirewall) -> None:
    fw.setup_network(NET_A)
    _ipt(host, "iptables-legacy", "-D", "CNM-FORWARD", "2")  # the conntrack ACCEPT of NET_A
    fw.setup_network(NET_A)
    assert_golden(host, "one_network")


def test_cleanup_keeps_the_networks_it_is_told_to(host: NetNS, fw: IptablesFirewall) -> None:
    fw.setup_network(NET_A)
    fw.add_ports(NET_A, PORTS_A)
    expected = saved(host, "filter", "nat", "raw")
    fw.setup_network(NET_B)
    fw.add_ports(NET_B, PORTS_B)
    # B: filter 4 forward + 2 isolation + 1 DNAT accept + 1 drop; nat 2 masquerade + 2 jumps, and its chains'
    # 2 port rules; raw 1 loopback drop
    assert fw.cleanup(keep=[NET_A.id]) == 15
    assert saved(host, "filter", "nat", "raw") == expected
    assert_golden(host, "published_ports")


def test_reapply_repairs_flushed_tables(host: NetNS, fw: IptablesFirewall) -> None:
    _build_everything(fw)
    _ipt(host, "iptables-legacy", "-F")
    _ipt(host, "iptables-legacy", "-t", "nat", "-F")
    _ipt(host, "iptables-legacy", "-A", "FORWARD", "-s", "10.9.9.9", "-j", "ACCEPT")
    fw.reapply(EVERYTHING)
    assert_golden(host, "everything")


def test_reapply_drops_rules_of_networks_it_does_not_know(host: NetNS, fw: IptablesFirewall) -> None:
    _build_everything(fw)
    stale = FirewallNetwork(id="e5" * 32, interface="br-e5e5e5e5e5e5", subnet=ipaddress.IPv4Network("10.5.0.0/16"))
    fw.setup_network(stale)
    fw.add_ports(stale, (port("tcp", "5555", "10.5.0.2", "55"),))
    fw.reapply(EVERYTHING)
    assert_golden(host, "everything")
    fw.reapply(EVERYTHING)  # and again: nothing moves
    assert_golden(host, "everything")


def test_reapply_nothing_leaves_only_the_shared_rules(host: NetNS, fw: IptablesFirewall) -> None:
    _build_everything(fw)
    fw.reapply(())
    assert_golden(host, "after_teardown")


def test_a_held_lock_times_out_with_a_message_naming_it(host: NetNS, tmp_path: Path) -> None:
    lock = tmp_path / "xtables.lock"
    fw = IptablesFirewall(host, owner=OWNER, lock_path=str(lock), lock_timeout=0.3)
    try:
        with lock.open("w") as held:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX)
            with pytest.raises(KernelError, match=re.escape(str(lock))):
                fw.setup_network(NET_A)
        fw.setup_network(NET_A)  # released: works again
        assert_golden(host, "one_network")
    finally:
        fw.close()


def test_errors_name_the_rule(host: NetNS, fw: IptablesFirewall) -> None:
    bad = FirewallNetwork(id="f6" * 32, interface="x" * 20, subnet=ipaddress.IPv4Network("10.6.0.0/16"))
    with pytest.raises(KernelError, match="CNM-FORWARD"):
        fw.setup_network(bad)  # an interface name longer than IFNAMSIZ is refused by libxtables


def test_one_port_more_or_less_with_a_thousand_published(host: NetNS, fw: IptablesFirewall) -> None:
    # What one port costs at this size is measured by benchmarks/bench_firewall.py, not asserted here.
    fw.setup_network(NET_A)
    ports = [port("tcp", str(10000 + i), f"172.28.{i // 250}.{i % 250 + 2}", "80") for i in range(1000)]
    fw.add_ports(NET_A, ports)
    extra = port("tcp", "20000", "172.28.9.9", "80")
    fw.add_ports(NET_A, [extra])
    assert saved(host, "nat").count("-j DNAT") == 1001
    fw.remove_ports(NET_A, [extra])
    assert saved(host, "nat").count("-j DNAT") == 1000
    assert "--dport 20000" not in saved(host, "nat")


# -- the worker process -------------------------------------------------------------------------------
def _wait_exited(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` is gone or a zombie (killed, not yet reaped by its parent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.01)
    return False


def _worker_pid(fw: IptablesFirewall) -> int:
    pid = fw._worker_pid
    assert pid is not None, "no worker runs"
    return pid


def test_one_worker_serves_every_call(host: NetNS, fw: IptablesFirewall) -> None:
    assert fw._worker_pid is None  # forked lazily, on first use
    fw.setup_network(NET_A)
    pid = _worker_pid(fw)
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(host.path).st_ino  # it lives in the namespace
    fw.add_ports(NET_A, PORTS_A)
    fw.remove_ports(NET_A, PORTS_A)
    fw.add_ports(NET_A, PORTS_A)
    assert _worker_pid(fw) == pid
    assert_golden(host, "published_ports")


def test_a_killed_worker_is_replaced_on_the_next_call(host: NetNS, fw: IptablesFirewall) -> None:
    fw.setup_network(NET_A)
    pid = _worker_pid(fw)
    os.kill(pid, signal.SIGKILL)
    assert _wait_exited(pid)
    fw.add_ports(NET_A, PORTS_A)  # works, from a new worker
    assert _worker_pid(fw) != pid
    assert_golden(host, "published_ports")


def test_a_worker_that_stops_answering_fails_its_call_and_is_replaced(host: NetNS) -> None:
    # Long enough for a new worker's hello on a loaded machine; the wedged one never answers.
    fw = IptablesFirewall(host, owner=OWNER, reply_timeout=3.0)
    try:
        fw.setup_network(NET_A)
        pid = _worker_pid(fw)
        os.kill(pid, signal.SIGSTOP)  # wedged: alive, reading nothing
        with pytest.raises(KernelError, match=r"did not answer within 3 s.*retry it") as failed:
            fw.add_ports(NET_A, PORTS_A)
        assert "publish ports" in str(failed.value)
        assert fw._worker_pid is None
        assert not os.path.exists(f"/proc/{pid}")  # killed and reaped
        fw.add_ports(NET_A, PORTS_A)
        assert_golden(host, "published_ports")
    finally:
        fw.close()


def test_a_worker_that_dies_during_a_call_fails_that_call_only(host: NetNS, tmp_path: Path) -> None:
    lock = tmp_path / "xtables.lock"
    fw = IptablesFirewall(host, owner=OWNER, lock_path=str(lock))
    try:
        fw.setup_network(NET_A)
        pid = _worker_pid(fw)
        with lock.open("w") as held:  # the worker will wait for the lock: kill it while it waits
            fcntl.flock(held.fileno(), fcntl.LOCK_EX)
            threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
            with pytest.raises(KernelError, match=r"died during the call \(it was killed by SIGKILL\).*retry it"):
                fw.add_ports(NET_A, PORTS_A)
        fw.add_ports(NET_A, PORTS_A)
        assert _worker_pid(fw) != pid
        assert_golden(host, "published_ports")
    finally:
        fw.close()


def test_close_ends_the_worker_and_a_later_call_starts_another(host: NetNS, fw: IptablesFirewall) -> None:
    fw.setup_network(NET_A)
    pid = _worker_pid(fw)
    fw.close()
    assert fw._worker_pid is None
    assert not os.path.exists(f"/proc/{pid}")  # ended and reaped by PID
    fw.close()  # twice is fine
    fw.add_ports(NET_A, PORTS_A)
    assert _worker_pid(fw) != pid
    assert_golden(host, "published_ports")


def test_rules_added_by_others_between_calls_are_kept(host: NetNS, fw: IptablesFirewall) -> None:
    fw.setup_network(NET_A)
    _ipt(host, "iptables-legacy", "-A", "FORWARD", "-s", "10.8.8.8", "-j", "ACCEPT")
    _ipt(host, "iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-s", "10.8.8.8", "-j", "MASQUERADE")
    fw.add_ports(NET_A, PORTS_A)  # commits filter and nat: both must have been read afresh
    actual = saved(host, "filter", "nat", "raw")
    assert "-A FORWARD -s 10.8.8.8/32 -j ACCEPT" in actual
    assert "-A POSTROUTING -s 10.8.8.8/32 -j MASQUERADE" in actual
    others = re.compile(r"^-A (FORWARD|POSTROUTING) -s 10\.8\.8\.8/32 -j (ACCEPT|MASQUERADE)\n", re.MULTILINE)
    assert others.sub("", actual) == (GOLDEN / "published_ports.rules").read_text()


def test_a_forked_child_gets_its_own_worker(host: NetNS, fw: IptablesFirewall) -> None:
    fw.setup_network(NET_A)
    parent_worker = _worker_pid(fw)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(read_end)
            fw.add_ports(NET_A, PORTS_A)
            os.write(write_end, f"{fw._worker_pid} {os.getpid()}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as answer:
        child_worker, child = (int(x) for x in answer.read().split())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child == pid
    assert child_worker not in (parent_worker, None)
    assert _wait_exited(child_worker)  # it died with the child that made it
    assert _worker_pid(fw) == parent_worker  # the parent's worker was neither used nor ended by the child
    fw.remove_ports(NET_A, PORTS_A)
    assert _worker_pid(fw) == parent_worker
    assert_golden(host, "one_network")


def test_the_worker_outlives_the_thread_that_first_called(host: NetNS, fw: IptablesFirewall) -> None:
    # PR_SET_PDEATHSIG fires when the thread that forked ends: workers are forked by a long-lived thread.
    thread = threading.Thread(target=fw.setup_network, args=(NET_A,))
    thread.start()
    thread.join()
    pid = _worker_pid(fw)
    time.sleep(0.1)
    fw.add_ports(NET_A, PORTS_A)
    assert _worker_pid(fw) == pid
    assert_golden(host, "published_ports")


def test_calls_from_many_threads_take_turns(host: NetNS, fw: IptablesFirewall) -> None:
    fw.setup_network(NET_A)
    errors: list[BaseException] = []

    def publish(first: int) -> None:
        try:
            for i in range(first, first + 10):
                fw.add_ports(NET_A, [port("tcp", str(30000 + i), "172.28.0.2", "80")])
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(10 * t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert saved(host, "nat").count("-j DNAT") == 40


def test_closing_a_controller_ends_its_firewall_worker(host: NetNS, tmp_path: Path) -> None:
    from cnm import Controller

    with Controller(state_dir=str(tmp_path / "state"), host_netns=host, firewall="iptables") as ctl:
        assert isinstance(ctl.firewall, IptablesFirewall)
        pid = _worker_pid(ctl.firewall)
    assert not os.path.exists(f"/proc/{pid}")
    subprocess.run(["ip", "-n", host.name, "link", "del", "cnm0"], check=False)
