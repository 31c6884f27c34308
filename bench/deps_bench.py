"""Round trips per release: what the leader's Releaser asks of etcd to release waiting children.

One local etcd (fsync), one scheduler and one worker in this process; the
scheduler's store counts its transactions: reads (gets only) and releases
(those that delete deps keys). Three shapes, each run to its end:

- fan-out: 1 parent, N children waiting for it (one parent read, batched releases);
- chain: C tasks one after the other (each release alone: the worst case);
- fan-in: P parents, 1 child (each parent's end read once, not once per parent).

It prints the transactions per release and the time from the last parent's
end to the child's start (``hop``; in a fan-out the children then queue for
the worker's 32 slots, so only its minimum says anything). Not a test:
figures go to docs/workflows.md.

    python -m bench.deps_bench [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from tasklease.client import Client, TaskSpec
from tasklease.etcd_server import EtcdServer
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace
from tasklease.models import TaskState
from tasklease.scheduler import Scheduler, SchedulerConfig
from tasklease.store import Delete, Get, Store, StoreConfig
from tasklease.worker import Worker, WorkerConfig


class CountingStore(Store):
    """A real store that counts its transactions by kind."""

    def __init__(self, *args: Any, deps_prefix: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deps_prefix = deps_prefix
        self.counts: Counter[str] = Counter()

    async def txn(self, compares: Any, success: Any, failure: Any = (), **kwargs: Any) -> Any:
        if success and all(isinstance(op, Get) for op in success):
            self.counts["read"] += 1
            self.counts["records_read"] += len(success)
        elif any(isinstance(op, Delete) and op.key.startswith(self.deps_prefix) for op in success):
            self.counts["release"] += 1
            self.counts["released"] += sum(
                1 for op in success if isinstance(op, Delete) and op.key.startswith(self.deps_prefix)
            )
        return await super().txn(compares, success, failure, **kwargs)


async def shape(client: Client, sched_store: CountingStore, name: str, build: Any) -> dict[str, Any]:
    before = Counter(sched_store.counts)
    ids, child_ids = await build(client)
    finals = await asyncio.gather(*(client.wait(i, timeout_s=600) for i in ids))
    assert all(f.state is TaskState.SUCCEEDED and len(f.attempts) == 1 for f in finals), name
    used = sched_store.counts - before
    by_id = {f.id: f for f in finals}
    hops = []
    for f in finals:
        if f.id in child_ids and f.depends_on:
            last_parent = max(by_id[p].attempts[0].finished_at or 0 for p in f.depends_on if p in by_id)
            hops.append(f.attempts[0].started_at - last_parent)
    released = used["released"]
    return {
        "shape": name,
        "released": released,
        "read_txns": used["read"],
        "records_read": used["records_read"],
        "release_txns": used["release"],
        "txns_per_release": round((used["read"] + used["release"]) / max(1, released), 3),
        "hop_min_s": round(min(hops), 4) if hops else None,
        "hop_median_s": round(statistics.median(hops), 4) if hops else None,
    }


async def main(quick: bool) -> None:
    n_fan, n_chain, n_in = (200, 20, 100) if quick else (2000, 100, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        server = EtcdServer(data_dir=Path(tmp) / "etcd")
        server.start()
        try:
            keys = Keyspace("bench-deps")
            config = StoreConfig.from_text(server.endpoint)
            sched_store = CountingStore(config, deps_prefix=keys.deps)
            await sched_store.connect()
            worker_store = Store(config)
            await worker_store.connect()
            scheduler = Scheduler(sched_store, keys, SchedulerConfig(scheduler_id="bench", batch_size=30))
            worker = Worker(
                worker_store, keys, builtin_registry(), WorkerConfig(worker_id="w", concurrency=32)
            )
            await scheduler.start()
            await worker.start()
            client = await Client.connect(config, namespace=keys.namespace)
            try:

                async def fan_out(c: Client) -> tuple[list[str], set[str]]:
                    wf = c.workflow(name="fan-out")
                    root = wf.add("noop", {"pad": "x" * 1024})
                    kids = [wf.add("noop", {"i": i, "pad": "x" * 1024}, after=[root]) for i in range(n_fan)]
                    await wf.submit()
                    return [root.id, *(k.id for k in kids)], {k.id for k in kids}

                async def chain(c: Client) -> tuple[list[str], set[str]]:
                    wf = c.workflow(name="chain")
                    nodes = wf.chain(TaskSpec("noop", {"i": i}) for i in range(n_chain))
                    await wf.submit()
                    return [n.id for n in nodes], {n.id for n in nodes[1:]}

                async def fan_in(c: Client) -> tuple[list[str], set[str]]:
                    batch = await c.submit_many(TaskSpec("noop", {"i": i}) for i in range(n_in))
                    child = await c.submit("noop", depends_on=[t.id for t in batch.tasks])
                    return [*(t.id for t in batch.tasks), child.id], {child.id}

                results = [
                    await shape(client, sched_store, f"fan-out 1 -> {n_fan}", fan_out),
                    await shape(client, sched_store, f"chain of {n_chain}", chain),
                    await shape(client, sched_store, f"fan-in {n_in} -> 1", fan_in),
                ]
            finally:
                await client.close()
                await worker.stop()
                await scheduler.stop()
                await worker_store.close()
                await sched_store.close()
        finally:
            server.stop()
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    asyncio.run(main(parser.parse_args(sys.argv[1:]).quick))
