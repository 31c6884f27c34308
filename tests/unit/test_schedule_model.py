"""Cron schedules without etcd: next fire times, seconds, time zones and DST, catch-up decisions, the stored form."""

from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tasklease import schedules
from tasklease.cron import ON_TIME_S, TickPlan, plan_ticks, tick_task
from tasklease.errors import CorruptRecord, InvalidOption, PayloadTooLarge
from tasklease.keys import Keyspace
from tasklease.models import TaskState
from tasklease.retry import RetryPolicy
from tasklease.schedules import CronExpr, Schedule
from tasklease.spec import TaskSpec
from tasklease.store import KV

BERLIN = ZoneInfo("Europe/Berlin")
UTC = ZoneInfo("UTC")


def at(
    year: int,
    month: int,
    day: int,
    hour: int,
    minute: int,
    second: int = 0,
    *,
    tz: ZoneInfo = BERLIN,
    fold: int = 0,
) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=tz, fold=fold).timestamp()


def local(ts: float, tz: ZoneInfo = BERLIN) -> str:
    return datetime.fromtimestamp(ts, tz).isoformat()


# next fire times ---------------------------------------------------------------------------
def test_five_fields_fire_on_the_minute_strictly_after_the_given_time():
    expr = CronExpr("*/15 * * * *")
    start = at(2026, 5, 4, 10, 0, tz=UTC)
    assert expr.next_after(start) == at(2026, 5, 4, 10, 15, tz=UTC)  # strictly after a tick
    assert expr.next_after(start - 0.5) == start
    assert expr.next_times(start, 3) == [at(2026, 5, 4, 10, m, tz=UTC) for m in (15, 30, 45)]
    assert not expr.has_seconds


def test_six_fields_have_the_seconds_first():
    expr = CronExpr("*/20 * * * * *")  # every 20 seconds
    start = at(2026, 5, 4, 10, 0, 5, tz=UTC)
    assert expr.has_seconds
    assert [t - start for t in expr.next_times(start, 4)] == [15, 35, 55, 75]
    # second 30 of minute 5 of every hour
    expr = CronExpr("30 5 * * * *")
    assert expr.next_after(start) == at(2026, 5, 4, 10, 5, 30, tz=UTC)
    # every second
    assert CronExpr("* * * * * *").ticks(start, start + 3, 100) == [start + 1, start + 2, start + 3]


def test_ticks_are_bounded_and_latest_is_at_or_before():
    expr = CronExpr("* * * * * *")
    start = at(2026, 1, 1, 0, 0, 0, tz=UTC)
    assert len(expr.ticks(start, start + 10_000, 1000)) == 1000
    assert expr.ticks(start, start + 0.5, 10) == []
    assert expr.latest(start + 10.7) == start + 10
    assert expr.latest(start + 10) == start + 10
    assert CronExpr("0 3 * * *").latest(start) == at(2025, 12, 31, 3, 0, tz=UTC)


def test_macros_names_and_time_zones():
    start = at(2026, 5, 4, 10, 0, tz=UTC)
    assert CronExpr("@hourly").next_after(start) == at(2026, 5, 4, 11, 0, tz=UTC)
    assert CronExpr("0 9 * * mon-fri", "Europe/Berlin").next_after(start) == at(2026, 5, 5, 9, 0)
    assert CronExpr("0 9 * * *", "America/New_York").next_after(start) == at(
        2026, 5, 4, 9, 0, tz=ZoneInfo("America/New_York")
    )
    assert CronExpr("  0   9 * * *  ").expr == "0 9 * * *"


@pytest.mark.parametrize(
    ("expr", "tz", "message"),
    [
        ("* * *", "UTC", "has 3 fields"),
        ("* * * * * * *", "UTC", "has 7 fields"),
        ("61 * * * *", "UTC", "bad cron expression"),
        ("a b c d e", "UTC", "bad cron expression"),
        ("H * * * *", "UTC", "bad cron expression"),
        ("0 0 30 2 *", "UTC", "never fires"),
        ("", "UTC", "1 to 200 characters"),
        ("* " * 150, "UTC", "1 to 200 characters"),
        ("* * * * *", "Mars/Olympus", "unknown time zone"),
        ("* * * * *", "../etc/passwd", "bad time zone"),
        ("* * * * *", "", "bad time zone"),
    ],
)
def test_bad_expressions_and_zones_are_refused_with_a_reason(expr, tz, message):
    with pytest.raises(InvalidOption, match=message):
        CronExpr(expr, tz)


