"""events.py: hooks see every event in order; a raising hook never breaks the others; logging is a hook."""

from __future__ import annotations

import logging

import pytest

from tasklease import events
from tasklease.models import Attempt, Outcome, Task, TaskState

NOW = 1_700_000_000.0


def task(state: TaskState = TaskState.QUEUED, error: str | None = None) -> Task:
    attempts = () if state is TaskState.QUEUED else (Attempt(number=1, worker="w1", started_at=NOW),)
    return Task(
        id="01HZZZZZZZZZZZZZZZZZZZZZZZ", type="t", payload=None, state=state, attempts=attempts, error=error
    )


class Boom:
    def __init__(self) -> None:
        self.calls = 0

    def on_event(self, event: events.Event) -> None:
        self.calls += 1
        raise RuntimeError("hook bug")


def test_hooks_are_called_in_list_order_with_every_event():
    seen: list[tuple[str, str]] = []

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

        def on_event(self, event: events.Event) -> None:
            seen.append((self.name, type(event).__name__))

    hooks = events.Hooks([Named("a"), Named("b")])
    hooks.emit(events.Submitted(at=NOW, component="client", task=task()))
    hooks.emit(events.Assigned(at=NOW, component="scheduler", source="s1", task=task(TaskState.RUNNING)))
    assert seen == [("a", "Submitted"), ("b", "Submitted"), ("a", "Assigned"), ("b", "Assigned")]


def test_a_raising_hook_is_logged_once_per_event_type_and_the_next_hooks_still_run(caplog):
    boom, rec = Boom(), events.RecordingHook()
    hooks = events.Hooks([boom, rec])
    with caplog.at_level(logging.ERROR, logger="tasklease.events"):
        for _ in range(3):
            hooks.emit(events.Submitted(at=NOW, component="client", task=task()))
        hooks.emit(events.WorkerDraining(at=NOW, component="worker", source="w1"))
    assert boom.calls == 4
    assert rec.kinds() == ["Submitted"] * 3 + ["WorkerDraining"]
    raised = [r for r in caplog.records if "hook Boom raised" in r.getMessage()]
    assert len(raised) == 2  # once for Submitted, once for WorkerDraining


def test_default_hooks_are_logging_only_and_none_means_defaults():
    assert [type(h) for h in events.default_hooks()] == [events.LoggingHook]
    assert [type(h) for h in events.as_hooks(None).hooks] == [events.LoggingHook]
    assert events.as_hooks([]).hooks == ()
    mine = events.Hooks([events.RecordingHook()])
    assert events.as_hooks(mine) is mine


def test_logging_hook_writes_the_lines_the_components_wrote_with_their_fields(caplog):
    hook = events.LoggingHook()
    rejected = events.Rejected(
        at=NOW, component="worker", source="w1", task=task(TaskState.SUCCEEDED), attempt=1, worker="w1"
    )
    lost = events.Lost(
        at=NOW,
        component="scheduler",
        source="s1",
        task=task(TaskState.QUEUED),
        attempt=2,
        worker="w9",
        outcome=Outcome.LOST,
    )
    failed = events.Failed(
        at=NOW,
        component="scheduler",
        source="s1",
        task=task(TaskState.FAILED, error="cannot be assigned: big"),
    )
    with caplog.at_level(logging.DEBUG, logger="tasklease"):
        for event in (rejected, lost, failed):
            hook.on_event(event)
    messages = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert messages == [
        (
            "tasklease.worker",
            logging.WARNING,
            "outcome rejected: the assignment was revoked (task cancelled or reassigned)",
        ),
        ("tasklease.scheduler", logging.WARNING, "attempt lost: task queued"),
        ("tasklease.scheduler", logging.ERROR, "task failed: cannot be assigned: big"),
    ]
    first, second, _ = caplog.records
    assert first.__dict__["worker"] == "w1" and first.__dict__["task_id"] == task().id
    assert second.__dict__["scheduler"] == "s1" and second.__dict__["worker"] == "w9"
    assert second.__dict__["attempt"] == 2


def test_logging_hook_skips_formatting_when_the_level_is_off(caplog):
    class Exploding(events.TaskEvent):
        pass

    hook = events.LoggingHook()
    with caplog.at_level(logging.WARNING, logger="tasklease"):
        hook.on_event(events.Submitted(at=NOW, component="client", task=task()))  # debug: off
        hook.on_event(Exploding(at=NOW, component="client", task=task()))  # no line for it
    assert caplog.records == []


def test_recording_hook_filters_by_type_and_task():
    rec = events.RecordingHook()
    a, b = task(), Task(id="01HYYYYYYYYYYYYYYYYYYYYYYY", type="t", payload=None)
    rec.on_event(events.Submitted(at=NOW, component="client", task=a))
    rec.on_event(events.Submitted(at=NOW, component="client", task=b))
    rec.on_event(events.LeaderElected(at=NOW, component="scheduler", source="s", token=3))
    assert len(rec.of(events.Submitted)) == 2
    assert rec.kinds(task_id=b.id) == ["Submitted"]
    assert rec.kinds() == ["Submitted", "Submitted", "LeaderElected"]


@pytest.mark.parametrize(
    "kind",
    [events.Succeeded, events.Failed, events.Retried, events.TimedOut, events.Lost, events.Cancelled],
)
def test_attempt_events_expose_the_recorded_error(kind):
    event = kind(
        at=NOW, component="worker", task=task(TaskState.FAILED, error="bad <b>"), outcome=Outcome.FAILED
    )
    assert event.error == "bad <b>"
    assert event.task_id == task().id


@pytest.mark.parametrize(
    ("outcome", "state", "kind"),
    [
        (Outcome.SUCCEEDED, TaskState.SUCCEEDED, events.Succeeded),
        (Outcome.SUCCEEDED, TaskState.FAILED, events.Failed),  # a result too large to record
        (Outcome.FAILED, TaskState.FAILED, events.Failed),
        (Outcome.FAILED, TaskState.QUEUED, events.Retried),
        (Outcome.FAILED, TaskState.PENDING, events.Retried),
        (Outcome.TIMEOUT, TaskState.PENDING, events.TimedOut),
        (Outcome.TIMEOUT, TaskState.FAILED, events.TimedOut),
        (Outcome.LOST, TaskState.QUEUED, events.Lost),
        (Outcome.CANCELLED, TaskState.CANCELLED, events.Cancelled),
        (Outcome.HANDED_BACK, TaskState.QUEUED, events.HandedBack),
    ],
)
def test_one_mapping_from_an_attempts_end_to_its_event(outcome, state, kind):
    assert events.attempt_ended(outcome, task(state)) is kind
