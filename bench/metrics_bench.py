"""Cost of the metrics hook (and the tracing hook): throughput with them on vs off, in one run.

One local etcd (fsync off, so that etcd is not the bottleneck and the Python
side's costs show in full), and per round and variant a fresh namespace with
one scheduler, one worker (concurrency 32) and a client, all on ONE event loop
in this process: every microsecond a hook costs is a microsecond the scheduler
and worker do not have, which makes this the worst case (in a deployment they
are separate processes). The variants:

- ``off``: the default hooks (logging), stores without observer;
- ``off-again``: the same, run a second time in each round: an A/A control
  whose spread is the noise of this run (a shared machine's can be +-20 %);
- ``metrics``: plus ``Metrics.hook()`` on the scheduler and worker, the stores'
  observer, ``track_worker``/``track_scheduler``, and a scrape (the whole text
  exposition) every second while the tasks run;
- ``tracing`` (only if ``tasklease.tracing`` and the OpenTelemetry SDK import):
  plus ``TracingHook`` on the client, scheduler and worker, spans going to an
  in-memory exporter.

Rounds alternate the variants (the order rotates each round). Per variant:
throughput (N no-op tasks, submitted in batches of 640, until the last result is
seen) and this process's CPU time per task; the figure is the median over rounds
of each round's ratio to ``off``. On a shared machine these ratios are noisy
(the ``off-again`` control shows how much), so the metrics variant also times
itself: the seconds spent inside the hook, the store observer and the scrapes,
as a share of the process's CPU time in the round. The issue's bar: the metrics
hook costs <= 5 %.
Also printed: the hook's own time per task, measured without etcd (the events of
one task and its share of the store's requests, fed to the hook in a loop).

    python -m bench.metrics_bench [--quick] [--rounds N] [--tasks N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from tasklease.client import Client, TaskSpec
from tasklease.etcd_server import EtcdServer
from tasklease.events import (
    Assigned,
    BatchAssigned,
    Event,
    Hook,
    Started,
    Succeeded,
    default_hooks,
)
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace
from tasklease.metrics import Metrics
from tasklease.models import Attempt, Outcome, Task, TaskState
from tasklease.scheduler import Scheduler, SchedulerConfig
from tasklease.store import Store, StoreConfig, StoreObserver
from tasklease.worker import Worker, WorkerConfig

RESULTS = Path(__file__).parent / "results" / "metrics.jsonl"
CHUNK = 640
CONCURRENCY = 32
BAR = 0.05  # the bar for the metrics hook


def tracing_available() -> bool:
    """Whether the tracing hook (tasklease.tracing) and the OpenTelemetry SDK can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in ("opentelemetry.sdk", "tasklease.tracing"))


class Stopwatch:
    """Time spent inside the metrics code during a run: in the hook, the store observer, the scrapes."""

    def __init__(self) -> None:
        self.hook = self.observer = self.scrape = 0.0

    @property
    def seconds(self) -> float:
        return self.hook + self.observer + self.scrape


class TimedHook:
    """A hook that times the hook it wraps (its own cost: two clock reads per event)."""

    def __init__(self, hook: Hook, watch: Stopwatch) -> None:
        self.hook, self.watch = hook, watch

    def on_event(self, event: Event) -> None:
        t0 = time.perf_counter()
        self.hook.on_event(event)
        self.watch.hook += time.perf_counter() - t0


class TimedObserver:
    """A store observer that times the observer it wraps."""

    def __init__(self, observer: StoreObserver, watch: Stopwatch) -> None:
        self.observer, self.watch = observer, watch

    def request(self, operation: str, seconds: float, error_kind: str | None) -> None:
        t0 = time.perf_counter()
        self.observer.request(operation, seconds, error_kind)
        self.watch.observer += time.perf_counter() - t0

    def watch_restarted(self) -> None:
        self.observer.watch_restarted()


