"""Malformed records planted by hand under our prefix: everyone skips them and serves the rest (F6)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest

import sample_tasks
from tasklease.errors import CorruptRecord
from tasklease.executors.builtin import builtin_registry
from tasklease.models import TaskState
from tasklease.queue import assign_next
from tasklease.scheduler import Scheduler, SchedulerConfig
from tasklease.store import Store
from tasklease.worker import Worker, WorkerConfig


@pytest.fixture
async def system(store_config, keyspace):
    stores: list[Store] = []
    parts: list[Worker | Scheduler] = []

    async def start_worker(worker_id: str) -> Worker:
        s = Store(store_config)
        await s.connect()
        stores.append(s)
        reg = builtin_registry()
        reg.update([sample_tasks.registry])
        w = Worker(s, keyspace, reg, WorkerConfig(worker_id=worker_id, lease_ttl_s=3, heartbeat_s=0.5))
        await w.start()
        parts.append(w)
        return w

    async def start_scheduler() -> Scheduler:
        s = Store(store_config)
        await s.connect()
        stores.append(s)
        sched = Scheduler(s, keyspace, SchedulerConfig(scheduler_id="sbad", lease_ttl_s=3))
        await sched.start()
        parts.append(sched)
        return sched

    yield start_worker, start_scheduler
    for p in parts:
        if isinstance(p, Worker):
            await p.kill()
        else:
            await p.stop()
    for s in stores:
        await s.close()


async def test_scheduler_skips_malformed_node_queue_and_running_keys(client, store, keyspace, system, caplog):
    start_worker, start_scheduler = system
    # Given garbage under our prefix: a node record that is not JSON, a queue key
    # that does not parse, a running-index entry with missing fields
    lease = await store.grant(30)
    await store.put(keyspace.node("garbage"), b"\x00not json", lease=lease)
    await store.put(keyspace.queue("default") + "not-a-queue-key", b"x")
    await store.put(keyspace.running_entry("01J00000000000000000000000"), b'{"worker": 1}')
    # When the system runs
    await start_worker("wgood")
    await start_scheduler()
    tasks = [await client.submit("noop", i) for i in range(5)]
    # Then everything else is served
    for t in tasks:
        assert (await client.wait(t.id, timeout_s=10)).state is TaskState.SUCCEEDED
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "bad node record" in messages
    assert "malformed queue key" in messages
    assert "corrupt running entry" in messages
    await store.revoke(lease)


async def test_worker_skips_a_corrupt_assignment(client, store, keyspace, system, caplog):
    start_worker, _ = system
    worker = await start_worker("wskip")
    # A corrupt assignment under the worker's own lease ...
    await store.put(
        keyspace.assignment(worker.id, "01J00000000000000000000001"), b"{broken", lease=worker.lease_id
    )
    # ... is skipped, and the next real one still runs
    task = await client.submit("noop", "ok")
    await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    assert (await client.wait(task.id, timeout_s=10)).result == "ok"
    assert any("corrupt assignment" in r.getMessage() for r in caplog.records)


async def test_corrupt_task_record_is_a_clear_error_and_listings_skip_it(
    client, store, keyspace, tasklease_bin, cli_env
):
    good = await client.submit("noop")
    bad = await client.submit("noop")
    await store.put(keyspace.task(bad.id), b'{"v": 99}')
    with pytest.raises(CorruptRecord):
        await client.get(bad.id)
    assert [t.id for t in await client.list()] == [good.id]
    out = subprocess.run(
        [tasklease_bin, "status", bad.id], env=cli_env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 1
    assert out.stderr.startswith("tasklease: error: corrupt record")
    assert "Traceback" not in out.stderr
    listed = subprocess.run(
        [tasklease_bin, "list", "--json"], env=cli_env, capture_output=True, text=True, timeout=30
    )
    assert [r["id"] for r in json.loads(listed.stdout)] == [good.id]


async def test_a_running_entry_whose_record_is_gone_or_corrupt_is_dropped(
    client, store, keyspace, system, caplog
):
    _, start_scheduler = system
    # Given running-index entries, overdue, for a task record that is missing and one that is corrupt
    corrupt = await client.submit("noop")
    await store.put(keyspace.task(corrupt.id), b"{corrupt")
    for task_id in ("01J00000000000000000000009", corrupt.id):
        await store.put(keyspace.running_entry(task_id), b'{"worker": "ghost", "n": 1, "deadline": 0}')
    # When a scheduler leads
    await start_scheduler()
    # Then both entries are dropped (not examined again and again), with an error log each
    for _ in range(100):
        left = await store.range(keyspace.running, keyspace.running[:-1] + "0", count_only=True)
        if left.count == 0:
            break
        await asyncio.sleep(0.05)
    assert left.count == 0
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "has no record" in messages
    assert "cannot repair" in messages
