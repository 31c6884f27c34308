"""Realistic payload sizes through the whole path, against a real etcd (issue: step 6).

The payload matrix: 0 B, 4.5 KB, 64 KB, 200 KB and the 512 KiB maximum, each
submitted one by one (group commit) and in batches, queued deep *before* any
scheduler starts (the first leader loads the queue keys-first), assigned,
handed to a second leader mid-stream, run, listed and counted. Beside it: a
retried task accumulating attempts stays within its limits, store errors never
end leadership, and bad items are failed or dropped without stopping the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
import pytest

from faults.procs import until
from faultstore import FaultyStore, writes_under
from tasklease import codec
from tasklease.client import TaskSpec
from tasklease.clock import SystemClock
from tasklease.errors import StoreAuthError, StoreNoSpace, StoreRequestTooLarge, WatchTooLarge
from tasklease.models import MAX_ERROR_BYTES, Outcome, Task, TaskState
from tasklease.retry import RetryPolicy
from tasklease.scheduler import Scheduler, SchedulerConfig
from tasklease.store import Compare, Get, Put, Store, StoreConfig

SIZES = {
    "0B": (0, 300),
    "4.5KB": (4500, 1000),
    "64KB": (64 * 1024, 60),
    "200KB": (200 * 1024, 25),
    "512KiB": (codec.MAX_PAYLOAD_BYTES, 8),
}


def payload(size: int, n: int) -> dict | None:
    """A JSON payload of exactly ``size`` encoded bytes (None for 0)."""
    if size == 0:
        return None
    base = len(orjson.dumps({"pad": "", "n": n}))
    return {"pad": "x" * (size - base), "n": n}


def spec(size: int, n: int, **options) -> TaskSpec:
    if size == 0:
        return TaskSpec("noop", None, **options)
    return TaskSpec("pad_echo", payload(size, n), **options)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("label", list(SIZES))
async def test_payload_matrix_deep_queue_two_leaders_list_and_stats(label, client, cluster, store, keyspace):
    size, count = SIZES[label]
    assert len(orjson.dumps(payload(size, 7))) == size or size == 0

    # Given a deep queue of tasks of this size, queued before any scheduler runs:
    # half in batches, half as concurrent single submits (group commit)
    half = count // 2
    batch = await client.submit_many(spec(size, n) for n in range(half))
    singles = await asyncio.gather(*(client.submit_spec(spec(size, n)) for n in range(half, count)))
    ids = [t.id for t in batch.tasks] + [t.id for t in singles]
    assert len(set(ids)) == count

    # Then listing and stats read them all (pages bounded by bytes)
    listed = await client.list(state=TaskState.QUEUED, limit=count + 10)
    assert {t.id for t in listed} == set(ids)
    stats = await client.stats()
    assert stats["states"]["queued"] == count

    # When two workers and two schedulers start; the first leader is stopped mid-stream
    await cluster.worker(worker_id="w-a", concurrency=8)
    await cluster.worker(worker_id="w-b", concurrency=8)
    first = await cluster.scheduler(scheduler_id="s-first")
    await asyncio.wait_for(first.leading.wait(), 30)
    second = await cluster.scheduler(scheduler_id="s-second")

    async def some_done() -> bool:
        return (await client.stats())["states"].get("succeeded", 0) >= count // 3

    await until(some_done, within_s=120, what="a third of the tasks to succeed")
    await first.stop()
    await asyncio.wait_for(second.leading.wait(), 30)

    # Then every task succeeds exactly once, with its payload as its result
    done = await asyncio.gather(*(client.wait(i, timeout_s=180) for i in ids))
    for task in done:
        assert task.state is TaskState.SUCCEEDED, (task.id, task.error)
        assert [a.outcome for a in task.attempts][-1] is Outcome.SUCCEEDED
        assert sum(1 for a in task.attempts if a.outcome is Outcome.SUCCEEDED) == 1
        if size:
            assert task.result == task.payload
    stats = await client.stats()
    assert stats["states"]["succeeded"] == count
    finished = await client.list(state=TaskState.SUCCEEDED, limit=count + 10)
    assert len(finished) == count


@pytest.mark.timeout(180)
@pytest.mark.parametrize("size", [4500, 200 * 1024, codec.MAX_PAYLOAD_BYTES])
async def test_retries_accumulate_attempts_within_the_record_limits(size, client, cluster):
    # Given a task of this size that fails 31 times with 8 KiB errors (no backoff)
    await cluster.worker(worker_id="w-a", concurrency=2)
    await cluster.scheduler()
    task = await client.submit("pad_fail", payload(size, 0), retry=RetryPolicy(max_retries=30, backoff_s=0))

    # When it has run out of retries
    final = await client.wait(task.id, timeout_s=150)

    # Then it failed once and for all, every attempt counted, its record bounded
    assert final.state is TaskState.FAILED
    assert final.failures == 31
    assert final.attempts[-1].number == 31
    assert len(final.attempts) == 23 and final.dropped.attempts == 8
    assert all(len((a.error or "").encode()) <= MAX_ERROR_BYTES for a in final.attempts)
    assert "truncated" in (final.attempts[-1].error or "")
    assert len(codec.encode_task(final)) <= codec.MAX_RECORD_BYTES


@pytest.mark.timeout(120)
async def test_store_errors_pause_the_leader_but_never_end_its_leadership(
    client, cluster, store_config, keyspace, caplog
):
    # Given a leader whose store refuses some assignment transactions and record reads
    # (auth, NOSPACE, too large) before etcd sees them
    faulty = FaultyStore(store_config)
    await faulty.connect()
    try:
        assign = writes_under(keyspace.assignments)
        faulty.fail(
            "txn", lambda: StoreAuthError("etcd refused txn: permission denied"), times=2, when=assign
        )
        faulty.fail("txn", lambda: StoreNoSpace("etcd is out of space"), times=2, when=assign)
        faulty.fail("txn", lambda: StoreRequestTooLarge("etcd txn too large"), times=1, when=assign)
        leader = Scheduler(faulty, keyspace, SchedulerConfig(scheduler_id="s-faulty", lease_ttl_s=3))
        await leader.start()
        await asyncio.wait_for(leader.leading.wait(), 30)
        token = leader.election.token
        await cluster.worker(worker_id="w-a", concurrency=4)

        # When tasks of 4.5 KB are submitted
        with caplog.at_level(logging.WARNING, logger="tasklease.scheduler"):
            tasks = [await client.submit_spec(spec(4500, n)) for n in range(40)]
            done = await asyncio.gather(*(client.wait(t.id, timeout_s=60) for t in tasks))

        # Then every one succeeds, all faults fired, and the leader never lost its leadership
        assert all(t.state is TaskState.SUCCEEDED for t in done)
        assert all(f.fired == f.times for f in faulty.faults)
        assert leader.leading.is_set() and leader.election.token == token
        assert "leadership lost" not in caplog.text
        assert "assignment paused" in caplog.text
        await leader.stop()
    finally:
        await faulty.close()


@pytest.mark.timeout(120)
async def test_recovery_reads_that_fail_are_retried_and_lost_tasks_still_return(
    client, cluster, store_config, keyspace, store
):
    # Given a leader whose first record reads for recovery are refused
    faulty = FaultyStore(store_config)
    await faulty.connect()
    try:

        def reads_records(compares, success, failure=()) -> bool:
            return bool(success) and all(
                isinstance(op, Get) and op.key.startswith(keyspace.tasks) for op in success
            )

        leader = Scheduler(faulty, keyspace, SchedulerConfig(scheduler_id="s-faulty", lease_ttl_s=3))
        await leader.start()
        await asyncio.wait_for(leader.leading.wait(), 30)
        token = leader.election.token
        doomed = await cluster.worker(worker_id="w-doomed", concurrency=4)
        tasks = [await client.submit("pad_sleep", {"pad": "p" * 4500, "seconds": 30}) for _ in range(3)]

        async def all_running() -> bool:
            return all([(await client.get(t.id)).state is TaskState.RUNNING for t in tasks])

        await until(all_running, within_s=30, what="three tasks running on the doomed worker")
        faulty.fail(
            "txn", lambda: StoreAuthError("etcd refused txn: permission denied"), times=3, when=reads_records
        )

        # When the worker dies (its lease revoked at once) and another joins
        await doomed.kill()
        await store.revoke(doomed.lease_id) if doomed.lease_id else None
        await cluster.worker(worker_id="w-next", concurrency=4)

        # Then the lost attempts are recovered after the refusals, by the same leader
        async def requeued() -> bool:
            return all([(await client.get(t.id)).attempts[0].outcome is Outcome.LOST for t in tasks])

        await until(requeued, within_s=60, what="the three attempts recorded lost")
        assert faulty.faults[0].fired == 3
        assert leader.leading.is_set() and leader.election.token == token
        await leader.stop()
    finally:
        await faulty.close()


class AheadClock(SystemClock):
    """A wall clock 60 s ahead of the others (monotonic time unchanged)."""

    def now(self) -> float:
        return super().now() + 60.0


@pytest.mark.timeout(90)
async def test_a_leader_whose_clock_runs_ahead_does_not_end_healthy_attempts(
    client, cluster, store_config, keyspace
):
    # Given a task of 4 s with a 20 s timeout, assigned by a leader with a correct clock
    await cluster.worker(worker_id="w-a")
    first = await cluster.scheduler(scheduler_id="s-on-time")
    task = await client.submit("sleep", {"seconds": 4}, timeout_s=20)

    async def running() -> bool:
        return (await client.get(task.id)).state is TaskState.RUNNING

    await until(running, within_s=30, what="the task running")

    # When a leader whose clock is 60 s ahead takes over (every deadline looks long past)
    s = Store(store_config)
    await s.connect()
    ahead = Scheduler(s, keyspace, SchedulerConfig(scheduler_id="s-ahead", lease_ttl_s=3), clock=AheadClock())
    await ahead.start()
    try:
        await first.stop()
        await asyncio.wait_for(ahead.leading.wait(), 30)

        # Then the attempt is not ended as a timeout: it succeeds, once
        final = await client.wait(task.id, timeout_s=40)
        assert final.state is TaskState.SUCCEEDED, final.attempts
        assert [a.outcome for a in final.attempts] == [Outcome.SUCCEEDED]
    finally:
        await ahead.stop()
        await s.close()


@pytest.mark.timeout(90)
async def test_delayed_keys_without_a_pending_record_are_deleted(client, cluster, store, keyspace):
    # Given delayed keys, already due, whose task is missing, corrupt or finished
    done = await client.submit("noop", {"x": 1})
    await cluster.worker(worker_id="w-a")
    await cluster.scheduler()
    await client.wait(done.id, timeout_s=30)
    await store.put(keyspace.task("01ARZ3NDEKTSV4RRFFQ69G5FAA"), b"{not json")
    planted = [
        keyspace.delayed_entry(time.time() - 5, "01ARZ3NDEKTSV4RRFFQ69G5FAZ"),  # no record
        keyspace.delayed_entry(time.time() - 5, "01ARZ3NDEKTSV4RRFFQ69G5FAA"),  # corrupt record
        keyspace.delayed_entry(time.time() - 5, done.id),  # finished task
    ]
    for key in planted:
        await store.put(key, key.rsplit("/", 1)[-1].encode())

    # Then the scheduler deletes them (instead of reading them again and again)
    async def gone() -> bool:
        return all([(await store.get(k))[0] is None for k in planted])

    await until(gone, within_s=30, what="the stale delayed keys deleted")
    # and keeps working
    later = await client.submit("noop", {"x": 2})
    assert (await client.wait(later.id, timeout_s=30)).state is TaskState.SUCCEEDED


@pytest.mark.timeout(90)
async def test_a_queued_record_over_the_old_running_limit_runs_and_its_outcome_says_why(
    client, cluster, store, keyspace
):
    # Given a queued record written by hand (like an older version would: the whole record
    # as the queue key's value) too large to have been written twice with its new attempt,
    # between two ordinary tasks of the same queue
    before = await client.submit("noop", {"x": 1})
    big = Task(
        id="01ARZ3NDEKTSV4RRFFQ69G5FAB",
        type="noop",
        payload="y" * (codec.MAX_RUNNING_RECORD_BYTES - 400),
        seq=before.seq + 1,
        created_at=time.time(),
    )
    data = codec.encode_task(big)
    assert codec.MAX_QUEUED_RECORD_BYTES < len(data) < codec.MAX_RUNNING_RECORD_BYTES
    queue_key = keyspace.queue_entry(big.queue, big.priority, big.seq, big.id, big.route)
    result = await store.txn(
        [Compare.absent(keyspace.task(big.id))], [Put(keyspace.task(big.id), data), Put(queue_key, data)]
    )
    assert result.succeeded
    after = await client.submit("noop", {"x": 2})

    # When a scheduler and a worker run
    await cluster.worker(worker_id="w-a")
    leader = await cluster.scheduler()

    # Then the big one is assigned (an assignment writes no record) and runs: its result
    # (the payload, echoed) is over the limit, so it fails with that reason recorded;
    # the others succeed, the leader stays
    failed = await client.wait(big.id, timeout_s=30)
    assert failed.state is TaskState.FAILED
    assert len(failed.attempts) == 1 and failed.attempts[0].worker == "w-a"
    assert "over the limit" in (failed.error or "")
    assert failed.payload == big.payload  # the record keeps it
    for t in (before, after):
        assert (await client.wait(t.id, timeout_s=30)).state is TaskState.SUCCEEDED
    assert leader.leading.is_set()


@pytest.mark.timeout(60)
async def test_a_watch_catch_up_over_the_receive_limit_raises_watch_too_large(store_config, keyspace, store):
    # Given three revisions of 600 KB each under a prefix, and a store receiving 1 MiB at most
    start = (await store.get(keyspace.leader))[1] + 1
    for i in range(3):
        await store.put(f"{keyspace.root}big/{i}", b"v" * 600_000)
    small = Store(StoreConfig(endpoints=store_config.endpoints, max_receive_bytes=1024 * 1024))
    await small.connect()
    try:
        # When a watch catches up on them (etcd sends the backlog in one response)
        with pytest.raises(WatchTooLarge, match="re-read and watch again"):
            async with asyncio.timeout(20):
                async for _ in small.watch(f"{keyspace.root}big/", f"{keyspace.root}big0", start):
                    pass
        # And a paged read of the same keys works within the limit
        pages = [p async for p in small.scan(f"{keyspace.root}big/", f"{keyspace.root}big0")]
        assert sum(len(p.kvs) for p in pages) == 3 and len(pages) >= 2
    finally:
        await small.close()


@pytest.mark.timeout(120)
async def test_a_watch_that_must_start_over_reloads_without_losing_leadership(
    client, cluster, store_config, keyspace, caplog
):
    # Given a leader whose first watch fails as too large (a catch-up over the receive limit)
    faulty = FaultyStore(store_config)
    await faulty.connect()
    faulty.fail("watch", lambda: WatchTooLarge("watch response over 1048576 bytes"), times=1)
    leader = Scheduler(faulty, keyspace, SchedulerConfig(scheduler_id="s-small", lease_ttl_s=3))
    with caplog.at_level(logging.WARNING, logger="tasklease.scheduler"):
        await leader.start()
        try:
            await asyncio.wait_for(leader.leading.wait(), 30)
            token = leader.election.token
            await cluster.worker(worker_id="w-a", concurrency=8)

            # When tasks of 20 KB are submitted
            batch = await client.submit_many(spec(20_000, n) for n in range(64))
            done = await asyncio.gather(*(client.wait(t.id, timeout_s=60) for t in batch.tasks))

            # Then the leader re-read the range and assigned them all, still leading
            assert all(t.state is TaskState.SUCCEEDED for t in done)
            assert faulty.faults[0].fired == 1
            assert "watch must start over" in caplog.text
            assert leader.leading.is_set() and leader.election.token == token
        finally:
            await leader.stop()
            await faulty.close()


async def _writes_between(store: Store, keyspace, after: int, until_rev: int) -> list:
    """Every put and delete etcd made in the namespace in ``(after, until_rev]`` (its own history)."""
    import contextlib

    from tasklease.keys import prefix_end

    events: list = []
    async with (
        asyncio.timeout(30),
        contextlib.aclosing(store.watch(keyspace.root, prefix_end(keyspace.root), after + 1)) as watch,
    ):
        async for batch in watch:
            events.extend(e for e in batch if e.kv.mod_revision <= until_rev)
            if batch[-1].kv.mod_revision >= until_rev:
                return events
    raise AssertionError("the watch ended")


async def test_a_task_writes_its_payload_twice_and_reads_as_running_while_it_runs(
    client, cluster, store, keyspace
):
    # Given a worker and a leader, and a task with a realistic 4.5 KB payload that runs 3 s
    await cluster.worker(concurrency=4)
    await cluster.scheduler()
    marker = "m" * 4500
    _, start = await store.get(keyspace.leader)
    task = await client.submit("pad_sleep", {"pad": marker, "seconds": 3.0}, priority=2)

    # When it runs
    async def running() -> bool:
        return (await client.get(task.id)).state is TaskState.RUNNING

    await until(running, within_s=30, what="the task to run")
    # Then readers see it running, with its attempt, though its stored record is as queued
    seen = await client.get(task.id)
    assert seen.payload == task.payload and seen.attempts[-1].number == 1
    assert seen.attempts[-1].worker == cluster.workers[0].id
    raw, _ = await store.get(keyspace.task(task.id))
    assert raw is not None and codec.decode_task(raw.key, raw.value).state is TaskState.QUEUED
    assert [t.id for t in await client.list(state=TaskState.RUNNING)] == [task.id]

    # And once it succeeded, etcd wrote its payload exactly twice: the record at its submit
    # and the finished record (not the queue key, the assignment or a running record)
    final = await client.wait(task.id, timeout_s=30)
    assert final.state is TaskState.SUCCEEDED and len(final.attempts) == 1
    _, end = await store.get(keyspace.leader)
    writes = await _writes_between(store, keyspace, start, end)
    with_payload = [e.kv.key for e in writes if e.type == "put" and marker.encode() in e.kv.value]
    assert with_payload == [keyspace.task(task.id), keyspace.task(task.id)]
    touched = {e.kv.key.removeprefix(keyspace.root).split("/")[0] for e in writes}
    assert {"task", "queue", "assign", "running"} <= touched
