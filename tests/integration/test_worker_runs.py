"""Runs of a worker (in this process) against a real etcd: attempt identity and cancellation.

- A retry of a task that lands on the same worker while the old attempt is
  still being torn down is a run of its own: the old attempt's end must not
  make the worker forget the new one (its cancellation and its hand-back on
  shutdown).
- An async task that raises ``CancelledError`` itself (the worker did not
  cancel it) is a failed attempt, retried per its policy.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest

import sample_tasks
from faults.procs import until
from tasklease.client import Client
from tasklease.executors.base import Registry
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Outcome, Task, TaskState
from tasklease.queue import assign_next, decode_assignment
from tasklease.retry import RetryPolicy
from tasklease.store import Store
from tasklease.transitions import record_outcome
from tasklease.worker import Worker, WorkerConfig

registry = Registry()
# What the task code did, per payload key: "started", "stopping", "stopped".
EVENTS: defaultdict[str, list[str]] = defaultdict(list)
# A task stuck in its teardown until the test sets its gate.
GATES: dict[str, asyncio.Event] = {}


@registry.task
async def slow_to_stop(key: str) -> str:
    """Runs until cancelled; its teardown then waits for the test's gate."""
    EVENTS[key].append("started")
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        EVENTS[key].append("stopping")
        await GATES[key].wait()
        EVENTS[key].append("stopped")
        raise
    return key


@registry.task
async def cancels_itself() -> None:
    """Awaits something that was cancelled: CancelledError, though nobody cancelled this task."""
    inner = asyncio.ensure_future(asyncio.sleep(10))
    await asyncio.sleep(0)
    inner.cancel()
    await inner


def worker_registry() -> Registry:
    reg = builtin_registry()
    reg.update([sample_tasks.registry, registry])
    return reg


@pytest.fixture
async def make_worker(store: Store, keyspace: Keyspace) -> AsyncIterator:
    workers: list[Worker] = []

    async def make(**config) -> Worker:
        config.setdefault("lease_ttl_s", 3)
        config.setdefault("heartbeat_s", 0.5)
        config.setdefault("grace_s", 1.0)
        config.setdefault("worker_id", f"w{len(workers)}")
        worker = Worker(store, keyspace, worker_registry(), WorkerConfig(**config))
        await worker.start()
        workers.append(worker)
        return worker

    yield make
    for gate in GATES.values():
        gate.set()
    for w in workers:
        await w.kill()


async def state_is_not(client: Client, task_id: str, state: TaskState) -> Task | None:
    record = await client.get(task_id)
    return record if record.state is not state else None


async def end_overdue_attempt(store: Store, keyspace: Keyspace, worker: Worker, task_id: str) -> Task:
    """What the scheduler does to an overdue attempt: outcome timeout, queued again,
    assignment and running index deleted, in one fenced transaction."""
    kv, _ = await store.get(keyspace.assignment(worker.id, task_id))
    record_kv, _ = await store.get(keyspace.task(task_id))
    assert kv is not None and record_kv is not None
    assignment = decode_assignment(keyspace, worker.id, kv, record_kv)
    assert assignment is not None
    new = worker.next_record(assignment, Outcome.TIMEOUT, None, "overdue", False)
    assert new.state is TaskState.QUEUED
    txn = record_outcome(
        keyspace, assignment.worker, assignment.token, new, record_revision=assignment.record_revision
    )
    compares, ops, failure = txn.compares, txn.ops, txn.failure
    assert (await store.txn(compares, ops, failure)).succeeded
    return new


async def retry_lands_during_teardown(
    client: Client, store: Store, keyspace: Keyspace, worker: Worker, key: str
) -> Task:
    """Attempt 1 is revoked and stuck in its teardown while attempt 2 of the same
    task starts on the same worker; then attempt 1's teardown ends."""
    GATES[key] = asyncio.Event()
    task = await client.submit("slow_to_stop", {"key": key}, retry=RetryPolicy(max_retries=3, backoff_s=0))
    first = await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    assert first is not None and first.id == task.id
    await until(lambda: EVENTS[key] == ["started"], within_s=10, what="attempt 1 to start")

    await end_overdue_attempt(store, keyspace, worker, task.id)
    await until(lambda: "stopping" in EVENTS[key], within_s=10, what="attempt 1 to be stopped")

    second = await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    assert second is not None and second.id == task.id and len(second.attempts) == 2
    await until(lambda: EVENTS[key].count("started") == 2, within_s=10, what="attempt 2 to start")
    assert EVENTS[key].count("stopped") == 0, "attempt 1 is still being torn down"

    GATES[key].set()
    await until(lambda: EVENTS[key].count("stopped") == 1, within_s=10, what="attempt 1's teardown")
    await until(lambda: worker.running == 1, within_s=10, what="attempt 2 alone running")
    return second