class Variant:
    """The hooks and observer of one variant, made fresh for each round."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.metrics: Metrics | None = None
        self.hooks: list[Hook] = [*default_hooks()]
        self.client_hooks: list[Hook] = [*default_hooks()]
        self.exporter: Any = None
        self.watch = Stopwatch()
        if name == "metrics":
            self.metrics = Metrics("dev")
            self.hooks.append(TimedHook(self.metrics.hook(), self.watch))
        elif name == "tracing":
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

            from tasklease.tracing import TracingHook

            provider = TracerProvider()
            self.exporter = InMemorySpanExporter()
            provider.add_span_processor(SimpleSpanProcessor(self.exporter))
            hook = TracingHook(tracer_provider=provider)
            self.hooks.append(hook)
            self.client_hooks.append(hook)

    def store(self, config: StoreConfig) -> Store:
        if self.metrics is None:
            return Store(config)
        return Store(config, observer=TimedObserver(self.metrics.store_observer(), self.watch))


async def one_round(config: StoreConfig, variant: Variant, n: int, tag: str) -> dict[str, float]:
    """Run ``n`` no-op tasks through a fresh scheduler and worker with ``variant``'s hooks."""
    keys = Keyspace(f"mb{tag}")
    stores = [variant.store(config) for _ in range(2)] + [Store(config)]
    for s in stores:
        await s.connect()
    sched_store, worker_store, client_store = stores
    scheduler = Scheduler(
        sched_store, keys, SchedulerConfig(scheduler_id=f"s{tag}", batch_size=30), hooks=variant.hooks
    )
    worker = Worker(
        worker_store,
        keys,
        builtin_registry(),
        WorkerConfig(worker_id=f"w{tag}", concurrency=CONCURRENCY),
        hooks=variant.hooks,
    )
    if variant.metrics is not None:
        variant.metrics.track_scheduler(scheduler)
        variant.metrics.track_worker(worker)
    client = Client(client_store, keys, hooks=variant.client_hooks)
    scrapes = 0
    stop_scraping = asyncio.Event()

    async def scrape() -> None:
        nonlocal scrapes
        assert variant.metrics is not None
        while not stop_scraping.is_set():
            t0 = time.perf_counter()
            generate_latest(variant.metrics.registry)
            variant.watch.scrape += time.perf_counter() - t0
            scrapes += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_scraping.wait(), 1.0)

    try:
        await scheduler.start()
        await worker.start()
        await asyncio.wait_for(scheduler.leading.wait(), 30)
        await run_tasks(client, 200)  # warm up: the leader's mirror, the worker's slots
        scraper = asyncio.create_task(scrape()) if variant.metrics is not None else None
        watch = variant.watch
        cpu0, t0, parts0 = (
            time.process_time(),
            time.perf_counter(),
            (watch.hook, watch.observer, watch.scrape),
        )
        await run_tasks(client, n)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stop_scraping.set()
        if scraper is not None:
            await scraper
        result = {"throughput_tasks_s": n / wall, "cpu_ms_per_task": cpu * 1000 / n}
        # the time spent inside the metrics code, as a share of this process's CPU time
        parts = (watch.hook - parts0[0], watch.observer - parts0[1], watch.scrape - parts0[2])
        result["metrics_cpu_share"] = sum(parts) / cpu
        result["hook_cpu_share"], result["observer_cpu_share"], result["scrape_cpu_share"] = (
            p / cpu for p in parts
        )
        result["scrape_ms"] = parts[2] * 1000 / max(1, scrapes)
        if variant.metrics is not None:
            requests = sum(
                s.value
                for f in variant.metrics.registry.collect()
                for s in f.samples
                if s.name == "tasklease_etcd_request_seconds_count"
            )
            result["etcd_requests_per_task"] = requests / (n + 200)
            result["scrapes"] = scrapes
        if variant.exporter is not None:
            variant.exporter.clear()
        return result
    finally:
        await client.close()
        await worker.stop(grace_s=5)
        await scheduler.stop()
        for s in stores:
            await s.close()


