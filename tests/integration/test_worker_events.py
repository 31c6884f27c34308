"""What a worker (in this process) tells its hooks, against a real etcd.

Assignments are written by hand (``queue.assign_next``, as the scheduler does),
so each test knows exactly which attempt runs where. A :class:`RecordingHook`
keeps the events; the default :class:`LoggingHook` is kept beside it where a
test also checks the log lines (written once, by the hook).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest

import sample_tasks
from faults.procs import until
from tasklease.client import Client
from tasklease.events import (
    Event,
    Failed,
    LoggingHook,
    RecordingHook,
    Rejected,
    Retried,
    Started,
    Succeeded,
    WorkerDraining,
    WorkerLeaseLost,
    WorkerRegistered,
    WorkerStopped,
)
from tasklease.executors.base import Registry
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace
from tasklease.models import Outcome, Task, TaskState
from tasklease.queue import assign_next
from tasklease.retry import RetryPolicy
from tasklease.store import Store
from tasklease.worker import Worker, WorkerConfig

registry = Registry()
# Set by `ignores_cancel` once it runs, per key.
RUNNING: dict[str, asyncio.Event] = {}


@registry.task
async def ignores_cancel(key: str) -> str:
    """Runs until cancelled, then returns anyway: its outcome comes after its cancellation."""
    RUNNING[key].set()
    with contextlib.suppress(asyncio.CancelledError):  # deliberately swallowed: it returns anyway
        await asyncio.sleep(3600)
    return key


class Raises:
    """A hook with a bug: it raises on every event."""

    def __init__(self) -> None:
        self.calls = 0

    def on_event(self, event: Event) -> None:
        self.calls += 1
        raise RuntimeError("hook bug")


@pytest.fixture
async def make_worker(store: Store, keyspace: Keyspace) -> AsyncIterator:
    workers: list[Worker] = []

    async def make(hooks, **config) -> Worker:
        config.setdefault("lease_ttl_s", 3)
        config.setdefault("heartbeat_s", 0.5)
        config.setdefault("grace_s", 1.0)
        config.setdefault("worker_id", f"w{len(workers)}")
        reg = builtin_registry()
        reg.update([sample_tasks.registry, registry])
        worker = Worker(store, keyspace, reg, WorkerConfig(**config), hooks=hooks)
        await worker.start()
        workers.append(worker)
        return worker

    yield make
    for w in workers:
        await w.kill()


async def run_once(client: Client, store: Store, keyspace: Keyspace, worker: Worker, task: Task) -> Task:
    """Assign the head of the default queue (``task``) to ``worker`` and wait until it leaves running."""
    assigned = await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    assert assigned is not None and assigned.id == task.id

    async def left_running() -> Task | None:
        record = await client.get(task.id)
        return record if record.state is not TaskState.RUNNING else None

    return await until(left_running, within_s=15, what=f"attempt {len(assigned.attempts)} to be recorded")


def life(rec: RecordingHook) -> list[str]:
    """The kinds of events seen, without the heartbeat's (LeaseRefreshed comes every heartbeat_s)."""
    return [k for k in rec.kinds() if k != "LeaseRefreshed"]


def lines(caplog: pytest.LogCaptureFixture, task_id: str, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "tasklease.worker" and getattr(r, "task_id", None) == task_id and text in r.getMessage()
    ]


async def test_a_success_is_started_then_succeeded_and_logged_once_by_the_hook(
    client, store, keyspace, make_worker, caplog
):
    caplog.set_level(logging.DEBUG, logger="tasklease.worker")
    rec = RecordingHook()
    worker = await make_worker([LoggingHook(), rec])
    task = await client.submit("pad_echo", {"pad": "x" * 4500})

    final = await run_once(client, store, keyspace, worker, task)

    assert final.state is TaskState.SUCCEEDED
    await until(lambda: len(rec.of(Succeeded)) == 1, within_s=5, what="the Succeeded event")
    assert rec.kinds(task.id) == ["Started", "Succeeded"]
    started, ended = rec.of(task_id=task.id)
    assert isinstance(started, Started) and isinstance(ended, Succeeded)
    assert (started.attempt, started.worker, started.source) == (1, worker.id, worker.id)
    assert (ended.attempt, ended.worker, ended.outcome) == (1, worker.id, Outcome.SUCCEEDED)
    assert ended.task == final
    # The hook writes the lines the worker used to write itself, once each, with their fields
    for text in ("task started", "outcome recorded: task succeeded"):
        found = lines(caplog, task.id, text)
        assert len(found) == 1, (text, found)
        assert found[0].levelno == logging.DEBUG
        assert (getattr(found[0], "attempt", None), getattr(found[0], "worker", None)) == (1, worker.id)


