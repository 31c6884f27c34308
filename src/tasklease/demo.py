"""``tasklease demo``: a local etcd, a small workload, a summary; then everything stops.

Until the scheduler exists (step 3 of the plan), the demo shows the queue:
it submits tasks of mixed priorities one by one and as a batch, re-prioritises
and cancels one, and prints the queue in dequeue order.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from tasklease.client import Client, TaskSpec
from tasklease.etcd_server import EtcdServer
from tasklease.models import TaskState
from tasklease.store import StoreConfig


async def _workload(endpoint: str) -> int:
    client = await Client.connect(StoreConfig.from_text(endpoint), namespace="demo")
    try:
        print("submitting 8 tasks one by one (priorities 0..3) ...")
        single = [await client.submit("noop", {"n": i}, priority=i % 4) for i in range(8)]
        print("submitting a batch of 20 tasks in one transaction ...")
        batch = await client.submit_many(TaskSpec("noop", {"batch": i}, priority=1) for i in range(20))
        print(f"  batch written in {batch.transactions} transaction(s)")
        raised = await client.set_priority(single[0].id, 3)
        print(f"raised {raised.id} from priority 0 to 3")
        cancelled = await client.cancel(single[1].id)
        print(f"cancelled {cancelled.id}")
        queued = await client.list(state=TaskState.QUEUED, queue="default", limit=40)
        print(f"\nqueue 'default' in dequeue order ({len(queued)} tasks):")
        print(f"  {'ID':<26}  PRIO  PAYLOAD")
        for task in queued:
            print(f"  {task.id:<26}  {task.priority:<4}  {task.payload}")
        stats = await client.stats()
        print("\ntasks per state:", {k: v for k, v in stats["states"].items() if v})
        order_ok = [t.priority for t in queued] == sorted((t.priority for t in queued), reverse=True)
        print("priority order:", "ok" if order_ok else "WRONG")
        return 0 if order_ok else 1
    finally:
        await client.close()


def run_demo(data_dir: Path | None = None) -> int:
    """Start a local etcd, run the workload, stop etcd; return the exit code."""
    with tempfile.TemporaryDirectory(prefix="tasklease-demo-") as tmp:
        server = EtcdServer(data_dir=(data_dir or Path(tmp)) / "etcd")
        print(f"starting etcd ({server.binary}) ...")
        with server:
            print(f"etcd ready at {server.endpoint}\n")
            return asyncio.run(_workload(server.endpoint))
