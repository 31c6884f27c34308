"""The soak's workflow mix: dependencies, a cron schedule and a concurrency limit, and their invariants.

``tasklease soak`` (soak.py) runs these beside its plain tasks, under the same
chaos (workers and leaders SIGKILLed), and checks from the records in etcd:

- **dependencies**: diamonds ``a -> (b, c) -> d``. In some, ``b`` is planned to
  fail (after its retries); then ``d`` must end ``cancelled`` with a reason
  naming ``b`` (policy ``cancel``), or run all the same (policy ``run``). Every
  child's first attempt starts after each of its parents finished; no child is
  left waiting (``deps/`` is empty at the end) and none whose parents all
  succeeded was cancelled.
- **cron**: a schedule firing every second (catch-up ``all``) while leaders
  are killed: the ticks its tasks carry are consecutive seconds, each exactly
  once (no duplicate, no gap) from its first to its last.
- **limits**: a concurrency limit on the ``sleep`` type: at no instant do the
  recorded attempts of ``sleep`` tasks (started_at .. finished_at) overlap more
  than the limit.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from dataclasses import dataclass, field

from tasklease.client import Client, TaskSpec
from tasklease.models import Task, TaskState
from tasklease.retry import RetryPolicy

SCHEDULE = "soak-tick"
"""The soak's cron schedule: every second, catch-up all."""
SLEEP_CONCURRENCY = 4
"""The concurrency limit on the ``sleep`` type during the soak."""


@dataclass
class Diamond:
    """One diamond workflow and what it must end as."""

    ids: dict[str, str]  # node name (a, b, c, d) -> task id
    b_fails: bool
    policy: str  # d's on_parent_failure


@dataclass
class WorkflowReport:
    """What the workflow mix did."""

    workflows: int = 0
    workflow_tasks: int = 0
    cancelled_by_parent: int = 0
    ticks: int = 0
    sleep_peak: int = 0
    violations: list[str] = field(default_factory=list)


async def start(client: Client) -> None:
    """Set the soak's limit and schedule (before the workload starts)."""
    await client.set_limit("type", "sleep", concurrency=SLEEP_CONCURRENCY)
    await client.add_schedule(
        SCHEDULE,
        "* * * * * *",  # every second (seconds first)
        TaskSpec("noop", {"from": SCHEDULE}, retry=RetryPolicy(max_losses=10)),
        catch_up="all",
        replace=True,
    )


async def submit_diamonds(client: Client, n: int, rng: random.Random) -> list[Diamond]:
    """Submit ``n`` diamond workflows (each one transaction); a third have a failing ``b``."""
    diamonds = []
    retry = RetryPolicy(max_retries=1, backoff_s=0.1, max_losses=10)
    for i in range(n):
        b_fails = rng.random() < 0.34
        policy = "run" if rng.random() < 0.5 else "cancel"
        wf = client.workflow(f"soak-diamond-{i}")
        a = wf.add("noop", {"w": i, "node": "a"}, retry=retry)
        if b_fails:
            b = wf.add("fail", {"message": f"planned failure in diamond {i}"}, after=[a], retry=retry)
        else:
            b = wf.add("noop", {"w": i, "node": "b"}, after=[a], retry=retry)
        c = wf.add("sleep", {"seconds": 0.05}, after=[a], retry=retry)
        d = wf.add("noop", {"w": i, "node": "d"}, after=[b, c], on_parent_failure=policy, retry=retry)
        written = await client.submit_workflow(wf)
        assert written.transactions == 1
        diamonds.append(Diamond({"a": a.id, "b": b.id, "c": c.id, "d": d.id}, b_fails, policy))
    return diamonds


def _finished_at(task: Task) -> float | None:
    last = task.current_attempt
    return last.finished_at if last else None


def check_diamonds(diamonds: list[Diamond], tasks: dict[str, Task], report: WorkflowReport) -> None:
    """Each diamond's tasks ended as planned; no child started before a parent finished."""
    v = report.violations
    report.workflows = len(diamonds)
    report.workflow_tasks = 4 * len(diamonds)
    for dm in diamonds:
        got = {name: tasks.get(tid) for name, tid in dm.ids.items()}
        missing = [name for name, t in got.items() if t is None]
        if missing:
            v.append(f"diamond {dm.ids['a']}: tasks {missing} lost")
            continue
        a, b, c, d = (got[n] for n in "abcd")
        assert a is not None and b is not None and c is not None and d is not None
        planned = {
            "a": TaskState.SUCCEEDED,
            "b": TaskState.FAILED if dm.b_fails else TaskState.SUCCEEDED,
            "c": TaskState.SUCCEEDED,
            "d": TaskState.CANCELLED if dm.b_fails and dm.policy == "cancel" else TaskState.SUCCEEDED,
        }
        for name, task in (("a", a), ("b", b), ("c", c), ("d", d)):
            if task.state is not planned[name]:
                v.append(
                    f"{task.id} ({name} of a diamond): {task.state.value}, planned {planned[name].value}"
                )
        if d.state is TaskState.CANCELLED:
            report.cancelled_by_parent += 1
            if d.attempts:
                v.append(f"{d.id}: cancelled by its parent but it ran")
            if b.id not in (d.error or ""):
                v.append(
                    f"{d.id}: cancelled, but the reason does not name its failed parent: {d.error!r:.200}"
                )
        # a child never starts before its parents finished
        for child, parents in ((b, [a]), (c, [a]), (d, [b, c])):
            if not child.attempts:
                continue
            start = child.attempts[0].started_at
            for parent in parents:
                end = _finished_at(parent)
                if end is None or start < end:
                    v.append(
                        f"{child.id}: started at {start:.3f}, before its parent {parent.id} finished ({end})"
                    )


def check_ticks(tasks: list[Task], report: WorkflowReport) -> None:
    """The schedule's tasks carry consecutive ticks, each exactly once, and all finished."""
    v = report.violations
    ticks = sorted(t.tick for t in tasks if t.tick is not None)
    report.ticks = len(ticks)
    if len(ticks) < 2:
        v.append(f"the cron schedule fired {len(ticks)} times")
        return
    seen: dict[float, int] = defaultdict(int)
    for tick in ticks:
        seen[tick] += 1
    duplicates = sorted(t for t, n in seen.items() if n > 1)
    if duplicates:
        v.append(f"cron ticks fired twice: {duplicates[:5]}")
    distinct = sorted(seen)
    gaps = [(x, y) for x, y in itertools.pairwise(distinct) if round(y - x, 3) != 1.0]
    if gaps:
        v.append(f"cron ticks missing between {gaps[:5]}")
    for task in tasks:
        if not task.state.terminal:
            v.append(f"{task.id}: the tick task of {task.tick} is {task.state.value}")


def check_concurrency(tasks: list[Task], report: WorkflowReport) -> None:
    """At no instant did more ``sleep`` attempts run than the limit (from the recorded times)."""
    edges: list[tuple[float, int]] = []
    for task in tasks:
        if task.type != "sleep":
            continue
        for a in task.attempts:
            if a.finished_at is None:
                continue  # reported by the main check (an unfinished attempt)
            edges += [(a.started_at, 1), (a.finished_at, -1)]
    running = peak = 0
    for _, step in sorted(edges):  # at one instant a finish (-1) sorts before a start (+1)
        running += step
        peak = max(peak, running)
    report.sleep_peak = peak
    if peak > SLEEP_CONCURRENCY:
        report.violations.append(f"{peak} sleep tasks ran at once; the limit is {SLEEP_CONCURRENCY}")
