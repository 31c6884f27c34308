"""The worker reads its assignments paged by bytes and survives a watch response too large
to receive (a real etcd; the size limits of a smaller channel are simulated by the store).

An assignment's value is a whole task record (up to ~680 KiB), so a worker's
assignments may be far more than one response may carry. ``LimitedStore`` is
the real store with a receive limit of its own: a range response or a watch
response over it fails the way gRPC's limit does (``StoreRequestTooLarge``,
``WatchTooLarge``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from faults.procs import until
from faultstore import FaultyStore
from tasklease.client import Client
from tasklease.errors import StoreRequestTooLarge, StoreUnavailable, WatchTooLarge
from tasklease.executors.base import Registry
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace
from tasklease.models import TaskState
from tasklease.queue import assign_next
from tasklease.store import Put, StoreConfig
from tasklease.worker import Worker, WorkerConfig

RECORD_PAYLOAD = 400 * 1024

registry = Registry()
GATES: dict[str, asyncio.Event] = {}
EVENTS: dict[str, list[str]] = {}


@registry.task
async def gated(key: str) -> str:
    EVENTS.setdefault(key, []).append("started")
    try:
        await GATES[key].wait()
    except asyncio.CancelledError:
        EVENTS[key].append("cancelled")
        raise
    return key


class LimitedStore(FaultyStore):
    """The real store, receiving at most ``range_limit`` bytes of values per range
    response and ``watch_limit`` per watch response (0: no limit); ``on_registered``
    runs once, right after the node key is first written."""

    range_limit = 0
    watch_limit = 0
    watch_refusals = 0
    node_key = ""
    on_registered: Callable[[int], Awaitable[None]] | None = None

    async def range(self, prefix: str, end: str, **kwargs: Any) -> Any:
        result = await super().range(prefix, end, **kwargs)
        size = sum(len(kv.value) for kv in result.kvs)
        if self.range_limit and size > self.range_limit:
            raise StoreRequestTooLarge(f"simulated: a range response of {size} bytes")
        return result

    async def watch(
        self, prefix: str, end: str, start_revision: int, **kwargs: Any
    ) -> AsyncGenerator[Any, None]:
        async with contextlib.aclosing(super().watch(prefix, end, start_revision, **kwargs)) as events:
            async for batch in events:
                size = sum(len(ev.kv.value) for ev in batch)
                if self.watch_limit and size > self.watch_limit:
                    self.watch_refusals += 1
                    raise WatchTooLarge(f"simulated: a watch response of {size} bytes")
                yield batch

    async def _registered(self, lease: int) -> None:
        hook, self.on_registered = self.on_registered, None
        if hook is not None:
            await hook(lease)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        revision = await super().put(key, value, lease)
        if key == self.node_key:
            await self._registered(lease)
        return revision

    async def txn(self, compares: Any, success: Any, failure: Any = (), **kwargs: Any) -> Any:
        result = await super().txn(compares, success, failure, **kwargs)
        for op in success:
            if result.succeeded and isinstance(op, Put) and op.key == self.node_key:
                await self._registered(op.lease)
        return result


@pytest.fixture
async def limited(store_config: StoreConfig) -> AsyncIterator[LimitedStore]:
    async with LimitedStore(store_config) as s:
        yield s


@pytest.fixture
async def workers() -> AsyncIterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for gate in GATES.values():
        gate.set()
    for w in started:
        await w.kill()


def new_worker(store: LimitedStore, keyspace: Keyspace, worker_id: str, **config: Any) -> Worker:
    reg = builtin_registry()
    reg.update([registry])
    cfg = WorkerConfig(worker_id=worker_id, lease_ttl_s=3, heartbeat_s=0.5, **config)
    return Worker(store, keyspace, reg, cfg)


async def test_a_worker_starts_with_large_assignments_and_runs_them(
    client: Client, limited: LimitedStore, keyspace: Keyspace, workers: list[Worker]
) -> None:
    # Given a channel that receives at most 2 MiB per response, and 8 assignments
    # of ~400 KB records (3.2 MB together) made as soon as the worker registers,
    # before its first read of them
    limited.range_limit = 2 * 1024 * 1024
    worker = new_worker(limited, keyspace, "wbig", concurrency=8)
    limited.node_key = keyspace.node(worker.id)
    tasks = [await client.submit("noop", {"i": i, "blob": "b" * RECORD_PAYLOAD}) for i in range(8)]

    async def assign_all(lease: int) -> None:
        for _ in tasks:
            assert await assign_next(limited, keyspace, "default", worker.id, lease, time.time())

    limited.on_registered = assign_all
    # When it starts (it reads its assignments in pages that fit)
    await asyncio.wait_for(worker.start(), 30)
    workers.append(worker)
    # Then it runs all of them
    finals = [await client.wait(t.id, timeout_s=30) for t in tasks]
    assert [f.state for f in finals] == [TaskState.SUCCEEDED] * 8
    assert sorted(f.result["i"] for f in finals) == list(range(8))
    assert all(len(f.attempts) == 1 for f in finals)


async def test_a_watch_response_too_large_is_read_again_keeping_tasks_and_lease(
    client: Client, limited: LimitedStore, keyspace: Keyspace, workers: list[Worker]
) -> None:
    # Given a worker running a task
    worker = new_worker(limited, keyspace, "wwatch")
    await worker.start()
    workers.append(worker)
    node_before, _ = await limited.get(keyspace.node(worker.id))
    lease = worker.lease_id
    GATES["long"] = asyncio.Event()
    long = await client.submit("gated", {"key": "long"})
    await assign_next(limited, keyspace, "default", worker.id, lease, time.time())
    await until(lambda: EVENTS.get("long") == ["started"], within_s=10, what="the first task to start")

    # When a watch response is too large to receive, and etcd does not answer
    # the first two reads that follow
    # (an assignment's value is the attempt, ~200 bytes, not the record: any assignment put
    # is over this limit)
    limited.watch_limit = 100
    prefix = keyspace.worker_assignments(worker.id)
    limited.fail(
        "range",
        lambda: StoreUnavailable("simulated: no answer"),
        times=2,
        when=lambda p, end, **kw: p.startswith(prefix),
    )
    big = await client.submit("noop", {"blob": "b" * RECORD_PAYLOAD})
    await assign_next(limited, keyspace, "default", worker.id, lease, time.time())

    # Then the worker reads its assignments again and runs the new one ...
    final = await client.wait(big.id, timeout_s=30)
    assert final.state is TaskState.SUCCEEDED
    assert limited.watch_refusals == 1
    assert limited.faults[-1].fired == 2
    # ... without stopping the running task or giving up its lease
    assert EVENTS["long"] == ["started"]
    assert worker.lease_id == lease
    node_after, _ = await limited.get(keyspace.node(worker.id))
    assert node_before is not None and node_after is not None
    assert node_after.create_revision == node_before.create_revision
    assert node_after.lease == lease
    GATES["long"].set()
    done = await client.wait(long.id, timeout_s=10)
    assert done.state is TaskState.SUCCEEDED and len(done.attempts) == 1