# DST -------------------------------------------------------------------------------------------
def test_spring_forward_in_berlin_fires_a_tick_of_the_skipped_hour_once_just_after_it():
    # 2026-03-29: 02:00 CET -> 03:00 CEST; 02:30 does not exist that day
    daily = CronExpr("30 2 * * *", "Europe/Berlin")
    got = [local(t) for t in daily.next_times(at(2026, 3, 27, 12, 0), 4)]
    assert got == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    hourly = CronExpr("0 * * * *", "Europe/Berlin")
    ticks = hourly.next_times(at(2026, 3, 29, 0, 30), 4)
    assert [local(t) for t in ticks] == [
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T04:00:00+02:00",
        "2026-03-29T05:00:00+02:00",
    ]
    assert [b - a for a, b in itertools.pairwise(ticks)] == [3600, 3600, 3600]  # real hours


def test_fall_back_in_berlin_fires_fixed_times_once_and_wildcards_on_real_time():
    # 2026-10-25: 03:00 CEST -> 02:00 CET; 02:00-02:59 happens twice
    daily = CronExpr("30 2 * * *", "Europe/Berlin")
    got = [local(t) for t in daily.next_times(at(2026, 10, 23, 12, 0), 3)]
    assert got == ["2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    assert daily.latest(at(2026, 10, 25, 2, 45, fold=1)) == at(2026, 10, 25, 2, 30)  # the first one
    hourly = CronExpr("0 * * * *", "Europe/Berlin")
    got = [local(t) for t in hourly.next_times(at(2026, 10, 25, 0, 30), 5)]
    assert got == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
        "2026-10-25T04:00:00+01:00",
    ]
    quarter = CronExpr("0 */15 * * * *", "Europe/Berlin")  # seconds field: a wildcard minute
    assert (
        len(quarter.ticks(at(2026, 10, 25, 1, 59), at(2026, 10, 25, 3, 1), 100)) == 4 + 4 + 1
    )  # 02:xx twice, then 03:00


def test_utc_has_no_dst():
    hourly = CronExpr("0 * * * *")
    ticks = hourly.next_times(at(2026, 10, 25, 0, 30, tz=UTC), 48)
    assert all(b - a == 3600 for a, b in itertools.pairwise(ticks))


# catch-up decisions ---------------------------------------------------------------------------
EVERY_SECOND = CronExpr("* * * * * *")
T0 = at(2026, 6, 1, 12, 0, 0, tz=UTC)


def test_nothing_due_is_no_plan():
    assert plan_ticks(EVERY_SECOND, T0, T0 + 0.9, catch_up="all") is None
    assert plan_ticks(CronExpr("0 3 * * *"), T0, T0 + 3600, catch_up="one") is None


@pytest.mark.parametrize("catch_up", ["none", "one", "all"])
def test_one_tick_due_on_time_fires_whatever_the_policy(catch_up):
    assert plan_ticks(EVERY_SECOND, T0, T0 + 1.02, catch_up=catch_up) == TickPlan((T0 + 1,), 0, T0 + 1)


def test_after_an_outage_all_fires_each_missed_tick_oldest_first_bounded():
    plan = plan_ticks(EVERY_SECOND, T0, T0 + 10.3, catch_up="all")
    assert plan == TickPlan(tuple(T0 + i for i in range(1, 11)), 0, T0 + 10)
    plan = plan_ticks(EVERY_SECOND, T0, T0 + 5000, catch_up="all", fire_limit=40)
    assert plan is not None
    assert plan.fire == tuple(T0 + i for i in range(1, 41))
    assert plan.last == T0 + 40 and plan.skipped == 0  # the next pass goes on from there


def test_after_an_outage_one_fires_the_newest_and_skips_the_others():
    assert plan_ticks(EVERY_SECOND, T0, T0 + 10.3, catch_up="one") == TickPlan((T0 + 10,), 9, T0 + 10)
    daily = CronExpr("0 3 * * *")
    start = at(2026, 6, 1, 4, 0, tz=UTC)
    late = at(2026, 6, 4, 9, 0, tz=UTC)  # 3 days down: the 3 ticks missed, the newest 6 h late
    assert plan_ticks(daily, start, late, catch_up="one") == TickPlan(
        (at(2026, 6, 4, 3, 0, tz=UTC),), 2, at(2026, 6, 4, 3, 0, tz=UTC)
    )


def test_after_an_outage_none_skips_every_missed_tick_but_a_newest_one_on_time():
    # the newest is 0.3 s late: it fires; the 9 before it are skipped
    assert plan_ticks(EVERY_SECOND, T0, T0 + 10.3, catch_up="none") == TickPlan((T0 + 10,), 9, T0 + 10)
    daily = CronExpr("0 3 * * *")
    start = at(2026, 6, 1, 4, 0, tz=UTC)
    newest = at(2026, 6, 4, 3, 0, tz=UTC)
    assert plan_ticks(daily, start, newest + ON_TIME_S, catch_up="none") == TickPlan((newest,), 2, newest)
    assert plan_ticks(daily, start, newest + ON_TIME_S + 1, catch_up="none") == TickPlan((), 3, newest)


