"""``tasklease web`` under load: page times with a big keyspace, and what 50 live dashboards cost.

Two benchmarks, each printing figures (nothing is asserted about timings):

1. **pages** (a big keyspace): a fresh local etcd (fsync off: only the
   writing of the data set would be slower with it, the reads are the same)
   holding F finished tasks (about 88 % succeeded, 10 % failed, 2 % cancelled,
   across 5 queues and 8 types, JSON payloads of 1-4 KB, finished over the
   last 24 h) and Q queued tasks. The finished ones are written directly, but
   exactly as a worker writes them: the terminal record (``codec.encode_task``)
   under its retention lease (``RetentionLeases``) together with its
   finished-index entry (``transitions.finished_entry``), 64 tasks per
   transaction, 8 transactions in flight; the queued ones with
   ``Client.submit_many``. Then ``tasklease web`` is started as its own process
   on a free port and each page is requested N times (after 3 warm-up
   requests), one request at a time, with httpx: median, p95, max, against a
   200 ms bar. Also: the time to write the data set and etcd's db size.
2. **sse** (what 50 SSE clients cost): a stack (etcd with fsync off, one
   scheduler, 2 worker processes of concurrency 32: what ``tasklease dev``
   runs) and its throughput (N ``sleep`` 0 s tasks with 4 KB payloads,
   ``submit_many`` in batches of 640, until every one has finished) in three
   variants alternated within each round (the order rotates): ``web`` (a
   ``tasklease web`` process, no client), ``web+sse`` (the same with C clients
   reading ``/api/events``, from another process: ``python -m bench.web_bench
   _sse``: bare HTTP/1.1 readers on non-blocking sockets, swept every
   ``SWEEP_S``), ``none`` (no web server). Printed: each round's
   figures, the medians, the median over rounds of the ratios web+sse/web and
   web+sse/none (the bar: at most 5 % slower), the CPU time of the web server
   and of the client process, and the messages each client received between
   the round's first submit and its last result (they must all be equal: every
   client gets every message).

On a shared 2-core machine every process competes for the same cores. In a
deployment the browsers are elsewhere, so the clients' process runs at nice 19
(``CLIENTS_NICE``): it reads with the CPU the cluster leaves idle; its CPU time
is printed, and every client must still receive every message.

    python -m bench.web_bench [--only pages,sse] [--quick]
    python -m bench.web_bench --finished 10000 --queued 1000 --rounds 1   # a quick check

Results: a JSON line appended to ``bench/results/web.jsonl``, the report in
``bench/results/latest-web.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import random
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.tasklease_bench import connect, percentile, stack
from tasklease import codec
from tasklease.client import Client, TaskSpec
from tasklease.clock import FakeClock
from tasklease.dev import Stack
from tasklease.httpserver import HttpAddress
from tasklease.ids import IdGenerator
from tasklease.keys import prefix_end
from tasklease.models import Attempt, Outcome, Task, TaskState
from tasklease.retention import RetentionLeases
from tasklease.retry import RetryPolicy
from tasklease.soak import make_payload
from tasklease.store import Op, Put
from tasklease.transitions import finished_entry

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "web.jsonl"
LATEST = ROOT / "bench" / "results" / "latest-web.md"
NS = "bench"
BAR_MS = 200.0
BAR_COST = 0.05
TASKS_PER_TXN = 64  # 2 puts each: etcd's default --max-txn-ops is 128
TXNS_IN_FLIGHT = 8
SPREAD_S = 24 * 3600.0  # the finished tasks finished over the last day
WARMUP = 3
SSE_PAYLOAD = 4096

# queue -> (share of the tasks, the types it runs)
QUEUES: dict[str, tuple[float, tuple[str, ...]]] = {
    "default": (0.30, ("cleanup", "send_email", "render_report", "sync_account")),
    "emails": (0.25, ("send_email",)),
    "media": (0.20, ("resize_image", "transcode_video")),
    "reports": (0.15, ("render_report",)),
    "billing": (0.10, ("charge_card", "send_invoice")),
}
WORKER_IDS = [f"worker-app{h}-{1000 + h * 7}-{h * 2654435761 % 2**64:016x}" for h in range(8)]
ERRORS = (
    "TimeoutError: upstream did not answer within 30 s",
    "ConnectionRefusedError: [Errno 111] Connection refused (smtp.internal:587)",
    "ValueError: invalid image header",
    "KeyError: 'customer_id'",
    "RuntimeError: card declined (insufficient funds)",
    "PermissionError: [Errno 13] Permission denied: '/data/exports/report.pdf'",
)


def _traceback(rng: random.Random, kind: str) -> str:
    """A Python traceback of 200-2,000 characters ending in ``kind``."""
    frames = []
    for depth in range(rng.randint(2, 14)):
        fn = rng.choice(("handle", "run", "send", "render", "fetch", "call", "process"))
        frames.append(
            f'  File "/srv/app/tasks/{fn}_{depth}.py", line {rng.randint(10, 900)}, in {fn}\n'
            f"    result = {fn}(payload, retries={rng.randint(0, 3)})\n"
        )
    return "Traceback (most recent call last):\n" + "".join(frames) + kind


def _pick_queue(rng: random.Random) -> tuple[str, str]:
    r = rng.random()
    for name, (share, types) in QUEUES.items():
        if r < share:
            return name, rng.choice(types)
        r -= share
    return "default", "cleanup"


def finished_record(rng: random.Random, ids: IdGenerator, clock: FakeClock, finished_at: float) -> Task:
    """A terminal task as a worker (or a cancel) leaves it: attempts, result or error, 1-4 KB payload."""
    queue, task_type = _pick_queue(rng)
    run_s = rng.uniform(0.05, 20.0)
    created = finished_at - run_s - rng.uniform(0.01, 30.0)
    clock.advance(created - clock.now())  # the id tells when it was submitted
    task_id = ids.task_id()
    payload = make_payload(
        {"customer": rng.randint(1, 50_000), "op": task_type}, rng.randint(1000, 4000), rng
    )
    priority = rng.choices((0, 1, 2, 3), (10, 70, 15, 5))[0]
    roll = rng.random()
    attempts: list[Attempt] = []
    result: Any = None
    error: str | None = None
    retries = rng.choice((0, 0, 1, 2))
    if roll < 0.10:  # failed: every attempt failed or timed out
        state = TaskState.FAILED
        start = created + 0.01
        for n in range(1, retries + 2):
            end = start + run_s / (retries + 1)
            error = _traceback(rng, rng.choice(ERRORS))
            outcome = Outcome.TIMEOUT if "Timeout" in error else Outcome.FAILED
            attempts.append(Attempt(n, rng.choice(WORKER_IDS), start, end, outcome, error))
            start = end + 1.0
    elif roll < 0.12:  # cancelled, waiting or running
        state = TaskState.CANCELLED
        error = rng.choice(
            ("cancelled by request", "cancelled: superseded by a newer export", "deploy rollback")
        )
        if rng.random() < 0.5:
            attempts.append(
                Attempt(1, rng.choice(WORKER_IDS), finished_at - run_s, finished_at, Outcome.CANCELLED, error)
            )
    else:
        state = TaskState.SUCCEEDED
        start = finished_at - run_s
        if rng.random() < 0.05:  # a retried one
            first_error = _traceback(rng, rng.choice(ERRORS))
            attempts.append(
                Attempt(1, rng.choice(WORKER_IDS), start - 2.0, start - 1.0, Outcome.FAILED, first_error)
            )
        attempts.append(
            Attempt(len(attempts) + 1, rng.choice(WORKER_IDS), start, finished_at, Outcome.SUCCEEDED)
        )
        result = {"ok": True, "ms": round(run_s * 1000), "ref": f"{task_type}-{rng.getrandbits(48):012x}"}
    return Task(
        id=task_id,
        type=task_type,
        payload=payload,
        queue=queue,
        priority=priority,
        timeout_s=60.0,
        retry=RetryPolicy(max_retries=retries),
        state=state,
        created_at=created,
        updated_at=finished_at,
        attempts=tuple(attempts),
        result=result,
        error=error,
    )


# 1. pages with a big keyspace --------------------------------------------------------------
async def populate(client: Client, finished: int, queued: int, seed: int = 1) -> dict[str, Any]:
    """Write ``finished`` terminal tasks (record + finished-index entry under a retention lease) and ``queued``."""
    rng = random.Random(seed)
    leases = RetentionLeases(client.store, client.keys)
    clock = FakeClock()
    ids = IdGenerator(clock)
    counts: Counter[tuple[str, str]] = Counter()
    in_flight: set[asyncio.Task[Any]] = set()
    now = time.time()
    written_bytes = 0
    t0 = time.perf_counter()
    for start in range(0, finished, TASKS_PER_TXN):
        ops: list[Op] = []
        for i in range(start, min(finished, start + TASKS_PER_TXN)):
            # in finishing order, spread over the last day
            at = now - SPREAD_S + SPREAD_S * i / finished + rng.uniform(0, 0.5)
            task = finished_record(rng, ids, clock, min(at, now))
            lease = await leases.lease_for(task.retention_s)
            data = codec.encode_task(task)
            written_bytes += len(data)
            ops.append(Put(client.keys.task(task.id), data, lease=lease))
            ops.append(finished_entry(client.keys, task, lease))
            counts[(task.state.value, task.queue)] += 1
        while len(in_flight) >= TXNS_IN_FLIGHT:
            done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for d in done:
                d.result()
        in_flight.add(asyncio.create_task(client.store.txn([], ops)))
    await asyncio.gather(*in_flight)
    t1 = time.perf_counter()
    queued_ids: list[str] = []
    batches: list[asyncio.Task[Any]] = []
    sem = asyncio.Semaphore(4)

    async def submit(specs: list[TaskSpec]) -> None:
        async with sem:
            queued_ids.extend(t.id for t in (await client.submit_many(specs)).tasks)

    for start in range(0, queued, 640):
        specs = []
        for _ in range(start, min(queued, start + 640)):
            queue, task_type = _pick_queue(rng)
            payload = make_payload({"customer": rng.randint(1, 50_000)}, rng.randint(1000, 4000), rng)
            specs.append(TaskSpec(task_type, payload, queue=queue, priority=rng.choice((0, 1, 1, 1, 2, 3))))
            counts[("queued", queue)] += 1
        batches.append(asyncio.create_task(submit(specs)))
    await asyncio.gather(*batches)
    t2 = time.perf_counter()
    return {
        "finished": finished,
        "queued": queued,
        "finished_write_s": t1 - t0,
        "finished_rate_s": finished / max(t1 - t0, 1e-9),
        "finished_record_bytes_avg": written_bytes / max(1, finished),
        "queued_write_s": t2 - t1,
        "queued_rate_s": queued / max(t2 - t1, 1e-9),
        "populate_s": t2 - t0,
        "counts": {f"{s}/{q}": n for (s, q), n in sorted(counts.items())},
    }


def etcd_db(metrics_url: str) -> dict[str, float]:
    """etcd's db size (file) and the part in use, in bytes, from its /metrics."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        for name, key in (
            ("etcd_mvcc_db_total_size_in_bytes", "db_bytes"),
            ("etcd_mvcc_db_total_size_in_use_in_bytes", "db_in_use_bytes"),
            ("etcd_debugging_mvcc_keys_total", "keys"),
        ):
            if line.startswith(name + " "):
                out[key] = float(line.split()[-1])
    return out


