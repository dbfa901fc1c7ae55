"""The operations' steps, in order, and undo on a failure at every one of them: no root, in milliseconds.

Each operation runs on a controller of in-memory parts (cnm.testing.fakes). An observer sees
every named step; a second observer makes the Nth step fail (an observer's exception is the
step's own), and the test checks that nothing the operation made is left: no record, no
allocation, no namespace, file or interface, nothing in the driver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cnm import PortBinding
from cnm.controller import Controller
from cnm.errors import CNMError
from cnm.testing.fakes import FakeWorld, fake_controller

# Loopback only: the fake controller's host is this process's own namespace, whose host ports it briefly holds.
PORTS = [PortBinding(container_port=80, host_ip="127.0.0.1")]


class Recorder:
    """Every step seen, as ``operation: step``."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def step_started(self, operation: str, step: str) -> None:
        self.seen.append(f"{operation}: {step}")

    def step_finished(self, operation: str, step: str, seconds: float) -> None:
        pass

    def step_failed(self, operation: str, step: str, error: BaseException) -> None:
        pass


class Injected(CNMError):
    """The failure the tests inject."""


class FailAt(Recorder):
    """Fails the ``at``-th step that is not an undo (counting from 1), once."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.count = 0

    def step_started(self, operation: str, step: str) -> None:
        super().step_started(operation, step)
        if step.startswith("undo "):
            return
        self.count += 1
        if self.count == self.at:
            raise Injected(f"injected at {operation}: {step}")


_OPEN: list[FakeWorld] = []


@pytest.fixture(autouse=True)
def _close_worlds() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().controller.close()  # releases the host ports it holds


def world(tmp_path: Path, observer: Recorder | None = None) -> FakeWorld:
    w = fake_controller(str(tmp_path / "state"), observer=observer)
    _OPEN.append(w)
    return w


def _steps(seen: list[str]) -> list[str]:
    return [s for s in seen if ": undo " not in s]


# --- what each case sets up before the operation (not observed) and the operation itself -----------
def setup_network(ctl: Controller) -> None:
    ctl.create_network("n1", driver="fake")


def setup_joined(ctl: Controller) -> None:
    setup_network(ctl)
    ep = ctl.network("n1").create_endpoint("e1", ports=PORTS)
    ep.join(ctl.create_sandbox("s1"))


def setup_two_on_n1(ctl: Controller) -> None:
    setup_network(ctl)
    ctl.create_sandbox("a", network="n1")
    ctl.create_sandbox("b", network="n1")


CASES: dict[str, tuple[Callable[[Controller], None], Callable[[Controller], object]]] = {
    "create_network": (lambda ctl: None, lambda ctl: ctl.create_network("n1", driver="fake")),
    "create_endpoint": (setup_network, lambda ctl: ctl.network("n1").create_endpoint("e1", ports=PORTS)),
    "create_sandbox": (lambda ctl: None, lambda ctl: ctl.create_sandbox("s1")),
    "create_sandbox_on_network": (
        setup_network,
        lambda ctl: ctl.create_sandbox("s1", network="n1", ports=PORTS),
    ),
    "join": (
        lambda ctl: (
            setup_network(ctl),
            ctl.network("n1").create_endpoint("e1", ports=PORTS),
            ctl.create_sandbox("s1"),
        ),
        lambda ctl: ctl.network("n1").endpoint("e1").join(ctl.sandbox("s1")),
    ),
    "link": (setup_two_on_n1, lambda ctl: ctl.sandbox("a").link("b", "db")),
}


def snapshot(w: FakeWorld) -> tuple[object, ...]:
    """What the world holds: records, allocations, OS objects, driver objects, firewall calls aside."""
    ctl = w.controller
    networks = sorted((n.name, tuple(sorted(e.name for e in n.endpoints()))) for n in ctl.networks())
    sandboxes = sorted(
        (s.name, tuple(e.name for e in s.endpoints()), tuple(lk.alias for lk in s.links())) for s in ctl.sandboxes()
    )
    rt = ctl._rt
    pools = sorted((p.id, tuple(sorted(map(str, rt.ipam.allocated(p.id))))) for p in rt.ipam.pools())
    return (
        networks,
        sandboxes,
        pools,
        sorted(rt.ports.held()),
        sorted(w.os.namespaces),
        sorted(w.os.directories),
        sorted(w.os.files),
        {ns: sorted(ifs) for ns, ifs in w.os.interfaces.items()},
        dict(w.os.default_routes),
        sorted(w.driver.networks),
        sorted(w.driver.endpoints),
        sorted(w.driver.published),
    )


def shape(w: FakeWorld) -> tuple[object, ...]:
    """:func:`snapshot` without ids and paths, to compare two worlds."""
    ctl = w.controller
    networks = sorted((n.name, tuple(sorted(e.name for e in n.endpoints()))) for n in ctl.networks())
    sandboxes = sorted(
        (s.name, tuple(e.name for e in s.endpoints()), tuple(lk.alias for lk in s.links())) for s in ctl.sandboxes()
    )
    rt = ctl._rt
    return (
        networks,
        sandboxes,
        sorted(len(rt.ipam.allocated(p.id)) for p in rt.ipam.pools()),
        len(rt.ports.held()),
        len(w.os.namespaces),
        len(w.os.directories),
        sorted(f.rsplit("/", 1)[1] for f in w.os.files),
        sorted(sorted(ifs) for ifs in w.os.interfaces.values()),
        len(w.os.default_routes),
        len(w.driver.networks),
        len(w.driver.endpoints),
        len(w.driver.published),
    )


def test_join_runs_its_steps_in_order(tmp_path: Path) -> None:
    recorder = Recorder()
    w = world(tmp_path, recorder)
    setup, _ = CASES["join"]
    setup(w.controller)
    recorder.seen.clear()
    CASES["join"][1](w.controller)
    join = [s.split(": ", 1)[1] for s in recorder.seen if s.startswith("join endpoint e1")]
    # Publishing runs in a helper thread beside the interface's set-up: either may finish first.
    assert sorted(join[2:4]) == ["configure interface", "publish ports"]
    assert join[:2] + join[4:] == [
        "record join",
        "driver join",
        "record joined",
        "default route",
        "hosts file",
        "names",
    ]
    calls = w.os.names()
    assert calls.index("add_interface") < calls.index("configure_interface") < calls.index("set_default_route")
    assert [c.name for c in w.driver.calls][-2:] in (["join", "publish_ports"], ["publish_ports", "join"])


def test_create_sandbox_on_a_network_is_one_operation_of_named_steps(tmp_path: Path) -> None:
    recorder = Recorder()
    w = world(tmp_path, recorder)
    setup_network(w.controller)
    recorder.seen.clear()
    w.controller.create_sandbox("s1", network="n1", ports=PORTS)
    outer = [s.split(": ", 1)[1] for s in recorder.seen if s.startswith("create sandbox s1 on network n1")]
    assert outer == ["create the sandbox", "create its endpoint", "join", "mark it ready"]
    inner = [s.split(": ", 1)[1] for s in recorder.seen if s.startswith("create sandbox s1: ")]
    assert inner == ["record", "namespace", "files directory", "files"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_failure_at_any_step_leaves_nothing_behind(tmp_path: Path, case: str) -> None:
    setup, operation = CASES[case]
    # How many steps does the operation have?
    recorder = Recorder()
    w = world(tmp_path / "count", recorder)
    setup(w.controller)
    recorder.seen.clear()
    operation(w.controller)
    total = len(_steps(recorder.seen))
    assert total >= 3, recorder.seen
    for at in range(1, total + 1):
        fail = FailAt(0)
        w = world(tmp_path / f"at{at}", fail)
        setup(w.controller)
        before = snapshot(w)
        fail.at, fail.count = at, 0
        with pytest.raises(Injected):
            operation(w.controller)
        assert snapshot(w) == before, f"{case}: a failure at step {at} ({_steps(fail.seen)[-1]}) left something"
        assert not w.controller.reconcile(), f"{case}: reconcile still found work after a failure at step {at}"


TEARDOWNS: dict[str, tuple[Callable[[Controller], None], Callable[[Controller], object]]] = {
    "leave": (setup_joined, lambda ctl: ctl.network("n1").endpoint("e1").leave()),
    "delete_endpoint": (setup_joined, lambda ctl: ctl.network("n1").endpoint("e1").delete()),
    "delete_sandbox": (setup_joined, lambda ctl: ctl.sandbox("s1").delete()),
    "delete_sandbox_on_network": (
        lambda ctl: (setup_network(ctl), ctl.create_sandbox("s1", network="n1", ports=PORTS)),
        lambda ctl: ctl.sandbox("s1").delete(),
    ),
    "unlink": (
        lambda ctl: (setup_two_on_n1(ctl), ctl.sandbox("a").link("b", "db")),
        lambda ctl: ctl.sandbox("a").unlink("db"),
    ),
    "delete_network": (setup_network, lambda ctl: ctl.network("n1").delete()),
}


@pytest.mark.parametrize("case", sorted(TEARDOWNS))
def test_a_failure_at_any_teardown_step_is_finished_by_a_retry_or_reconcile(tmp_path: Path, case: str) -> None:
    setup, operation = TEARDOWNS[case]
    recorder = Recorder()
    w = world(tmp_path / "count", recorder)
    setup(w.controller)
    recorder.seen.clear()
    operation(w.controller)
    done = shape(w)
    total = len(_steps(recorder.seen))
    assert total >= 2, recorder.seen
    for at in range(1, total + 1):
        fail = FailAt(0)
        w = world(tmp_path / f"at{at}", fail)
        setup(w.controller)
        fail.at, fail.count = at, 0
        with pytest.raises(CNMError):
            operation(w.controller)
        fail.at = 0  # no more failures
        w.controller.reconcile()
        # Reconcile finishes what it can tell was interrupted; running the operation again finishes the rest.
        if shape(w) != done:
            operation(w.controller)
        assert shape(w) == done, f"{case}: a failure at step {at} ({_steps(fail.seen)[-1]}) was not repaired"
        assert not w.controller.reconcile()
