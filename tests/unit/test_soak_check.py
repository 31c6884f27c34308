"""The soak's invariant check (pure): each invariant reports what breaks it."""

from __future__ import annotations

from tasklease import soak_workflows
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


def _ran(
    task_id: str,
    task_type: str,
    start: float,
    end: float,
    schedule: str | None = None,
    tick: float | None = None,
) -> Task:
    attempt = Attempt(1, "worker-1", start, end, Outcome.SUCCEEDED)
    return Task(
        id=task_id,
        type=task_type,
        payload={},
        state=TaskState.SUCCEEDED,
        attempts=(attempt,),
        schedule=schedule,
        tick=tick,
    )


def _id(n: int) -> str:
    return f"{n:026d}"


def test_cron_ticks_fired_twice_or_missed_are_violations():
    # Given tick tasks for 10, 11, 11 (twice) and 13 (12 missing)
    tasks = [_ran(_id(i), "noop", T0, T0, schedule="s", tick=T0 + t) for i, t in enumerate([10, 11, 11, 13])]
    report = soak_workflows.WorkflowReport()

    # When they are checked
    soak_workflows.check_ticks(tasks, report)

    # Then both the duplicate and the gap are reported
    assert any("fired twice" in v for v in report.violations)
    assert any("missing" in v for v in report.violations)


def test_consecutive_ticks_once_each_pass():
    tasks = [_ran(_id(i), "noop", T0, T0, schedule="s", tick=T0 + i) for i in range(5)]
    report = soak_workflows.WorkflowReport()
    soak_workflows.check_ticks(tasks, report)
    assert report.violations == [] and report.ticks == 5


def test_more_sleep_tasks_at_once_than_the_limit_is_a_violation():
    # Given limit + 1 sleep attempts that overlap, and back-to-back ones that do not
    limit = soak_workflows.SLEEP_CONCURRENCY
    overlapping = [_ran(_id(i), "sleep", T0 + i * 0.01, T0 + 1) for i in range(limit + 1)]
    back_to_back = [_ran(_id(100 + i), "sleep", T0 + 10 + i, T0 + 11 + i) for i in range(10)]

    # When checked
    over, fine = soak_workflows.WorkflowReport(), soak_workflows.WorkflowReport()
    soak_workflows.check_concurrency(overlapping, over)
    soak_workflows.check_concurrency(back_to_back, fine)

    # Then only the overlap is reported (a finish and a start at one instant do not overlap)
    assert over.sleep_peak == limit + 1 and len(over.violations) == 1
    assert fine.sleep_peak == 1 and fine.violations == []


def test_a_diamond_child_that_started_early_or_outlived_its_failed_parent_is_a_violation():
    # Given a diamond whose b failed (policy cancel) but whose d ran, and whose c started before a finished
    ids = {n: _id(200 + i) for i, n in enumerate("abcd")}
    a = _ran(ids["a"], "noop", T0, T0 + 1)
    b = Task(
        id=ids["b"],
        type="fail",
        payload={},
        state=TaskState.FAILED,
        attempts=(Attempt(1, "w", T0 + 2, T0 + 3, Outcome.FAILED),),
    )
    c = _ran(ids["c"], "sleep", T0 + 0.5, T0 + 2)
    d = _ran(ids["d"], "noop", T0 + 4, T0 + 5)
    report = soak_workflows.WorkflowReport()

    # When checked
    soak_workflows.check_diamonds(
        [soak_workflows.Diamond(ids, b_fails=True, policy="cancel")], {t.id: t for t in (a, b, c, d)}, report
    )

    # Then both are reported
    assert any(ids["d"] in v and "planned cancelled" in v for v in report.violations)
    assert any(ids["c"] in v and "before its parent" in v for v in report.violations)
