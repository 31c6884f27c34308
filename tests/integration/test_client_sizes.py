"""The client with realistic record sizes: reads paged by bytes, writes sized by bytes.

Large records are the normal case (payloads up to 512 KiB): a read of a few
hundred records must not exceed a gRPC message limit, and concurrent submits of
large payloads must be split into transactions that etcd accepts.

Some tests use a connection with gRPC's default receive limit (4 MiB, what a
channel gets when nobody raises it): the client's reads must fit it, because
they are paged by bytes, not by a count of records.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from tasklease.client import TASKS_PER_TXN, Client, TaskSpec, _chunk, _encode_queued, _first_chunk_len
from tasklease.clock import FakeClock
from tasklease.ids import IdGenerator
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Task, TaskState
from tasklease.store import MAX_REQUEST_BYTES, MAX_TXN_BYTES, Store, StoreConfig

GRPC_DEFAULT_RECEIVE = 4 * 1024 * 1024


@pytest.fixture
async def small_channel_client(store_config: StoreConfig, keyspace: Keyspace) -> AsyncIterator[Client]:
    """A client whose channel accepts messages of at most gRPC's default 4 MiB."""
    config = replace(store_config, max_receive_bytes=GRPC_DEFAULT_RECEIVE)
    async with Store(config) as small:
        client = Client(small, keyspace)
        yield client
        await client.close()


async def fill(client: Client, count: int, size: int, queue: str = "default") -> list[str]:
    """Submit ``count`` tasks whose payload is a string of ``size`` bytes; return their ids."""
    result = await client.submit_many(
        TaskSpec("noop", {"i": i, "blob": "x" * size}, queue=queue) for i in range(count)
    )
    return [t.id for t in result.tasks]


async def record_sizes(store: Store, keys: Keyspace) -> list[int]:
    sizes: list[int] = []
    async for page in store.scan(keys.tasks, prefix_end(keys.tasks)):
        sizes.extend(len(kv.value) for kv in page.kvs)
    return sizes


@pytest.mark.parametrize(("payload", "record"), [(4300, 4500), (8800, 9000)], ids=["4.5kB", "9kB"])
async def test_list_and_stats_over_600_records(
    client: Client, store: Store, keyspace: Keyspace, small_channel_client: Client, payload, record
):
    # Given 600 queued tasks whose records are about 4.5 KB (or 9 KB) each
    ids = await fill(client, 600, payload)
    sizes = await record_sizes(store, keyspace)
    assert len(sizes) == 600 and min(sizes) >= record
    # Then list (by record scan and by queue) and stats see all of them, in order,
    # on the normal connection and on one with gRPC's default receive limit
    for c in (client, small_channel_client):
        assert [t.id for t in await c.list(limit=10_000)] == ids
        assert [t.id for t in await c.list(state=TaskState.QUEUED, limit=10_000)] == ids
        assert [t.id for t in await c.list(state=TaskState.QUEUED, queue="default", limit=10_000)] == ids
        stats = await c.stats()
        assert stats["total"] == 600
        assert stats["states"]["queued"] == 600
        assert stats["queues"]["default"]["queued"] == 600
        scanned = [t.id async for t in c.scan()]
        assert scanned == ids


async def test_list_and_stats_over_25_records_of_200_kb(
    client: Client, store: Store, keyspace: Keyspace, small_channel_client: Client
):
    # Given 30 queued tasks of 200 KB (6 MB in all: over a 4 MiB message)
    ids = await fill(client, 30, 200_000, queue="big")
    sizes = await record_sizes(store, keyspace)
    assert len(sizes) == 30 and sum(sizes) > GRPC_DEFAULT_RECEIVE
    for c in (client, small_channel_client):
        assert [t.id for t in await c.list(limit=100)] == ids
        assert [t.id for t in await c.list(queue="big", limit=100)] == ids
        assert [t.id for t in await c.list(state=TaskState.QUEUED, queue="big", limit=100)] == ids
        assert [t.id for t in await c.list(state=TaskState.QUEUED, queue="big", limit=7)] == ids[:7]
        stats = await c.stats()
        assert stats["total"] == 30
        assert stats["queues"]["big"]["queued"] == 30


async def test_ten_concurrent_submits_of_500_kb_all_succeed(client: Client, store: Store, keyspace: Keyspace):
    # When 10 tasks of ~500 KB are submitted concurrently on one client (group commit)
    blob = "y" * 500_000
    tasks = await asyncio.gather(*(client.submit("noop", {"i": i, "blob": blob}) for i in range(10)))
    # Then every one is stored with its queue key ...
    assert len({t.id for t in tasks}) == 10
    revisions = []
    for task in tasks:
        kv, _ = await store.get(keyspace.task(task.id))
        assert kv is not None and len(kv.value) > 500_000
        revisions.append(kv.mod_revision)
    queued = await client.list(state=TaskState.QUEUED, queue="default", limit=100)
    assert sorted(t.id for t in queued) == sorted(t.id for t in tasks)
    # ... and, a record being written twice, no transaction held two of them
    assert len(set(revisions)) == 10


async def test_concurrent_submits_of_400_kb_are_split_into_transactions_that_fit(
    client: Client, store: Store, keyspace: Keyspace
):
    # Given concurrent submits mixing 400 KB payloads with small ones
    big = "z" * 400_000
    specs = [{"i": i, "blob": big} if i % 3 == 0 else {"i": i} for i in range(30)]
    tasks = await asyncio.gather(*(client.submit("noop", p) for p in specs))
    # Then all are stored, and what was written at one revision (one transaction)
    # stays under etcd's request limit: record + queue key per task
    by_revision: dict[int, int] = {}
    for task in tasks:
        kv, _ = await store.get(keyspace.task(task.id))
        assert kv is not None
        by_revision[kv.mod_revision] = by_revision.get(kv.mod_revision, 0) + 2 * len(kv.value)
    assert max(by_revision.values()) < MAX_REQUEST_BYTES
    # and small tasks still share transactions (group commit kept)
    assert len(by_revision) < len(tasks)


async def test_a_batch_of_large_tasks_is_split_by_bytes(client: Client, store: Store, keyspace: Keyspace):
    result = await client.submit_many(TaskSpec("noop", {"i": i, "blob": "w" * 400_000}) for i in range(6))
    # two records of 400 KB (each written twice) do not fit 1.4 MB: one per transaction
    assert result.transactions == 6
    assert len(await client.list(limit=100)) == 6


@pytest.mark.parametrize(
    "sizes",
    [
        [10] * 200,
        [400_000] * 5,
        [10, 400_000, 10, 10, 400_000, 400_000, 10],
        [600_000, 10, 10],
        [10] * 63 + [600_000, 10],
        [300_000] * 4 + [10] * 100,
    ],
    ids=["small", "large", "mixed", "large-first", "large-65th", "quarter-MB"],
)
def test_the_group_commit_cuts_its_first_transaction_like_submit_many(sizes):
    # Pure logic (no etcd): a group of concurrent submits takes the first chunk of submit_many's split
    ids = IdGenerator(FakeClock())
    tasks = [Task(id=ids.task_id(), type="t", payload="x" * n, seq=ids.sequence()) for n in sizes]
    items = [(t, _encode_queued(t)) for t in tasks]
    while items:
        first = _chunk([t for t, _ in items], [d for _, d in items])[0]
        assert _first_chunk_len(items) == len(first)
        assert len(first) <= TASKS_PER_TXN
        assert len(first) == 1 or sum(2 * len(d) for _, d in first) < MAX_TXN_BYTES
        items = items[len(first) :]
