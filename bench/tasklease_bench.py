"""tasklease's side of the benchmarks: each workload on its own fresh stack.

Every stack is a local etcd (fsync on unless ``fsync=False``), one scheduler
and worker processes, started by :class:`tasklease.dev.Stack`, exactly what
``tasklease dev`` runs. Figures are measured from the client's side.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from tasklease.client import Client, TaskSpec
from tasklease.dev import Stack
from tasklease.models import Outcome, TaskState
from tasklease.nodes import list_nodes
from tasklease.store import Put, StoreConfig
from tasklease.sync import SyncClient

NS = "bench"
WORKER_CONCURRENCY = 32
SUBMIT_CONCURRENCY = 64
METRICS = (
    "etcd_mvcc_txn_total",
    "etcd_mvcc_range_total",
    "etcd_mvcc_put_total",
    "etcd_server_proposals_committed_total",
)


# etcd 3.5.1's byte counters (all present in its /metrics; checked by curl):
BYTE_METRICS = {
    # request bytes clients sent to etcd (every put, txn, range, watch request, keep-alive)
    "received": "etcd_network_client_grpc_received_bytes_total",
    # response bytes etcd sent to clients (range results and watch events included)
    "sent": "etcd_network_client_grpc_sent_bytes_total",
    # key + value + metadata of every key-value written to the MVCC store
    "put": "etcd_debugging_mvcc_total_put_size_in_bytes",
    # bytes appended to the write-ahead log. etcd 3.5.1 counts every WAL write
    # twice (etcd-io/etcd#14506, fixed in later 3.5 releases): see the calibration.
    "wal": "etcd_disk_wal_write_bytes_total",
    # bbolt pages in use (no compaction runs during the bench: every revision stays)
    "db_in_use": "etcd_mvcc_db_total_size_in_use_in_bytes",
}


def scrape_bytes(url: str) -> dict[str, float]:
    """The byte counters of :data:`BYTE_METRICS` from etcd's ``/metrics``."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    by_metric = {metric: name for name, metric in BYTE_METRICS.items()}
    out: dict[str, float] = {}
    for line in text.splitlines():
        metric, _, value = line.partition(" ")
        if metric in by_metric:
            out[by_metric[metric]] = float(value)
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def scrape(url: str) -> dict[str, float]:
    """etcd's own counters (and gRPC requests by method) from /metrics."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        for name in METRICS:
            if line.startswith(name + " "):
                out[name] = float(line.split()[-1])
        m = re.match(
            r'grpc_server_handled_total\{grpc_code="OK",grpc_method="(\w+)",grpc_service="etcdserverpb\.(KV|Lease)"',
            line,
        )
        if m:
            out[f"grpc_{m.group(1)}"] = float(line.split()[-1])
    return out


@contextmanager
def stack(
    workdir: Path,
    *,
    fsync: bool,
    workers: int = 2,
    worker_extra: list[str] | None = None,
    scheduler_extra: list[str] | None = None,
    etcd_extra: tuple[str, ...] = (),
) -> Iterator[Stack]:
    os.environ["TASKLEASE_LOG_LEVEL"] = "warning"
    s = Stack(
        workdir,
        workers=workers,
        namespace=NS,
        worker_args=["--concurrency", str(WORKER_CONCURRENCY), *(worker_extra or [])],
        scheduler_args=[*(scheduler_extra or [])],
        log_dir=workdir / "logs",
        log_format="json",
        unsafe_no_fsync=not fsync,
    )
    if etcd_extra:
        s.etcd.extra_args = (*s.etcd.extra_args, *etcd_extra)
    s.start()
    try:
        yield s
    finally:
        s.stop()


async def connect(s: Stack, timeout_s: float | None = None) -> Client:
    """A client of the stack once its workers are registered (closed again if they never are).

    ``timeout_s`` is the etcd request timeout (default: the client's 5 s).
    """
    config = s.store_config(**({"timeout_s": timeout_s} if timeout_s else {}))
    client = await Client.connect(config, namespace=NS)
    try:
        deadline = time.monotonic() + 60
        while len(await list_nodes(client.store, client.keys)) < s.n_workers:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not register")
            await asyncio.sleep(0.05)
    except BaseException:
        await client.close()
        raise
    return client


async def _throughput(client: Client, n: int, batch: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    if batch:
        ids = []
        for start in range(0, n, 640):
            result = await client.submit_many(
                TaskSpec("noop", {"i": i}) for i in range(start, min(n, start + 640))
            )
            ids.extend(t.id for t in result.tasks)
    else:
        sem = asyncio.Semaphore(SUBMIT_CONCURRENCY)

        async def one(i: int) -> str:
            async with sem:
                return (await client.submit("noop", {"i": i})).id

        ids = await asyncio.gather(*(one(i) for i in range(n)))
    t1 = time.perf_counter()
    finals = await asyncio.gather(*(client.wait(i, timeout_s=600) for i in ids))
    t2 = time.perf_counter()
    bad = sum(1 for f in finals if f.state is not TaskState.SUCCEEDED or len(f.attempts) != 1)
    return {
        "tasks": n,
        "submit_rate_s": n / (t1 - t0),
        "throughput_tasks_s": n / (t2 - t0),
        "seconds": t2 - t0,
        "bad": bad,
    }


def _cpu_s(proc: psutil.Process) -> float:
    """CPU seconds (user + system) of a process and its live children (a worker's process pool)."""
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def cpu_snapshot(s: Stack) -> dict[str, float]:
    """CPU seconds so far of each process of the stack, and of this one (the client, its waits included)."""
    assert s.etcd.process is not None
    out = {"etcd": _cpu_s(psutil.Process(s.etcd.process.pid))}
    for name, proc in s.procs.items():
        out[name] = _cpu_s(psutil.Process(proc.pid))
    own = psutil.Process().cpu_times()  # this process's threads only: the stack runs as its children
    out["client"] = own.user + own.system
    return out


def cpu_per_task(before: dict[str, float], after: dict[str, float], tasks: int) -> dict[str, float]:
    """Milliseconds of CPU per task by process, and ``total``."""
    per = {k: round((after[k] - before[k]) * 1000 / tasks, 3) for k in before if k in after}
    per["total"] = round(sum(per.values()), 3)
    return per


async def _pipelined(client: Client, n: int) -> dict[str, Any]:
    """One producer with fire and confirm: a loop of ``send`` (no await of each write), then ``flush``."""
    t0 = time.perf_counter()
    futures = [await client.send("noop", {"i": i}) for i in range(n)]
    failed = await client.flush()
    t1 = time.perf_counter()
    finals = await asyncio.gather(*(client.wait(f.id, timeout_s=600) for f in futures))
    t2 = time.perf_counter()
    return {
        "throughput_tasks_s": n / (t2 - t0),
        "submit_rate_s": n / (t1 - t0),
        "bad": len(failed) + sum(1 for f in finals if f.state is not TaskState.SUCCEEDED),
    }


async def _sequential(client: Client, n: int) -> dict[str, Any]:
    """What most applications do: one producer, each ``await client.submit()`` before the next."""
    rtts: list[float] = []
    ids: list[str] = []
    t0 = time.perf_counter()
    for i in range(n):
        start = time.perf_counter()
        ids.append((await client.submit("noop", {"i": i})).id)
        rtts.append((time.perf_counter() - start) * 1000)
    return await _sequential_figures(client, ids, rtts, t0, time.perf_counter())


def _sequential_sync_submits(config: StoreConfig, n: int) -> tuple[list[str], list[float], float, float]:
    """The blocking API (``SyncClient``, e.g. from a WSGI view) in a loop: ids, round trips, start, end."""
    with SyncClient(config, namespace=NS) as client:
        client.submit("noop", {"warm": True})
        rtts: list[float] = []
        ids: list[str] = []
        t0 = time.perf_counter()
        for i in range(n):
            start = time.perf_counter()
            ids.append(client.submit("noop", {"i": i}).id)
            rtts.append((time.perf_counter() - start) * 1000)
        return ids, rtts, t0, time.perf_counter()


async def _sequential_sync(client: Client, config: StoreConfig, n: int) -> dict[str, Any]:
    ids, rtts, t0, t1 = await asyncio.to_thread(_sequential_sync_submits, config, n)
    return await _sequential_figures(client, ids, rtts, t0, t1)


async def _sequential_figures(
    client: Client, ids: list[str], rtts: list[float], t0: float, t1: float
) -> dict[str, Any]:
    """Wait for every task of a sequential run (submitted from ``t0`` to ``t1``); its figures."""
    finals = await asyncio.gather(*(client.wait(i, timeout_s=600) for i in ids))
    t2 = time.perf_counter()
    return {
        "throughput_tasks_s": len(ids) / (t2 - t0),
        "submit_rate_s": len(ids) / (t1 - t0),
        "submit_p50_ms": statistics.median(rtts),
        "submit_p99_ms": percentile(rtts, 99),
        "bad": sum(1 for f in finals if f.state is not TaskState.SUCCEEDED),
    }


async def _idle_submits(client: Client, n: int) -> dict[str, Any]:
    """A submit's round trip on an idle cluster, and etcd's own for one put in the same conditions.

    Three ways: right after the previous task finished (the scheduler and the
    worker are still handling its last events), and after a 20 ms pause (all
    quiet); for the latter, also a bare one-put transaction (``Store.txn``)
    after the same pause: the floor of any submit on this machine and etcd
    (after a pause every process and etcd's goroutines must wake up).
    """
    after_task: list[float] = []
    settled: list[float] = []
    bare: list[float] = []
    for i in range(n):
        start = time.perf_counter()
        task = await client.submit("noop", {"i": i})
        after_task.append((time.perf_counter() - start) * 1000)
        await client.wait(task.id, timeout_s=60)
        await asyncio.sleep(0.02)
        start = time.perf_counter()
        task = await client.submit("noop", {"i": i})
        settled.append((time.perf_counter() - start) * 1000)
        await client.wait(task.id, timeout_s=60)
        await asyncio.sleep(0.02)
        start = time.perf_counter()
        await client.store.txn([], [Put(f"/{NS}-probe/{i % 10}", b"x" * 300)])
        bare.append((time.perf_counter() - start) * 1000)
    return {
        "submit_p50_ms": statistics.median(after_task),
        "submit_p99_ms": percentile(after_task, 99),
        "settled_submit_p50_ms": statistics.median(settled),
        "settled_submit_p99_ms": percentile(settled, 99),
        "settled_etcd_put_p50_ms": statistics.median(bare),
    }


async def _latency(client: Client, n: int, rate: float) -> dict[str, Any]:
    latencies: list[float] = []

    async def one(i: int) -> None:
        start = time.perf_counter()
        task = await client.submit("noop", {"i": i})
        final = await client.wait(task.id, timeout_s=60)
        assert final.state is TaskState.SUCCEEDED
        latencies.append((time.perf_counter() - start) * 1000)

    running = []
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        running.append(asyncio.create_task(one(i)))
    await asyncio.gather(*running)
    return {
        "latency_tasks": n,
        "p50_ms": statistics.median(latencies),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
    }


def run_tasklease(
    *, tasks: int, latency_tasks: int, rate: float, workdir: Path, fsync: bool = True
) -> dict[str, Any]:
    """Throughput (async API and batch API), submit rate, latency and etcd cost per task."""
    result: dict[str, Any] = {"system": "tasklease" + ("" if fsync else " (no fsync)"), "fsync": fsync}
    with stack(workdir / "tp", fsync=fsync) as s:

        async def main() -> None:
            client = await connect(s)
            try:
                await _throughput(client, min(500, tasks), batch=False)  # warm up
                base, base_bytes, base_cpu = (
                    scrape(s.etcd.metrics_url),
                    scrape_bytes(s.etcd.metrics_url),
                    cpu_snapshot(s),
                )
                tp = await _throughput(client, tasks, batch=False)
                after, after_bytes, after_cpu = (
                    scrape(s.etcd.metrics_url),
                    scrape_bytes(s.etcd.metrics_url),
                    cpu_snapshot(s),
                )
                result.update(tp)
                result["etcd_per_task"] = {
                    k: round((after.get(k, 0) - base.get(k, 0)) / tasks, 2) for k in after
                }
                result["etcd_bytes_per_task"] = {
                    k: round((after_bytes[k] - base_bytes[k]) / tasks) for k in base_bytes if k in after_bytes
                }
                result["payload_bytes"] = len(json.dumps({"i": tasks // 2}, separators=(",", ":")))
                result["cpu_ms_per_task"] = cpu_per_task(base_cpu, after_cpu, tasks)
                c0 = cpu_snapshot(s)
                result["sequential"] = await _sequential(client, tasks)
                result["sequential"]["cpu_ms_per_task"] = cpu_per_task(c0, cpu_snapshot(s), tasks)
                result["pipelined"] = await _pipelined(client, tasks)
                result["sequential_sync"] = await _sequential_sync(client, s.store_config(), tasks)
                result["idle_submit"] = await _idle_submits(client, 200)
                bt = await _throughput(client, tasks, batch=True)
                result["batch_throughput_tasks_s"] = bt["throughput_tasks_s"]
                result["batch_submit_rate_s"] = bt["submit_rate_s"]
                result["bad"] += bt["bad"]
                result.update(await _latency(client, latency_tasks, rate))
            finally:
                await client.close()

        asyncio.run(main())
    result["settings"] = (
        f"1 scheduler (batch 30), 2 worker processes x concurrency {WORKER_CONCURRENCY}, client {SUBMIT_CONCURRENCY} submits in flight"
    )
    return result


def run_recovery(*, ttl_s: int, workdir: Path) -> dict[str, Any]:
    """A 5 s task whose worker is SIGKILLed 1 s in: seconds until it has succeeded elsewhere."""
    with stack(
        workdir, fsync=True, worker_extra=["--lease-ttl", str(ttl_s), "--heartbeat", str(max(0.5, ttl_s / 3))]
    ) as s:

        async def main() -> dict[str, Any]:
            client = await connect(s)
            try:
                task = await client.submit("sleep", {"seconds": 5})
                deadline = time.monotonic() + 30
                while (current := await client.get(task.id)).state is not TaskState.RUNNING:
                    if time.monotonic() > deadline:
                        raise RuntimeError("task never ran")
                    await asyncio.sleep(0.02)
                await asyncio.sleep(1.0)
                worker = current.attempts[-1].worker
                s.procs[worker].send_signal(signal.SIGKILL)
                killed = time.perf_counter()
                final = await client.wait(task.id, timeout_s=120)
                done = time.perf_counter()
                outcomes = [a.outcome.value for a in final.attempts if a.outcome]
                assert final.attempts[0].outcome is Outcome.LOST, outcomes
                return {
                    "ttl_s": ttl_s,
                    "recovery_s": done - killed,
                    "rerun_s": 5.0,
                    "overhead_s": done - killed - 5.0,
                    "attempts": outcomes,
                }
            finally:
                await client.close()

        return asyncio.run(main())


def run_scale(*, backlog: int, tasks: int, workdir: Path) -> dict[str, Any]:
    """Drain `tasks` urgent tasks with `backlog` low-priority tasks queued behind them."""
    with stack(workdir, fsync=True, workers=0) as s:

        async def main() -> dict[str, Any]:
            client = await connect(s)
            try:
                for start in range(0, backlog, 640):
                    await client.submit_many(
                        TaskSpec("noop", priority=0) for _ in range(min(640, backlog - start))
                    )
                ids = []
                for start in range(0, tasks, 640):
                    r = await client.submit_many(
                        TaskSpec("noop", {"i": i}, priority=3) for i in range(start, min(tasks, start + 640))
                    )
                    ids.extend(t.id for t in r.tasks)
                t0 = time.perf_counter()
                for i in range(2):
                    s.start_worker(f"worker-{i + 1}")
                finals = await asyncio.gather(*(client.wait(i, timeout_s=600) for i in ids))
                t1 = time.perf_counter()
                assert all(f.state is TaskState.SUCCEEDED for f in finals)
                return {"backlog": backlog, "tasks": tasks, "throughput_tasks_s": tasks / (t1 - t0)}
            finally:
                await client.close()

        return asyncio.run(main())


def run_scheduler_cpu(*, workers: int, tasks: int, workdir: Path) -> dict[str, Any]:
    """Scheduler CPU seconds per 1,000 tasks with `workers` workers (hosted in 2 processes)."""
    per_process = max(1, workers // 2)
    with stack(workdir, fsync=True, workers=0) as s:
        hosts = [_spawn_host(s, f"host-{i}", per_process) for i in range(2)]

        async def main() -> dict[str, Any]:
            client = await Client.connect(s.store_config(), namespace=NS)
            try:
                deadline = time.monotonic() + 120
                while len(await list_nodes(client.store, client.keys)) < per_process * 2:
                    if time.monotonic() > deadline:
                        raise RuntimeError("worker hosts did not register")
                    await asyncio.sleep(0.1)
                sched = psutil.Process(s.procs["scheduler"].pid)
                c0 = sched.cpu_times()
                t0 = time.perf_counter()
                ids = []
                for start in range(0, tasks, 640):
                    r = await client.submit_many(
                        TaskSpec("noop", {"i": i}) for i in range(start, min(tasks, start + 640))
                    )
                    ids.extend(t.id for t in r.tasks)
                await asyncio.gather(*(client.wait(i, timeout_s=600) for i in ids))
                t1 = time.perf_counter()
                c1 = sched.cpu_times()
                cpu = (c1.user + c1.system) - (c0.user + c0.system)
                return {
                    "workers": per_process * 2,
                    "tasks": tasks,
                    "scheduler_cpu_ms_per_task": cpu * 1000 / tasks,
                    "throughput_tasks_s": tasks / (t1 - t0),
                }
            finally:
                await client.close()

        try:
            return asyncio.run(main())
        finally:
            for h in hosts:
                h.send_signal(signal.SIGTERM)
            for h in hosts:
                h.wait(30)


def _spawn_host(s: Stack, name: str, instances: int) -> Any:
    import subprocess

    log = open(s.log_dir / f"{name}.log", "ab") if s.log_dir else None  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.worker_host",
            "--instances",
            str(instances),
            "--name",
            name,
            "--concurrency",
            str(max(1, 64 // instances)),
        ],
        # bench/ first, then the caller's PYTHONPATH: a run from an exported tree
        # (bench.compare) must not fall back to the editable install's tasklease
        env={
            **s.env(),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")) if p
            ),
        },
        stdout=log,
        stderr=log,
    )
    if log:
        s._logs.append(log)
    return proc