def start_web(s: Stack, name: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``tasklease web`` on a free loopback port; return it and its URL once it answers."""
    s.web = HttpAddress("127.0.0.1", 0)
    proc = s.start_web(name)
    assert s.web_url is not None
    url = s.web_url
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"tasklease web exited with {proc.returncode} (see its log)")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/api/config", timeout=2).status_code == 200:
                return proc, url
        if time.monotonic() > deadline:
            raise RuntimeError("tasklease web did not answer within 60 s")
        time.sleep(0.1)


def stop_web(s: Stack, name: str) -> None:
    """SIGTERM the web server ``name`` and wait for it."""
    proc = s.procs.pop(name)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def time_requests(http: httpx.Client, path: str, n: int) -> dict[str, Any]:
    """``n`` GETs of ``path`` (after warm-up), one at a time: milliseconds and the answer's size."""
    times: list[float] = []
    size = 0
    for i in range(WARMUP + n):
        t0 = time.perf_counter()
        r = http.get(path)
        ms = (time.perf_counter() - t0) * 1000
        if r.status_code != 200:
            raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:200]}")
        size = len(r.content)
        if i >= WARMUP:
            times.append(ms)
    return {
        "path": path,
        "n": n,
        "median_ms": statistics.median(times),
        "p95_ms": percentile(times, 95),
        "max_ms": max(times),
        "over_bar": sum(1 for t in times if t > BAR_MS),
        "bytes": size,
    }


