"""Finished tasks expire after their retention, by etcd lease (L4)."""

from __future__ import annotations

import asyncio
import time

import pytest

import sample_tasks
from tasklease.client import Client
from tasklease.clock import FakeClock
from tasklease.errors import InvalidOption, TaskNotFound
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import prefix_end
from tasklease.models import TaskState
from tasklease.queue import assign_next
from tasklease.retention import bucket_seconds
from tasklease.worker import Worker, WorkerConfig


async def gone_within(client, task_id: str, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            await client.get(task_id)
        except TaskNotFound:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"task {task_id} still there after {seconds} s")


async def published_leases(store, keyspace, retention_s: int) -> dict[str, int]:
    """``retention/{r}/{bucket}`` key -> the lease id it publishes (checked to be under that lease)."""
    prefix = f"{keyspace.root}retention/{retention_s}/"
    found = {}
    for kv in (await store.range(prefix, prefix_end(prefix))).kvs:
        assert kv.lease == int(kv.value), "a retention key lives under the lease it names"
        found[kv.key] = int(kv.value)
    return found


async def record_leases(store, keyspace, task_ids) -> list[int]:
    leases = []
    for task_id in task_ids:
        kv, _ = await store.get(keyspace.task(task_id))
        assert kv is not None
        leases.append(kv.lease)
    return leases


async def test_finished_task_disappears_after_a_short_retention(client, store, keyspace):
    reg = builtin_registry()
    reg.update([sample_tasks.registry])
    worker = Worker(store, keyspace, reg, WorkerConfig(worker_id="wr", lease_ttl_s=3, heartbeat_s=0.5))
    await worker.start()
    try:
        short = await client.submit("noop", 1, retention_s=2)
        kept = await client.submit("noop", 2)  # default retention: 7 days
        # tasks of one retention (an hour: buckets of 36 s) finished together
        hour = [await client.submit("noop", {"h": i}, retention_s=3600) for i in range(4)]
        for _ in range(6):
            await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
        assert (await client.wait(short.id, timeout_s=10)).state is TaskState.SUCCEEDED
        assert (await client.wait(kept.id, timeout_s=10)).state is TaskState.SUCCEEDED
        for task in hour:
            assert (await client.wait(task.id, timeout_s=10)).state is TaskState.SUCCEEDED
        # The finished record is under a lease: it goes by itself within retention + 2 buckets (1 s each)
        kv, _ = await store.get(keyspace.task(short.id))
        assert kv is not None and kv.lease != 0
        # Finished records of one retention and bucket share one lease: the one published
        # for their bucket (4 records finished within a few seconds span at most 2 buckets)
        leases = await record_leases(store, keyspace, [t.id for t in hour])
        published = await published_leases(store, keyspace, 3600)
        assert 0 not in leases
        assert set(leases) <= set(published.values())
        assert len(set(leases)) <= 2 < len(leases)
        assert kv.lease not in leases  # another retention, another lease
        assert kv.lease in (await published_leases(store, keyspace, 2)).values()
        waited = await gone_within(client, short.id, 8)
        assert waited <= 5.5
        assert (await client.get(kept.id)).state is TaskState.SUCCEEDED
    finally:
        await worker.kill()


async def test_records_finished_in_one_bucket_share_its_lease(store, keyspace):
    # Given a client whose clock stands still: every cancel falls in one time bucket
    clock = FakeClock(time.time())
    async with Client(store, keyspace, clock=clock) as client:
        tasks = [await client.submit("noop", {"i": i}, retention_s=500) for i in range(5)]
        other = await client.submit("noop", retention_s=600)
        for task in [*tasks, other]:
            await client.cancel(task.id)
        # Then the five records of retention 500 are under one lease, published for that bucket
        leases = await record_leases(store, keyspace, [t.id for t in tasks])
        bucket = int(clock.now() // bucket_seconds(500))
        published = await published_leases(store, keyspace, 500)
        assert published == {keyspace.retention(500, bucket): leases[0]}
        assert leases == [leases[0]] * 5 and leases[0] != 0
        # and the record of another retention is under another lease
        (other_lease,) = await record_leases(store, keyspace, [other.id])
        assert other_lease not in (0, leases[0])
        assert set((await published_leases(store, keyspace, 600)).values()) == {other_lease}
        # When the clock moves to the next bucket, a new lease is used
        clock.advance(bucket_seconds(500))
        late = await client.submit("noop", retention_s=500)
        await client.cancel(late.id)
        (late_lease,) = await record_leases(store, keyspace, [late.id])
        assert late_lease not in (0, leases[0])


async def test_cancelled_task_expires_too(client):
    task = await client.submit("noop", retention_s=1)
    await client.cancel(task.id)
    await gone_within(client, task.id, 6)


async def test_waiting_tasks_never_expire(client, store, keyspace):
    # Given a waiting task and a finished one, both with a retention of 1 s
    waiting = await client.submit("noop", retention_s=1)
    finished = await client.submit("noop", retention_s=1)
    await client.cancel(finished.id)
    kv, _ = await store.get(keyspace.task(waiting.id))
    assert kv is not None and kv.lease == 0  # only finished records are under a lease
    # When the retention has passed (the finished one expired) ...
    await gone_within(client, finished.id, 10)
    # Then the waiting task is still there, queued, with its queue key, under no lease
    kv, _ = await store.get(keyspace.task(waiting.id))
    assert kv is not None and kv.lease == 0
    assert (await client.get(waiting.id)).state is TaskState.QUEUED
    queued = await client.list(state=TaskState.QUEUED, queue="default")
    assert [t.id for t in queued] == [waiting.id]


async def test_retention_is_validated(client):
    for bad in (0, -1, 10**9, "x"):
        with pytest.raises(InvalidOption):
            await client.submit("noop", retention_s=bad)
