"""Fire and confirm (``Client.send``): futures resolved once durable, order kept, nothing lost at close."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tasklease import Client, StoreConfig, SubmitFuture, SyncClient, TaskSpec
from tasklease.errors import InvalidOption, InvalidPriority, PayloadTooLarge
from tasklease.models import TaskState
from tasklease.store import Store

# A realistic payload: about a kilobyte of mixed JSON.
BODY = {"customer": {"id": 1234, "name": "Ada Lovelace", "tags": ["a", "b"]}, "lines": ["x" * 60] * 14}


def payload(i: int) -> dict[str, object]:
    return {**BODY, "i": i}


async def test_a_loop_of_sends_is_grouped_durable_and_in_order(client: Client, store: Store) -> None:
    _, before = await store.get("/nothing")
    futures = [await client.send("noop", payload(i), queue="sends") for i in range(2000)]
    assert all(isinstance(f, SubmitFuture) for f in futures)
    assert len({f.id for f in futures}) == 2000
    assert await client.flush() == []
    assert all(f.done() for f in futures)
    stored = [await f for f in futures]
    assert [t.id for t in stored] == [f.id for f in futures]
    assert all(t.state is TaskState.QUEUED for t in stored)
    _, after = await store.get("/nothing")
    # Group commit: 64 tasks per transaction (one revision each); a few more as the loop starts.
    assert after - before <= 2000 // 64 + 10
    # Durable and in send order: the queue's order is the call order.
    queued = []
    page = await client.list_page(state=TaskState.QUEUED, queue="sends", limit=1000)
    queued.extend(page.tasks)
    while page.cursor:
        page = await client.list_page(state=TaskState.QUEUED, queue="sends", limit=1000, cursor=page.cursor)
        queued.extend(page.tasks)
    assert [t.id for t in queued] == [f.id for f in futures]
    assert (await client.get(futures[1234].id)).payload == payload(1234)


async def test_bad_input_is_refused_at_send_and_nothing_is_pending(client: Client) -> None:
    with pytest.raises(PayloadTooLarge):
        await client.send("noop", {"blob": "x" * (600 * 1024)})
    with pytest.raises(InvalidPriority):
        await client.send("noop", {}, priority=9)
    with pytest.raises(TypeError):
        await client.send("noop", {}, colour="blue")
    assert client.sender.in_flight == 0
    assert await client.flush() == []


async def test_a_failed_send_fails_alone_and_is_reported_once(client: Client) -> None:
    taken = await client.submit("noop", {"first": True})
    futures = [await client.send("noop", payload(i)) for i in range(10)]
    clash = await client.send("noop", {"second": True}, task_id=taken.id)
    futures += [await client.send("noop", payload(i)) for i in range(10, 20)]
    failed = await client.flush()
    assert failed == [clash]
    with pytest.raises(InvalidOption):
        await clash
    assert isinstance(clash.exception(), InvalidOption)
    assert [(await f).id for f in futures] == [f.id for f in futures]
    assert (await client.get(taken.id)).payload == {"first": True}  # nothing overwritten
    assert await client.flush() == []  # each failure is returned once


async def test_send_waits_when_max_in_flight_are_pending(store: Store, keyspace) -> None:
    client = Client(store, keyspace, max_in_flight=4)
    try:
        seen = []
        futures = []
        for i in range(200):
            futures.append(await client.send("noop", payload(i)))
            seen.append(client.sender.in_flight)
        assert max(seen) <= 4
        assert await client.flush() == []
        assert len({(await f).id for f in futures}) == 200
    finally:
        await client.close()
    with pytest.raises(InvalidOption):
        await client.send("noop", {})  # closed


async def test_close_flushes_every_send(
    store_config: StoreConfig, namespace: str, store: Store, keyspace
) -> None:
    client = await Client.connect(store_config, namespace=namespace)
    futures = [await client.send("noop", payload(i), queue="closing") for i in range(500)]
    await client.close()  # no flush: close waits for them
    reader = Client(store, keyspace)
    try:
        page = await reader.list_page(state=TaskState.QUEUED, queue="closing", limit=1000)
        assert [t.id for t in page.tasks] == [f.id for f in futures]
        assert all(f.done() and f.exception() is None for f in futures)
        assert (await reader.get(futures[321].id)).payload == payload(321)
    finally:
        await reader.close()


async def test_close_logs_a_failure_nobody_looked_at(client: Client, caplog) -> None:
    taken = await client.submit("noop", {})
    clash = await client.send("noop", {}, task_id=taken.id)
    with caplog.at_level(logging.ERROR, logger="tasklease.client"):
        await client.sender.close()
    assert clash.done()
    assert any(taken.id in r.getMessage() and "not stored" in r.getMessage() for r in caplog.records)


async def test_sends_with_one_idempotency_key_give_one_task(client: Client) -> None:
    a = await client.send("noop", {"n": 1}, idempotency_key="order-7")
    b = await client.send("noop", {"n": 2}, idempotency_key="order-7")
    assert await client.flush() == []
    ta, tb = await a, await b
    assert ta.id == tb.id
    assert (await client.get(ta.id)).payload == {"n": 1}


async def test_sent_tasks_run(cluster, client: Client) -> None:
    await cluster.scheduler()
    await cluster.worker()
    futures = [await client.send("noop", payload(i)) for i in range(300)]
    tasks = await asyncio.gather(*futures)
    finals = await asyncio.gather(*(client.wait(t.id, timeout_s=60) for t in tasks))
    assert all(f.state is TaskState.SUCCEEDED for f in finals)
    assert [f.result for f in finals[:3]] == [payload(0), payload(1), payload(2)]


def test_sync_client_send_and_flush(etcd_endpoint: str, namespace: str) -> None:
    with SyncClient(StoreConfig.from_text(etcd_endpoint), namespace=namespace) as client:
        futures = [client.send("noop", payload(i)) for i in range(300)]
        with pytest.raises(PayloadTooLarge):
            client.send("noop", {"blob": "x" * (600 * 1024)})
        clash = client.send("noop", {}, task_id=futures[0].task_id)  # type: ignore[attr-defined]
        assert client.flush() == [clash.task_id]  # type: ignore[attr-defined]
        with pytest.raises(InvalidOption):
            clash.result(timeout=5)
        stored = [f.result(timeout=5) for f in futures]
        assert [t.id for t in stored] == [f.task_id for f in futures]  # type: ignore[attr-defined]
        assert client.get(stored[299].id).payload == payload(299)
        more = [client.send_spec(TaskSpec("noop", payload(i))) for i in range(50)]
    # close flushed them
    assert all(f.done() and f.exception() is None for f in more)
