"""The result hub: a client's waits for its own submits cost no read, however the watch and the submit race."""

from __future__ import annotations

import asyncio

from faultstore import CountingObserver
from tasklease import Client
from tasklease.models import TaskState
from tasklease.store import Store, StoreConfig

BODY = {"order": 42, "lines": ["item " * 20] * 8}


async def test_waits_for_own_submits_read_nothing(cluster, store_config: StoreConfig, keyspace) -> None:
    await cluster.scheduler()
    await cluster.worker(concurrency=32)
    counting = CountingObserver()
    async with Store(store_config, observer=counting) as store:
        client = Client(store, keyspace)
        try:
            warm = [await client.submit("noop", BODY) for _ in range(2)]
            # Two waits at once: the shared watch (the hub) runs from here on.
            await asyncio.gather(*(client.wait(t.id, timeout_s=30) for t in warm))
            sem = asyncio.Semaphore(64)

            async def one(i: int) -> str:
                async with sem:
                    return (await client.submit("noop", {**BODY, "i": i})).id

            ids = await asyncio.gather(*(one(i) for i in range(1500)))
            before = counting.requests["get"] + counting.requests["range"]
            finals = await asyncio.gather(*(client.wait(i, timeout_s=60) for i in ids))
            reads = counting.requests["get"] + counting.requests["range"] - before
        finally:
            await client.close()
    assert all(f.state is TaskState.SUCCEEDED for f in finals)
    assert reads == 0, f"{reads} reads for 1,500 waits"