async def run_tasks(client: Client, n: int) -> None:
    ids: list[str] = []
    for start in range(0, n, CHUNK):
        batch = await client.submit_many(
            TaskSpec("noop", {"i": i}) for i in range(start, min(n, start + CHUNK))
        )
        ids.extend(t.id for t in batch.tasks)
    finals = await asyncio.gather(*(client.wait(i, timeout_s=300) for i in ids))
    bad = [f.id for f in finals if f.state is not TaskState.SUCCEEDED]
    if bad:
        raise RuntimeError(f"{len(bad)} tasks did not succeed")


def hook_cost_us(requests_per_task: float, repeat: int = 20_000) -> dict[str, float]:
    """The metrics hook's own time per task (µs), without etcd: one task's events and requests."""
    m = Metrics("dev")
    hook, observer = m.hook(), m.store_observer()
    attempt = Attempt(1, "w", started_at=100.0, finished_at=100.01)
    running = Task(id="01ARZ3NDEKTSV4RRFFQ6900001", type="noop", payload=None, state=TaskState.RUNNING)
    done = Task(
        id=running.id,
        type="noop",
        payload=None,
        state=TaskState.SUCCEEDED,
        created_at=99.0,
        updated_at=100.02,
        attempts=(attempt,),
    )
    events = [
        Assigned(
            at=100.0, component="scheduler", source="s", task=running, attempt=1, worker="w", queued_at=99.0
        ),
        Started(at=100.0, component="worker", source="w", task=running, attempt=1, worker="w"),
        Succeeded(
            at=100.02,
            component="worker",
            source="w",
            task=done,
            attempt=1,
            worker="w",
            outcome=Outcome.SUCCEEDED,
        ),
    ]
    batch = BatchAssigned(at=100.0, component="scheduler", source="s", size=30)

    def per_call(fn: Callable[[], None]) -> float:
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - t0) / repeat * 1e6

    def task_events() -> None:
        for e in events:
            hook.on_event(e)

    events_us = per_call(task_events)
    batch_us = per_call(lambda: hook.on_event(batch)) / 30
    request_us = per_call(lambda: observer.request("txn", 0.001, None))
    return {
        "events_us": events_us,
        "batch_us": batch_us,
        "request_us": request_us,
        "per_task_us": events_us + batch_us + request_us * requests_per_task,
    }