def test_missed_ticks_are_counted_up_to_the_count_limit():
    plan = plan_ticks(EVERY_SECOND, T0, T0 + 7 * 86400, catch_up="one", count_limit=1000)
    assert plan == TickPlan((T0 + 7 * 86400,), 1000, T0 + 7 * 86400)


def test_overlap_skip_skips_while_the_previous_task_runs():
    plan = plan_ticks(EVERY_SECOND, T0, T0 + 1.1, catch_up="one", overlap="skip", previous_running=True)
    assert plan == TickPlan((), 1, T0 + 1)
    plan = plan_ticks(EVERY_SECOND, T0, T0 + 1.1, catch_up="one", overlap="skip", previous_running=False)
    assert plan == TickPlan((T0 + 1,), 0, T0 + 1)
    # with catch-up all, the oldest fires and the others (which would overlap it) are skipped
    plan = plan_ticks(EVERY_SECOND, T0, T0 + 5.5, catch_up="all", overlap="skip")
    assert plan == TickPlan((T0 + 1,), 4, T0 + 5)
    plan = plan_ticks(EVERY_SECOND, T0, T0 + 5.5, catch_up="all", overlap="skip", previous_running=True)
    assert plan == TickPlan((), 5, T0 + 5)


# the task and the stored form -----------------------------------------------------------------
KEYS = Keyspace("unit")
SPEC = TaskSpec(
    "report",
    {"rows": list(range(300))},
    queue="reports",
    priority=2,
    timeout_s=60,
    retry=RetryPolicy(max_retries=3, backoff_s=2),
    retention_s=3600,
    requires={"zone": "eu"},
    expires_s=300,
)


def test_a_tick_task_is_queued_with_its_schedule_tick_and_expiry_from_the_tick():
    task = tick_task(SPEC, "nightly", T0, now=T0 + 2, task_id="0" * 26, seq=7)
    assert task.state is TaskState.QUEUED
    assert (task.schedule, task.tick, task.created_at) == ("nightly", T0, T0 + 2)
    assert task.expires_at == T0 + 300
    assert (task.queue, task.priority, task.retry.max_retries, task.requires) == (
        "reports",
        2,
        3,
        (("zone", "eu"),),
    )


def test_a_schedule_round_trips_through_its_stored_form():
    s = Schedule(
        "nightly",
        "30 2 * * *",
        SPEC,
        tz="Europe/Berlin",
        overlap="skip",
        catch_up="all",
        paused=True,
        created_at=T0,
        updated_at=T0 + 1,
        since=T0,
        last_tick=T0 + 3600,
        last_task="1" * 26,
        fired=12,
        skipped=3,
    )
    kv = KV(KEYS.cron("nightly"), schedules.encode(s), 5, 9, 2)
    back = schedules.decode(KEYS, kv)
    assert back == s
    assert back.task == SPEC
    assert back.cursor == T0 + 3600
    assert back.next_at() is None  # paused
    d = s.as_dict()
    assert d["name"] == "nightly" and d["task"]["requires"] == {"zone": "eu"} and d["next_at"] is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (TaskSpec("x", task_id="0" * 26), "task id"),
        (TaskSpec("x", delay_s=5), "delay"),
        (TaskSpec("x", run_at=T0), "start time"),
        (TaskSpec("x", expires_at=T0), "expiry time"),
        (TaskSpec("x", idempotency_key="k"), "idempotency key"),
        (TaskSpec("x", depends_on=["0" * 26]), "parents"),
        (TaskSpec("x", trace={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}), "trace"),
    ],
)
def test_a_schedules_task_names_no_task_and_no_moment(spec, message):
    with pytest.raises(InvalidOption, match=message):
        Schedule("s", "* * * * *", spec)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "bad name"}, "invalid schedule name"),
        ({"overlap": "forbid"}, "overlap must be"),
        ({"catch_up": "some"}, "catch-up must be"),
        ({"cron": "99 * * * *"}, "bad cron expression"),
        ({"tz": "Nowhere/Atall"}, "unknown time zone"),
    ],
)
def test_bad_schedules_are_refused(changes, message):
    args = {"name": "s", "cron": "* * * * *", "task": TaskSpec("x"), **changes}
    with pytest.raises(InvalidOption, match=message):
        Schedule(**args)


def test_a_schedule_over_its_size_limit_is_refused_and_a_corrupt_one_is_named():
    big = Schedule("big", "* * * * *", TaskSpec("x", "y" * schedules.MAX_SCHEDULE_BYTES))
    with pytest.raises(PayloadTooLarge):
        schedules.encode(big)
    for value in (
        b"not json",
        b'{"v": 99}',
        b'{"v": 1, "cron": "* * * * *", "task": {"type": "x", "nope": 1}}',
    ):
        with pytest.raises(CorruptRecord, match="cron/s"):
            schedules.decode(KEYS, KV(KEYS.cron("s"), value, 1, 1, 1))
