"""The soak's invariant check (pure): each invariant reports what breaks it."""

from __future__ import annotations

from tasklease.models import Attempt, Outcome, Task, TaskState
from tasklease.soak import SoakReport, check

T0 = 1_800_000_000.0


def _done(task_id: str, started_at: float) -> Task:
    attempt = Attempt(1, "worker-1", started_at, started_at + 0.01, Outcome.SUCCEEDED)
    return Task(
        id=task_id,
        type="noop",
        payload={"i": 1},
        state=TaskState.SUCCEEDED,
        attempts=(attempt,),
        result={"i": 1},
    )


def test_a_delayed_task_started_before_its_time_is_a_violation():
    # Given two delayed tasks: one started after its time, one before it
    on_time = _done("0" * 25 + "1", T0 + 2.0)
    early = _done("0" * 25 + "2", T0 + 0.5)
    report = SoakReport()

    # When the soak checks them
    check([on_time, early], {}, report, due={on_time.id: T0 + 1.0, early.id: T0 + 1.0})

    # Then only the early one is reported
    assert len(report.violations) == 1
    assert early.id in report.violations[0] and "before its time" in report.violations[0]
