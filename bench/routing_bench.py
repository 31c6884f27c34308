"""Cost of tasks nobody can run: throughput of runnable tasks beside a deep unroutable queue.

One stack (local etcd with fsync, one scheduler, two worker processes), one run:

1. throughput of N no-op tasks in the `default` queue (nothing else queued);
2. then U tasks of a type no worker runs are queued in the SAME queue, ahead of
   everything (priority 3), plus U/10 requiring a tag no worker has;
3. throughput of N no-op tasks again (priority 0, behind the unroutable ones).

The ratio (2nd / 1st) is the figure: tasks nobody can run must not slow the
others (the scheduler groups queue keys by route and passes over whole groups
no worker may take). Also printed: the scheduler's CPU time per runnable task
in both phases, from the process's own counters.

    python -m bench.routing_bench [--quick]     (U = 100,000; --quick: 10,000)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.tasklease_bench import connect, stack
from tasklease.client import Client, TaskSpec
from tasklease.models import TaskState

RESULTS = Path(__file__).parent / "results" / "routing.jsonl"


async def _runnable(client: Client, n: int) -> float:
    t0 = time.perf_counter()
    ids = []
    for start in range(0, n, 640):
        batch = await client.submit_many(
            TaskSpec("noop", {"i": i}, priority=0) for i in range(start, min(n, start + 640))
        )
        ids.extend(t.id for t in batch.tasks)
    finals = await asyncio.gather(*(client.wait(i, timeout_s=600) for i in ids))
    assert all(f.state is TaskState.SUCCEEDED for f in finals)
    return n / (time.perf_counter() - t0)


async def _unroutable(client: Client, u: int) -> float:
    t0 = time.perf_counter()
    for start in range(0, u, 640):
        specs = [
            TaskSpec("nobody_runs_this", {"i": i}, priority=3)
            if i % 10
            else TaskSpec("noop", {"i": i}, priority=3, requires={"zone": "nowhere"})
            for i in range(start, min(u, start + 640))
        ]
        await client.submit_many(specs)
    return time.perf_counter() - t0


def _scheduler_cpu(s: Any) -> float:
    proc = psutil.Process(s.procs["scheduler"].pid)
    t = proc.cpu_times()
    return float(t.user + t.system)


async def run(quick: bool) -> dict[str, Any]:
    n = 2000 if quick else 5000
    u = 10_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="tl-routing-") as tmp, stack(Path(tmp), fsync=True) as s:
        client = await connect(s)
        try:
            await _runnable(client, 200)  # warm up
            cpu0 = _scheduler_cpu(s)
            before = await _runnable(client, n)
            cpu1 = _scheduler_cpu(s)
            queued_s = await _unroutable(client, u)
            stats = await client.stats()
            waiting = sum(w["queued"] for w in stats["waiting_without_worker"])
            cpu2 = _scheduler_cpu(s)
            after = await _runnable(client, n)
            cpu3 = _scheduler_cpu(s)
        finally:
            await client.close()
    return {
        "bench": "routing",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "quick": quick,
        "runnable_tasks": n,
        "unroutable_queued": u,
        "waiting_without_worker_seen": waiting,
        "queue_unroutable_s": round(queued_s, 1),
        "throughput_before": round(before, 1),
        "throughput_after": round(after, 1),
        "ratio_after_before": round(after / before, 3),
        "scheduler_cpu_ms_per_task_before": round((cpu1 - cpu0) / n * 1000, 3),
        "scheduler_cpu_ms_per_task_after": round((cpu3 - cpu2) / n * 1000, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.quick))
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
