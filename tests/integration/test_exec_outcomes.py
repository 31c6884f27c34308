"""Outcomes a worker (in this process) must never lose or get wrong.

- etcd out of space (NOSPACE): a finished outcome is kept and written once etcd
  accepts writes again, not dropped (and later recorded as a timeout).
- A task whose type the worker does not run (a race with a restart under another
  image) is handed back to its queue, keeping its place, instead of failing.

Assignments are written by hand (``queue.assign_next``, as the scheduler does);
the worker's store is a :class:`FaultyStore` (the real store, failing chosen calls).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import cast

import pytest

import sample_tasks
from faults.procs import until
from faultstore import FaultyStore, writes_under
from tasklease import codec
from tasklease.client import Client
from tasklease.errors import StoreNoSpace
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Outcome, TaskState
from tasklease.queue import assign_next
from tasklease.retry import RetryPolicy
from tasklease.store import KV, Store, StoreConfig
from tasklease.worker import Worker, WorkerConfig

NOSPACE = "etcd is out of space (txn refused: etcdserver: mvcc: database space exceeded)"


@pytest.fixture
async def faulty(store_config: StoreConfig) -> AsyncIterator[FaultyStore]:
    s = FaultyStore(store_config)
    await s.connect()
    yield s
    await s.close()


@pytest.fixture
async def worker(faulty: FaultyStore, keyspace: Keyspace) -> AsyncIterator[Worker]:
    registry = builtin_registry()
    registry.update([sample_tasks.registry])
    w = Worker(faulty, keyspace, registry, WorkerConfig(worker_id="wout", lease_ttl_s=3, heartbeat_s=0.5))
    await w.start()
    yield w
    await w.kill()


def nospace_warnings(caplog: pytest.LogCaptureFixture, task_id: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING
        and "NOSPACE" in r.getMessage()
        and getattr(r, "task_id", None) == task_id
    ]


async def test_an_outcome_refused_for_nospace_is_kept_and_recorded_later(
    client: Client, store: Store, keyspace: Keyspace, faulty: FaultyStore, worker: Worker, caplog
):
    caplog.set_level(logging.INFO, logger="tasklease")
    task = await client.submit("noop", {"kept": True}, retry=RetryPolicy(max_retries=3))
    # Every write of the outcome is refused 5 times, as etcd does at its space quota
    fault = faulty.fail(
        "txn", lambda: StoreNoSpace(NOSPACE), times=5, when=writes_under(keyspace.task(task.id))
    )
    await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    final = await client.wait(task.id, timeout_s=60)
    assert fault.fired == 5
    assert final.state is TaskState.SUCCEEDED, final
    assert final.result == {"kept": True}
    assert [a.outcome for a in final.attempts] == [Outcome.SUCCEEDED]
    warned = nospace_warnings(caplog, task.id)
    assert len(warned) == 1, [r.getMessage() for r in warned]
    assert "compact and defragment" in warned[0].getMessage() and "alarm disarm" in warned[0].getMessage()
    for prefix in (keyspace.assignments, keyspace.running):
        assert (await store.range(prefix, prefix_end(prefix))).kvs == []


async def test_outcomes_written_together_are_each_kept_through_nospace(
    client: Client, store: Store, keyspace: Keyspace, faulty: FaultyStore, worker: Worker, caplog
):
    caplog.set_level(logging.INFO, logger="tasklease")
    tasks = [await client.submit("noop", i) for i in range(4)]
    fault = faulty.fail("txn", lambda: StoreNoSpace(NOSPACE), times=12, when=writes_under(keyspace.tasks))
    for _ in tasks:
        await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    for i, task in enumerate(tasks):
        final = await client.wait(task.id, timeout_s=60)
        assert final.state is TaskState.SUCCEEDED and final.result == i, final
        assert len(final.attempts) == 1
    assert fault.fired == 12


async def test_a_task_of_a_type_the_worker_lacks_is_handed_back_keeping_its_place(
    client: Client, store: Store, keyspace: Keyspace, worker: Worker
):
    # "shell" is not enabled on this worker (no --allow): as if it had restarted under another image
    task = await client.submit("shell", {"argv": ["true"]}, retry=RetryPolicy(max_retries=0, max_losses=1))
    behind = await client.submit("noop", "behind")
    running = await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    assert running is not None and running.id == task.id

    async def back() -> object:
        record = await client.get(task.id)
        return record if record.state is TaskState.QUEUED else None

    record = await until(back, within_s=20, what="the task handed back to its queue")
    assert [a.outcome for a in record.attempts] == [Outcome.HANDED_BACK]
    assert record.attempts[0].worker == worker.id
    error = record.attempts[0].error or ""
    assert "'shell'" in error and "noop" in error, error
    assert record.seq == task.seq, "it keeps its place in its queue"
    queue = await store.range(keyspace.queue("default"), prefix_end(keyspace.queue("default")))
    keys = [keyspace.parse_queue_entry(kv.key).task_id for kv in queue.kvs]
    assert keys == [task.id, behind.id], "still ahead of the task submitted after it"
    for prefix in (keyspace.assignments, keyspace.running):
        assert (await store.range(prefix, prefix_end(prefix))).kvs == []


async def test_the_node_record_lists_exactly_the_types_the_worker_runs(
    store: Store, keyspace: Keyspace, worker
):
    kv, _ = await store.get(keyspace.node(worker.id))
    node = codec.decode_obj(cast(KV, kv).key, cast(KV, kv).value)
    assert node["types"] == sorted({"noop", "sleep", *sample_tasks.registry.names})
    assert "shell" not in node["types"] and "http" not in node["types"]


@pytest.mark.parametrize("type_", ["retry_later", "async_retry_later"])
async def test_a_task_raising_retry_waits_the_delay_it_asked_for_and_counts_as_a_failure(
    client: Client, store: Store, keyspace: Keyspace, worker: Worker, type_: str
):
    # The policy's backoff (0 s) would queue it again at once; Retry(after=300) replaces it.
    policy = RetryPolicy(max_retries=2, backoff_s=0.0, jitter=0.0)
    task = await client.submit(type_, {"after": 300}, retry=policy)
    before = time.time()
    await assign_next(store, keyspace, "default", worker.id, worker.lease_id, before)

    async def pending() -> object:
        record = await client.get(task.id)
        return record if record.state is TaskState.PENDING else None

    record = await until(pending, within_s=30, what="the task pending after its Retry")
    assert record.not_before is not None
    assert before + 300 <= record.not_before <= time.time() + 300
    assert [a.outcome for a in record.attempts] == [Outcome.FAILED]
    assert "retry" in (record.error or "").lower()
    assert record.failures == 1
    # its delayed key exists: the scheduler promotes it when the delay has passed
    assert (await store.get(keyspace.delayed_entry(record.not_before, task.id)))[0] is not None
