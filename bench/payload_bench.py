"""Realistic payloads (issue "Step 6"): what a 4.5 KB payload costs, against empty ones.

Three workloads, each on its own fresh stack (:func:`bench.tasklease_bench.stack`:
a local etcd with fsync, one scheduler, 2 worker processes):

- :func:`run_payloads`: throughput and latency (p50/p99) with empty and 4.5 KB
  payloads, measured on ONE stack in the same run, interleaved, so the ratio
  means something on a noisy machine. Two task types: ``noop`` returns its
  payload (so the result is 4.5 KB too) and ``sleep`` 0 s returns
  ``{"slept": 0}`` (a small result, like most real tasks).
- :func:`run_takeover`: a scheduler taking over with a deep queue of 4.5 KB
  tasks: the time from its start until it leads, and until its first
  assignment; beside the same with an empty queue (process start and election).
- :func:`run_etcd_bytes`: bytes etcd receives, sends and writes per task for
  payloads of 0 B to 200 KB, read from etcd's own ``/metrics``.

Payloads are those of ``tasklease soak --payload-bytes``
(:func:`tasklease.soak.make_payload`): a JSON object of exactly N bytes holding
the task's own fields, a small ``meta`` object and a base64 string.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import psutil

from bench.tasklease_bench import (
    BYTE_METRICS,
    NS,
    SUBMIT_CONCURRENCY,
    connect,
    percentile,
    scrape_bytes,
    stack,
)
from tasklease.client import Client, TaskSpec
from tasklease.dev import Stack
from tasklease.models import JSON, TaskState
from tasklease.nodes import list_nodes
from tasklease.soak import make_payload
from tasklease.store import Put

REALISTIC = 4500
# The bench's own client waits this long for one etcd request (not the default 5 s):
# on the shared machine etcd sometimes stalls for seconds, which should show in
# the figures rather than abort the section. The stack's processes keep their defaults.
ETCD_TIMEOUT_S = 30.0


def _delta(before: dict[str, float], after: dict[str, float], per: float) -> dict[str, float]:
    return {k: (after[k] - before[k]) / per for k in before if k in after}


def payload_for(kind: str, i: int, size: int, rng: random.Random) -> JSON:
    """Task i's payload for ``noop`` (``{"i": i}`` + padding) or ``sleep`` 0 s."""
    base: dict[str, Any] = {"i": i} if kind == "noop" else {"seconds": 0, "i": i}
    return make_payload(base, size, rng)


async def _throughput(client: Client, kind: str, size: int, n: int, rng: random.Random) -> dict[str, Any]:
    payloads = [payload_for(kind, i, size, rng) for i in range(n)]  # built before the clock starts
    sem = asyncio.Semaphore(SUBMIT_CONCURRENCY)

    async def one(p: JSON) -> str:
        async with sem:
            return (await client.submit(kind, p)).id

    t0 = time.perf_counter()
    ids = await asyncio.gather(*(one(p) for p in payloads))
    t1 = time.perf_counter()
    finals = await asyncio.gather(*(client.wait(i, timeout_s=600) for i in ids))
    t2 = time.perf_counter()
    bad = sum(1 for f in finals if f.state is not TaskState.SUCCEEDED or len(f.attempts) != 1)
    return {"throughput_tasks_s": n / (t2 - t0), "submit_rate_s": n / (t1 - t0), "bad": bad}


async def _latency(
    client: Client, kind: str, size: int, n: int, rate: float, rng: random.Random
) -> dict[str, Any]:
    payloads = [payload_for(kind, i, size, rng) for i in range(n)]
    latencies: list[float] = []

    async def one(p: JSON) -> None:
        start = time.perf_counter()
        task = await client.submit(kind, p)
        final = await client.wait(task.id, timeout_s=60)
        assert final.state is TaskState.SUCCEEDED
        latencies.append((time.perf_counter() - start) * 1000)

    running = []
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        running.append(asyncio.create_task(one(payloads[i])))
    await asyncio.gather(*running)
    return {
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 99),
    }


VARIANTS = (("noop", 0), ("noop", REALISTIC), ("sleep", 0), ("sleep", REALISTIC))