async def run(quick: bool, rounds: int | None, tasks: int | None) -> dict[str, Any]:
    n = tasks or (1000 if quick else 3000)
    rounds = rounds or (5 if quick else 9)
    names = ["off", "off-again", "metrics"] + (["tracing"] if tracing_available() else [])
    per: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="tl-metrics-bench-") as tmp:
        server = EtcdServer(data_dir=Path(tmp) / "etcd", unsafe_no_fsync=True)
        server.start()
        try:
            config = StoreConfig.from_text(server.endpoint)
            for r in range(rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    variant = Variant("off" if name == "off-again" else name)
                    result = await one_round(config, variant, n, f"{r}{name.replace('-', '')}")
                    per[name].append(result)
                    print(
                        f"  round {r + 1}/{rounds} {name:8} {result['throughput_tasks_s']:8.0f} tasks/s"
                        f"  {result['cpu_ms_per_task']:.3f} ms CPU/task",
                        flush=True,
                    )
        finally:
            server.stop()
    summary: dict[str, Any] = {"tasks": n, "rounds": rounds, "variants": {}}
    for name in names:
        tput = [r["throughput_tasks_s"] for r in per[name]]
        cpu = [r["cpu_ms_per_task"] for r in per[name]]
        row: dict[str, Any] = {
            "throughput_tasks_s": statistics.median(tput),
            "cpu_ms_per_task": statistics.median(cpu),
        }
        if name != "off":
            pairs = list(zip(per[name], per["off"], strict=True))
            tput_ratios = [r["throughput_tasks_s"] / o["throughput_tasks_s"] for r, o in pairs]
            cpu_ratios = [r["cpu_ms_per_task"] / o["cpu_ms_per_task"] for r, o in pairs]
            row["throughput_ratio"] = statistics.median(tput_ratios)
            row["throughput_ratio_range"] = [min(tput_ratios), max(tput_ratios)]
            row["cpu_ratio"] = statistics.median(cpu_ratios)
            row["cpu_ratio_range"] = [min(cpu_ratios), max(cpu_ratios)]
        summary["variants"][name] = row
    shares = [r["metrics_cpu_share"] for r in per["metrics"]]
    summary["variants"]["metrics"]["cpu_share_in_run"] = statistics.median(shares)
    summary["variants"]["metrics"]["cpu_share_in_run_range"] = [min(shares), max(shares)]
    for part in ("hook_cpu_share", "observer_cpu_share", "scrape_cpu_share", "scrape_ms"):
        summary["variants"]["metrics"][part] = statistics.median(r[part] for r in per["metrics"])
    requests = statistics.median(r["etcd_requests_per_task"] for r in per["metrics"])
    summary["hook"] = hook_cost_us(requests)
    summary["hook"]["etcd_requests_per_task"] = requests
    return summary


def report(summary: dict[str, Any]) -> str:
    lines = [
        f"metrics/tracing hooks on vs off: {summary['tasks']} no-op tasks x {summary['rounds']} rounds, "
        "one event loop (scheduler + worker + client), etcd fsync off",
        "ratios: median over rounds of each round's value / that round's 'off' (min..max);"
        " 'off-again' is 'off' run twice: its spread is this run's noise",
        f"{'variant':10} {'tasks/s':>8} {'throughput ratio':>24} {'CPU ms/task':>12} {'CPU ratio':>24}",
    ]

    def ratio(row: dict[str, Any], key: str) -> str:
        if key not in row:
            return "-"
        lo, hi = row[f"{key}_range"]
        return f"{row[key]:.3f} ({lo:.2f}..{hi:.2f})"

    for name, row in summary["variants"].items():
        lines.append(
            f"{name:10} {row['throughput_tasks_s']:8.0f} {ratio(row, 'throughput_ratio'):>24} "
            f"{row['cpu_ms_per_task']:12.3f} {ratio(row, 'cpu_ratio'):>24}"
        )
    if "tracing" not in summary["variants"]:
        lines.append("tracing: skipped (tasklease.tracing or the OpenTelemetry SDK is not importable)")
    hook = summary["hook"]
    off_cpu_us = summary["variants"]["off"]["cpu_ms_per_task"] * 1000
    lines.append(
        f"metrics hook alone (no etcd): {hook['per_task_us']:.1f} µs/task ({hook['events_us']:.1f} for a task's "
        f"events + {hook['request_us']:.2f} x {hook['etcd_requests_per_task']:.2f} etcd requests + its batch share)"
        f" = {hook['per_task_us'] / off_cpu_us:.1%} of the CPU per task with hooks off"
    )
    metrics = summary["variants"]["metrics"]
    share, (lo, hi) = metrics["cpu_share_in_run"], metrics["cpu_share_in_run_range"]
    verdict = "within" if share <= BAR else "OVER"
    lines.append(
        f"metrics cost, timed inside the run (hook + store observer + a scrape a second): {share:.2%} of the "
        f"process's CPU ({lo:.2%}..{hi:.2%}): {verdict} the {BAR:.0%} bar"
    )
    lines.append(
        f"  of which the hook {metrics['hook_cpu_share']:.2%}, the store observer {metrics['observer_cpu_share']:.2%},"
        f" the scrapes {metrics['scrape_cpu_share']:.2%} ({metrics['scrape_ms']:.1f} ms each)"
    )
    noise = summary["variants"]["off-again"]["throughput_ratio_range"]
    lines.append(
        f"metrics on vs off, throughput cost: {1 - metrics['throughput_ratio']:+.1%} "
        f"(the A/A control's ratio spans {noise[0]:.2f}..{noise[1]:.2f}: differences inside it are noise)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.metrics_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="1,000 tasks x 5 rounds (default 3,000 x 9)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--tasks", type=int, default=None)
    args = parser.parse_args(argv)
    summary = asyncio.run(run(args.quick, args.rounds, args.tasks))
    print(report(summary))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout
        row = {"at": time.time(), "commit": commit.strip(), "load": os.getloadavg(), "quick": args.quick}
        f.write(json.dumps({**row, **summary}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
