"""The client's reads (inspector.py) against a real etcd: typed nodes, list paging, typed stats."""

from __future__ import annotations

import logging

import pytest

from faults.procs import until
from tasklease.client import Client, SyncClient, TaskPage, TaskSpec
from tasklease.errors import InvalidOption
from tasklease.inspector import Inspector
from tasklease.keys import Keyspace
from tasklease.models import Task, TaskState
from tasklease.nodes import NodeRecord
from tasklease.stats import Stats, Throughput, WorkerStats
from tasklease.store import Store, StoreConfig

PAYLOAD = "x" * 4500  # a realistic payload: 4.5 KB


async def all_pages(client: Client, **filters) -> list[TaskPage]:
    """Every page of a listing, following the cursors (bounded)."""
    pages = [await client.list_page(**filters)]
    while pages[-1].cursor is not None:
        assert len(pages) < 100, "the cursor never ends"
        pages.append(await client.list_page(**filters, cursor=pages[-1].cursor))
    return pages


# nodes -------------------------------------------------------------------------------------
async def test_nodes_returns_typed_records_of_live_workers_and_skips_a_bad_one(
    client: Client, cluster, store: Store, keyspace: Keyspace, caplog
):
    # Given two live workers and a node record that cannot be parsed
    await cluster.worker(worker_id="w-a", queues=("default", "images"), concurrency=3, tags={"zone": "eu"})
    await cluster.worker(worker_id="w-b", concurrency=2)
    await store.put(keyspace.node("w-bad"), b'{"id": "w-bad", "capacity": "many"}')
    # When the client lists the nodes
    with caplog.at_level(logging.ERROR, logger="tasklease.nodes"):
        nodes = await client.nodes()
    # Then it gets one typed record per live worker, by id, and the bad one is skipped with a log
    assert all(isinstance(n, NodeRecord) for n in nodes)
    assert [n.id for n in nodes] == ["w-a", "w-b"]
    a, b = nodes
    assert (a.queues, a.capacity, dict(a.tags)) == (("default", "images"), 3, {"zone": "eu"})
    assert (b.queues, b.capacity, b.draining) == (("default",), 2, False)
    assert a.lease and a.heartbeat_at is not None
    assert "skipping corrupt node record" in caplog.text
    # ... and a worker that stops is no longer listed
    await cluster.workers[1].stop()

    async def gone() -> bool:
        return [n.id for n in await client.nodes()] == ["w-a"]

    await until(gone, within_s=30, what="w-b gone from the nodes")


# list paging -------------------------------------------------------------------------------
async def test_list_pages_cover_every_task_once_in_order(client: Client):
    # Given 25 tasks of 4.5 KB
    batch = await client.submit_many(TaskSpec("noop", {"pad": PAYLOAD, "i": i}) for i in range(25))
    # When they are listed 10 per page
    pages = await all_pages(client, limit=10)
    # Then the pages hold 10, 10 and 5 tasks: each once, oldest first, and the last has no cursor
    assert [len(p.tasks) for p in pages] == [10, 10, 5]
    assert [t.id for p in pages for t in p.tasks] == [t.id for t in batch.tasks]
    assert pages[-1].cursor is None
    assert await client.list(limit=10) == pages[0].tasks


async def test_filtered_pages_hold_only_matching_tasks(client: Client):
    # Given tasks of two queues, interleaved, two of queue a cancelled
    tasks = [await client.submit("noop", {"pad": PAYLOAD}, queue="a" if i % 2 else "b") for i in range(14)]
    in_a = [t for t in tasks if t.queue == "a"]
    for t in (in_a[1], in_a[4]):
        await client.cancel(t.id)
    # When the task records are scanned 3 matches per page, by queue, then by state
    by_queue = await all_pages(client, queue="a", limit=3)
    by_state = await all_pages(client, state=TaskState.CANCELLED, limit=1)
    # Then every page holds matching tasks only, each once, in order (finished ones newest
    # first, from the finished index), full but the last
    assert [t.id for p in by_queue for t in p.tasks] == [t.id for t in in_a]
    assert all(len(p.tasks) == 3 for p in by_queue[:-1])
    assert [t.id for p in by_state for t in p.tasks] == [in_a[4].id, in_a[1].id]
    assert await all_pages(client, state=TaskState.RUNNING, limit=3) == [TaskPage([], None)]


async def test_queue_pages_follow_dequeue_order(client: Client):
    # Given tasks of mixed priorities in one queue
    tasks = [
        await client.submit("noop", {"pad": PAYLOAD, "i": i}, queue="q", priority=i % 4) for i in range(11)
    ]
    # When its queued tasks are listed 4 per page (the queue's keys are read)
    pages = await all_pages(client, state=TaskState.QUEUED, queue="q", limit=4)
    # Then the pages, together, are the dequeue order: priority first, then FIFO
    expected = sorted(tasks, key=lambda t: (-t.priority, tasks.index(t)))
    assert [t.id for p in pages for t in p.tasks] == [t.id for t in expected]
    assert [len(p.tasks) for p in pages] == [4, 4, 3]


async def test_a_page_limit_and_cursor_are_checked(client: Client):
    with pytest.raises(InvalidOption):
        await client.list_page(limit=0)
    with pytest.raises(InvalidOption):
        await client.list_page(limit=10_001)
    with pytest.raises(InvalidOption):
        await client.list_page(cursor="")


# stats -------------------------------------------------------------------------------------
async def test_stats_are_typed(client: Client, cluster):
    # Given a worker and tasks: 2 succeeded, 1 cancelled, 3 queued in a queue nobody serves
    await cluster.scheduler()
    await cluster.worker(worker_id="w0", concurrency=4)
    done = [await client.submit("noop", {"pad": PAYLOAD}) for _ in range(2)]
    for t in done:
        await client.wait(t.id, timeout_s=30)
    waiting = [await client.submit("noop", i, queue="nobody") for i in range(3)]
    await client.cancel(waiting[0].id)
    # When the client reads the stats
    stats = await client.stats(window_s=600)
    # Then they are typed, and the dict form is still readable
    assert isinstance(stats, Stats)
    assert stats.states["succeeded"] == 2 and stats.states["cancelled"] == 1 and stats.states["queued"] == 2
    assert stats.total == 5
    assert stats.queues["nobody"]["queued"] == 2
    assert stats.workers == WorkerStats(live=1, capacity=4, running=stats.workers.running)
    assert isinstance(stats.throughput, Throughput) and stats.throughput.finished == 3
    assert stats["states"]["succeeded"] == 2


async def test_an_inspector_reads_on_its_own(store: Store, keyspace: Keyspace, client: Client):
    # Given a task submitted by a client
    task = await client.submit("noop", {"pad": PAYLOAD})
    # Then an Inspector on the same store reads it, lists it and counts it
    inspector = Inspector(store, keyspace, clock=client.clock)
    assert await inspector.get(task.id.lower()) == task
    assert [t.id for t in await inspector.list()] == [task.id]
    assert (await inspector.stats()).total == 1


def test_the_sync_client_reads_nodes_stats_and_pages(etcd_endpoint: str, namespace: str):
    with SyncClient(StoreConfig.from_text(etcd_endpoint), namespace=namespace) as client:
        tasks: list[Task] = [client.submit("noop", i) for i in range(3)]
        assert client.nodes() == []
        assert isinstance(client.stats(), Stats) and client.stats().total == 3
        page = client.list_page(limit=2)
        assert [t.id for t in page.tasks] == [t.id for t in tasks[:2]]
        assert page.cursor is not None
        assert [t.id for t in client.list_page(limit=2, cursor=page.cursor).tasks] == [tasks[2].id]
