"""Delayed tasks and expiry (W2) against a real etcd: schedulers and workers in this process.

Nothing here is timed: "never before its time" is checked on the recorded
times (an attempt's ``started_at`` against the ``not_before`` the submit
recorded); waits are bounded polls that assert nothing about how long they took.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tasklease.client import Client, TaskSpec
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Task, TaskState
from tasklease.retry import RetryPolicy
from tasklease.store import Store

PAD = "p" * 1000  # a realistic payload: about 1 KB
GUARD_S = 60.0  # a hang guard only


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within_s: float = GUARD_S) -> None:
    """Poll ``check`` until it is true (a bound against hangs, not a timed assertion)."""
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.05)


async def count(store: Store, prefix: str) -> int:
    return (await store.range(prefix, prefix_end(prefix), count_only=True)).count


async def wait_all(client: Client, ids: list[str]) -> list[Task]:
    return list(await asyncio.gather(*(client.wait(i, timeout_s=GUARD_S) for i in ids)))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# delays ---------------------------------------------------------------------------------------
async def test_delayed_tasks_run_after_their_time_and_never_before(client, cluster, store, keyspace):
    # Given a scheduler, two workers, and 300 delayed tasks of 1 KB due over the next 2 s
    await cluster.scheduler()
    await cluster.worker(concurrency=8)
    await cluster.worker(concurrency=8)
    specs = [TaskSpec("pad_echo", {"pad": PAD, "n": i}, delay_s=0.3 + (i % 20) / 10) for i in range(300)]
    submitted = (await client.submit_many(specs)).tasks

    # Then each waits pending ...
    assert all(t.state is TaskState.PENDING and t.not_before is not None for t in submitted)
    finals = await wait_all(client, [t.id for t in submitted])

    # ... and runs once, after its time, never before (recorded times, same clock)
    for sub, final in zip(submitted, finals, strict=True):
        assert final.state is TaskState.SUCCEEDED and len(final.attempts) == 1, final
        assert sub.not_before is not None
        assert final.attempts[0].started_at >= sub.not_before, (final.id, final.attempts[0], sub.not_before)
        assert final.not_before is None  # promotion cleared it
    assert await count(store, keyspace.delayed) == 0


async def test_run_at_runs_a_task_no_sooner_than_that_time(client, cluster):
    await cluster.scheduler()
    await cluster.worker()
    at = time.time() + 1.0
    task = await client.submit("pad_echo", {"pad": PAD}, run_at=at)
    assert task.state is TaskState.PENDING and task.not_before == at
    final = await client.wait(task.id, timeout_s=GUARD_S)
    assert final.state is TaskState.SUCCEEDED
    assert final.attempts[0].started_at >= at
    # a time already past queues it at once
    now_task = await client.submit("pad_echo", {"pad": PAD}, run_at=time.time() - 10)
    assert now_task.state is TaskState.QUEUED and now_task.not_before is None


async def test_a_promoted_batch_is_written_in_a_few_transactions(client, cluster, store, keyspace):
    # Given a scheduler, no worker, and 100 delayed tasks all due at the same time
    await cluster.scheduler()
    at = time.time() + 1.0
    batch = await client.submit_many(
        TaskSpec("pad_echo", {"pad": PAD, "n": i}, run_at=at) for i in range(100)
    )
    assert {t.state for t in batch.tasks} == {TaskState.PENDING}
    # When they are due, the scheduler queues them all
    await eventually(lambda: _queued(store, keyspace, 100), "100 tasks queued")
    # Then several promotions went in each transaction (100 tasks: 3 transactions of at most 42)
    page = await store.range(keyspace.queues, prefix_end(keyspace.queues))
    revisions = {kv.mod_revision for kv in page.kvs}
    assert len(page.kvs) == 100 and len(revisions) <= 3, sorted(revisions)
    for task in batch.tasks:
        record = await client.get(task.id)
        assert record.state is TaskState.QUEUED and record.updated_at >= at


async def _queued(store: Store, keyspace: Keyspace, n: int) -> bool:
    return await count(store, keyspace.queues) >= n


async def test_cancel_a_delayed_task(client, cluster, store, keyspace):
    # Given a delayed task, and a sentinel due just after it
    await cluster.scheduler()
    await cluster.worker()
    at = time.time() + 1.0
    delayed = await client.submit("pad_echo", {"pad": PAD}, run_at=at)
    sentinel = await client.submit("pad_echo", {"pad": PAD, "n": 1}, run_at=at + 0.1)
    # When it is cancelled before its time
    cancelled = await client.cancel(delayed.id)
    # Then it is cancelled at once, its delayed key gone
    assert cancelled.state is TaskState.CANCELLED
    assert (await store.get(keyspace.delayed_entry(at, delayed.id)))[0] is None
    # and once the sentinel (due later) has run, it still has never run
    assert (await client.wait(sentinel.id, timeout_s=GUARD_S)).state is TaskState.SUCCEEDED
    final = await client.get(delayed.id)
    assert final.state is TaskState.CANCELLED and final.attempts == ()


async def test_reprioritise_a_delayed_task(client, cluster, store, keyspace):
    # Given one worker that runs one task at a time and 10 low-priority tasks due together
    await cluster.scheduler()
    await cluster.worker(concurrency=1)
    at = time.time() + 1.5
    tasks = (
        await client.submit_many(
            TaskSpec("pad_echo", {"pad": PAD, "n": i}, priority=0, run_at=at) for i in range(10)
        )
    ).tasks
    # When the last one is made urgent while it waits
    urgent = await client.set_priority(tasks[-1].id, 3)
    # Then it stays pending with its delayed key, at its new priority ...
    assert urgent.state is TaskState.PENDING and urgent.priority == 3 and urgent.not_before == at
    assert (await store.get(keyspace.delayed_entry(at, urgent.id)))[0] is not None
    finals = {t.id: t for t in await wait_all(client, [t.id for t in tasks])}
    # ... and, promoted with the others in one transaction, it runs first, not before its time
    starts = sorted((f.attempts[0].started_at, f.id) for f in finals.values())
    assert starts[0][1] == urgent.id
    assert finals[urgent.id].priority == 3
    assert all(start >= at for start, _ in starts)


async def test_delays_and_expiries_survive_a_scheduler_that_was_not_there(client, cluster, store, keyspace):
    # Given a delayed task and an expiring one submitted while no scheduler runs
    delayed = await client.submit("pad_echo", {"pad": PAD}, delay_s=0.2)
    expiring = await client.submit("pad_echo", {"pad": PAD}, expires_s=0.2)
    assert expiring.expires_at is not None and delayed.not_before is not None
    # When a scheduler starts after both times have passed (it loads them: no watch event)
    while time.time() <= max(expiring.expires_at, delayed.not_before):
        await asyncio.sleep(0.05)
    await cluster.scheduler()
    # Then the expired one is discarded and the delayed one is queued (no worker: it waits)
    final = await client.wait(expiring.id, timeout_s=GUARD_S)
    assert final.state is TaskState.CANCELLED and (final.error or "").startswith("expired:")
    await eventually(lambda: _state_is(client, delayed.id, TaskState.QUEUED), "delayed task queued")


async def _state_is(client: Client, task_id: str, state: TaskState) -> bool:
    return (await client.get(task_id)).state is state


# expiry ---------------------------------------------------------------------------------------
async def test_a_queued_task_with_no_worker_expires_with_the_reason(client, cluster, store, keyspace):
    # Given a scheduler and no worker: a task with an expiry waits queued
    await cluster.scheduler()
    task = await client.submit("pad_echo", {"pad": PAD}, expires_s=0.5)
    assert task.state is TaskState.QUEUED and task.expires_at is not None
    assert (await store.get(keyspace.expiring_entry(task.expires_at, task.id)))[0] is not None
    # When its expiry passes, it is discarded: cancelled, the reason recorded
    final = await client.wait(task.id, timeout_s=GUARD_S)
    assert final.state is TaskState.CANCELLED and final.attempts == ()
    assert final.error == f"expired: not started by {iso(task.expires_at)}"
    assert final.updated_at > task.expires_at
    # its queue key and expiring key are gone, its finished-index entry is there
    assert await count(store, keyspace.queues) == 0
    assert await count(store, keyspace.expiring) == 0
    listed = await client.list(state=TaskState.CANCELLED)
    assert [t.id for t in listed] == [task.id]


async def test_a_delayed_task_expires_before_its_delay_if_its_expiry_is_sooner(
    client, cluster, store, keyspace
):
    await cluster.scheduler()
    task = await client.submit("pad_echo", {"pad": PAD}, delay_s=60, expires_s=0.3)
    assert task.state is TaskState.PENDING
    final = await client.wait(task.id, timeout_s=GUARD_S)
    assert final.state is TaskState.CANCELLED and (final.error or "").startswith("expired: not started by")
    assert await count(store, keyspace.delayed) == 0
    assert await count(store, keyspace.expiring) == 0


async def test_a_task_started_before_its_expiry_is_not_discarded(
    client, cluster, store, keyspace, tmp_path: Path
):
    # Given a worker, and a task that runs until the test opens its gate, expiring 2 s after submit
    await cluster.scheduler()
    await cluster.worker()
    gate = tmp_path / "gate"
    task = await client.submit("wait_for_file", {"path": str(gate)}, expires_s=2.0)
    assert task.expires_at is not None
    await eventually(lambda: _state_is(client, task.id, TaskState.RUNNING), "task running")
    # When its expiry passes while it runs (the scheduler drops its expiring key)
    await eventually(
        lambda: _absent(store, keyspace.expiring_entry(task.expires_at or 0, task.id)), "key dropped"
    )
    gate.touch()
    # Then it finishes normally
    final = await client.wait(task.id, timeout_s=GUARD_S)
    assert final.state is TaskState.SUCCEEDED and len(final.attempts) == 1
    assert final.attempts[0].started_at < task.expires_at


async def _absent(store: Store, key: str) -> bool:
    return (await store.get(key))[0] is None


async def test_a_retry_waiting_past_the_expiry_is_not_discarded(client, cluster, store, keyspace):
    # Given a task that fails once and retries after 1.5 s, expiring 0.5 s after submit
    await cluster.scheduler()
    await cluster.worker()
    task = await client.submit(
        "fail", {"message": "x" * 1000}, retry=RetryPolicy(max_retries=1, backoff_s=1.5), expires_s=0.5
    )
    final = await client.wait(task.id, timeout_s=GUARD_S)
    # Then it started before its expiry, so its retry ran too: it failed, not expired
    assert final.state is TaskState.FAILED and len(final.attempts) == 2, final
    assert task.expires_at is not None and final.attempts[0].started_at < task.expires_at
    assert await count(store, keyspace.expiring) == 0


async def test_many_expiries_are_discarded_in_batches(client, cluster, store, keyspace):
    # Given 150 queued tasks (1 KB) that expire together, no worker
    await cluster.scheduler()
    at = time.time() + 1.0
    batch = await client.submit_many(
        TaskSpec("pad_echo", {"pad": PAD, "n": i}, expires_at=at) for i in range(150)
    )
    assert batch.transactions == 4  # 3 operations a task (record, queue key, expiring key): 42 a transaction
    finals = await wait_all(client, [t.id for t in batch.tasks])
    assert all(f.state is TaskState.CANCELLED and (f.error or "").startswith("expired:") for f in finals)
    # several per transaction: fewer revisions than tasks
    revisions = {(await store.get(keyspace.task(f.id)))[0].mod_revision for f in finals}
    assert len(revisions) <= 150 // 20, len(revisions)
    assert await count(store, keyspace.queues) == 0 and await count(store, keyspace.expiring) == 0


# the command line -------------------------------------------------------------------------------
def tl(bin_: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_, *args], env=env, capture_output=True, text=True, timeout=GUARD_S)


async def test_cli_submit_at_and_expires_and_status_shows_them(client, cluster, tasklease_bin, cli_env):
    await cluster.scheduler()
    await cluster.worker()
    at = time.time() + 1.0
    payload = json.dumps({"pad": PAD})
    out = await asyncio.to_thread(
        tl,
        tasklease_bin,
        cli_env,
        "submit",
        "pad_echo",
        "--payload",
        payload,
        "--at",
        iso(at),
        "--expires",
        "1h",
    )
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.strip()
    status = await asyncio.to_thread(tl, tasklease_bin, cli_env, "status", task_id)
    assert status.returncode == 0, status.stderr
    if "state:     pending" in status.stdout:  # before its time (it may have run already)
        assert "not before: " in status.stdout
    assert "expires:   " in status.stdout and "(if not started by then)" in status.stdout
    final = await client.wait(task_id, timeout_s=GUARD_S)
    assert final.state is TaskState.SUCCEEDED
    assert final.attempts[0].started_at >= datetime.fromisoformat(iso(at)).timestamp()  # given to the ms
    assert final.expires_at is not None and final.created_at + 3599 < final.expires_at

    delayed = await asyncio.to_thread(
        tl, tasklease_bin, cli_env, "submit", "pad_echo", "--payload", payload, "--delay", "10m", "--json"
    )
    record = await client.get(json.loads(delayed.stdout)["id"])
    assert record.state is TaskState.PENDING and record.not_before is not None
    assert record.created_at + 599 < record.not_before < record.created_at + 601
    shown = await asyncio.to_thread(tl, tasklease_bin, cli_env, "status", record.id, "--json")
    assert json.loads(shown.stdout)["not_before"] == record.not_before


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--delay", "30x"), "argument --delay: bad duration '30x'"),
        (("--at", "2026-12-01T10:00:00"), "needs a time zone"),
        (("--at", "tomorrow"), "ISO 8601"),
        (("--expires", "soon"), "bad expiry 'soon'"),
        (("--expires", "0"), "an expiry must be > 0"),
    ],
)
def test_cli_bad_times_are_one_line_usage_errors(tasklease_bin, cli_env, args, fragment):
    out = tl(tasklease_bin, cli_env, "submit", "noop", *args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tasklease: error: ") and fragment in lines[0], out.stderr