async def time_client_calls(
    client: Client, n: int, cursor: str, failed_id: str
) -> dict[str, dict[str, float]]:
    """The client calls behind the API's reads, timed in this process (no HTTP): milliseconds."""
    failed = TaskState.FAILED
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "overview": client.overview,
        "failed, page 1": lambda: client.list_page(state=failed, limit=50),
        "failed, page 2 (cursor)": lambda: client.list_page(state=failed, limit=50, cursor=cursor),
        "failed, queue=emails": lambda: client.list_page(state=failed, limit=50, queue="emails"),
        "failed, type=render_report": lambda: client.list_page(
            state=failed, limit=50, task_type="render_report"
        ),
        "succeeded, page 1": lambda: client.list_page(state=TaskState.SUCCEEDED, limit=50),
        "queued, page 1": lambda: client.list_page(state=TaskState.QUEUED, limit=50),
        "a failed task": lambda: client.get(failed_id),
    }
    # why a read costs what it costs: etcd 3.5 walks every key of a range to count it, even
    # with a limit (etcd-io/etcd#11057, #16510), so one read costs as much as its range is big
    store, keys = client.store, client.keys
    for state in ("succeeded", "failed"):
        prefix = keys.finished_state(state)
        end = prefix_end(prefix)
        calls[f"etcd: 1 key of {state}/ (limit=1 keys_only)"] = partial(
            store.range, prefix, end, limit=1, keys_only=True
        )
        calls[f"etcd: count {state}/ (count_only)"] = partial(store.range, prefix, end, count_only=True)
    calls["etcd: 1 key of an absent prefix"] = lambda: store.range(
        keys.finished_state("nothing"), prefix_end(keys.finished_state("nothing")), limit=1, keys_only=True
    )
    requests = Counter[str]()

    def counted(name: str) -> Any:
        method = getattr(store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            requests[name] += 1
            return await method(*args, **kwargs)

        return call

    out: dict[str, dict[str, float]] = {}
    for label, call in calls.items():
        times: list[float] = []
        for i in range(WARMUP + n):
            if i == WARMUP:
                requests.clear()
                for name in ("range", "get", "txn"):  # scan pages through range
                    setattr(store, name, counted(name))
            t0 = time.perf_counter()
            await call()
            if i >= WARMUP:
                times.append((time.perf_counter() - t0) * 1000)
        for name in ("range", "get", "txn"):
            delattr(store, name)
        out[label] = {
            "median_ms": statistics.median(times),
            "p95_ms": percentile(times, 95),
            "etcd_requests": sum(requests.values()) / n,
        }
    return out


def run_pages(*, finished: int, queued: int, requests: int, workdir: Path) -> dict[str, Any]:
    """Benchmark 1: populate, start ``tasklease web``, time each page."""
    os.environ["TASKLEASE_LOG_LEVEL"] = "warning"
    s = Stack(
        workdir, workers=0, namespace=NS, log_dir=workdir / "logs", log_format="json", unsafe_no_fsync=True
    )
    s.etcd.start()
    try:

        async def fill() -> dict[str, Any]:
            client = await Client.connect(s.store_config(timeout_s=30), namespace=NS)
            try:
                return await populate(client, finished, queued)
            finally:
                await client.close()

        print(f"[web_bench] pages: writing {finished:,} finished + {queued:,} queued tasks ...", flush=True)
        result: dict[str, Any] = {"kind": "pages", **asyncio.run(fill())}
        result["etcd"] = etcd_db(s.etcd.metrics_url)
        print(
            f"[web_bench] pages: written in {result['populate_s']:.1f} s; starting tasklease web ...",
            flush=True,
        )
        proc, url = start_web(s, "web")
        web_cpu0 = psutil.Process(proc.pid).cpu_times()
        with httpx.Client(base_url=url, timeout=60) as http:
            overview = http.get("/api/overview").json()
            result["overview_states"] = overview["states"]
            expected = Counter[str]()
            for key, n in result["counts"].items():
                expected[key.split("/")[0]] += n
            result["overview_matches"] = all(overview["states"].get(k, 0) == v for k, v in expected.items())
            first = http.get("/api/tasks", params={"state": "failed", "limit": 50}).json()
            cursor, failed_id = first["cursor"], first["tasks"][0]["id"]
            pages: list[tuple[str, str]] = [
                ("overview", "/api/overview"),
                ("failed, page 1", "/api/tasks?state=failed&limit=50"),
                ("failed, page 2 (cursor)", f"/api/tasks?state=failed&limit=50&cursor={cursor}"),
                ("failed, queue=emails", "/api/tasks?state=failed&limit=50&queue=emails"),
                ("failed, type=render_report", "/api/tasks?state=failed&limit=50&type=render_report"),
                ("succeeded, page 1", "/api/tasks?state=succeeded&limit=50"),
                ("queued, page 1", "/api/tasks?state=queued&limit=50"),
                ("a failed task", f"/api/tasks/{failed_id}"),
                ("the page /", "/"),
                ("/static/app.js", "/static/app.js"),
            ]
            result["pages"] = {}
            for label, path in pages:
                result["pages"][label] = time_requests(http, path, requests)
                row = result["pages"][label]
                print(
                    f"  {label:28} median {row['median_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f}  "
                    f"max {row['max_ms']:7.1f}  ({row['bytes']:,} bytes)",
                    flush=True,
                )
        cpu = psutil.Process(proc.pid).cpu_times()
        result["web_cpu_s"] = (cpu.user + cpu.system) - (web_cpu0.user + web_cpu0.system)

        async def direct() -> dict[str, dict[str, float]]:
            client = await Client.connect(s.store_config(timeout_s=30), namespace=NS)
            try:
                return await time_client_calls(client, requests, cursor, failed_id)
            finally:
                await client.close()

        result["client_calls"] = asyncio.run(direct())
        result["etcd_after"] = etcd_db(s.etcd.metrics_url)
        return result
    finally:
        s.stop()


# 2. what 50 SSE clients cost ---------------------------------------------------------------
class SseClients:
    """The client process (``python -m bench.web_bench _sse URL N``) and its line protocol."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str, n: int) -> SseClients:
        """Start the process; return once its ``n`` streams are open."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.web_bench",
            "_sse",
            url,
            str(n),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self = cls(proc)
        line = await self._line(60)
        if line.strip() != "ready":
            raise RuntimeError(f"SSE clients did not start: {line!r}")
        return self

    async def _line(self, timeout_s: float = 30) -> str:
        assert self.proc.stdout is not None
        data = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        if not data:
            raise RuntimeError("the SSE client process ended")
        return data.decode()

    async def ask(self, command: str) -> dict[str, Any]:
        """Send ``report R0 R1`` or ``stop``; its JSON answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        answer: dict[str, Any] = json.loads(await self._line())
        return answer

    def cpu_s(self) -> float:
        """The process's CPU time so far."""
        t = psutil.Process(self.proc.pid).cpu_times()
        return float(t.user + t.system)

    async def stop(self) -> dict[str, Any]:
        """End the streams and the process; its last report."""
        try:
            return await self.ask("stop")
        finally:
            with contextlib.suppress(ProcessLookupError):
                await asyncio.wait_for(self.proc.wait(), 10)


async def _revision(client: Client) -> int:
    _, revision = await client.store.get(client.keys.leader)
    return revision


async def run_tasks(client: Client, n: int, rng: random.Random) -> float:
    """Submit ``n`` sleep-0 tasks of 4 KB (batches of 640), wait for all; tasks/s."""
    specs = [TaskSpec("sleep", make_payload({"seconds": 0, "i": i}, SSE_PAYLOAD, rng)) for i in range(n)]
    t0 = time.perf_counter()
    ids: list[str] = []
    for start in range(0, n, 640):
        ids.extend(t.id for t in (await client.submit_many(specs[start : start + 640])).tasks)
    finals = await asyncio.gather(*(client.wait(i, timeout_s=600) for i in ids))
    seconds = time.perf_counter() - t0
    bad = [f.id for f in finals if f.state is not TaskState.SUCCEEDED]
    if bad:
        raise RuntimeError(f"{len(bad)} tasks did not succeed")
    return n / seconds


async def settle(clients: SseClients, r0: int, r1: int, timeout_s: float = 20) -> dict[str, Any]:
    """Poll the clients until their counts of messages in (r0, r1] are equal and still."""
    last: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        report = await clients.ask(f"report {r0} {r1}")
        if len(set(report["counts"])) == 1 and report == last:
            return report
        last = report
        await asyncio.sleep(0.5)
    return last


def proc_cpu(proc: subprocess.Popen[bytes] | None) -> float:
    """CPU seconds of ``proc`` so far (0 without one)."""
    if proc is None:
        return 0.0
    t = psutil.Process(proc.pid).cpu_times()
    return float(t.user + t.system)


def cluster_cpu(s: Stack) -> float:
    """CPU seconds so far of the cluster: etcd, the scheduler, the workers and this process (the client)."""
    procs = [p for name, p in s.procs.items() if not name.startswith("web")]
    total = sum(proc_cpu(p) for p in procs)
    if s.etcd.process is not None:
        total += proc_cpu(s.etcd.process)
    me = psutil.Process().cpu_times()
    return float(total + me.user + me.system)


# The clients' process runs at this niceness: on one shared 2-core machine it stands for 50
# browsers on other machines, so it takes the CPU the cluster leaves idle rather than competing
# with it as an equal (its CPU time is still printed). Every client must still get every message.
CLIENTS_NICE = 19


# Each task writes its 4 KB record about ten times: 27 rounds of 3,000 tasks leave ~3 GB of
# history, over etcd's default 2 GiB quota (NOSPACE stopped a 9-round run). Compact every
# minute, as a production etcd should (docs/operations.md), with room to spare.
LONG_RUN_ETCD = (
    "--auto-compaction-mode=periodic",
    "--auto-compaction-retention=1m",
    "--quota-backend-bytes=8589934592",
)


def run_sse(*, tasks: int, rounds: int, clients: int, workdir: Path) -> dict[str, Any]:
    """Benchmark 2: throughput with a web server and 0 clients, C clients, no web server."""
    variants = ("web", "web+sse", "none")
    per: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    rng = random.Random(2)
    with stack(workdir, fsync=False, etcd_extra=LONG_RUN_ETCD) as s:

        async def main() -> None:
            client = await connect(s, timeout_s=30)
            try:
                await run_tasks(client, 300, rng)  # warm up: the leader's mirror, the workers' slots
                for r in range(rounds):
                    order = variants[r % 3 :] + variants[: r % 3]
                    for v in order:
                        name = f"web-{r}-{v.replace('+', '-')}"
                        proc = start_web(s, name)[0] if v != "none" else None
                        url = s.web_url or ""
                        sse = await SseClients.start(url, clients) if v == "web+sse" else None
                        try:
                            await asyncio.sleep(0.5)
                            r0 = await _revision(client)
                            cpu0 = (proc_cpu(proc), sse.cpu_s() if sse else 0.0, cluster_cpu(s))
                            tput = await run_tasks(client, tasks, rng)
                            cpu1 = (proc_cpu(proc), sse.cpu_s() if sse else 0.0, cluster_cpu(s))
                            r1 = await _revision(client)
                            row: dict[str, Any] = {
                                "round": r + 1,
                                "throughput_tasks_s": tput,
                                "web_cpu_s": cpu1[0] - cpu0[0],
                                "clients_cpu_s": cpu1[1] - cpu0[1],
                                "cluster_cpu_s": cpu1[2] - cpu0[2],
                                "seconds": tasks / tput,
                            }
                            if sse is not None:
                                report = await settle(sse, r0, r1)
                                row["messages_per_client"] = report["counts"]
                                row["messages_equal"] = len(set(report["counts"])) == 1
                                row["reconnects"] = sum(report["reconnects"])
                                row["resyncs"] = sum(report["resyncs"])
                                row["bytes_per_client"] = statistics.median(report["bytes"])
                        finally:
                            if sse is not None:
                                await sse.stop()
                            if proc is not None:
                                stop_web(s, name)
                        per[v].append(row)
                        extra = ""
                        if "messages_per_client" in row:
                            counts = row["messages_per_client"]
                            extra = (
                                f"  messages/client {min(counts):,}..{max(counts):,}"
                                f" ({'all equal' if row['messages_equal'] else 'NOT EQUAL'};"
                                f" {row['reconnects']} reconnects)"
                                f"  clients' CPU {row['clients_cpu_s']:.1f} s"
                            )
                        web = f"  web CPU {row['web_cpu_s']:.2f} s" if proc is not None else ""
                        print(
                            f"  round {r + 1}/{rounds} {v:8} {tput:7.0f} tasks/s{web}{extra}",
                            flush=True,
                        )
            finally:
                await client.close()

        asyncio.run(main())
    summary: dict[str, Any] = {
        "kind": "sse",
        "tasks": tasks,
        "rounds": rounds,
        "clients": clients,
        "variants": {},
    }
    for v in variants:
        rows = per[v]
        summary["variants"][v] = {
            "throughput_tasks_s": statistics.median(r["throughput_tasks_s"] for r in rows),
            "web_cpu_ms_per_task": statistics.median(r["web_cpu_s"] for r in rows) * 1000 / tasks,
            "cluster_cpu_ms_per_task": statistics.median(r["cluster_cpu_s"] for r in rows) * 1000 / tasks,
            "clients_cpu_ms_per_task": statistics.median(r["clients_cpu_s"] for r in rows) * 1000 / tasks,
            "rounds": rows,
        }

    def ratio(a: str, b: str) -> dict[str, Any]:
        rs = [x["throughput_tasks_s"] / y["throughput_tasks_s"] for x, y in zip(per[a], per[b], strict=True)]
        return {"median": statistics.median(rs), "range": [min(rs), max(rs)], "rounds": rs}

    summary["ratios"] = {
        "web+sse/web": ratio("web+sse", "web"),
        "web+sse/none": ratio("web+sse", "none"),
        "web/none": ratio("web", "none"),
    }
    sse_rows = per["web+sse"]
    summary["messages_equal"] = all(r["messages_equal"] for r in sse_rows)
    summary["messages_per_client"] = [r["messages_per_client"][0] for r in sse_rows]
    summary["clients_cpu_ms_per_task"] = (
        statistics.median(r["clients_cpu_s"] for r in sse_rows) * 1000 / tasks
    )
    return summary


# the SSE client process ----------------------------------------------------------------------


# A sweep reads every stream once, then the process sleeps this long: the kernel holds what
# arrives meanwhile, so each read takes many messages at once (a browser's EventSource is
# native code, and on another machine; 50 Python readers woken per message would take as
# much CPU on these two cores as the server they measure).
SWEEP_S = 0.1
READ_BYTES = 4 << 20
_READ_BUFFER = bytearray(READ_BYTES)  # one buffer for every stream's reads (no allocation per read)
_READ_VIEW = memoryview(_READ_BUFFER)


class EventStream:
    """One ``GET /api/events`` on a non-blocking socket; counts the ids of the messages it gets.

    The body is not de-chunked: uvicorn sends each of the server's writes (whole
    messages) as one chunk, so a chunk's size line only ever falls between messages,
    on a line of its own, where the ``id:`` pattern does not match it.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.ids: list[int] = []
        self.nbytes = 0
        self.reconnects = -1
        self.resyncs = 0
        self.buf = b""
        self.sock: socket.socket | None = None

    def open(self, timeout_s: float = 30) -> None:
        """Connect (resuming from the last id seen) and read the head; then non-blocking."""
        self.reconnects += 1
        resume = f"Last-Event-ID: {self.ids[-1]}\r\n" if self.ids else ""
        sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
        sock.sendall(
            f"GET /api/events HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Accept: text/event-stream\r\n{resume}\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            if not data:
                raise OSError("/api/events: closed before its head")
            head += data
        head, self.buf = head.split(b"\r\n\r\n", 1)
        if head.split(b" ", 2)[1] != b"200" or b"chunked" not in head.lower():
            raise OSError(f"/api/events: {head[:200]!r}")
        sock.setblocking(False)
        self.sock = sock

    def read(self) -> None:
        """Take what the kernel holds; reopen a stream the server closed."""
        assert self.sock is not None
        while True:
            try:
                n = self.sock.recv_into(_READ_BUFFER)
            except BlockingIOError:
                break
            except OSError:
                n = 0
            if not n:
                self.sock.close()
                self.open()
                return
            self.nbytes += n
            self.buf += _READ_VIEW[:n]
            if n < READ_BYTES:
                break
        end = self.buf.rfind(b"\n\n")
        if end >= 0:
            done, self.buf = b"\n" + self.buf[: end + 1], self.buf[end + 2 :]
            # bytes.split and count run at memory speed; a regex over every byte cost more
            # CPU than the server spends sending (a message is ~2 KB, its id line short)
            ids = self.ids
            for part in done.split(b"\nid: ")[1:]:
                ids.append(int(part[: part.index(b"\n")]))
            self.resyncs += done.count(b"\nevent: resync\n")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def sse_clients(url: str, n: int) -> None:
    """``n`` streams of ``url``/api/events; answers ``report R0 R1`` and ``stop`` on stdin (JSON lines)."""
    address = HttpAddress.parse(url.removeprefix("http://"))
    streams = [EventStream(address.host, address.port) for _ in range(n)]
    for stream in streams:
        stream.open()

    def report(r0: int, r1: int) -> str:
        counts = [bisect.bisect_right(x.ids, r1) - bisect.bisect_right(x.ids, r0) for x in streams]
        return json.dumps(
            {
                "counts": counts,
                "last": [x.ids[-1] if x.ids else 0 for x in streams],
                "bytes": [x.nbytes for x in streams],
                "reconnects": [x.reconnects for x in streams],
                "resyncs": [x.resyncs for x in streams],
            }
        )

    print("ready", flush=True)
    try:
        while True:
            time.sleep(SWEEP_S)
            for stream in streams:
                stream.read()
            if not select.select([sys.stdin], [], [], 0)[0]:
                continue
            words = sys.stdin.readline().split()
            if not words or words[0] == "stop":
                print(report(0, 2**62), flush=True)
                return
            if words[0] == "report":
                for stream in streams:  # what arrived up to now
                    stream.read()
                print(report(int(words[1]), int(words[2])), flush=True)
    finally:
        for stream in streams:
            stream.close()


# report ---------------------------------------------------------------------------------------
def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+dirty" if dirty else "")


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def report_pages(r: dict[str, Any]) -> list[str]:
    """Benchmark 1's Markdown."""
    e = r["etcd"]
    lines = [
        f"### Pages with {r['finished']:,} finished and {r['queued']:,} queued tasks",
        "",
        f"Written in {r['populate_s']:.1f} s: the finished ones in {r['finished_write_s']:.1f} s "
        f"({r['finished_rate_s']:,.0f} tasks/s, records of {r['finished_record_bytes_avg']:,.0f} bytes on average, "
        f"{TASKS_PER_TXN} per transaction, {TXNS_IN_FLIGHT} in flight), the queued ones in "
        f"{r['queued_write_s']:.1f} s ({r['queued_rate_s']:,.0f} tasks/s, submit_many). etcd: db "
        f"{_mb(e.get('db_bytes', 0))} ({_mb(e.get('db_in_use_bytes', 0))} in use), {e.get('keys', 0):,.0f} keys. "
        f"/api/overview counts {'match' if r['overview_matches'] else 'DO NOT match'} what was written "
        f"({', '.join(f'{k} {v:,}' for k, v in r['overview_states'].items())}).",
        "",
        f"Each page requested {next(iter(r['pages'].values()))['n']} times after {WARMUP} warm-up requests, "
        "one at a time (httpx, keep-alive), from a `tasklease web` process:",
        "",
        f"| request | median ms | p95 ms | max ms | answer | p95 <= {BAR_MS:.0f} ms | "
        "the client call alone, in process: median / p95 ms | its etcd requests |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    calls = r.get("client_calls", {})
    for label, p in r["pages"].items():
        verdict = "yes" if p["p95_ms"] <= BAR_MS else "**NO**"
        if p["max_ms"] > BAR_MS:
            verdict += f" ({p['over_bar']} of {p['n']} over)"
        call = calls.get(label)
        alone = (
            f"{call['median_ms']:.1f} / {call['p95_ms']:.1f} | {call['etcd_requests']:.0f}"
            if call
            else "- | -"
        )
        path = p["path"].split("&cursor=")[0] + ("&cursor=..." if "&cursor=" in p["path"] else "")
        lines.append(
            f"| {label}: `GET {path}` | {p['median_ms']:.1f} | {p['p95_ms']:.1f} | "
            f"{p['max_ms']:.1f} | {p['bytes']:,} B | {verdict} | {alone} |"
        )
    lines.append("")
    lines.append(f"The web server's CPU for all of these: {r['web_cpu_s']:.1f} s.")
    etcd_rows = [(k, v) for k, v in calls.items() if k.startswith("etcd:")]
    if etcd_rows:
        lines.append("")
        lines.append("Single etcd reads of this keyspace, in process (median / p95 ms):")
        lines.append("")
        for label, v in etcd_rows:
            lines.append(f"- {label[6:]}: {v['median_ms']:.1f} / {v['p95_ms']:.1f}")
    return lines


def report_sse(r: dict[str, Any]) -> list[str]:
    """Benchmark 2's Markdown."""
    lines = [
        f"### {r['clients']} SSE clients: {r['tasks']:,} tasks x {r['rounds']} round(s) per variant",
        "",
        "| round | variant | tasks/s | web server CPU | clients' CPU | messages per client |",
        "|---:|---|---:|---:|---:|---|",
    ]
    rows = sorted(
        ((row["round"], v, row) for v, x in r["variants"].items() for row in x["rounds"]),
        key=lambda t: (t[0], t[1]),
    )
    for rnd, v, row in rows:
        msgs = "-"
        if "messages_per_client" in row:
            c = row["messages_per_client"]
            eq = "all equal" if row["messages_equal"] else "**NOT equal**"
            msgs = f"{min(c):,}..{max(c):,} ({eq}; {row['reconnects']} reconnects)"
        web = f"{row['web_cpu_s']:.2f} s" if v != "none" else "-"
        clients = f"{row['clients_cpu_s']:.2f} s" if v == "web+sse" else "-"
        lines.append(f"| {rnd} | {v} | {row['throughput_tasks_s']:,.0f} | {web} | {clients} | {msgs} |")
    lines.append("")
    var = r["variants"]
    lines.append("| variant | tasks/s (median) | CPU ms per task: cluster | web server | clients' process |")
    lines.append("|---|---:|---:|---:|---:|")
    for v, x in var.items():
        web = f"{x['web_cpu_ms_per_task']:.3f}" if v != "none" else "-"
        clients = f"{x['clients_cpu_ms_per_task']:.3f}" if v == "web+sse" else "-"
        lines.append(
            f"| {v} | {x['throughput_tasks_s']:,.0f} | {x['cluster_cpu_ms_per_task']:.3f} | {web} | {clients} |"
        )
    lines.append("")
    base = var["none"]["cluster_cpu_ms_per_task"]
    fanout = var["web+sse"]["web_cpu_ms_per_task"] - var["web"]["web_cpu_ms_per_task"]
    lines.append(
        f'CPU (etcd, scheduler, workers and the submitting client are "cluster"): the web server with no '
        f"client costs {var['web']['web_cpu_ms_per_task']:.3f} ms per task ({var['web']['web_cpu_ms_per_task'] / base:.0%}"
        f" of the cluster's {base:.3f} ms without it); sending to {r['clients']} clients adds {fanout:.3f} ms "
        f"({fanout / base:.0%}; {fanout * 1000 / r['clients']:.1f} us per task per client); the clients' own "
        f"process, on the same two cores, {var['web+sse']['clients_cpu_ms_per_task']:.3f} ms."
    )
    lines.append("")
    lines.append("Throughput ratios, median over rounds of each round's ratio (min..max):")
    lines.append("")
    for key, x in r["ratios"].items():
        lo, hi = x["range"]
        cost = 1 - x["median"]
        verdict = ""
        if key.startswith("web+sse"):
            verdict = f": {'within' if cost <= BAR_COST else '**OVER**'} the {BAR_COST:.0%} bar"
        lines.append(f"- {key}: x{x['median']:.3f} ({lo:.2f}..{hi:.2f}), cost {cost:+.1%}{verdict}")
    lines.append(
        f"- every client got every message: {'yes' if r['messages_equal'] else '**NO**'} "
        f"({', '.join(f'{n:,}' for n in r['messages_per_client'])} messages per client, by round)"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks (or, as ``_sse URL N``, the SSE client process)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_sse"]:
        os.nice(CLIENTS_NICE)  # browsers are elsewhere: take only the CPU the cluster leaves
        sse_clients(argv[1], int(argv[2]))
        return 0
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(prog="python -m bench.web_bench", description=doc.splitlines()[0])
    parser.add_argument("--only", default="pages,sse", help="pages, sse or both (default)")
    parser.add_argument(
        "--quick", action="store_true", help="10,000 finished, 1,000 queued, 1 round of 1,000"
    )
    parser.add_argument("--finished", type=int, default=None, help="finished tasks (default 100,000)")
    parser.add_argument("--queued", type=int, default=None, help="queued tasks (default 10,000)")
    parser.add_argument("--requests", type=int, default=30, help="requests per page (default 30)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of the SSE benchmark (default 3)")
    parser.add_argument("--tasks", type=int, default=None, help="tasks per SSE round (default 3,000)")
    parser.add_argument("--clients", type=int, default=50, help="SSE clients (default 50)")
    args = parser.parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if only - {"pages", "sse"}:
        parser.error("--only takes pages, sse")
    q = args.quick
    meta: dict[str, Any] = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "commit": _git_commit(),
        "load_before": os.getloadavg()[0],
        "quick": q,
    }
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tl-web-bench-") as tmp:
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = []
        if "pages" in only:
            steps.append(
                (
                    "pages",
                    lambda: run_pages(
                        finished=args.finished or (10_000 if q else 100_000),
                        queued=args.queued if args.queued is not None else (1_000 if q else 10_000),
                        requests=args.requests,
                        workdir=Path(tmp) / "pages",
                    ),
                )
            )
        if "sse" in only:
            steps.append(
                (
                    "sse",
                    lambda: run_sse(
                        tasks=args.tasks or (1_000 if q else 3_000),
                        rounds=args.rounds or (1 if q else 3),
                        clients=args.clients,
                        workdir=Path(tmp) / "sse",
                    ),
                )
            )
        for _name, fn in steps:
            started = time.perf_counter()
            res = fn()
            res["wall_s"] = round(time.perf_counter() - started, 1)
            results.append(res)
    meta["load_after"] = os.getloadavg()[0]
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    lines = [
        f"Run {meta['at']} at commit {meta['commit']}, {os.cpu_count()} cores, load average "
        f"{meta['load_before']:.1f} -> {meta['load_after']:.1f}, {meta['wall_s']:.0f} s in all"
        f"{' (quick)' if q else ''}.",
    ]
    for res in results:
        lines.append("")
        lines.extend(report_pages(res) if res["kind"] == "pages" else report_sse(res))
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps({**meta, "results": results}, default=str) + "\n")
    LATEST.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