async def test_a_failing_task_with_retries_is_retried_then_failed(client, store, keyspace, make_worker):
    rec = RecordingHook()
    worker = await make_worker([rec])
    task = await client.submit(
        "pad_fail", {"pad": "y" * 4500, "error_bytes": 100}, retry=RetryPolicy(max_retries=1, backoff_s=0)
    )

    first = await run_once(client, store, keyspace, worker, task)
    assert first.state is TaskState.QUEUED
    second = await run_once(client, store, keyspace, worker, task)
    assert second.state is TaskState.FAILED

    await until(lambda: len(rec.of(Failed)) == 1, within_s=5, what="the Failed event")
    assert rec.kinds(task.id) == ["Started", "Retried", "Started", "Failed"]
    retried, failed = rec.of(Retried, Failed)
    assert isinstance(retried, Retried) and isinstance(failed, Failed)
    assert (retried.attempt, retried.task.state, retried.outcome) == (1, TaskState.QUEUED, Outcome.FAILED)
    assert (failed.attempt, failed.task, failed.outcome) == (2, second, Outcome.FAILED)


async def test_the_outcome_of_a_cancelled_running_task_is_rejected_and_logged_once(
    client, store, keyspace, make_worker, caplog
):
    caplog.set_level(logging.INFO, logger="tasklease.worker")
    rec = RecordingHook()
    worker = await make_worker([LoggingHook(), rec])
    RUNNING["cancelled"] = asyncio.Event()
    task = await client.submit("ignores_cancel", {"key": "cancelled"})
    await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    await asyncio.wait_for(RUNNING["cancelled"].wait(), 10)

    # When the task is cancelled while it runs (it returns anyway once stopped)
    cancelled = await client.cancel(task.id)

    # Then the worker's outcome is fenced off: Rejected, and the record stays cancelled
    await until(lambda: rec.of(Rejected), within_s=10, what="the Rejected event")
    assert rec.kinds(task.id) == ["Started", "Rejected"]
    (rejected,) = rec.of(Rejected)
    assert isinstance(rejected, Rejected)
    assert (rejected.attempt, rejected.worker, rejected.outcome) == (1, worker.id, Outcome.SUCCEEDED)
    assert await client.get(task.id) == cancelled
    found = lines(caplog, task.id, "outcome rejected: the assignment was revoked")
    assert len(found) == 1 and found[0].levelno == logging.WARNING
    assert worker.completed == 0


async def test_registered_comes_first_and_stopped_last(client, store, keyspace, make_worker):
    rec = RecordingHook()
    worker = await make_worker([rec])
    lease = worker.lease_id
    task = await client.submit("noop", 1)
    await run_once(client, store, keyspace, worker, task)

    await worker.stop()

    kinds = life(rec)
    assert kinds[0] == "WorkerRegistered" and kinds[-1] == "WorkerStopped", kinds
    assert kinds.count("WorkerRegistered") == kinds.count("WorkerStopped") == 1
    assert kinds.index("Succeeded") < kinds.index("WorkerDraining") < kinds.index("WorkerStopped")
    registered = rec.of(WorkerRegistered)[0]
    assert isinstance(registered, WorkerRegistered)
    assert (registered.lease, registered.source, registered.component) == (lease, worker.id, "worker")
    assert all(e.source == worker.id for e in rec.of(WorkerDraining, WorkerStopped))


async def test_a_lost_lease_is_an_event_and_the_worker_registers_again(store, keyspace, make_worker):
    rec = RecordingHook()
    worker = await make_worker([rec])
    old = worker.lease_id

    # When its lease is revoked under it (as if it had expired)
    await store.revoke(old)

    # Then it says so, and registers again under a new lease
    await until(lambda: len(rec.of(WorkerRegistered)) == 2, within_s=15, what="a second registration")
    assert life(rec) == ["WorkerRegistered", "WorkerLeaseLost", "WorkerRegistered"]
    again = rec.of(WorkerRegistered)[1]
    assert isinstance(again, WorkerRegistered) and again.lease == worker.lease_id != old
    assert isinstance(rec.of(WorkerLeaseLost)[0], WorkerLeaseLost)


async def test_a_hook_that_raises_does_not_stop_the_worker_from_recording_outcomes(
    client, store, keyspace, make_worker, caplog
):
    # Given a worker whose first hook raises on every event
    caplog.set_level(logging.ERROR, logger="tasklease.events")
    broken, rec = Raises(), RecordingHook()
    worker = await make_worker([broken, rec])

    # When it runs tasks
    finals = []
    for n in range(3):
        task = await client.submit("pad_echo", {"pad": "z" * 4500, "n": n})
        finals.append(await run_once(client, store, keyspace, worker, task))

    # Then every outcome is recorded, the next hook saw every event, the bug was logged once per event type
    assert [f.state for f in finals] == [TaskState.SUCCEEDED] * 3
    assert [f.result["n"] for f in finals if isinstance(f.result, dict)] == [0, 1, 2]
    await until(lambda: len(rec.of(Succeeded)) == 3, within_s=5, what="three Succeeded events")
    assert life(rec) == ["WorkerRegistered", *(["Started", "Succeeded"] * 3)]
    assert broken.calls == len(rec.events)
    raised = [r for r in caplog.records if "hook Raises raised" in r.getMessage()]
    assert len(raised) == len(set(rec.kinds()))  # WorkerRegistered, Started, Succeeded (LeaseRefreshed)
    assert worker.completed == 3
