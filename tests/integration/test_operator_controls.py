"""Step 9's core against a real etcd, scheduler and workers: the finished index, overview counts,
pause / resume, remote drain, run again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from faults.procs import until
from tasklease import codec, transitions
from tasklease import finished as finished_module
from tasklease.client import Client, TaskSpec
from tasklease.errors import InvalidOption, InvalidTransition, TaskNotFound, WorkerNotFound
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Task, TaskState
from tasklease.retry import RetryPolicy
from tasklease.store import Put, Store, StoreConfig

PAD = "p" * 4000  # a realistic 4 KB payload


class CountingStore(Store):
    """Counts the ranges that read task records (a listing from the index must not scan them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record_ranges = 0
        self.tasks_prefix = ""

    async def range(self, prefix: str, end: str, **kwargs: Any) -> Any:
        if self.tasks_prefix and prefix.startswith(self.tasks_prefix) and end != prefix + "\0":
            self.record_ranges += 1
        return await super().range(prefix, end, **kwargs)


async def finished(client: Client, task_ids: list[str], within_s: float = 60) -> None:
    async def done() -> bool:
        return all([(await client.get(i)).state.terminal for i in task_ids])

    await until(done, within_s=within_s, what="tasks finished")


async def test_failed_tasks_list_newest_first_from_the_index_across_queues(
    client: Client, cluster, store_config: StoreConfig, keyspace: Keyspace
):
    # Given tasks that fail in two queues, and some that succeed, of two types
    await cluster.scheduler()
    await cluster.worker(queues=("a", "b"), concurrency=4)
    never = RetryPolicy(max_retries=0)
    specs = [
        TaskSpec("pad_fail" if i % 3 else "pad_echo", {"pad": PAD, "n": i}, queue="ab"[i % 2], retry=never)
        for i in range(24)
    ]
    batch = await client.submit_many(specs)
    await finished(client, [t.id for t in batch.tasks])
    failed = [await client.get(t.id) for t in batch.tasks if t.type == "pad_fail"]
    newest_first = sorted(failed, key=lambda t: t.updated_at, reverse=True)

    counting = CountingStore(store_config)
    await counting.connect()
    reader = Client(counting, keyspace)
    try:
        counting.tasks_prefix = keyspace.tasks
        # When failed tasks are listed 5 per page, following the cursor
        pages = [await reader.list_page(state=TaskState.FAILED, limit=5)]
        while pages[-1].cursor is not None:
            pages.append(await reader.list_page(state=TaskState.FAILED, limit=5, cursor=pages[-1].cursor))
        # Then they come newest first, each once, and no range read the task records
        listed = [t.id for p in pages for t in p.tasks]
        assert listed == [t.id for t in newest_first]
        assert all(t.error for p in pages for t in p.tasks)
        # ... filters by queue and type read the index too
        in_a = await reader.list(state=TaskState.FAILED, queue="a", limit=100)
        assert [t.id for t in in_a] == [t.id for t in newest_first if t.queue == "a"]
        echoes = await reader.list(state=TaskState.SUCCEEDED, task_type="pad_echo", limit=100)
        assert len(echoes) == len(batch.tasks) - len(failed)
        assert await reader.list(state=TaskState.SUCCEEDED, task_type="pad_fail", limit=100) == []
        # ... and since: only what finished at that time or later
        cut = newest_first[len(newest_first) // 2].updated_at
        recent = (await reader.list_page(state=TaskState.FAILED, since=cut, limit=100)).tasks
        assert [t.id for t in recent] == [t.id for t in newest_first if t.updated_at >= cut]
        # ... the overview and stats count them without reading records
        view = await reader.overview()
        stats = await reader.stats()
        assert counting.record_ranges == 0
    finally:
        await reader.close()
        await counting.close()
    assert view.states["failed"] == len(failed) and view.states["succeeded"] == len(batch.tasks) - len(failed)
    queues = {q.name: q for q in view.queues}
    assert queues["a"].counts["failed"] == sum(1 for t in failed if t.queue == "a")
    assert view.finished_in_window["failed"] == len(failed)
    assert [f["id"] for f in view.as_dict()["latest_failures"]] == [t.id for t in newest_first[:10]]
    assert stats.states == view.states and stats.total == len(batch.tasks)
    assert stats.queues["b"]["failed"] == sum(1 for t in failed if t.queue == "b")


async def test_listing_refuses_since_without_a_finished_state_and_a_bad_cursor(client: Client):
    with pytest.raises(InvalidOption):
        await client.list_page(state=TaskState.QUEUED, since=1.0)
    with pytest.raises(InvalidOption):
        await client.list_page(state=TaskState.FAILED, cursor="nope")


async def test_overview_counts_depth_per_priority_running_and_pending(client: Client, cluster):
    # Given queued tasks of every priority in two queues, one running, one waiting for a retry
    await cluster.scheduler()
    await client.submit_many(
        TaskSpec("noop", {"pad": PAD}, queue=q, priority=p)
        for q in ("q1", "q2")
        for p in range(4)
        for _ in range(p + 1)
    )
    await cluster.worker(queues=("run",), concurrency=2)
    runner = await client.submit("sleep", {"seconds": 60}, queue="run")
    retry = await client.submit(
        "fail", {"message": "x"}, queue="run", retry=RetryPolicy(max_retries=3, backoff_s=300)
    )

    async def settled() -> bool:
        return (await client.get(retry.id)).state is TaskState.PENDING and (
            await client.get(runner.id)
        ).state is TaskState.RUNNING

    await until(settled, within_s=30, what="one running, one pending")
    # When the overview is read
    view = (await client.overview()).as_dict()
    # Then each queue shows its depth per priority and the states add up
    q = {x["name"]: x for x in view["queues"]}
    assert q["q1"]["depth"] == {"3": 4, "2": 3, "1": 2, "0": 1} and q["q1"]["queued"] == 10
    assert (q["run"]["running"], q["run"]["pending"]) == (1, 1)
    assert (
        view["states"]["queued"] == 20 and view["states"]["running"] == 1 and view["states"]["pending"] == 1
    )
    assert view["workers"]["live"] == 1 and view["workers"]["capacity"] == 2

    async def one_free() -> bool:  # as the worker's next heartbeat says
        return bool((await client.overview()).as_dict()["workers"]["free"] == 1)

    await until(one_free, within_s=30, what="one free slot")
    assert view["leader"] is not None


async def test_a_paused_queue_gets_nothing_assigned_until_resumed(
    client: Client, cluster, store: Store, keyspace
):
    # Given a paused queue with a worker ready for it
    await cluster.scheduler()
    await cluster.worker(queues=("slow", "other"), concurrency=4)
    pause = await client.pause("slow", reason="maintenance <b>window</b>")
    assert (await client.paused())["slow"].reason == "maintenance <b>window</b>"
    assert pause.queue == "slow"
    # When tasks are submitted to it and to another queue
    held = [await client.submit("noop", {"pad": PAD}, queue="slow") for _ in range(3)]
    other = await client.submit("noop", {"pad": PAD}, queue="other")
    # Then the other queue's task runs, the paused queue's tasks stay queued
    await finished(client, [other.id])
    await asyncio.sleep(1.0)  # a window for a wrong assignment to happen (the check is the state)
    assert [(await client.get(t.id)).state for t in held] == [TaskState.QUEUED] * 3
    view = (await client.overview()).as_dict()
    assert {q["name"]: q["paused"] for q in view["queues"]}["slow"] is True
    # When it is resumed, its tasks run
    assert await client.resume("slow") is True
    assert await client.resume("slow") is False
    await finished(client, [t.id for t in held])
    assert await client.paused() == {}


async def test_a_drain_request_stops_the_worker_as_sigterm_does(
    client: Client, cluster, store: Store, keyspace
):
    # Given a worker running a task
    await cluster.scheduler()
    worker = await cluster.worker(worker_id="w-drain", concurrency=2, grace_s=30)
    task = await client.submit("sleep", {"seconds": 1.5})

    async def running() -> bool:
        # running on the worker, not only assigned to it (the record says RUNNING from the assignment)
        return (await client.get(task.id)).state is TaskState.RUNNING and worker.execution.executing == 1

    await until(running, within_s=30, what="task running")
    # When an operator asks it to drain
    await client.drain("w-drain")

    # Then it marks itself draining, lets its task finish, and goes away
    async def draining() -> bool:
        nodes = {n.id: n for n in await client.nodes()}
        return "w-drain" not in nodes or nodes["w-drain"].draining

    await until(draining, within_s=30, what="worker draining")
    await asyncio.wait_for(worker.wait_stopped(), 60)
    assert (await client.get(task.id)).state is TaskState.SUCCEEDED
    # ... and its drain key went with its lease
    left = await store.range(keyspace.drains, prefix_end(keyspace.drains), count_only=True)
    assert left.count == 0
    with pytest.raises(WorkerNotFound):
        await client.drain("w-drain")
    with pytest.raises(InvalidOption):
        await client.drain("no/such")


async def test_run_again_links_both_ways_and_only_for_failed_or_cancelled(client: Client, cluster):
    await cluster.scheduler()
    await cluster.worker(concurrency=2)
    failing = await client.submit("pad_fail", {"pad": PAD}, queue="default", priority=2)
    await finished(client, [failing.id])
    # When a failed task is run again (twice)
    first = await client.run_again(failing.id)
    second = await client.run_again(failing.id)
    # Then each new task has the old spec and names the old one; the old one names both
    old = await client.get(failing.id)
    assert old.state is TaskState.FAILED and old.reruns == (first.id, second.id)
    for new in (first, second):
        assert (new.type, new.payload, new.queue, new.priority) == ("pad_fail", {"pad": PAD}, "default", 2)
        assert new.rerun_of == failing.id
    await finished(client, [first.id, second.id])
    # ... a queued or succeeded task cannot be run again; an unknown one is not found
    ok = await client.submit("noop", {})
    await finished(client, [ok.id])
    with pytest.raises(InvalidTransition):
        await client.run_again(ok.id)
    with pytest.raises(TaskNotFound):
        await client.run_again("01HZZZZZZZZZZZZZZZZZZZZZZZ")


async def test_listing_reaches_entries_of_any_age_through_growing_windows(
    client: Client, store: Store, keyspace
):
    # Given failed tasks that finished a second, an hour, a year and ten years ago, and one "in the
    # future" (a skewed clock), written as a finish writes them (record + index entry)
    now = time.time()
    ages = [-30.0, 1.0, 3600.0, 365 * 86400.0, 10 * 365 * 86400.0]
    await client.submit("noop", {}, queue="old")  # registers the queue
    written = []
    for i, age in enumerate(ages):
        task = Task(
            id=f"01HZZZZZZZZZZZZZZZZZZZZZ{i:02d}",
            type="t",
            payload={"pad": PAD},
            queue="old",
            state=TaskState.FAILED,
            created_at=now - age - 1,
            updated_at=now - age,
            error=f"failed {age:g} s ago",
        )
        entry = transitions.finished_entry(keyspace, task, 0)
        await store.txn([], [Put(keyspace.task(task.id), codec.encode_task(task)), entry])
        written.append(task)
    # When they are listed two per page
    pages = [await client.list_page(state=TaskState.FAILED, limit=2)]
    while pages[-1].cursor is not None:
        pages.append(await client.list_page(state=TaskState.FAILED, limit=2, cursor=pages[-1].cursor))
    # Then every one is listed once, newest first
    assert [t.id for p in pages for t in p.tasks] == [t.id for t in written]
    # ... and the overview counts them in their queue
    view = await client.overview()
    assert {q.name: q.counts["failed"] for q in view.queues}["old"] == len(ages)


async def test_a_type_filter_reads_a_bounded_part_per_request_and_its_cursor_finds_every_match(
    client: Client, store: Store, keyspace, monkeypatch
):
    # Given failed tasks of two types in two queues, the wanted type rare
    monkeypatch.setattr(finished_module, "TYPE_BUDGET", 4)
    now = time.time()
    wanted = []
    for i in range(30):
        queue = "qa" if i % 2 else "qb"
        await client.submit("noop", {}, queue=queue)  # registers the queue
        task = Task(
            id=f"01HZZZZZZZZZZZZZZZZZZZZZ{i:02d}",
            type="rare" if i % 7 == 0 else "common",
            payload=None,
            queue=queue,
            state=TaskState.FAILED,
            updated_at=now - 1000 + i,
            error="x",
        )
        await store.txn(
            [],
            [
                Put(keyspace.task(task.id), codec.encode_task(task)),
                transitions.finished_entry(keyspace, task, 0),
            ],
        )
        if task.type == "rare":
            wanted.append(task)
    # When the rare type is listed, following the cursors
    pages = [await client.list_page(state=TaskState.FAILED, task_type="rare", limit=2)]
    while pages[-1].cursor is not None:
        assert len(pages) < 50
        pages.append(
            await client.list_page(state=TaskState.FAILED, task_type="rare", limit=2, cursor=pages[-1].cursor)
        )
    # Then some pages stopped at the budget (fewer tasks, a cursor), and together they hold every match once
    assert any(len(p.tasks) < 2 and p.cursor for p in pages)
    assert [t.id for p in pages for t in p.tasks] == [t.id for t in reversed(wanted)]
