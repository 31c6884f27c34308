"""Finished tasks expire after their retention, by etcd lease (L4)."""

from __future__ import annotations

import asyncio
import time

import pytest

import sample_tasks
from tasklease.errors import InvalidOption, TaskNotFound
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import prefix_end
from tasklease.models import TaskState
from tasklease.queue import assign_next
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


async def test_finished_task_disappears_after_a_short_retention(client, store, keyspace):
    reg = builtin_registry()
    reg.update([sample_tasks.registry])
    worker = Worker(store, keyspace, reg, WorkerConfig(worker_id="wr", lease_ttl_s=3, heartbeat_s=0.5))
    await worker.start()
    try:
        short = await client.submit("noop", 1, retention_s=2)
        kept = await client.submit("noop", 2)  # default retention: 7 days
        for _ in range(2):
            await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
        assert (await client.wait(short.id, timeout_s=10)).state is TaskState.SUCCEEDED
        assert (await client.wait(kept.id, timeout_s=10)).state is TaskState.SUCCEEDED
        # The finished record is under a lease: it goes by itself within retention + 2 buckets (1 s each)
        kv, _ = await store.get(keyspace.task(short.id))
        assert kv is not None and kv.lease != 0
        waited = await gone_within(client, short.id, 8)
        assert waited <= 5.5
        assert (await client.get(kept.id)).state is TaskState.SUCCEEDED
        # tasks of one retention and bucket share one lease
        retention_keys = await store.range(
            f"{keyspace.root}retention/", prefix_end(f"{keyspace.root}retention/")
        )
        assert all(k.key.startswith(f"{keyspace.root}retention/") for k in retention_keys.kvs)
    finally:
        await worker.kill()


async def test_cancelled_task_expires_too(client):
    task = await client.submit("noop", retention_s=1)
    await client.cancel(task.id)
    await gone_within(client, task.id, 6)


async def test_waiting_tasks_never_expire(client, store, keyspace):
    task = await client.submit("noop", retention_s=1)
    kv, _ = await store.get(keyspace.task(task.id))
    assert kv is not None and kv.lease == 0  # only finished records are under a lease


async def test_retention_is_validated(client):
    for bad in (0, -1, 10**9, "x"):
        with pytest.raises(InvalidOption):
            await client.submit("noop", retention_s=bad)
