"""The scheduler's events, seen through a recording hook, against a real etcd."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from tasklease.client import Client, TaskSpec
from tasklease.events import (
    Assigned,
    Event,
    Failed,
    LeaderElected,
    LeaderResigned,
    Lost,
    Promoted,
    RecordingHook,
    RecoveryRan,
    default_hooks,
)
from tasklease.executors.base import Registry
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace
from tasklease.models import Outcome, TaskState
from tasklease.retry import RetryPolicy
from tasklease.scheduler import Scheduler, SchedulerConfig
from tasklease.store import Store, StoreConfig

PAYLOAD = {"blob": "x" * 4500}  # a realistic record of about 4.5 KB

E = TypeVar("E", bound=Event)
StartScheduler = Callable[..., Awaitable[Scheduler]]


@pytest.fixture
async def hooked(store_config: StoreConfig, keyspace: Keyspace) -> AsyncIterator[StartScheduler]:
    """Start schedulers with the given hooks (after the default logging hook), each on its own connection."""
    stores: list[Store] = []
    schedulers: list[Scheduler] = []

    async def start(*hooks: Any, **config: Any) -> Scheduler:
        store = Store(store_config)
        await store.connect()
        stores.append(store)
        config.setdefault("scheduler_id", f"hs{len(schedulers)}")
        config.setdefault("lease_ttl_s", 3)
        scheduler = Scheduler(store, keyspace, SchedulerConfig(**config), hooks=[*default_hooks(), *hooks])
        await scheduler.start()
        schedulers.append(scheduler)
        return scheduler

    yield start
    for scheduler in schedulers:
        await scheduler.stop()
    for store in stores:
        await store.close()


async def wait_all(client: Client, ids: list[str], timeout_s: float = 30) -> list[Any]:
    return await asyncio.gather(*(client.wait(i, timeout_s=timeout_s) for i in ids))


def of(rec: RecordingHook, kind: type[E], task_id: str | None = None) -> list[E]:
    """The events of ``kind`` the hook saw (for one task, if given), typed."""
    return [e for e in rec.of(kind, task_id=task_id) if isinstance(e, kind)]


async def until_event(rec: RecordingHook, kind: type[Event], count: int = 1, within_s: float = 10) -> None:
    """Wait until the hook saw ``count`` events of ``kind`` (the scheduler emits an event
    once its transaction's answer is back, which may come after a client saw the change)."""
    async with asyncio.timeout(within_s):
        while len(rec.of(kind)) < count:
            await asyncio.sleep(0.02)


async def test_leader_elected_then_one_assigned_per_task(client, cluster, hooked):
    # Given a scheduler with a recording hook and a worker
    rec = RecordingHook()
    scheduler = await hooked(rec)
    worker = await cluster.worker(concurrency=8)

    # When 40 tasks run
    batch = await client.submit_many(TaskSpec("noop", PAYLOAD) for _ in range(40))
    finals = await wait_all(client, [t.id for t in batch.tasks])
    assert all(f.state is TaskState.SUCCEEDED for f in finals)
    await until_event(rec, Assigned, count=40)

    # Then the scheduler said it leads (with its fencing token), then assigned each task once
    assert isinstance(rec.events[0], LeaderElected)
    assert rec.events[0].token == scheduler.election.token and rec.events[0].source == scheduler.id
    assigned = of(rec, Assigned)
    assert sorted(e.task_id for e in assigned) == sorted(t.id for t in batch.tasks)
    for e in assigned:
        assert (e.attempt, e.worker, e.component) == (1, worker.id, "scheduler")
        assert e.task.state is TaskState.RUNNING and e.task.attempts[-1].worker == worker.id

    # and when it stops, it says it resigned
    await scheduler.stop()
    last = rec.events[-1]
    assert isinstance(last, LeaderResigned) and last.reason == "stopped"


async def test_a_killed_workers_attempt_is_reported_lost_once(client, cluster, hooked, caplog):
    # Given a task running on a worker, and a second worker
    rec = RecordingHook()
    await hooked(rec)
    first = await cluster.worker(lease_ttl_s=2, heartbeat_s=0.3)
    task = await client.submit("sleep", {"seconds": 1.0})
    async with asyncio.timeout(10):
        while not first.running:
            await asyncio.sleep(0.02)
    second = await cluster.worker(lease_ttl_s=2, heartbeat_s=0.3)

    # When the first worker dies (its lease is revoked behind its back)
    with caplog.at_level(logging.WARNING, logger="tasklease.scheduler"):
        await first.kill()
        final = await client.wait(task.id, timeout_s=20)
    assert final.state is TaskState.SUCCEEDED

    # Then its attempt is reported lost (queued again), then assigned to the second worker
    lost = of(rec, Lost, task_id=task.id)
    assert len(lost) == 1
    assert (lost[0].attempt, lost[0].worker, lost[0].outcome) == (1, first.id, Outcome.LOST)
    assert lost[0].task.state is TaskState.QUEUED
    assert rec.kinds(task_id=task.id) == ["Assigned", "Lost", "Assigned"]
    assert of(rec, Assigned, task_id=task.id)[-1].worker == second.id
    assert any(e.kind == "lost" and e.count >= 1 for e in of(rec, RecoveryRan))
    # and the warning is written once, by the logging hook
    lines = [r for r in caplog.records if r.getMessage() == "attempt lost: task queued"]
    assert len(lines) == 1 and lines[0].__dict__["task_id"] == task.id


async def test_a_retry_with_backoff_is_promoted_back_to_its_queue(client, cluster, hooked):
    # Given a scheduler with a recording hook and a worker
    rec = RecordingHook()
    await hooked(rec)
    await cluster.worker()

    # When a task fails once and is retried after a backoff
    task = await client.submit("fail", retry=RetryPolicy(max_retries=1, backoff_s=0.3, jitter=0))
    final = await client.wait(task.id, timeout_s=20)
    assert final.state is TaskState.FAILED

    # Then the scheduler promoted it once, between its two assignments
    assert rec.kinds(task_id=task.id) == ["Assigned", "Promoted", "Assigned"]
    (promoted,) = of(rec, Promoted, task_id=task.id)
    assert promoted.task.state is TaskState.QUEUED and promoted.task.not_before is None
    assert [e.attempt for e in of(rec, Assigned, task_id=task.id)] == [1, 2]
    assert any(e.kind == "promoted" for e in of(rec, RecoveryRan))


async def test_a_raising_hook_does_not_stop_assignment(client, cluster, hooked, caplog):
    # Given a hook that raises on every event, ahead of a recording one
    class Raising:
        def on_event(self, event: Event) -> None:
            raise RuntimeError("hook bug")

    rec = RecordingHook()
    await hooked(Raising(), rec)
    await cluster.worker(concurrency=4)

    # When tasks run
    with caplog.at_level(logging.ERROR, logger="tasklease.events"):
        batch = await client.submit_many(TaskSpec("noop", PAYLOAD) for _ in range(20))
        finals = await wait_all(client, [t.id for t in batch.tasks])
        await until_event(rec, Assigned, count=20)

    # Then every task is assigned and runs; the hooks after it see every event
    assert all(f.state is TaskState.SUCCEEDED for f in finals)
    assert len(of(rec, Assigned)) == 20
    # and the error is logged once per event type, not per event
    raised = [r.getMessage() for r in caplog.records if "raised on" in r.getMessage()]
    assert sorted(raised) == [
        "hook Raising raised on Assigned (ignored; reported once per hook and event type)",
        "hook Raising raised on BatchAssigned (ignored; reported once per hook and event type)",
        "hook Raising raised on LeaderElected (ignored; reported once per hook and event type)",
    ]


async def test_a_standby_reports_its_own_election_after_the_leader_resigns(client, cluster, hooked):
    # Given a leader and a standby, each with its recording hook
    first, second = RecordingHook(), RecordingHook()
    leader = await hooked(first)
    await until_event(first, LeaderElected)
    await hooked(second)

    # When the leader stops
    await leader.stop()

    # Then it resigned, and the standby leads with a new token
    await until_event(second, LeaderElected)
    assert first.kinds() == ["LeaderElected", "LeaderResigned"]
    old, new = of(first, LeaderElected)[0], of(second, LeaderElected)[0]
    assert new.token > old.token


async def test_a_task_no_live_worker_may_run_fails_with_one_failed_event(client, cluster, hooked, caplog):
    # Given a scheduler that fails unroutable tasks after 1 s, and a worker that runs noop only
    noop = builtin_registry().get("noop")
    assert noop is not None
    noop_only = Registry()
    noop_only.register("noop", noop)
    await cluster.worker(worker_id="w-noop", types=noop_only)
    rec = RecordingHook()
    with caplog.at_level(logging.ERROR, logger="tasklease.scheduler"):
        await hooked(rec, unroutable_after_s=1.0)

        # When a task of a type nobody runs is submitted
        task = await client.submit("async_add", {"a": 1, "b": 2})
        final = await client.wait(task.id, timeout_s=30)

    # Then it fails, and the scheduler says so once: one Failed event, one error line
    assert final.state is TaskState.FAILED
    await until_event(rec, Failed)
    (failed,) = of(rec, Failed, task_id=task.id)
    assert failed.task.state is TaskState.FAILED and failed.outcome is None
    assert "no live worker may run type async_add" in (failed.error or "")
    lines = [r for r in caplog.records if r.getMessage().startswith("task failed: ")]
    assert len(lines) == 1 and lines[0].getMessage() == f"task failed: {final.error}"