def run_payloads(
    *, tasks: int, latency_tasks: int, rate: float, rounds: int, workdir: Path
) -> dict[str, Any]:
    """Throughput, p50/p99 and etcd bytes per task for every variant, interleaved, on one stack.

    Each round runs every variant once (throughput, then latency); the figures
    are medians over the rounds. The ratios compare 4.5 KB with empty payloads
    of the same task type.
    """
    rng = random.Random(6)
    runs: dict[str, list[dict[str, Any]]] = {f"{k} {s}": [] for k, s in VARIANTS}
    with stack(workdir, fsync=True) as s:

        async def main() -> None:
            client = await connect(s, ETCD_TIMEOUT_S)
            try:
                for kind, size in VARIANTS:  # warm up every path
                    await _throughput(client, kind, size, min(300, tasks), rng)
                for r in range(rounds):
                    # alternate the order between rounds so drift hits every variant alike
                    for kind, size in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                        before = scrape_bytes(s.etcd.metrics_url)
                        tp = await _throughput(client, kind, size, tasks, rng)
                        tp["etcd_bytes_per_task"] = _delta(before, scrape_bytes(s.etcd.metrics_url), tasks)
                        tp.update(await _latency(client, kind, size, latency_tasks, rate, rng))
                        runs[f"{kind} {size}"].append(tp)
            finally:
                await client.close()

        asyncio.run(main())

    def med(key: str, variant: str) -> float:
        return float(statistics.median(r[key] for r in runs[variant]))

    variants: dict[str, dict[str, Any]] = {}
    for kind, size in VARIANTS:
        v = f"{kind} {size}"
        variants[v] = {
            "task": kind,
            "payload_bytes": size,
            "throughput_tasks_s": med("throughput_tasks_s", v),
            "submit_rate_s": med("submit_rate_s", v),
            "p50_ms": med("p50_ms", v),
            "p99_ms": med("p99_ms", v),
            "etcd_bytes_per_task": {
                k: round(statistics.median(r["etcd_bytes_per_task"][k] for r in runs[v]))
                for k in runs[v][0]["etcd_bytes_per_task"]
            },
            "throughput_rounds": [round(r["throughput_tasks_s"]) for r in runs[v]],
            "bad": sum(r["bad"] for r in runs[v]),
        }
    ratios = {
        kind: {
            "throughput": variants[f"{kind} {REALISTIC}"]["throughput_tasks_s"]
            / variants[f"{kind} 0"]["throughput_tasks_s"],
            "p50": variants[f"{kind} {REALISTIC}"]["p50_ms"] / variants[f"{kind} 0"]["p50_ms"],
            "p99": variants[f"{kind} {REALISTIC}"]["p99_ms"] / variants[f"{kind} 0"]["p99_ms"],
        }
        for kind in ("noop", "sleep")
    }
    return {
        "kind": "payloads",
        "tasks": tasks,
        "latency_tasks": latency_tasks,
        "rate": rate,
        "rounds": rounds,
        "variants": variants,
        "ratios": ratios,
    }


async def _submit_backlog(client: Client, n: int, size: int, rng: random.Random) -> float:
    """Queue ``n`` noop tasks of ``size`` bytes with submit_many, 4 batches in flight; seconds taken."""
    batch = 640
    sem = asyncio.Semaphore(4)

    async def one(start: int) -> None:
        specs = [
            TaskSpec("noop", make_payload({"i": i}, size, rng), priority=1)
            for i in range(start, min(n, start + batch))
        ]
        async with sem:
            await client.submit_many(specs)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(start) for start in range(0, n, batch)))
    return time.perf_counter() - t0


async def _watch_takeover(s: Stack, client: Client, name: str, timeout_s: float) -> dict[str, Any]:
    """Start scheduler ``name``; seconds until the leader key names it and until its first assignment."""
    k = client.keys
    _, revision = await client.store.get(k.leader)
    t_lead: float | None = None
    t_assign: float | None = None
    # One watch over [assign/, leader]: assignments, delayed retries and the leader key.
    events = client.store.watch(k.assignments, k.leader + "\0", revision + 1)
    t0 = time.perf_counter()
    proc = s.start_scheduler(name)
    sched = psutil.Process(proc.pid)
    cpu = rss = 0.0
    try:
        async with asyncio.timeout(timeout_s):
            async for batch in events:
                now = time.perf_counter()
                for ev in batch:
                    if ev.type != "put":
                        continue
                    if ev.kv.key == k.leader and ev.kv.value.decode() == name and t_lead is None:
                        t_lead = now
                    elif ev.kv.key.startswith(k.assignments) and t_lead is not None and t_assign is None:
                        t_assign = now
                if t_assign is not None:
                    times = sched.cpu_times()
                    cpu = times.user + times.system
                    rss = sched.memory_info().rss
                    break
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    assert t_lead is not None and t_assign is not None
    return {
        "leading_s": t_lead - t0,
        "first_assignment_s": t_assign - t0,
        "scheduler_cpu_s": cpu,
        "scheduler_rss_mb": rss / 1e6,
    }


