"""``tasklease soak``: a workload under chaos, then every invariant checked from etcd.

It starts a local etcd, two schedulers and several workers (short leases),
submits N tasks of mixed priorities, durations, failures and timeouts, and
meanwhile SIGKILLs and restarts random workers and the leading scheduler at
random intervals. When every task has finished it reads everything back from
etcd and checks:

1. every task is terminal;
2. no task has more than one successful attempt (and only its last may be);
3. every succeeded task's result matches its payload;
4. attempts are consistent: numbered 1..n, all but the last finished, and
   ``lost`` only on workers that were killed;
5. nothing is left running, assigned, queued or delayed.

It prints the counts and exits 1 on any violation (0 otherwise).
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasklease import codec
from tasklease.client import Client, TaskSpec
from tasklease.dev import Stack
from tasklease.keys import prefix_end
from tasklease.models import Outcome, Task, TaskState
from tasklease.nodes import list_nodes
from tasklease.retry import RetryPolicy
from tasklease.store import StoreConfig

NAMESPACE = "soak"


@dataclass
class SoakReport:
    """What happened and what was found."""

    tasks: int = 0
    states: Counter[str] = field(default_factory=Counter)
    attempts: Counter[str] = field(default_factory=Counter)
    worker_kills: int = 0
    leader_kills: int = 0
    killed_workers: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "tasks": self.tasks,
            "states": dict(self.states),
            "attempts": dict(self.attempts),
            "worker_kills": self.worker_kills,
            "leader_kills": self.leader_kills,
            "violations": len(self.violations),
            "seconds": round(self.seconds, 1),
        }


def make_specs(n: int, rng: random.Random) -> list[TaskSpec]:
    """The mixed workload: mostly quick, some slow, some failing, some timing out."""
    specs = []
    for i in range(n):
        roll = rng.random()
        priority = rng.randint(0, 3)
        if roll < 0.70:
            specs.append(TaskSpec("noop", {"i": i}, priority=priority, retry=RetryPolicy(max_losses=10)))
        elif roll < 0.85:
            seconds = round(rng.uniform(0.05, 0.5), 3)
            specs.append(
                TaskSpec("sleep", {"seconds": seconds}, priority=priority, retry=RetryPolicy(max_losses=10))
            )
        elif roll < 0.95:
            specs.append(
                TaskSpec(
                    "fail",
                    {"message": f"planned failure {i}"},
                    priority=priority,
                    retry=RetryPolicy(max_retries=2, backoff_s=0.1, max_losses=10),
                )
            )
        else:
            specs.append(
                TaskSpec(
                    "sleep",
                    {"seconds": 30},
                    priority=priority,
                    timeout_s=0.3,
                    retry=RetryPolicy(max_retries=1, backoff_s=0.1, max_losses=10),
                )
            )
    return specs


def expected_result(task: Task) -> Any:
    """What a succeeded task of the workload must have returned."""
    if task.type == "noop":
        return task.payload
    if task.type == "sleep":
        return {"slept": task.payload["seconds"]}
    return object()  # nothing else may succeed


def check(tasks: list[Task], leftovers: dict[str, int], report: SoakReport) -> None:
    """Check the invariants; append every violation to the report."""
    v = report.violations
    for task in tasks:
        report.states[task.state.value] += 1
        for a in task.attempts:
            report.attempts[a.outcome.value if a.outcome else "unfinished"] += 1
        if not task.state.terminal:
            v.append(f"{task.id}: not terminal ({task.state.value})")
        successes = [a for a in task.attempts if a.outcome is Outcome.SUCCEEDED]
        if len(successes) > 1:
            v.append(f"{task.id}: {len(successes)} successful attempts")
        if successes and task.attempts[-1].outcome is not Outcome.SUCCEEDED:
            v.append(f"{task.id}: a success that is not the last attempt")
        if task.state is TaskState.SUCCEEDED:
            if not successes:
                v.append(f"{task.id}: succeeded without a successful attempt")
            if task.result != expected_result(task):
                v.append(f"{task.id}: result {task.result!r} does not match payload {task.payload!r}")
        numbers = [a.number for a in task.attempts]
        if numbers != list(range(1, len(numbers) + 1)):
            v.append(f"{task.id}: attempt numbers {numbers}")
        for a in task.attempts:
            if a.outcome is None:
                v.append(f"{task.id}: attempt {a.number} never finished")
            if a.outcome is Outcome.LOST and a.worker not in report.killed_workers:
                v.append(f"{task.id}: attempt {a.number} lost on {a.worker}, which was never killed")
    for what, count in leftovers.items():
        if count:
            v.append(f"{count} keys left under {what}")


async def _collect(client: Client, ids: list[str]) -> tuple[list[Task], dict[str, int]]:
    wanted = set(ids)
    tasks = [t async for t in client.scan() if t.id in wanted]  # paged, not one read per task
    if len(tasks) != len(wanted):
        found = {t.id for t in tasks}
        tasks += [await client.get(i) for i in ids if i not in found]  # raises TaskNotFound if lost
    k = client.keys
    leftovers = {}
    for name, prefix in (
        ("running", k.running),
        ("assign", k.assignments),
        ("queue", k.queues),
        ("delayed", k.delayed),
    ):
        leftovers[name] = (await client.store.range(prefix, prefix_end(prefix), count_only=True)).count
    return tasks, leftovers


async def _wait_workers(client: Client, n: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while len(await list_nodes(client.store, client.keys)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} workers did not register")
        await asyncio.sleep(0.1)


async def _chaos(
    stack: Stack,
    client: Client,
    rng: random.Random,
    interval_s: float,
    report: SoakReport,
    stop: asyncio.Event,
    say: Any,
) -> None:
    serial = 100
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), rng.uniform(interval_s / 2, interval_s * 1.5))
            return
        except TimeoutError:
            pass
        if rng.random() < 0.7:
            names = [n for n in stack.procs if n.startswith("worker")]
            victim = rng.choice(names)
            stack.procs[victim].send_signal(signal.SIGKILL)
            stack.procs.pop(victim).wait()
            report.worker_kills += 1
            report.killed_workers.add(victim)
            serial += 1
            stack.start_worker(f"worker-{serial}")
            say(f"  chaos: SIGKILL {victim}, started worker-{serial}")
        else:
            kv, _ = await client.store.get(client.keys.leader)
            leader = kv.value.decode() if kv else None
            if leader is None or leader not in stack.procs:
                continue
            stack.procs[leader].send_signal(signal.SIGKILL)
            stack.procs.pop(leader).wait()
            report.leader_kills += 1
            stack.start_scheduler(leader)  # comes back as a standby
            say(f"  chaos: SIGKILL leading scheduler {leader}, restarted it")


async def run_soak_async(
    stack: Stack, tasks: int, seed: int, interval_s: float, timeout_s: float, say: Any
) -> SoakReport:
    """Run the workload and chaos against a started stack; return the report."""
    rng = random.Random(seed)
    report = SoakReport(tasks=tasks)
    client = await Client.connect(StoreConfig.from_text(stack.endpoint), namespace=NAMESPACE)
    started = time.monotonic()
    try:
        await _wait_workers(client, stack.n_workers)
        stop = asyncio.Event()
        chaos = asyncio.create_task(_chaos(stack, client, rng, interval_s, report, stop, say))
        specs = make_specs(tasks, rng)
        ids: list[str] = []
        for start in range(0, len(specs), 500):
            result = await client.submit_many(specs[start : start + 500])
            ids.extend(t.id for t in result.tasks)
        say(f"  submitted {len(ids)} tasks")
        deadline = time.monotonic() + timeout_s
        k = client.keys
        while time.monotonic() < deadline:
            # Cheap counts (no record scan): what is still waiting or running.
            counts = {}
            for name, prefix in (("queued", k.queues), ("running", k.running), ("delayed", k.delayed)):
                counts[name] = (await client.store.range(prefix, prefix_end(prefix), count_only=True)).count
            say("  progress: " + "  ".join(f"{n} {c}" for n, c in counts.items()))
            if not any(counts.values()):
                break
            await asyncio.sleep(2.0)
        stop.set()
        await chaos
        # Let the last repairs land before checking (a killed worker's lease may still run).
        tasks_now, leftovers = await _collect(client, ids)
        check(tasks_now, leftovers, report)
    finally:
        report.seconds = time.monotonic() - started
        await client.close()
    return report


def run_soak(
    tasks: int = 2000,
    workers: int = 3,
    seed: int = 1,
    interval_s: float = 2.0,
    timeout_s: float = 600,
    json_out: bool = False,
) -> int:
    """Start a stack, soak it, print the report; return the exit code."""

    def say(text: str) -> None:
        if not json_out:
            print(text, flush=True)

    with tempfile.TemporaryDirectory(prefix="tasklease-soak-") as tmp:
        stack = Stack(
            Path(tmp),
            workers=workers,
            namespace=NAMESPACE,
            worker_args=[
                "--lease-ttl",
                "3",
                "--heartbeat",
                "1",
                "--concurrency",
                "8",
                "--grace",
                "1",
                "--import",
                "tasklease.demo_tasks",
            ],
            scheduler_args=["--lease-ttl", "3", "--deadline-grace", "2"],
            log_dir=Path(tmp) / "logs",
        )
        say(
            f"soak: {tasks} tasks, {workers} workers, 2 schedulers, chaos every ~{interval_s:g} s (seed {seed})"
        )
        try:
            stack.start()
            stack.start_scheduler("scheduler-b")
            report = asyncio.run(run_soak_async(stack, tasks, seed, interval_s, timeout_s, say))
        finally:
            stack.stop()
    if json_out:
        print(codec.encode_obj(report.as_dict()).decode())
    else:
        print(
            f"\ntasks {report.tasks} in {report.seconds:.1f} s; kills: {report.worker_kills} workers, {report.leader_kills} leaders"
        )
        print("states:   " + ", ".join(f"{k} {v}" for k, v in sorted(report.states.items())))
        print("attempts: " + ", ".join(f"{k} {v}" for k, v in sorted(report.attempts.items())))
        print(f"violations: {len(report.violations)}")
        for line in report.violations[:20]:
            print(f"  {line}", file=sys.stderr)
    return 1 if report.violations else 0
