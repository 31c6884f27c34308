"""Records never outgrow their writes, worker side (a real etcd; faults injected by FaultyStore).

A retry is written twice by one transaction (the record and its queue key),
so a record that has grown past ``codec.MAX_QUEUED_RECORD_BYTES`` cannot go
back to its queue: the worker records the task as failed, saying why, instead
of sending a transaction etcd refuses (and dropping the outcome). Whatever
refuses an outcome's transaction for its size, the outcome ends as a bounded
failure record, never as nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from faults.procs import until
from faultstore import FaultyStore
from tasklease import codec
from tasklease.client import Client
from tasklease.errors import StoreRequestTooLarge
from tasklease.executors.base import Registry
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Outcome, Task, TaskState
from tasklease.queue import assign_next
from tasklease.retry import RetryPolicy
from tasklease.store import Delete, Store, StoreConfig
from tasklease.worker import Worker, WorkerConfig

registry = Registry()
GATES: dict[str, asyncio.Event] = {}


@registry.task
async def fail_long(blob: str) -> None:
    """Fails with an error that is long once in JSON (control characters are escaped 6 to 1)."""
    raise RuntimeError("\x01" * 5000)


@registry.task
async def big_result(size: int, gate: str) -> str:
    """Returns ``size`` bytes once the test opens ``gate``."""
    await GATES[gate].wait()
    return "r" * size


class CountingStore(FaultyStore):
    """A FaultyStore that also counts the transactions refused for their size."""

    refused = 0

    async def txn(self, *args, **kwargs):
        try:
            return await super().txn(*args, **kwargs)
        except StoreRequestTooLarge:
            self.refused += 1
            raise


@pytest.fixture
async def faulty(store_config: StoreConfig) -> AsyncIterator[CountingStore]:
    async with CountingStore(store_config) as s:
        yield s


@pytest.fixture
async def make_worker(keyspace: Keyspace) -> AsyncIterator[Callable]:
    workers: list[Worker] = []

    async def make(store: Store, **config) -> Worker:
        config.setdefault("lease_ttl_s", 3)
        config.setdefault("heartbeat_s", 0.5)
        config.setdefault("worker_id", f"w{len(workers)}")
        reg = builtin_registry()
        reg.update([registry])
        worker = Worker(store, keyspace, reg, WorkerConfig(**config))
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


async def nothing_left(store: Store, keyspace: Keyspace) -> None:
    for prefix in (keyspace.queues, keyspace.assignments, keyspace.running, keyspace.delayed):
        assert (await store.range(prefix, prefix_end(prefix), keys_only=True)).kvs == [], prefix


async def test_a_retry_too_large_to_requeue_fails_with_a_clear_error(client, store, keyspace, make_worker):
    # Given a payload near the 512 KiB maximum, whose attempts fail with long errors
    worker = await make_worker(store)
    blob = "x" * (500 * 1024)
    task = await client.submit("fail_long", {"blob": blob}, retry=RetryPolicy(max_retries=50, backoff_s=0))
    # When it is run again and again (each failure adds its error to the record) ...
    record: Task | None = None
    for attempt in range(1, 40):
        assigned = await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
        assert assigned is not None and assigned.current_attempt is not None
        record = await until(
            lambda: state_is_not(client, task.id, TaskState.RUNNING),
            within_s=10,
            what=f"attempt {attempt} to be recorded",
        )
        if record.state is not TaskState.QUEUED:
            break
        kv, _ = await store.get(keyspace.task(task.id))
        assert kv is not None and len(kv.value) <= codec.MAX_QUEUED_RECORD_BYTES
    # ... then once the record would be too large to requeue, the task fails, saying so
    assert record is not None
    assert record.state is TaskState.FAILED, record.state
    assert attempt > 2, "the record grew over several attempts"
    assert record.attempts[-1].outcome is Outcome.FAILED
    assert (record.error or "").startswith("not retried: the task record grew too large to requeue")
    assert "RuntimeError" in (record.error or "")
    assert record.payload == {"blob": blob}
    kv, _ = await store.get(keyspace.task(task.id))
    assert kv is not None and len(kv.value) <= codec.MAX_RECORD_BYTES
    await nothing_left(store, keyspace)


async def test_an_outcome_refused_for_its_size_becomes_a_bounded_failure(
    client, faulty, keyspace, make_worker
):
    # Given a worker whose next result transaction is refused as too large
    worker = await make_worker(faulty)
    mine = keyspace.worker_assignments(worker.id)

    def result_txn(compares, success, failure=()) -> bool:
        return any(isinstance(op, Delete) and op.key.startswith(mine) for op in success)

    fault = faulty.fail("txn", lambda: StoreRequestTooLarge("request is too large"), when=result_txn)
    task = await client.submit("noop", {"x": 1}, retry=RetryPolicy(max_retries=3, backoff_s=0))
    await assign_next(faulty, keyspace, "default", worker.id, worker.lease_id, time.time())
    # Then the outcome is not dropped: the task fails, saying why (and is not retried in a loop)
    final = await client.wait(task.id, timeout_s=10)
    assert fault.fired == 1
    assert final.state is TaskState.FAILED
    assert "too large to write" in (final.error or "")
    assert final.result is None
    assert [a.outcome for a in final.attempts] == [Outcome.FAILED]
    await nothing_left(faulty, keyspace)
    # and the worker goes on
    follow = await client.submit("noop", 2)
    await assign_next(faulty, keyspace, "default", worker.id, worker.lease_id, time.time())
    assert (await client.wait(follow.id, timeout_s=10)).result == 2


async def test_outcomes_ready_together_are_grouped_within_the_transaction_size(
    client, faulty, keyspace, make_worker
):
    # Given four tasks with results of ~450 KB each, finishing at the same moment
    worker = await make_worker(faulty, concurrency=4)
    GATES["together"] = asyncio.Event()
    tasks = [await client.submit("big_result", {"size": 450_000, "gate": "together"}) for _ in range(4)]
    for _ in tasks:
        await assign_next(faulty, keyspace, "default", worker.id, worker.lease_id, time.time())
    await until(lambda: worker.running == 4, within_s=10, what="four tasks running")
    GATES["together"].set()
    finals = [await client.wait(t.id, timeout_s=20) for t in tasks]
    # Then all are recorded, and no transaction was too large to send
    assert all(f.state is TaskState.SUCCEEDED and len(f.result) == 450_000 for f in finals)
    assert faulty.refused == 0