def run_takeover(
    *, backlog: int, size: int = REALISTIC, workdir: Path, timeout_s: float = 900
) -> dict[str, Any]:
    """A new scheduler taking over ``backlog`` queued tasks of ``size`` bytes.

    On one etcd with 2 workers registered (and no scheduler): first a baseline,
    a scheduler started with 1 task queued (process start, election, an empty
    mirror), stopped again; then ``backlog`` tasks queued with submit_many and
    a second scheduler started. For each: seconds from the process start until
    its id is in the leader key, and until its first assignment key appears
    (as seen by a watch in this process); its CPU time and RSS at that moment.
    """
    rng = random.Random(6)
    os.environ["TASKLEASE_LOG_LEVEL"] = "warning"
    s = Stack(workdir, workers=0, namespace=NS, log_dir=workdir / "logs", log_format="json")
    s.etcd.start()
    try:
        for i in range(2):
            s.start_worker(f"worker-{i + 1}", ["--concurrency", "32"])
        s.n_workers = 2

        async def main() -> dict[str, Any]:
            config = s.store_config(timeout_s=ETCD_TIMEOUT_S)
            client = await Client.connect(config, namespace=NS)
            try:
                deadline = time.monotonic() + 60
                while len(await list_nodes(client.store, client.keys)) < 2:
                    if time.monotonic() > deadline:
                        raise RuntimeError("workers did not register")
                    await asyncio.sleep(0.05)
                await client.submit("noop", make_payload({"i": -1}, size, rng))
                empty = await _watch_takeover(s, client, "sched-empty", 60)
                first = s.procs.pop("sched-empty")
                first.terminate()  # it resigns
                first.wait(30)
                submit_s = await _submit_backlog(client, backlog, size, rng)
                db = scrape_bytes(s.etcd.metrics_url)
                deep = await _watch_takeover(s, client, "sched-deep", timeout_s)
                return {
                    "kind": "takeover",
                    "backlog": backlog,
                    "payload_bytes": size,
                    "submit_s": submit_s,
                    "submit_rate_s": backlog / submit_s,
                    "etcd_db_in_use_mb": db["db_in_use"] / 1e6,
                    "empty": empty,
                    "deep": deep,
                }
            finally:
                await client.close()

        return asyncio.run(main())
    finally:
        s.stop()


def _counts(quick: bool) -> dict[int, int]:
    return (
        {0: 500, 4500: 500, 65536: 200, 204800: 100}
        if quick
        else {0: 2000, 4500: 2000, 65536: 500, 204800: 200}
    )


def run_etcd_bytes(*, quick: bool, workdir: Path) -> dict[str, Any]:
    """Bytes etcd receives, sends and writes per task, by payload size (``sleep`` 0 s: small results).

    First a calibration: 100 plain puts of 10,000-byte values, to show what
    each counter reports for a known write. Then for each size, N tasks
    submitted one by one (64 in flight) and waited for; the counters are read
    before and after (plus a pause for the last writes to land).
    """
    rng = random.Random(6)
    sizes = _counts(quick)
    with stack(workdir, fsync=True) as s:

        async def main() -> dict[str, Any]:
            client = await connect(s, ETCD_TIMEOUT_S)
            try:
                before = scrape_bytes(s.etcd.metrics_url)
                for i in range(100):
                    await client.store.txn([], [Put(f"/calibration/{i}", b"x" * 10_000)], [])
                calibration = _delta(before, scrape_bytes(s.etcd.metrics_url), 100 * 10_000)
                await _throughput(client, "sleep", 0, 300, rng)  # warm up
                per_size: dict[str, dict[str, float]] = {}
                for size, n in sizes.items():
                    await asyncio.sleep(1.0)
                    before = scrape_bytes(s.etcd.metrics_url)
                    tp = await _throughput(client, "sleep", size, n, rng)
                    await asyncio.sleep(1.0)  # the workers' and scheduler's last writes
                    per_task = _delta(before, scrape_bytes(s.etcd.metrics_url), n)
                    per_size[str(size)] = {
                        **{k: round(v) for k, v in per_task.items()},
                        "tasks": n,
                        "throughput_tasks_s": round(tp["throughput_tasks_s"]),
                    }
                base = per_size["0"]
                per_byte = {
                    str(size): {k: round((per_size[str(size)][k] - base[k]) / size, 2) for k in BYTE_METRICS}
                    for size in sizes
                    if size
                }
                return {
                    "kind": "etcd_bytes",
                    "task": "sleep 0 s",
                    "calibration_per_value_byte": {k: round(v, 2) for k, v in calibration.items()},
                    "per_task": per_size,
                    "per_payload_byte": per_byte,
                }
            finally:
                await client.close()

        return asyncio.run(main())
