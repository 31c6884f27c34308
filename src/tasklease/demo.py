"""``tasklease demo``: the embedded stack in the background, a workload, a summary.

It starts a local etcd, a scheduler and two workers, submits a mixed workload,
shows progress and prints a summary table; then everything stops and it exits 0.

The workload: a batch of 200 no-op tasks, 20 sleeps of mixed priorities, sync
functions run in child processes, a task that fails and retries with backoff
until it gives up, a task that fails once and succeeds on its retry, and a
task that times out.

It also runs ``tasklease web`` on a free port and prints its URL: the
dashboard shows the workload live while it runs (it stops with the demo).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tasklease.client import Client, TaskSpec
from tasklease.dev import Stack
from tasklease.httpserver import HttpAddress
from tasklease.logs import escape_text
from tasklease.models import Outcome, Task, TaskState
from tasklease.nodes import list_nodes
from tasklease.retry import RetryPolicy
from tasklease.store import StoreConfig


def _say(text: str = "") -> None:
    # worker ids and errors come from records: printed escaped (tasklease.logs.escape_text)
    print("\n".join(escape_text(line) for line in text.split("\n")), flush=True)


async def _wait_for_workers(client: Client, n: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(await list_nodes(client.store, client.keys)) >= n:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{n} workers did not register within {timeout_s:g} s")


async def _workload(config: StoreConfig, tmp: Path, n_workers: int) -> int:
    client = await Client.connect(config, namespace="demo")
    try:
        await _wait_for_workers(client, n_workers)
        _say(f"{n_workers} workers registered; submitting the workload ...")
        started = time.time()
        batch = await client.submit_many(TaskSpec("noop", {"i": i}) for i in range(200))
        tasks: list[Task] = list(batch.tasks)
        for i in range(20):
            tasks.append(await client.submit("sleep", {"seconds": 0.1 + (i % 3) * 0.1}, priority=i % 4))
        for x in range(10):
            tasks.append(await client.submit("square", {"x": x}, priority=2))
        tasks.append(await client.submit("fail", retry=RetryPolicy(max_retries=2, backoff_s=0.3)))
        tasks.append(
            await client.submit(
                "flaky",
                {"marker": str(tmp / "flaky.marker")},
                retry=RetryPolicy(max_retries=1, backoff_s=0.2),
            )
        )
        tasks.append(await client.submit("sleep", {"seconds": 30}, timeout_s=0.5, priority=3))
        _say(f"submitted {len(tasks)} tasks ({batch.transactions} transaction(s) for the batch of 200)")
        ids = [t.id for t in tasks]
        waiter = asyncio.gather(*(client.wait(i, timeout_s=90) for i in ids))
        while not waiter.done():
            stats = await client.stats()
            line = "  ".join(f"{k} {v}" for k, v in stats["states"].items() if v)
            _say(f"  progress: {line}")
            with_timeout = asyncio.wait({waiter}, timeout=0.5)
            await with_timeout
        finals: list[Task] = waiter.result()
        elapsed = max(a.finished_at or 0 for f in finals for a in f.attempts) - started
        _say("measuring latency: 100 no-op tasks, one every 10 ms ...")
        latencies = await _latency(client, 100, 0.01)
        return _summary(finals, elapsed, latencies)
    finally:
        await client.close()


async def _latency(client: Client, n: int, interval_s: float) -> list[float]:
    """Open loop: submit one task every ``interval_s``; each latency is submit call -> result seen."""
    latencies: list[float] = []

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        task = await client.submit("noop", {"probe": i}, priority=3)
        await client.wait(task.id, timeout_s=30)
        latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    running = []
    for i in range(n):
        await asyncio.sleep(max(0.0, started + i * interval_s - time.perf_counter()))
        running.append(asyncio.create_task(one(i)))
    await asyncio.gather(*running)
    return sorted(latencies)


def _summary(finals: list[Task], elapsed: float, latencies: list[float]) -> int:
    states = Counter(f.state.value for f in finals)
    per_worker = Counter(a.worker for f in finals for a in f.attempts if a.outcome is Outcome.SUCCEEDED)
    noops = [f for f in finals if f.type == "noop" and f.state is TaskState.SUCCEEDED]
    noop_span = (
        max(f.attempts[-1].finished_at or 0 for f in noops) - min(f.created_at for f in noops) if noops else 0
    )
    _say("\nsummary")
    _say(f"  {'state':<12}{'tasks':>7}")
    for state, count in sorted(states.items()):
        _say(f"  {state:<12}{count:>7}")
    _say(f"\n  {'worker':<12}{'succeeded':>10}")
    for worker, count in sorted(per_worker.items()):
        _say(f"  {worker:<12}{count:>10}")
    _say(f"\n  workload     {len(finals)} tasks in {elapsed:.2f} s (sleeps, backoffs and a timeout included)")
    if noop_span > 0:
        _say(
            f"  throughput   {len(noops) / noop_span:8.0f} tasks/s (the batch of {len(noops)} no-op tasks, submit to last result)"
        )
    if latencies:
        p50 = statistics.median(latencies) * 1000
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
        _say(
            f"  latency      p50 {p50:.1f} ms, p99 {p99:.1f} ms (100 no-op tasks one every 10 ms, submit to result)"
        )
    special = {f.type: f for f in finals if f.type in ("fail", "flaky")}
    timed_out = [f for f in finals if f.attempts and f.attempts[-1].outcome is Outcome.TIMEOUT]
    if "fail" in special:
        f = special["fail"]
        _say(f"\n  failing task: {len(f.attempts)} attempts, then {f.state.value}: {f.error}")
    if "flaky" in special:
        f = special["flaky"]
        _say(f"  flaky task:   {' -> '.join(a.outcome.value for a in f.attempts if a.outcome)}")
    if timed_out:
        _say(f"  timed out:    {timed_out[0].id} ({timed_out[0].error})")
    expected = (
        states.get("succeeded", 0) == len(finals) - 2
        and special.get("fail") is not None
        and special["fail"].state is TaskState.FAILED
        and len(timed_out) == 1
    )
    _say("\ndemo " + ("ok" if expected else "finished with unexpected results"))
    return 0 if expected else 1


def run_demo(data_dir: Path | None = None, workers: int = 2, *, http: bool = False) -> int:
    """Start the stack, run the workload, stop everything; return the exit code.

    Args:
        data_dir: Keep etcd's data and the logs here (default: a temporary directory).
        workers: Worker processes.
        http: Give each process an HTTP endpoint on a free port (printed).
    """
    with tempfile.TemporaryDirectory(prefix="tasklease-demo-") as tmp_name:
        tmp = Path(tmp_name)
        base = data_dir or tmp
        stack = Stack(
            base,
            workers=workers,
            namespace="demo",
            worker_args=["--import", "tasklease.demo_tasks", "--concurrency", "8"],
            log_dir=base / "logs",
            auth=True,
            http=HttpAddress("127.0.0.1", 0) if http else None,
            web=HttpAddress("127.0.0.1", 0),
        )
        _say(f"starting etcd ({stack.etcd.binary}), a scheduler and {workers} workers ...")
        try:
            stack.start()
            _say(f"etcd ready at {stack.endpoint} (auth on); process logs in {base / 'logs'}")
            for name, url in stack.http_urls.items():
                _say(f"{name} serves {url}/metrics, /healthz, /readyz")
            _say(f"dashboard and REST API at {stack.web_url}/ (while the demo runs)")
            code = asyncio.run(_workload(stack.store_config(), tmp, workers))
        except KeyboardInterrupt:
            code = 130
        except Exception as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            code = 1
        finally:
            # stdout may be a closed pipe (`tasklease demo | head`): stop the processes all the same
            with contextlib.suppress(OSError):
                _say("stopping ...")
            stack.stop()
        return code
