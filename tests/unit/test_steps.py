"""The public step engine: undo on failure, best-effort teardown, observers."""

from __future__ import annotations

import pytest

from cnm.errors import CNMError, InvalidConfig, TeardownIncomplete
from cnm.steps import ObserverGroup, Steps, Teardown


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def step_started(self, operation: str, step: str) -> None:
        self.seen.append(("start", step))

    def step_finished(self, operation: str, step: str, seconds: float) -> None:
        self.seen.append(("done", step))

    def step_failed(self, operation: str, step: str, error: BaseException) -> None:
        self.seen.append(("fail", step))


def test_failure_undoes_finished_steps_newest_first() -> None:
    undone: list[str] = []
    rec = Recorder()

    def operation() -> None:
        with Steps("op", rec) as steps:
            steps.run("a", lambda: 1, undo=lambda: undone.append("a"))
            steps.run("b", lambda: 2, undo=lambda: undone.append("b"))
            steps.run("c", lambda: (_ for _ in ()).throw(InvalidConfig("bad")))

    with pytest.raises(InvalidConfig) as info:
        operation()
    assert undone == ["b", "a"]
    assert "in step 'c' of op" in info.value.__notes__
    assert rec.seen == [
        ("start", "a"), ("done", "a"), ("start", "b"), ("done", "b"), ("start", "c"), ("fail", "c"),
        ("start", "undo b"), ("done", "undo b"), ("start", "undo a"), ("done", "undo a"),
    ]  # fmt: skip


def test_success_forgets_undos_and_returns_results() -> None:
    undone: list[str] = []
    with Steps("op") as steps:
        assert steps.run("a", lambda: 42, undo=lambda: undone.append("a")) == 42
    assert undone == []


def test_failed_undo_is_noted_and_the_rest_still_run() -> None:
    undone: list[str] = []

    def broken() -> None:
        raise OSError("undo broke")

    def operation() -> None:
        with Steps("op") as steps:
            steps.run("a", lambda: None, undo=lambda: undone.append("a"))
            steps.run("b", lambda: None, undo=broken)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError) as info:
        operation()
    assert undone == ["a"]
    assert any("undo broke" in note for note in info.value.__notes__)


def test_teardown_goes_on_and_raises_every_failure_as_a_cnm_error() -> None:
    ran: list[str] = []

    def fail(msg: str) -> None:
        ran.append(msg)
        raise OSError(msg)

    def operation() -> None:
        with Teardown("delete x") as teardown:
            teardown.run("one", lambda: fail("one"))
            assert teardown.run("two", lambda: ran.append("two"))
            teardown.run("three", lambda: fail("three"))

    with pytest.raises(CNMError) as info:
        operation()
    assert ran == ["one", "two", "three"]
    group = info.value
    assert isinstance(group, TeardownIncomplete)
    assert isinstance(group, ExceptionGroup)
    assert group.operation == "delete x"
    assert [str(e) for e in group.exceptions] == ["one", "three"]


def test_teardown_group_keeps_its_class_under_except_star() -> None:
    def operation() -> None:
        try:
            raise TeardownIncomplete("op", [OSError("a"), KeyError("b")])
        except* KeyError:
            pass

    with pytest.raises(TeardownIncomplete):
        operation()


def test_observer_group_and_concurrent_steps() -> None:
    a, b = Recorder(), Recorder()
    with Steps("op", ObserverGroup([a, b])) as steps:
        waiter = steps.concurrently("bg", lambda: None)
        assert waiter.wait() is None
        failing = steps.concurrently("bad", lambda: 1 / 0)
        assert isinstance(failing.wait(), ZeroDivisionError)
    assert a.seen == b.seen
    assert ("done", "bg") in a.seen
    assert ("fail", "bad") in a.seen