async def test_cancel_reaches_a_retry_that_landed_while_the_old_attempt_was_torn_down(
    client, store, keyspace, make_worker
):
    worker = await make_worker()
    second = await retry_lands_during_teardown(client, store, keyspace, worker, "cancel")

    # When the task is cancelled, the worker must stop attempt 2 (it still knows it)
    await client.cancel(second.id)
    final = await client.wait(second.id, timeout_s=10)
    assert final.state is TaskState.CANCELLED
    assert [a.outcome for a in final.attempts] == [Outcome.TIMEOUT, Outcome.CANCELLED]
    await until(
        lambda: EVENTS["cancel"].count("stopped") == 2 and worker.running == 0,
        within_s=10,
        what="attempt 2 to be stopped by the cancel",
    )
    # and the worker keeps serving
    follow = await client.submit("noop", 1)
    await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    assert (await client.wait(follow.id, timeout_s=10)).result == 1


async def test_shutdown_hands_back_a_retry_that_landed_while_the_old_attempt_was_torn_down(
    client, store, keyspace, make_worker
):
    worker = await make_worker()
    second = await retry_lands_during_teardown(client, store, keyspace, worker, "drain")

    # When the worker shuts down, attempt 2 is drained and handed back
    await worker.stop(grace_s=0.2)
    record = await client.get(second.id)
    assert record.state is TaskState.QUEUED, record
    assert [a.outcome for a in record.attempts] == [Outcome.TIMEOUT, Outcome.HANDED_BACK]
    assert EVENTS["drain"].count("stopped") == 2
    queue = await store.range(keyspace.queues, prefix_end(keyspace.queues))
    assert [keyspace.parse_queue_entry(kv.key).task_id for kv in queue.kvs] == [second.id]


async def test_a_revoked_attempt_still_tearing_down_is_not_handed_back(
    client, store, keyspace, make_worker, caplog
):
    # Given attempt 1 revoked and stuck in its teardown (no retry assigned)
    worker = await make_worker()
    GATES["revoked"] = asyncio.Event()
    task = await client.submit(
        "slow_to_stop", {"key": "revoked"}, retry=RetryPolicy(max_retries=3, backoff_s=0)
    )
    await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    await until(lambda: EVENTS["revoked"] == ["started"], within_s=10, what="attempt 1 to start")
    queued = await end_overdue_attempt(store, keyspace, worker, task.id)
    await until(lambda: "stopping" in EVENTS["revoked"], within_s=10, what="attempt 1 to be stopped")

    # When the worker shuts down meanwhile, with no grace (its teardown ends after it)
    stopping = asyncio.create_task(worker.stop(grace_s=0))
    await until(lambda: worker.node_record()["draining"], within_s=10, what="the worker to start draining")
    GATES["revoked"].set()
    await stopping

    # Then nothing is written for it (not even tried): the record is as the scheduler left it
    record = await client.get(task.id)
    assert record == queued
    assert "outcome rejected" not in caplog.text
    assert EVENTS["revoked"] == ["started", "stopping", "stopped"]


async def test_async_task_raising_cancelled_error_itself_fails_and_retries(
    client, store, keyspace, make_worker
):
    worker = await make_worker()
    task = await client.submit("cancels_itself", retry=RetryPolicy(max_retries=1, backoff_s=0))
    for attempt, expected in ((1, TaskState.QUEUED), (2, TaskState.FAILED)):
        assigned = await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
        assert assigned is not None and len(assigned.attempts) == attempt
        record = await until(
            lambda: state_is_not(client, task.id, TaskState.RUNNING),
            within_s=10,
            what=f"attempt {attempt} to be recorded",
        )
        assert record.state is expected, record
        assert record.attempts[-1].outcome is Outcome.FAILED
        assert "CancelledError raised by the task itself" in (record.error or ""), record.error
    assert worker.running == 0
    # The worker itself was not cancelled: it runs the next task
    follow = await client.submit("noop", "after")
    await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    assert (await client.wait(follow.id, timeout_s=10)).result == "after"
