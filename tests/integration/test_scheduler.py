"""The scheduler (in this process) with in-process workers against a real etcd."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import sample_tasks
from tasklease import codec
from tasklease.client import Client, TaskSpec
from tasklease.keys import prefix_end
from tasklease.models import Outcome, TaskState
from tasklease.retry import RetryPolicy


async def wait_all(client: Client, ids: list[str], timeout_s: float = 60):
    return await asyncio.gather(*(client.wait(i, timeout_s=timeout_s) for i in ids))


async def test_500_tasks_across_2_workers_each_succeeds_once(client, cluster, store, keyspace):
    await cluster.scheduler()
    w0 = await cluster.worker(concurrency=8)
    w1 = await cluster.worker(concurrency=8)
    batch = await client.submit_many(TaskSpec("noop", {"i": i}) for i in range(500))
    finals = await wait_all(client, [t.id for t in batch.tasks])
    assert all(f.state is TaskState.SUCCEEDED for f in finals)
    assert all(len(f.attempts) == 1 for f in finals)
    assert [f.result for f in finals] == [{"i": i} for i in range(500)]
    per_worker = Counter(f.attempts[0].worker for f in finals)
    assert set(per_worker) == {w0.id, w1.id}
    stats = await client.stats()
    assert stats["queues"]["default"]["succeeded"] == 500
    assert stats["workers"]["live"] == 2
    assert stats["workers"]["capacity"] == 16
    assert stats["throughput"]["finished"] == 500
    # nothing left behind
    for prefix in (keyspace.assignments, keyspace.running, keyspace.queues):
        assert (await store.range(prefix, prefix_end(prefix))).kvs == []


async def test_higher_priority_submitted_later_runs_first(client, cluster):
    # Given one worker of concurrency 1 and 50 priority-0 tasks queued
    await cluster.worker(concurrency=1)
    low = (
        await client.submit_many(TaskSpec("sleep", {"seconds": 0.02}, priority=0) for _ in range(50))
    ).tasks
    await cluster.scheduler()
    await asyncio.sleep(0.3)  # some low ones start
    # When 5 urgent tasks are submitted
    submitted_at = time.time()
    urgent = [await client.submit("sleep", {"seconds": 0.02}, priority=3) for _ in range(5)]
    finals = {f.id: f for f in await wait_all(client, [t.id for t in low + urgent])}
    urgent_starts = [finals[t.id].attempts[0].started_at for t in urgent]
    later_low = [
        finals[t.id].attempts[0].started_at for t in low if finals[t.id].attempts[0].started_at > submitted_at
    ]
    # Then every urgent task started before every low task that had not started yet
    # (at most the one that was already assigned may run in between)
    assert len(later_low) > 5
    assert sum(1 for s in later_low if s < max(urgent_starts)) <= 1
    assert urgent_starts == sorted(urgent_starts)  # FIFO within a priority


async def test_two_schedulers_at_once_never_assign_twice(client, cluster):
    await cluster.scheduler()
    await cluster.scheduler()
    for _ in range(3):
        await cluster.worker(concurrency=10)
    batch = await client.submit_many(TaskSpec("noop", {"i": i}) for i in range(2000))
    finals = await wait_all(client, [t.id for t in batch.tasks], timeout_s=120)
    assert all(f.state is TaskState.SUCCEEDED for f in finals)
    successes = Counter(f.id for f in finals for a in f.attempts if a.outcome is Outcome.SUCCEEDED)
    assert set(successes.values()) == {1}
    assert all(len(f.attempts) == 1 for f in finals)
    assert sum(1 for s in cluster.schedulers if s.leading.is_set()) == 1


async def test_capacity_is_never_exceeded(client, cluster, store, keyspace):
    sample_tasks.PROBE.update(now=0, max=0)
    await cluster.scheduler(batch_size=30)
    await cluster.worker(concurrency=3)
    batch = await client.submit_many(TaskSpec("probe", {"seconds": 0.05}) for _ in range(60))
    # While they run, the worker never holds more assignments than its capacity
    observed = 0
    done = asyncio.create_task(wait_all(client, [t.id for t in batch.tasks]))
    while not done.done():
        held = await store.range(keyspace.assignments, prefix_end(keyspace.assignments), count_only=True)
        observed = max(observed, held.count)
        assert held.count <= 3
        await asyncio.sleep(0.01)
    assert all(f.state is TaskState.SUCCEEDED for f in done.result())
    assert observed >= 1
    assert sample_tasks.PROBE["max"] <= 3


async def test_tasks_only_go_to_workers_serving_their_queue(client, cluster):
    await cluster.scheduler()
    a = await cluster.worker(queues=("a",))
    b = await cluster.worker(queues=("b", "default"))
    ta = [await client.submit("noop", queue="a") for _ in range(10)]
    tb = [await client.submit("noop", queue="b") for _ in range(10)]
    tc = await client.submit("noop", queue="nobody")
    finals = await wait_all(client, [t.id for t in ta + tb])
    assert {f.attempts[0].worker for f in finals[:10]} == {a.id}
    assert {f.attempts[0].worker for f in finals[10:]} == {b.id}
    assert (await client.get(tc.id)).state is TaskState.QUEUED  # no worker serves it: it waits


async def test_retry_backoff_is_respected(client, cluster):
    await cluster.scheduler()
    await cluster.worker()
    task = await client.submit("fail", retry=RetryPolicy(max_retries=2, backoff_s=0.5, jitter=0))
    final = await client.wait(task.id, timeout_s=20)
    assert final.state is TaskState.FAILED
    assert [a.outcome for a in final.attempts] == [Outcome.FAILED] * 3
    a1, a2, a3 = final.attempts
    assert a2.started_at >= a1.finished_at + 0.5
    assert a3.started_at >= a2.finished_at + 1.0  # doubled


async def test_retry_then_success_and_no_backoff(client, cluster):
    await cluster.scheduler()
    await cluster.worker()
    task = await client.submit("fail", retry=RetryPolicy(max_retries=1, backoff_s=0))
    final = await client.wait(task.id, timeout_s=10)
    assert [a.outcome for a in final.attempts] == [Outcome.FAILED, Outcome.FAILED]


async def test_worker_lost_mid_task_is_rerun_elsewhere(client, cluster, store):
    await cluster.scheduler()
    first = await cluster.worker(lease_ttl_s=2, heartbeat_s=0.3)
    task = await client.submit("sleep", {"seconds": 1.0})
    for _ in range(200):
        if first.running:
            break
        await asyncio.sleep(0.02)
    assert first.running == 1
    second = await cluster.worker(lease_ttl_s=2, heartbeat_s=0.3)
    # When the first worker's lease ends (as on a crash: revoke it behind its back)
    await first.kill()
    final = await client.wait(task.id, timeout_s=20)
    assert final.state is TaskState.SUCCEEDED
    assert [(a.worker, a.outcome) for a in final.attempts] == [
        (first.id, Outcome.LOST),
        (second.id, Outcome.SUCCEEDED),
    ]


async def test_overdue_task_is_ended_by_the_scheduler(client, cluster, store, keyspace):
    # Given a "worker" that registers but never runs anything (no report will come)
    lease = await store.grant(30)
    node = {"id": "silent", "queues": ["default"], "capacity": 1, "lease": lease, "types": ["noop"]}
    await store.put(keyspace.node("silent"), codec.encode_obj(node), lease=lease)
    await cluster.scheduler(deadline_grace_s=0.3)
    task = await client.submit("noop", timeout_s=0.5, retry=RetryPolicy(max_retries=0))
    final = await client.wait(task.id, timeout_s=10)
    # Then after timeout + grace the scheduler records a timeout and fails it
    assert final.state is TaskState.FAILED
    assert final.attempts[-1].outcome is Outcome.TIMEOUT
    assert "no report from worker silent" in (final.error or "")
    assert (await store.get(keyspace.assignment("silent", task.id)))[0] is None
    await store.revoke(lease)


async def test_standby_takes_over_when_the_leader_resigns(client, cluster):
    s0 = await cluster.scheduler()
    await asyncio.wait_for(s0.leading.wait(), 5)
    s1 = await cluster.scheduler()
    await cluster.worker()
    await s0.stop()
    await asyncio.wait_for(s1.leading.wait(), 5)
    task = await client.submit("noop", 1)
    assert (await client.wait(task.id, timeout_s=10)).result == 1


async def test_deposed_leader_writes_fail(client, cluster, store, keyspace):
    s0 = await cluster.scheduler()
    await asyncio.wait_for(s0.leading.wait(), 5)
    # When the leader key is deleted behind its back, its fenced writes fail
    await store.delete(keyspace.leader)
    from tasklease.store import Put

    result = await store.txn([s0.election.fence()], [Put(keyspace.root + "probe", b"x")])
    assert not result.succeeded


async def test_corrupt_queued_record_is_skipped(client, cluster, store, keyspace, caplog):
    bad = await client.submit("noop", priority=3)
    await store.put(keyspace.task(bad.id), b"{not json")
    good = await client.submit("noop", "fine", priority=0)
    await cluster.scheduler()
    await cluster.worker()
    assert (await client.wait(good.id, timeout_s=10)).result == "fine"
    assert any("skipping queued task" in r.getMessage() for r in caplog.records)


async def test_waits_for_own_tasks_that_finished_before_the_wait(client, cluster):
    await cluster.scheduler()
    await cluster.worker()
    first, second = await client.submit("noop", -1), await client.submit("noop", -2)
    # two waits at once: from now on this client's waits share one result watch
    await asyncio.gather(client.wait(first.id, timeout_s=10), client.wait(second.id, timeout_s=10))
    assert client._hub.running
    tasks = [await client.submit("noop", i) for i in range(20)]
    # Given they all finish before anyone waits (the client remembers their outcomes) ...
    for _ in range(100):
        if (await client.stats())["states"]["succeeded"] == 22:
            break
        await asyncio.sleep(0.05)
    # ... then each wait returns its own record
    finals = [await client.wait(t.id, timeout_s=10) for t in tasks]
    assert [f.result for f in finals] == list(range(20))
    assert all(f.state is TaskState.SUCCEEDED for f in finals)
