"""Published host ports are held by cnm (issue 18 item 3), and UDP flows follow a port to its new endpoint (item 4).

Every check is made by another program: a process started in the test's host
namespace that tries to bind the port, and UDP clients in an outside
namespace whose datagrams show which sandbox answers.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import Conntrack
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from cnm import Controller, IPAMConfig, PortBinding, errors
from cnm.kernel.netns import NetNS
from cnm.portmapper import _bind
from cnm.testing.hosts import Outside
from cnm.testing.traffic import probe, serve

pytestmark = pytest.mark.kernel

Track = Callable[[subprocess.Popen[Any]], subprocess.Popen[Any]]

# Binds as a typical server does (SO_REUSEADDR, TCP listening) and says whether it could.
_BIND = r"""
import socket, sys
proto, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", port))
    if proto == "tcp":
        s.listen(1)
except OSError as exc:
    print(exc.errno)
    sys.exit(1)
print("bound", flush=True)
if len(sys.argv) > 3:
    sys.stdin.readline()  # keep it until told
"""

# Answers every datagram with its own name.
_NAMED_UDP_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(512)
    s.sendto(sys.argv[2].encode(), peer)
"""

# One flow: the same source port for every datagram; one datagram per input line, one output line each.
_UDP_FLOW = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[3])))
s.settimeout(1.0)
for line in sys.stdin:
    answer = "-"
    for _ in range(3):
        s.sendto(b"hi", (sys.argv[1], int(sys.argv[2])))
        try:
            answer = s.recvfrom(512)[0].decode()
            break
        except OSError:
            continue
    print(answer, flush=True)
