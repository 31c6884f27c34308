"""The event feed of ``GET /api/events`` against a real etcd, with a real scheduler and workers."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from faultstore import FaultyStore
from ssetools import SSEMessage, SSEReader, parse_sse
from tasklease.client import Client, TaskSpec
from tasklease.errors import StoreUnavailable
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import TaskState
from tasklease.nodes import parse_node
from tasklease.store import Event, Store, StoreConfig
from tasklease.web.feed import KEEPALIVE, RETRY, EventFeed

GUARD_S = 60  # a hang guard only: nothing here is timed


class CountingStore(Store):
    """The real store; counts the watches open through it."""

    open_watches = 0

    def watch(self, prefix: str, end: str, start_revision: int, *, prev_kv: bool = False) -> Any:
        return self._counted(super().watch(prefix, end, start_revision, prev_kv=prev_kv))

    async def _counted(self, inner: AsyncGenerator[list[Event], None]) -> AsyncGenerator[list[Event], None]:
        self.open_watches += 1
        try:
            async for events in inner:
                yield events
        finally:
            self.open_watches -= 1
            await inner.aclose()


class CuttableStore(Store):
    """The real store; while ``cut``, a watch opened through it fails at its next response (etcd unreachable)."""

    cut = False

    def watch(self, prefix: str, end: str, start_revision: int, *, prev_kv: bool = False) -> Any:
        return self._cuttable(super().watch(prefix, end, start_revision, prev_kv=prev_kv))

    async def _cuttable(self, inner: AsyncGenerator[list[Event], None]) -> AsyncGenerator[list[Event], None]:
        try:
            async for events in inner:
                if self.cut:
                    raise StoreUnavailable("cut off (test)")
                yield events
        finally:
            await inner.aclose()


@contextlib.asynccontextmanager
async def running(store: Store, keys: Keyspace, **options: Any) -> AsyncIterator[EventFeed]:
    feed = EventFeed(store, keys, **options)
    await feed.start()
    try:
        yield feed
    finally:
        await feed.stop()


@contextlib.asynccontextmanager
async def streaming(feed: EventFeed, last_event_id: int | None) -> AsyncIterator[SSEReader]:
    async with contextlib.aclosing(feed.stream(last_event_id)) as chunks:
        reader = SSEReader(chunks)
        first = await reader.next()
        assert first.retry == 2000
        yield reader


async def read_until(reader: SSEReader, revision: int) -> list[SSEMessage]:
    """The messages up to the first one at ``revision`` or later (inclusive)."""
    got: list[SSEMessage] = []
    async with asyncio.timeout(GUARD_S):
        while not got or got[-1].revision < revision:
            got.append(await reader.next_message())
    return got


async def mark(store: Store, keys: Keyspace, name: str = "marker") -> int:
    """A write the feed sends (a queue paused), to read up to: its revision."""
    return await store.put(keys.paused(name), b"{}")


async def until_seen(feed: EventFeed, revision: int) -> None:
    async with asyncio.timeout(GUARD_S):
        while feed.revision < revision:
            await asyncio.sleep(0.01)


async def history(store: Store, keys: Keyspace, after: int, until: int) -> dict[int, list[Event]]:
    """etcd's own record of the feed's range: the events of each revision in ``(after, until]``."""
    out: dict[int, list[Event]] = defaultdict(list)
    async with (
        asyncio.timeout(GUARD_S),
        contextlib.aclosing(store.watch(keys.leader, prefix_end(keys.tasks), after + 1)) as watch,
    ):
        async for events in watch:
            for event in events:
                if event.kv.mod_revision <= until:
                    out[event.kv.mod_revision].append(event)
            if events[-1].kv.mod_revision >= until:
                return out
    raise AssertionError("the watch ended")


async def coalesced_heartbeat(store: Store, keys: Keyspace, worker_id: str) -> None:
    """Wait until a worker has put two records in a row within one second (the second one is not sent)."""
    key = keys.node(worker_id)
    kv, _ = await store.get(key)
    assert kv is not None
    async with asyncio.timeout(GUARD_S):
        while True:
            await asyncio.sleep(0.05)
            now, _ = await store.get(key)
            assert now is not None
            before, after = parse_node(key, kv.value), parse_node(key, now.value)
            assert before.heartbeat_at is not None and after.heartbeat_at is not None
            only_heartbeat = replace(
                after, heartbeat_at=before.heartbeat_at, cpu=before.cpu, memory=before.memory
            )
            same_second = int(before.heartbeat_at) == int(after.heartbeat_at)
            if now.version == kv.version + 1 and only_heartbeat == before and same_second:
                return
            kv = now


def normal(msg: SSEMessage) -> tuple[str, str | None, Any]:
    """A message without what depends on when it was made (a worker's heartbeat age)."""
    data = msg.json
    for change in data.get("changes", ()):
        change.pop("heartbeat_age_s", None)
    return msg.event, msg.id, data


def changes(msgs: list[SSEMessage], kind: str) -> list[tuple[int, dict[str, Any]]]:
    return [(m.revision, c) for m in msgs for c in m.json["changes"] if c["kind"] == kind]


async def wait_all(client: Client, ids: list[str]) -> list[Any]:
    return await asyncio.gather(*(client.wait(i, timeout_s=GUARD_S) for i in ids))


async def test_real_tasks_send_one_message_per_revision(client, cluster, store, keyspace):
    async with running(store, keyspace) as feed, streaming(feed, None) as reader:
        start = feed.revision
        worker = await cluster.worker(concurrency=10)
        batch = await client.submit_many(TaskSpec("noop", {"i": i}) for i in range(10))
        assert batch.atomic
        await cluster.scheduler()
        finals = await wait_all(client, [t.id for t in batch.tasks])
        assert all(f.state is TaskState.SUCCEEDED for f in finals)
        idle = await client.submit("noop", queue="nobody-serves-this")
        await client.cancel(idle.id, "not needed")
        await store.delete(keyspace.task(idle.id))  # as when its retention ends
        end = await mark(store, keyspace)
        msgs = await read_until(reader, end)

    # One message per revision, in order, each saying its own revision
    revisions = [m.revision for m in msgs]
    assert revisions == sorted(set(revisions))
    assert all(m.event == "changes" and m.json["revision"] == m.revision for m in msgs)
    # Exactly the revisions at which etcd changed a task record, or put a running entry (an
    # assignment leaves the record as it was queued), with those tasks in order
    etcd = await history(store, keyspace, start, end)
    task_revisions = {
        rev: [
            e.kv.key.rpartition("/")[2]
            for e in events
            if e.kv.key.startswith(keyspace.tasks)
            or (e.kv.key.startswith(keyspace.running) and e.type == "put")
        ]
        for rev, events in etcd.items()
    }
    sent = {m.revision: [c["id"] for c in m.json["changes"] if c["kind"].startswith("task")] for m in msgs}
    assert {rev: ids for rev, ids in task_revisions.items() if ids} == {
        rev: ids for rev, ids in sent.items() if ids
    }
    # The batch submit is one message of 10 queued tasks; the assignment batches are messages of many
    ids = {t.id for t in batch.tasks}
    queued = [(t.id, "queued") for t in batch.tasks]
    assert [m for m in msgs if [(c.get("id"), c.get("state")) for c in m.json["changes"]] == queued]
    running_per_message = [
        sum(1 for c in m.json["changes"] if c["kind"] == "task" and c["state"] == "running") for m in msgs
    ]
    assert max(running_per_message) > 1
    assert sum(running_per_message) == 10
    # Every task went queued -> running -> succeeded, on the worker
    for task_id in ids:
        seen = [c for _, c in changes(msgs, "task") if c["id"] == task_id]
        assert [c["state"] for c in seen] == ["queued", "running", "succeeded"]
        assert seen[-1]["worker"] == worker.id and seen[-1]["attempts"] == 1 and seen[-1]["error"] is None
    # The cancelled one, its end, the worker, the leader and the marker
    idle_changes = [c for _, c in changes(msgs, "task") + changes(msgs, "task_gone") if c["id"] == idle.id]
    assert [(c["kind"], c.get("state")) for c in idle_changes] == [
        ("task", "queued"),
        ("task", "cancelled"),
        ("task_gone", None),
    ]
    assert idle_changes[1]["error"] == "not needed"
    workers = [c for _, c in changes(msgs, "worker")]
    assert workers and {w["id"] for w in workers} == {worker.id}
    assert workers[0]["capacity"] == 10 and "tasks" not in workers[0]
    assert [c["id"] for _, c in changes(msgs, "leader")] == ["s0"]
    assert msgs[-1].json["changes"] == [{"kind": "queue", "name": "marker", "paused": True}]


async def test_a_client_resumes_from_the_ring_buffer(store, keyspace):
    async with running(store, keyspace) as feed:
        async with streaming(feed, None) as reader:
            revs = [await mark(store, keyspace, f"q{i}") for i in range(5)]
            first = await read_until(reader, revs[-1])
        assert [m.revision for m in first] == revs
        # A client that had the second message gets the three after it, the same bytes
        async with streaming(feed, revs[1]) as again:
            later = await read_until(again, revs[-1])
        assert [(m.id, m.data) for m in later] == [(m.id, m.data) for m in first[2:]]
        # Then the live ones
        async with streaming(feed, revs[-1]) as again:
            live = await mark(store, keyspace, "q5")
            assert [m.revision for m in await read_until(again, live)] == [live]


async def test_after_a_restart_a_client_gets_exactly_the_messages_after_its_last(
    client, cluster, store, store_config, keyspace
):
    # A server that runs throughout, as the reference of what clients are sent
    async with running(store, keyspace) as reference, streaming(reference, None) as ref:
        await cluster.worker(concurrency=4)
        await cluster.scheduler()
        before = await client.submit_many(TaskSpec("noop", {"i": i}) for i in range(8))
        await wait_all(client, [t.id for t in before.tasks])
        seen = await read_until(ref, await mark(store, keyspace, "a"))
        last = seen[len(seen) // 2].revision  # what a client of the old server had
        # More happens while no server runs
        down = await client.submit_many(TaskSpec("noop", {"i": i}) for i in range(8))
        await wait_all(client, [t.id for t in down.tasks])
        await cluster.worker(concurrency=2)
        await coalesced_heartbeat(store, keyspace, "w0")
        # A new server (an empty buffer) and the client back, while tasks keep coming
        async with CountingStore(store_config) as own, running(own, keyspace) as fresh:
            assert fresh.buffer.floor > last
            async with streaming(fresh, last) as resumed:

                async def more() -> None:
                    for i in range(12):
                        await client.submit("noop", {"i": i})

                submitting = asyncio.create_task(more())
                first = await resumed.next_message()
                await submitting
                end = await mark(store, keyspace, "b")
                got = [first, *await read_until(resumed, end)]
                # The catch-up watch has ended: the shared one is the only watch left
                assert own.open_watches == 1
        expected = [m for m in seen if m.revision > last] + await read_until(ref, end)
    assert [m.revision for m in got] == [m.revision for m in expected]
    assert [normal(m) for m in got] == [normal(m) for m in expected]
    # Among them the workers: the new one, and w0's heartbeats, at most one a second (not all of them)
    workers = [c for m in got for c in m.json["changes"] if c["kind"] == "worker"]
    assert {"w0", "w1"} <= {c["id"] for c in workers}
    node_puts = [
        e
        for events in (await history(store, keyspace, last, end)).values()
        for e in events
        if e.kv.key == keyspace.node("w0") and e.type == "put"
    ]
    sent_w0 = [c for c in workers if c["id"] == "w0"]
    assert 0 < len(sent_w0) < len(node_puts)


async def test_a_client_outside_the_buffer_catches_up_and_a_compacted_one_resyncs(store, keyspace):
    async with running(store, keyspace, buffer_messages=2) as feed:
        async with streaming(feed, None) as reader:
            start = feed.revision
            revs = [await mark(store, keyspace, f"q{i}") for i in range(5)]
            sent = await read_until(reader, revs[-1])
        assert feed.buffer.floor == revs[2]
        # Out of the buffer, still in etcd's history: a catch-up watch gives them
        async with streaming(feed, start) as caught:
            got = await read_until(caught, revs[-1])
        assert [(m.id, m.data) for m in got] == [(m.id, m.data) for m in sent]
        # Compacted: a resync, then the live messages
        _, now = await store.get(keyspace.leader)
        await store._svc().kv.compact(now, physical=True)
        async with streaming(feed, start) as compacted:
            resync = await compacted.next_message()
            assert (resync.event, resync.json, resync.revision) == (
                "resync",
                {"revision": feed.revision},
                revs[-1],
            )
            live = await mark(store, keyspace, "after")
            assert [m.revision for m in await read_until(compacted, live)] == [live]
        # Still in the buffer: compaction does not matter
        async with streaming(feed, revs[-1]) as buffered:
            assert [m.revision for m in await read_until(buffered, live)] == [live]


async def test_a_last_event_id_etcd_never_reached_resyncs(store, keyspace):
    async with running(store, keyspace) as feed, streaming(feed, 10**15) as reader:
        resync = await reader.next_message()
        assert resync.event == "resync" and resync.revision == feed.revision
        live = await mark(store, keyspace)
        assert [m.revision for m in await read_until(reader, live)] == [live]


async def test_a_slow_client_is_disconnected_and_loses_nothing_by_reconnecting(store, keyspace):
    async with running(store, keyspace, client_queue=5) as feed:
        fast_msgs: list[bytes] = []
        async with streaming(feed, None) as slow, streaming(feed, None) as fast:
            since = feed.revision
            assert feed.clients == 2
            revs = []
            for i in range(8):  # the fast one reads as they come; the slow one never does
                revs.append(await mark(store, keyspace, f"q{i}"))
                fast_msgs.extend(m.data.encode() for m in await read_until(fast, revs[-1]))
            await until_seen(feed, revs[-1])
            with pytest.raises(StopAsyncIteration):
                await slow.next()  # over 5 queued: its stream ended, nothing more sent
            assert feed.clients == 1
        assert feed.clients == 0
        # It reconnects with the last id it had and gets everything
        async with streaming(feed, since) as back:
            got = await read_until(back, revs[-1])
        assert [m.revision for m in got] == revs
        assert [m.data.encode() for m in got] == fast_msgs


async def test_keepalive_comments_while_nothing_happens(store, keyspace):
    async with (
        running(store, keyspace, keepalive_s=0.05) as feed,
        contextlib.aclosing(feed.stream(None)) as chunks,
    ):
        assert await anext(chunks) == RETRY
        assert await anext(chunks) == KEEPALIVE
        assert await anext(chunks) == KEEPALIVE
        live = await mark(store, keyspace)
        while (chunk := await anext(chunks)) == KEEPALIVE:
            pass
        assert chunk.startswith(b"id: %d\nevent: changes\n" % live)


async def test_every_client_gets_the_same_bytes_and_stop_ends_the_streams(store, keyspace):
    feed = EventFeed(store, keyspace)
    with pytest.raises(RuntimeError):
        await anext(feed.stream(None))
    await feed.start()
    streams = [feed.stream(None) for _ in range(3)]
    assert [await anext(s) for s in streams] == [RETRY] * 3
    assert feed.clients == 3
    rev = await mark(store, keyspace)
    chunks = [await anext(s) for s in streams]
    assert chunks[0].startswith(b"id: %d\n" % rev)
    assert chunks[0] is chunks[1] is chunks[2]  # encoded once
    await feed.stop()
    for s in streams:
        with pytest.raises(StopAsyncIteration):
            await anext(s)
    assert feed.clients == 0


async def test_two_servers_on_one_etcd_send_the_same_messages(store_config: StoreConfig, keyspace):
    # Two servers on one etcd: each has its own watch and sends the same messages
    async with (
        Store(store_config) as a,
        Store(store_config) as b,
        running(a, keyspace) as one,
        running(b, keyspace) as two,
        streaming(one, None) as r1,
        streaming(two, None) as r2,
    ):
        rev = await mark(a, keyspace)
        m1, m2 = await read_until(r1, rev), await read_until(r2, rev)
    assert [(m.id, m.data) for m in m1] == [(m.id, m.data) for m in m2]


async def test_the_shared_watch_cut_off_past_a_compaction_resyncs_every_client(store_config, store, keyspace):
    async with (
        CuttableStore(store_config) as cuttable,
        running(cuttable, keyspace) as feed,
        streaming(feed, None) as reader,
    ):
        before = await mark(store, keyspace, "before")
        assert [m.revision for m in await read_until(reader, before)] == [before]
        # The feed loses etcd; meanwhile more is written, and etcd compacts it away
        cuttable.cut = True
        lost = [await mark(store, keyspace, f"lost{i}") for i in range(2)]
        await store._svc().kv.compact(lost[-1], physical=True)
        cuttable.cut = False
        # Back: the feed cannot resume, so it re-reads, and every client reloads
        resync = await reader.next_message()
        assert resync.event == "resync" and resync.revision >= lost[-1]
        assert feed.buffer.floor == resync.revision and len(feed.buffer) == 0
        after = await mark(store, keyspace, "after")
        assert [m.revision for m in await read_until(reader, after)] == [after]


async def chunks_until(chunks: AsyncIterator[bytes], revision: int) -> list[SSEMessage]:
    """The messages (not the keepalives) up to the one at ``revision``."""
    got: list[SSEMessage] = []
    async with asyncio.timeout(GUARD_S):
        while not got or got[-1].revision < revision:
            got.extend(m for m in parse_sse(await anext(chunks)) if m.id is not None)
    return got


async def test_a_catch_up_to_a_revision_of_no_event_ends_at_the_next_one_and_keeps_the_client_alive(
    store_config, store, keyspace
):
    revs = [await mark(store, keyspace, f"q{i}") for i in range(3)]
    outside = keyspace.assignment("nobody", "x")  # not in the feed's range: a revision it does not see
    await store.put(outside, b"")
    async with (
        CountingStore(store_config) as own,
        running(own, keyspace, keepalive_s=0.05) as feed,
        contextlib.aclosing(feed.stream(revs[0])) as chunks,
    ):
        assert feed.revision > revs[-1] and feed.buffer.floor > revs[0]
        assert await anext(chunks) == RETRY
        assert [m.revision for m in await chunks_until(chunks, revs[-1])] == revs[1:]
        # Nothing tells the catch-up it is done (no event at the revision it must reach): it waits,
        # and the client hears keepalives
        assert await anext(chunks) == KEEPALIVE
        assert own.open_watches == 2
        # The next event ends it: sent once, and the shared watch is the only one left
        live = await mark(store, keyspace, "live")
        assert [m.revision for m in await chunks_until(chunks, live)] == [live]
        assert own.open_watches == 1
    # A stop ends a waiting catch-up at once
    await store.put(outside, b"")
    async with CountingStore(store_config) as own, running(own, keyspace, keepalive_s=0.05) as feed:
        waiting = feed.stream(revs[0])
        assert await anext(waiting) == RETRY
        await chunks_until(waiting, live)
        assert await anext(waiting) == KEEPALIVE
        await feed.stop()
        with pytest.raises(StopAsyncIteration):
            await anext(waiting)
        assert own.open_watches == 0 and feed.clients == 0


async def test_a_catch_up_that_fails_ends_the_stream_and_the_client_comes_back(store_config, store, keyspace):
    async with FaultyStore(store_config) as faulty, running(faulty, keyspace, buffer_messages=1) as feed:
        revs = [await mark(store, keyspace, f"q{i}") for i in range(3)]
        await until_seen(feed, revs[-1])
        faulty.fail(
            "range", lambda: StoreUnavailable("etcd is away (test)"), when=lambda *a, **kw: kw["revision"]
        )
        async with contextlib.aclosing(feed.stream(revs[0])) as failing:
            assert await anext(failing) == RETRY
            with pytest.raises(StopAsyncIteration):
                await anext(failing)
        assert feed.clients == 0
        # It reconnects (the browser does, 2 s later) and gets them
        async with streaming(feed, revs[0]) as back:
            assert [m.revision for m in await read_until(back, revs[-1])] == revs[1:]
