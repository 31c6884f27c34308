"""Lateness of delayed tasks (W2): when each is queued against its due time, 1k vs 100k waiting.

Each run is its own fresh stack (local etcd with fsync, one scheduler, no
worker: nothing is assigned, the queued tasks stay queued):

1. N delayed tasks of ~1 KB (realistic JSON) are submitted with
   ``submit_many`` (batches of 640, 8 in flight), their due times spread
   evenly over a window that starts after the submits have finished;
2. a watch (opened before the submits) notes when each task is queued: the
   deletion of its delayed key, in the same transaction as its queue key;
   lateness = that moment - the task's ``not_before`` (both on this
   machine's clock; the watch's own delivery is included);
3. p50 / p99 / max lateness are printed, with the scheduler's CPU time in the
   window and its memory.

By default (``--rate R``, 200 a second) both runs fall due at the same rate:
the small run (1,000 tasks) over 5 s, the large one (100,000) over 500 s, of
which the first ``--measure`` seconds (30: 6,000 tasks, while 94,000 more
still wait) are measured. That isolates the cost of how many wait: lateness
must stay flat (goal: p99 <= 100 ms at 100k waiting). ``--window S`` instead
spreads all N over S seconds (the large run then falls due 100 times faster
than the small one: a throughput test of promotion, not of waiting).

``--costs`` also measures, on the small stack, what promotion spends per task
on reading records (groups of 16 and 64) and on writing promotions (42 per
transaction, the Promoter's compares and writes without its fence): the
figures behind reading the record rather than copying it into the delayed key
(docs/delays.md).

    python -m bench.delay_bench [--quick] [--window S] [--costs]
        (N = 1,000 and 100,000; --quick: 1,000 and 10,000)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.tasklease_bench import connect, percentile, stack
from tasklease import codec, transitions
from tasklease.client import Client, TaskSpec
from tasklease.keys import prefix_end
from tasklease.models import TaskState
from tasklease.store import Compare, Get

RESULTS = Path(__file__).parent / "results" / "delays.jsonl"
SUBMIT_BATCH = 640
SUBMITS_IN_FLIGHT = 8

_WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "order",
    "invoice",
    "shipment",
    "customer",
    "refund",
    "report",
    "mail",
]


def payload(rng: random.Random, i: int) -> dict[str, Any]:
    """A realistic ~1 KB payload (an e-mail to send)."""
    body = " ".join(rng.choice(_WORDS) for _ in range(140))
    return {
        "to": f"customer{i}@example.com",
        "template": "order-shipped",
        "vars": {"order": f"ORD-{i:08d}", "items": rng.randint(1, 9), "total": round(rng.uniform(5, 500), 2)},
        "body": body[:900],
    }


async def _submit(client: Client, specs: list[TaskSpec]) -> list[Any]:
    sem = asyncio.Semaphore(SUBMITS_IN_FLIGHT)

    async def one(chunk: list[TaskSpec]) -> list[Any]:
        async with sem:
            return (await client.submit_many(chunk)).tasks

    chunks = [specs[i : i + SUBMIT_BATCH] for i in range(0, len(specs), SUBMIT_BATCH)]
    return [t for part in await asyncio.gather(*(one(c) for c in chunks)) for t in part]


async def _watch_queued(client: Client, revision: int, seen: dict[str, float], n: int) -> None:
    """When each task is queued: its delayed key's deletion, which is in the transaction that queues it.

    (Watching the queue keys would say the same at the same revision, but each
    event would carry the whole record: this process would take CPU from the
    scheduler on a 2-core machine.)
    """
    keys = client.keys
    async for events in client.store.watch(keys.delayed, prefix_end(keys.delayed), revision):
        at = time.time()
        for ev in events:
            if ev.type == "delete":
                seen.setdefault(keys.parse_delayed(ev.kv.key).task_id, at)
        if len(seen) >= n:
            return


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


async def run_one(n: int, window_s: float, *, costs: bool, measure_s: float | None = None) -> dict[str, Any]:
    """One fresh stack: ``n`` delayed tasks due over ``window_s``; the first ``measure_s`` of it measured."""
    with (
        tempfile.TemporaryDirectory(prefix="tl-delays-") as tmp,
        stack(Path(tmp), fsync=True, workers=0) as s,
    ):
        client = await connect(s, timeout_s=30)
        try:
            scheduler = s.procs["scheduler"].pid
            rng = random.Random(n)
            head = await client.store.range(
                client.keys.queues, prefix_end(client.keys.queues), count_only=True
            )
            seen: dict[str, float] = {}
            measure_s = window_s if measure_s is None else min(measure_s, window_s)
            measured = min(n, round(n * measure_s / window_s))
            watcher = asyncio.create_task(_watch_queued(client, head.revision + 1, seen, measured))
            # the window starts once the submits are surely done (estimated; checked below)
            t0 = time.time()
            start = t0 + 10 + n / 800
            specs = [
                TaskSpec("send_mail", payload(rng, i), run_at=start + window_s * i / n) for i in range(n)
            ]
            tasks = await _submit(client, specs)
            submitted_s = time.time() - t0
            assert all(t.state is TaskState.PENDING for t in tasks)
            record_bytes = sum(len(codec.encode_task(t)) for t in tasks[:1000]) / min(n, 1000)
            waiting_at_start = (
                await client.store.range(
                    client.keys.delayed, prefix_end(client.keys.delayed), count_only=True
                )
            ).count
            load0 = os.getloadavg()[0]
            cpu0 = _cpu(scheduler)
            try:
                async with asyncio.timeout(start + measure_s + 120 - time.time()):
                    await watcher
            except TimeoutError:
                pass
            cpu1 = _cpu(scheduler)
            rss = psutil.Process(scheduler).memory_info().rss
            due = {t.id: t.not_before for t in tasks[:measured]}
            late = [(seen[i] - due[i]) * 1000 for i in due if i in seen]
            result: dict[str, Any] = {
                "delayed": n,
                "window_s": window_s,
                "due_per_s": round(n / window_s, 1),
                "measured_s": round(measure_s, 1),
                "measured": measured,
                "record_bytes": round(record_bytes),
                "submit_s": round(submitted_s, 1),
                "first_due_after_submit_s": round(start - t0 - submitted_s, 1),
                "waiting_when_first_due": waiting_at_start,
                "queued_seen": len(late),
                "early": sum(1 for x in late if x < 0),
                "lateness_ms_p50": round(percentile(late, 50), 1),
                "lateness_ms_p99": round(percentile(late, 99), 1),
                "lateness_ms_max": round(max(late), 1) if late else None,
                "scheduler_cpu_s": round(cpu1 - cpu0, 1),
                "scheduler_cpu_ms_per_task": round((cpu1 - cpu0) / measured * 1000, 3),
                "scheduler_rss_mib": round(rss / 2**20),
                "load_avg_1m_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
            }
            if costs:
                result["costs"] = await measure_costs(client)
            return result
        finally:
            await client.close()


async def measure_costs(client: Client, n: int = 4096) -> dict[str, Any]:
    """µs per task: reading pending records (groups of 16, 64) and writing promotions (42 a transaction)."""
    rng = random.Random(1)
    specs = [TaskSpec("send_mail", payload(rng, i), delay_s=86400, queue="costs") for i in range(n)]
    tasks = await _submit(client, specs)
    store, keys = client.store, client.keys
    out: dict[str, Any] = {"tasks": n}
    for group in (16, 64):
        t = time.perf_counter()
        for i in range(0, n, group):
            await store.txn([], [Get(keys.task(x.id)) for x in tasks[i : i + group]])
        out[f"read_{group}_us_per_task"] = round((time.perf_counter() - t) / n * 1e6)
    # the Promoter's writes (transitions.promote, packed), each guarded by the record and the
    # delayed key; the leadership fence is replaced by a compare any reader passes
    fence = Compare.exists(keys.task(tasks[0].id))
    parts: list[transitions.Txn] = []
    for task in tasks:
        kv_task = await _kv(client, keys.task(task.id))
        kv_delayed = await _kv(client, keys.delayed_entry(task.not_before or 0, task.id))
        txn, _ = transitions.promote(keys, fence, kv_delayed, kv_task, task, time.time(), 10**16 + len(parts))
        parts.append(txn)
    t = time.perf_counter()
    for txn, _ in transitions.pack(parts):
        result = await store.txn(txn.compares, txn.ops)
        assert result.succeeded
    out["write_us_per_task"] = round((time.perf_counter() - t) / n * 1e6)
    return out


async def _kv(client: Client, key: str) -> Any:
    kv, _ = await client.store.get(key)
    assert kv is not None, key
    return kv


async def run(
    quick: bool, window_s: float | None, costs: bool, rate: float = 200.0, measure_s: float = 30.0
) -> dict[str, Any]:
    big = 10_000 if quick else 100_000
    if window_s is None:  # the same rate: only how many wait differs
        small = await run_one(1000, 1000 / rate, costs=costs)
        print(json.dumps({"small": small}), flush=True)
        large = await run_one(big, big / rate, costs=False, measure_s=measure_s)
    else:  # the same window: the large run also falls due faster
        small = await run_one(1000, window_s, costs=costs)
        print(json.dumps({"small": small}), flush=True)
        large = await run_one(big, window_s, costs=False)
    return {
        "bench": "delays",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "mode": "same rate" if window_s is None else "same window",
        "quick": quick,
        "small": small,
        "large": large,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="10,000 instead of 100,000")
    parser.add_argument(
        "--window", type=float, default=None, help="spread all N over S seconds instead (a throughput test)"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="tasks due per second (default mode)")
    parser.add_argument("--measure", type=float, default=30.0, help="seconds of the large run measured")
    parser.add_argument("--costs", action="store_true", help="also measure read and write costs per task")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.quick, args.window, args.costs, args.rate, args.measure))
    print(json.dumps(result, indent=2))
    for name in ("small", "large"):
        r = result[name]
        print(
            f"{r['delayed']:>7,} delayed, {r['due_per_s']:>7,.0f} due/s, {r['measured']:,} measured: lateness p50 {r['lateness_ms_p50']} ms, "
            f"p99 {r['lateness_ms_p99']} ms, max {r['lateness_ms_max']} ms; "
            f"scheduler {r['scheduler_cpu_ms_per_task']} ms CPU/task, {r['scheduler_rss_mib']} MiB; "
            f"load {r['load_avg_1m_before_after']}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