"""


def in_host(netns: NetNS, argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(["nsenter", f"--net={netns.path}", "--", *argv], text=True, **kwargs)


def can_bind(netns: NetNS, protocol: str, port: int) -> bool:
    """Whether another program in the host namespace can bind ``port`` right now."""
    proc = in_host(netns, [sys.executable, "-c", _BIND, protocol, str(port)], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    return out.strip() == "bound"


def bindable(netns: NetNS, ports: list[tuple[str, int]]) -> list[bool]:
    return [can_bind(netns, proto, port) for proto, port in ports]


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    return str(tmp_path / "state")


def test_a_published_port_is_held_while_published_and_again_after_a_restart(
    state_dir: str, host_netns: NetNS, outside: Outside, processes: Track
) -> None:
    ports = [("tcp", 18080), ("udp", 15353)]
    bindings = [
        PortBinding(container_port=80, host_port=18080),
        PortBinding(container_port=53, host_port=15353, protocol="udp"),
    ]
    ctl = Controller(state_dir=state_dir, host_netns=host_netns)
    try:
        net = ctl.create_network("held", ipam=IPAMConfig(subnet="172.30.5.0/24"))
        sb = ctl.create_sandbox("web", network="held", ports=bindings)
        assert bindable(host_netns, ports) == [False, False]
        # Held sockets take no traffic: the DNAT still delivers it to the sandbox.
        processes(serve(sb, "tcp", 80))
        processes(serve(sb, "udp", 53))
        assert probe(outside, "tcp", str(outside.host_address), 18080) == str(outside.address)
        assert probe(outside, "udp", str(outside.host_address), 15353) == str(outside.address)

        ctl.close()
        assert bindable(host_netns, ports) == [True, True], "a closed controller holds nothing"
        ctl = Controller(state_dir=state_dir, host_netns=host_netns)
        assert bindable(host_netns, ports) == [False, False], "reopening takes the ports back"

        ep = ctl.network("held").endpoint("web")
        ep.leave()
        assert bindable(host_netns, ports) == [True, True], "free once unpublished"
        ep.join(ctl.sandbox("web"))
        assert bindable(host_netns, ports) == [False, False], "held again when published again"
        ctl.sandbox("web").delete()
        assert bindable(host_netns, ports) == [True, True], "free once the endpoint is deleted"
        net = ctl.network("held")
        net.delete()
    finally:
        ctl.close()


def test_a_port_another_program_holds_is_refused_naming_it(state_dir: str, host_netns: NetNS) -> None:
    with Controller(state_dir=state_dir, host_netns=host_netns) as ctl:
        net = ctl.create_network("busy", ipam=IPAMConfig(subnet="172.30.6.0/24"))
        squatter = in_host(
            host_netns,
            [sys.executable, "-c", _BIND, "tcp", "18081", "hold"],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
        )
        try:
            assert squatter.stdout is not None
            assert squatter.stdout.readline().strip() == "bound"
            with pytest.raises(errors.PortInUse, match=r"18081/tcp .*another program"):
                ctl.create_sandbox("a", network="busy", ports=[PortBinding(container_port=80, host_port=18081)])
            # Allocated while free, bound by another program before the join: the join is refused, and undone.
            ep = net.create_endpoint("b", ports=[PortBinding(container_port=80, host_port=18082)])
            late = in_host(
                host_netns,
                [sys.executable, "-c", _BIND, "tcp", "18082", "hold"],
                stdout=subprocess.PIPE,
                stdin=subprocess.PIPE,
            )
            try:
                assert late.stdout is not None
                assert late.stdout.readline().strip() == "bound"
                sb = ctl.create_sandbox("b")
                with pytest.raises(
                    errors.PortInUse, match=r"18082/tcp on 0\.0\.0\.0 of endpoint 'b' is in use by another program"
                ):
                    ep.join(sb)
                assert ep.sandbox is None
            finally:
                late.communicate("\n", timeout=30)
            ep.join(sb)
            assert not can_bind(host_netns, "tcp", 18082)
            sb.delete()
            ep.delete()
        finally:
            squatter.communicate("\n", timeout=30)
        net.delete()


def test_a_sibling_process_of_the_same_state_dir_is_not_another_program(state_dir: str, host_netns: NetNS) -> None:
    first = Controller(state_dir=state_dir, host_netns=host_netns)
    second: Controller | None = None
    try:
        first.create_network("sib", ipam=IPAMConfig(subnet="172.30.7.0/24"))
        first.create_sandbox("web", network="sib", ports=[PortBinding(container_port=80, host_port=18083)])
        # The second controller's reconcile finds the port bound by a live holder of this state_dir: no error.
        second = Controller(state_dir=state_dir, host_netns=host_netns)
        assert second.reconcile().errors == ()
        assert not can_bind(host_netns, "tcp", 18083)
        first.close()
        assert can_bind(host_netns, "tcp", 18083)
        assert second.reconcile().errors == ()
        assert not can_bind(host_netns, "tcp", 18083), "the sibling takes over once the holder closed"
        second.sandbox("web").delete()
        second.network("sib").delete()
    finally:
        first.close()
        if second is not None:
            second.close()


_PUBLISH_AND_DIE = r"""
import os, sys
from cnm import Controller, IPAMConfig, PortBinding
ctl = Controller(state_dir=sys.argv[1], host_netns=sys.argv[2])
ctl.create_network("crash", ipam=IPAMConfig(subnet="172.30.8.0/24"))
ctl.create_sandbox("web", network="crash", ports=[PortBinding(container_port=80, host_port=18084)])
os._exit(0)  # a crash: nothing closed, the holder records stay
"""


def test_ports_of_a_crashed_process_are_taken_back_on_open(state_dir: str, host_netns: NetNS) -> None:
    subprocess.run([sys.executable, "-c", _PUBLISH_AND_DIE, state_dir, host_netns.name], check=True, timeout=120)
    assert can_bind(host_netns, "tcp", 18084), "the dead process's socket is gone with it"
    with Controller(state_dir=state_dir, host_netns=host_netns) as ctl:
        assert not can_bind(host_netns, "tcp", 18084)
        ctl.sandbox("web").delete()
        ctl.network("crash").delete()


def _udp_entries(netns: NetNS, port: int) -> list[tuple[str, str]]:
    """(original destination, reply source) of the UDP conntrack entries for host port ``port``."""

    def dump() -> list[tuple[str, str]]:
        with Conntrack() as ct:
            return [
                (e.tuple_orig.daddr, e.tuple_reply.saddr)
                for e in ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=socket.IPPROTO_UDP))
                if e.tuple_orig.dport == port
            ]

    return netns.in_thread(dump)


def test_a_udp_flow_follows_its_published_port_to_a_new_endpoint(
    controller: Controller, outside: Outside, processes: Track
) -> None:
    controller.create_network("flow", ipam=IPAMConfig(subnet="172.30.9.0/24"))
    binding = [PortBinding(container_port=53, host_port=15354, protocol="udp")]
    old = controller.create_sandbox("old", network="flow", ports=binding)
    old_ip = str(controller.network("flow").endpoint("old").ip)
    processes(_named_server(old, "old"))
    flow = processes(
        outside.popen(
            [sys.executable, "-c", _UDP_FLOW, str(outside.host_address), "15354", "40001"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    )

    def send() -> str:
        assert flow.stdin is not None
        assert flow.stdout is not None
        flow.stdin.write("\n")
        flow.stdin.flush()
        return str(flow.stdout.readline().strip())

    assert send() == "old"
    assert any(reply == old_ip for _, reply in _udp_entries(controller.host_netns, 15354))
    old.delete()
    assert old_ip not in {reply for _, reply in _udp_entries(controller.host_netns, 15354)}
    # Nothing is published now: the flow's datagrams make an entry for the host itself, which
    # the next publish must forget too.
    assert send() == "-"
    # Another address than the old one's (which the pool would hand out again).
    new_ip = "172.30.9.10"
    new = controller.create_sandbox("new")
    controller.network("flow").create_endpoint("new", ports=binding, ip=new_ip).join(new)
    processes(_named_server(new, "new"))
    assert send() == "new"
    replies = {reply for _, reply in _udp_entries(controller.host_netns, 15354)}
    assert old_ip not in replies
    assert new_ip in replies
    new.delete()
    controller.network("flow").endpoint("new").delete()
    controller.network("flow").delete()


def _named_server(where: Any, name: str) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = where.popen(
        [sys.executable, "-c", _NAMED_UDP_SERVER, "53", name], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_held_socket_takes_no_datagram_and_no_connection(netns_factory: Callable[[str], NetNS]) -> None:
    ns = netns_factory("k")
    subprocess.run(["nsenter", f"--net={ns.path}", "--", "ip", "link", "set", "lo", "up"], check=True)

    def check() -> tuple[bool, bool]:
        udp = _bind("udp", "127.0.0.1", 15356, hold=True)
        tcp = _bind("tcp", "127.0.0.1", 15357, hold=True)
        with udp, tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"x", ("127.0.0.1", 15356))
            try:
                udp.recv(16, socket.MSG_DONTWAIT)
                queued = True
            except BlockingIOError:
                queued = False
            with socket.socket() as caller:
                caller.settimeout(0.5)  # the SYN is dropped: the connect can only time out
                try:
                    caller.connect(("127.0.0.1", 15357))
                    connected = True
                except OSError:
                    connected = False
        return queued, connected

    assert ns.in_thread(check) == (False, False)
