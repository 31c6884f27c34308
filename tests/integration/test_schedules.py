"""Cron schedules fired by real schedulers (in this process) against a real etcd.

Ticks are read back from the task records (``schedule``, ``tick``): each test
checks that every tick it looks at was fired at most once, and fired or
skipped as its policy says. Waits poll etcd with a generous bound; nothing
here is timed (the seconds a schedule needs to tick are the only sleeps).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tasklease.client import Client, TaskSpec
from tasklease.cron import CronFirer
from tasklease.errors import InvalidOption, ScheduleExists, ScheduleNotFound
from tasklease.models import Task, TaskState
from tasklease.scheduler import Scheduler
from tasklease.schedules import CronExpr, Schedule

pytestmark = pytest.mark.timeout(180)

GUARD_S = 60.0  # a hang guard only
EVERY_SECOND = "* * * * * *"
PAYLOAD = {"report": "daily", "blob": "x" * 4500}  # a realistic kilobyte payload


async def until(probe: Callable[[], Awaitable[Any]], what: str, within_s: float = GUARD_S) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def fired(client: Client, name: str) -> dict[float, list[Task]]:
    """Tick -> the tasks the schedule fired for it (every task record is read)."""
    found: dict[float, list[Task]] = defaultdict(list)
    async for task in client.scan():
        if task.schedule == name and task.tick is not None:
            found[task.tick].append(task)
    return found


def duplicates(ticks: dict[float, list[Task]]) -> dict[float, list[str]]:
    return {tick: [t.id for t in tasks] for tick, tasks in ticks.items() if len(tasks) > 1}


async def fired_at_least(client: Client, name: str, n: int) -> dict[float, list[Task]]:
    async def probe() -> dict[float, list[Task]] | None:
        ticks = await fired(client, name)
        return ticks if len(ticks) >= n else None

    return await until(probe, f"{n} ticks of {name}")


async def last_tick_at_least(client: Client, name: str, tick: float) -> Schedule:
    async def probe() -> Schedule | None:
        s = await client.get_schedule(name)
        return s if s.last_tick is not None and s.last_tick >= tick else None

    return await until(probe, f"{name} to reach tick {tick}")


def firer(scheduler: Scheduler) -> CronFirer:
    return next(loop for loop in scheduler.loops if isinstance(loop, CronFirer))


def all_ticks(s: Schedule, after: float, until: float) -> list[float]:
    return s.expr.ticks(after, until, 100_000)


# firing ----------------------------------------------------------------------------------------
async def test_an_every_second_schedule_fires_each_tick_once_and_its_tasks_run(client, cluster):
    # Given a schedule firing every second (catch-up all: no tick may be left out), a worker, a scheduler
    added = await client.add_schedule(
        "tick", EVERY_SECOND, TaskSpec("noop", PAYLOAD, queue="cron"), catch_up="all"
    )
    await cluster.worker(queues=("cron",))
    await cluster.scheduler()
    # When 5 ticks have fired
    ticks = await fired_at_least(client, "tick", 5)
    s = await client.get_schedule("tick")
    # Then every tick after the add up to the last one fired, once, as one task carrying it
    assert not duplicates(ticks)
    assert sorted(ticks)[: len(all_ticks(s, added.since, s.last_tick or 0))] == all_ticks(
        s, added.since, s.last_tick or 0
    )
    assert s.fired >= 5 and s.skipped == 0
    for tick, (task,) in ticks.items():
        assert task.created_at >= tick  # never before its time
        assert (task.type, task.queue, task.payload, task.schedule) == ("noop", "cron", PAYLOAD, "tick")
    # and the tasks run like any other
    first = min(ticks)
    done = await client.wait(ticks[first][0].id, timeout_s=GUARD_S)
    assert done.state is TaskState.SUCCEEDED and done.result == PAYLOAD
    # and the schedule names its last task
    assert s.last_task in {t.id for tasks in ticks.values() for t in tasks}


async def test_the_default_policy_accounts_for_every_tick_fired_or_skipped(client, cluster):
    added = await client.add_schedule("acc", EVERY_SECOND, TaskSpec("noop"))
    assert (added.overlap, added.catch_up) == ("allow", "one")
    await cluster.scheduler()
    await fired_at_least(client, "acc", 4)
    s = await client.get_schedule("acc")
    ticks = await fired(client, "acc")
    assert not duplicates(ticks)
    assert s.fired == len([t for t in ticks if t <= (s.last_tick or 0)])
    assert s.fired + s.skipped == len(all_ticks(s, added.since, s.last_tick or 0))


async def test_many_schedules_due_together_share_transactions_and_each_fires_once(client, cluster):
    names = [f"s{i:02d}" for i in range(40)]
    for name in names:
        await client.add_schedule(name, EVERY_SECOND, TaskSpec("noop", {"name": name}), catch_up="all")
    sched = await cluster.scheduler()
    for name in names:
        await fired_at_least(client, name, 3)
    for name in names:
        s = await client.get_schedule(name)
        ticks = await fired(client, name)
        assert not duplicates(ticks), name
        assert sorted(t for t in ticks if t <= (s.last_tick or 0)) == all_ticks(s, s.since, s.last_tick or 0)
    assert firer(sched).fired_total >= 3 * len(names)


async def test_large_payloads_are_fired_in_transactions_bounded_by_bytes(client, cluster):
    # 200 KB payloads, 6 schedules, every second: a transaction holds only a few ticks
    big = {"blob": "y" * 200_000}
    for i in range(6):
        await client.add_schedule(f"big{i}", EVERY_SECOND, TaskSpec("noop", big), catch_up="all")
    await cluster.scheduler()
    for i in range(6):
        ticks = await fired_at_least(client, f"big{i}", 3)
        assert not duplicates(ticks)
        assert all(t.payload == big for tasks in ticks.values() for t in tasks)


# pause, resume, remove, replace ---------------------------------------------------------------
async def test_pause_stops_firing_and_resume_with_catch_up_all_fires_the_missed_ticks(client, cluster):
    await client.add_schedule("p", EVERY_SECOND, TaskSpec("noop"), catch_up="all")
    await cluster.scheduler()
    await fired_at_least(client, "p", 2)
    paused = await client.pause_schedule("p")
    assert paused.paused and paused.next_at() is None
    # While paused nothing fires (the pause is a compare the leader's next write must pass)
    await asyncio.sleep(2.5)
    still = await client.get_schedule("p")
    assert (still.fired, still.last_tick) == (paused.fired, paused.last_tick)
    # When resumed, catch-up all fires every tick missed meanwhile
    resumed = await client.resume_schedule("p")
    assert not resumed.paused
    now = time.time()
    s = await last_tick_at_least(client, "p", now)
    ticks = await fired(client, "p")
    assert not duplicates(ticks)
    missed = all_ticks(s, paused.last_tick or 0, now)
    assert len(missed) >= 2
    assert set(missed) <= set(ticks)
    assert s.skipped == 0


async def test_resume_with_catch_up_one_fires_only_the_newest_missed_tick(client, cluster):
    await client.add_schedule("p1", EVERY_SECOND, TaskSpec("noop"), catch_up="one")
    await cluster.scheduler()
    await fired_at_least(client, "p1", 1)
    paused = await client.pause_schedule("p1")
    await asyncio.sleep(3.2)
    resumed_at = time.time()
    await client.resume_schedule("p1")
    s = await last_tick_at_least(client, "p1", resumed_at)
    ticks = await fired(client, "p1")
    assert not duplicates(ticks)
    after = sorted(t for t in ticks if t > (paused.last_tick or 0))
    first_after = after[0]
    assert first_after >= resumed_at - 1  # the newest due at the resume: the older ones were skipped
    skipped = all_ticks(s, paused.last_tick or 0, first_after - 0.5)
    assert len(skipped) >= 2
    assert not set(skipped) & set(ticks)
    assert s.skipped >= len(skipped)


async def test_remove_stops_it_and_a_removed_or_unknown_schedule_is_not_found(client, cluster):
    await client.add_schedule("gone", EVERY_SECOND, TaskSpec("noop"))
    await cluster.scheduler()
    await fired_at_least(client, "gone", 1)
    assert await client.remove_schedule("gone") is True
    count = len(await fired(client, "gone"))
    await asyncio.sleep(2.2)
    # at most one tick in flight when it was removed: its transaction compares the key (gone: fails)
    assert len(await fired(client, "gone")) == count
    assert await client.remove_schedule("gone") is False
    for call in (client.get_schedule, client.pause_schedule, client.resume_schedule):
        with pytest.raises(ScheduleNotFound, match="no schedule 'gone'"):
            await call("gone")


async def test_add_refuses_an_existing_name_and_replace_keeps_the_firing_state(client, cluster):
    await client.add_schedule("r", EVERY_SECOND, TaskSpec("noop", {"v": 1}), catch_up="all")
    with pytest.raises(ScheduleExists, match="replace"):
        await client.add_schedule("r", "0 3 * * *", TaskSpec("noop"))
    await cluster.scheduler()
    await fired_at_least(client, "r", 2)
    before = await client.get_schedule("r")
    replaced = await client.add_schedule(
        "r", "*/2 * * * * *", TaskSpec("noop", {"v": 2}), catch_up="all", replace=True
    )
    assert replaced.cron == "*/2 * * * * *" and replaced.created_at == before.created_at
    assert replaced.fired >= before.fired and replaced.since >= (before.last_tick or 0)
    s = await last_tick_at_least(client, "r", time.time() + 2)
    ticks = await fired(client, "r")
    assert not duplicates(ticks)
    v2 = sorted(t for t, tasks in ticks.items() if tasks[0].payload == {"v": 2})
    assert v2 and all(int(t) % 2 == 0 for t in v2)
    assert min(v2) > max(t for t, tasks in ticks.items() if tasks[0].payload == {"v": 1})
    assert s.fired == len([t for t in ticks if t <= (s.last_tick or 0)])


async def test_bad_schedules_write_nothing(client):
    for args, options, message in (
        (("x", "61 * * * *", TaskSpec("noop")), {}, "bad cron expression"),
        (("x", "* * * * *", TaskSpec("noop")), {"tz": "Europe/Nowhere"}, "unknown time zone"),
        (("x", "* * * * *", TaskSpec("noop")), {"catch_up": "most"}, "catch-up must be"),
        (("x", "* * * * *", TaskSpec("noop", task_id="0" * 26)), {}, "task id"),
        (("bad/name", "* * * * *", TaskSpec("noop")), {}, "invalid schedule name"),
    ):
        with pytest.raises(InvalidOption, match=message):
            await client.add_schedule(*args, **options)
    assert await client.list_schedules() == []


async def test_list_get_and_next_fire_times_in_a_time_zone(client):
    await client.add_schedule("b", "30 2 * * *", TaskSpec("noop"), tz="Europe/Berlin", paused=True)
    await client.add_schedule("a", "0 */5 * * * *", TaskSpec("noop"))
    assert [s.name for s in await client.list_schedules()] == ["a", "b"]
    b = await client.get_schedule("b")
    assert b.paused and b.tz == "Europe/Berlin" and b.task.retention_s is not None
    times = await client.next_fire_times("b", 3)
    assert times == CronExpr("30 2 * * *", "Europe/Berlin").next_times(times[0] - 1, 3)
    assert {b2 - a2 for a2, b2 in itertools.pairwise(times)} <= {
        82800,
        86400,
        90000,
    }  # a day (DST: 23 h, 25 h)
    with pytest.raises(InvalidOption):
        await client.next_fire_times("b", 0)


# overlap -------------------------------------------------------------------------------------
async def test_overlap_skip_fires_only_when_the_previous_task_has_finished(client, cluster):
    # Given tasks that run 2.5 s, fired every second, overlap skip
    await client.add_schedule(
        "slow", EVERY_SECOND, TaskSpec("sleep", {"seconds": 2.5}), overlap="skip", catch_up="all"
    )
    await cluster.worker(concurrency=4)
    await cluster.scheduler()
    ticks = await fired_at_least(client, "slow", 3)
    s = await client.get_schedule("slow")
    assert s.skipped >= 2
    tasks = sorted((tasks[0] for tasks in ticks.values()), key=lambda t: t.tick or 0)
    finals = [await client.wait(t.id, timeout_s=GUARD_S) for t in tasks[:-1]]
    # Then each task was fired after the one before it had finished: they never overlap
    for previous, task in zip(finals, tasks[1:], strict=False):
        assert previous.attempts[-1].finished_at is not None
        assert task.created_at >= previous.attempts[-1].finished_at


# leaders -------------------------------------------------------------------------------------
async def test_catch_up_all_after_a_scheduler_outage_fires_every_missed_tick_once(client, cluster):
    await client.add_schedule("out", EVERY_SECOND, TaskSpec("noop"), catch_up="all")
    first = await cluster.scheduler()
    await fired_at_least(client, "out", 2)
    # When the only scheduler stops for ~3 s and another one starts
    await first.stop()
    stopped = await client.get_schedule("out")
    await asyncio.sleep(3.0)
    restarted_at = time.time()
    await cluster.scheduler()
    s = await last_tick_at_least(client, "out", restarted_at + 1)
    # Then every tick of the outage fired, once
    ticks = await fired(client, "out")
    assert not duplicates(ticks)
    outage = all_ticks(s, stopped.last_tick or 0, restarted_at)
    assert len(outage) >= 3
    assert set(outage) <= set(ticks)
    assert sorted(t for t in ticks if t <= (s.last_tick or 0)) == all_ticks(s, s.since, s.last_tick or 0)


@pytest.mark.parametrize("catch_up", ["none", "one"])
async def test_catch_up_none_or_one_after_an_outage_skips_the_missed_ticks(client, cluster, catch_up):
    await client.add_schedule("out", EVERY_SECOND, TaskSpec("noop"), catch_up=catch_up)
    first = await cluster.scheduler()
    await fired_at_least(client, "out", 1)
    await first.stop()
    stopped = await client.get_schedule("out")
    await asyncio.sleep(3.0)
    restarted_at = time.time()
    await cluster.scheduler()
    s = await last_tick_at_least(client, "out", restarted_at + 1)
    ticks = await fired(client, "out")
    assert not duplicates(ticks)
    # the newest due when the new leader looked fired (on time: within ON_TIME_S); the older ones not
    after = sorted(t for t in ticks if t > (stopped.last_tick or 0))
    skipped = all_ticks(s, stopped.last_tick or 0, after[0] - 0.5)
    assert after[0] >= restarted_at - 1
    assert len(skipped) >= 2 and not set(skipped) & set(ticks)
    assert s.skipped - stopped.skipped >= len(skipped)
    assert s.fired + s.skipped == len(all_ticks(s, s.since, s.last_tick or 0))


async def test_two_schedulers_fire_each_tick_once_across_a_resign(client, cluster):
    await client.add_schedule("ha", EVERY_SECOND, TaskSpec("noop"), catch_up="all")
    a = await cluster.scheduler()
    b = await cluster.scheduler()
    await fired_at_least(client, "ha", 2)
    leader, standby = (a, b) if a.leading.is_set() else (b, a)
    await leader.stop()  # resigns at once: the standby takes over
    await until(lambda: asyncio.sleep(0, standby.leading.is_set()), "the standby to lead")
    s = await last_tick_at_least(client, "ha", time.time() + 2)
    ticks = await fired(client, "ha")
    assert not duplicates(ticks)
    assert sorted(t for t in ticks if t <= (s.last_tick or 0)) == all_ticks(s, s.since, s.last_tick or 0)
    assert firer(standby).fired_total >= 2
