"""``tasklease soak``: a workload under chaos, then every invariant checked from etcd.

It starts a local etcd, two schedulers and several workers (short leases),
submits N tasks of mixed priorities, durations, failures and timeouts, and
meanwhile SIGKILLs and restarts random workers and the leading scheduler at
random intervals. When every task has finished it reads everything back from
etcd and checks:

1. every task is terminal, in the state its plan says (``noop`` and short
   ``sleep`` succeed; ``fail`` and the sleeps longer than their timeout fail);
2. no task has more than one successful attempt (and only its last may be);
3. every succeeded task's result matches its payload (whole payloads, so a
   200 KB payload must come back byte for byte);
4. attempts are consistent: numbered 1..n, all but the last finished, and
   ``lost`` only on workers that were killed;
5. nothing is left running, assigned, queued or delayed;
6. a delayed task (about 8 % of them: ``delay_s`` 0.2 to 3 s) never started
   before its time (its first attempt's start >= the ``not_before`` its submit
   recorded);
7. the workflow mix (soak_workflows.py): diamond workflows end as planned
   (a failed parent cancels its child, or not, by its policy; no child starts
   before its parents finished; none is left waiting), a cron schedule firing
   every second fired each tick exactly once, and a concurrency limit on the
   ``sleep`` type was never exceeded.

Payloads are tiny by default; ``--payload-bytes`` makes them realistic: a fixed
size (``4500``) or a mix chosen per task by the seed (``0,4500,65536,204800``,
optionally weighted: ``0:50,4500:40,65536:8,204800:2``). A sized payload is a
JSON object of exactly that many bytes: the task's own fields, a few metadata
fields and a base64 string (see :func:`make_payload`).

It prints the counts and exits 1 on any violation (0 otherwise). ``python -m
tasklease.soak`` runs it with the same options as ``tasklease soak``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import functools
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tasklease import codec, soak_workflows
from tasklease.client import Client, TaskSpec
from tasklease.dev import Stack
from tasklease.errors import InvalidOption, ValidationError
from tasklease.keys import prefix_end
from tasklease.models import Outcome, Task, TaskState
from tasklease.nodes import list_nodes
from tasklease.retry import RetryPolicy

NAMESPACE = "soak"

# (size in bytes, weight): the payload size mix; (0, 1) is the historical tiny payloads.
PayloadMix = tuple[tuple[int, int], ...]
TINY: PayloadMix = ((0, 1),)


def parse_payload_bytes(text: str) -> PayloadMix:
    """``4500``, ``0,4500,65536`` or ``0:50,4500:40,204800:2`` -> ((size, weight), ...).

    A size of 0 means the tiny payload the workload always had (``{"i": 7}``).

    Raises:
        InvalidOption: For a malformed list, a negative weight or a size over
            the payload limit.
    """
    mix: dict[int, int] = {}
    for part in text.replace(" ", "").split(","):
        size_text, _, weight_text = part.partition(":")
        try:
            size, weight = int(size_text), int(weight_text or 1)
        except ValueError:
            raise InvalidOption(
                f"--payload-bytes takes SIZE[,SIZE...] or SIZE:WEIGHT[,...], got {text!r}"
            ) from None
        if not 0 <= size <= codec.MAX_PAYLOAD_BYTES:
            raise InvalidOption(f"payload size {size} outside 0..{codec.MAX_PAYLOAD_BYTES}")
        if weight < 1:
            raise InvalidOption(f"payload weight must be >= 1, got {weight}")
        mix[size] = mix.get(size, 0) + weight
    return tuple(sorted(mix.items()))


@functools.cache
def _filler() -> str:
    """Base64 text to cut payload strings from (fixed: the same bytes in every run)."""
    return base64.b64encode(random.Random(0).randbytes(codec.MAX_PAYLOAD_BYTES)).decode()


def make_payload(
    base: dict[str, Any], size: int, rng: random.Random, pad_field: str = "blob"
) -> dict[str, Any]:
    """``base`` grown into a realistic JSON object of exactly ``size`` bytes.

    It keeps the task's own fields and fills the rest with base64 text (like an
    embedded document). If ``base`` has a string ``pad_field`` (a task function's
    own argument, such as ``fail(message)``), the text is appended to it (after
    a space) and
    nothing else is added; otherwise a small ``meta`` object and a ``pad_field``
    holding the text are added. The text is a slice of a fixed random block at
    an ``rng``-chosen offset, so payloads differ from task to task. ``base`` is
    returned unchanged if ``size`` is 0 or too small to hold more than it.
    """
    if size <= 0:
        return base
    prefix = base.get(pad_field)
    if isinstance(prefix, str):
        payload: dict[str, Any] = {**base}
        prefix += " "
        payload[pad_field] = prefix
    else:
        prefix = ""
        payload = {**base, "meta": {"source": "tasklease-soak", "encoding": "base64", "bytes": size}}
        payload[pad_field] = prefix
        if len(orjson.dumps(payload)) > size:
            payload = {**base, pad_field: prefix}
    room = size - len(orjson.dumps(payload))
    if room < 0:
        return base
    filler = _filler()
    start = rng.randrange(len(filler) - room + 1)
    payload[pad_field] = prefix + filler[start : start + room]
    return payload


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
    # payload size (0 = tiny) -> final state -> tasks
    by_payload: dict[int, Counter[str]] = field(default_factory=dict)
    payload_bytes: int = 0
    delayed: int = 0
    workflows: int = 0
    cancelled_by_parent: int = 0
    ticks: int = 0
    sleep_peak: int = 0

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
            "payload_bytes": self.payload_bytes,
            "delayed": self.delayed,
            "workflows": self.workflows,
            "cancelled_by_parent": self.cancelled_by_parent,
            "ticks": self.ticks,
            "sleep_peak": self.sleep_peak,
            "by_payload": {str(k): dict(v) for k, v in sorted(self.by_payload.items())},
        }


def payload_sizes(n: int, mix: PayloadMix, seed: int) -> list[int]:
    """The payload size of each of ``n`` tasks, drawn from ``mix`` by ``seed``.

    Its own generator, so the rest of the workload (and the chaos) is the same
    for a seed whatever the mix.
    """
    if len(mix) == 1:
        return [mix[0][0]] * n
    rng = random.Random(seed * 1_000_003 + 17)
    sizes, weights = zip(*mix, strict=True)
    return rng.choices(sizes, weights, k=n)


DELAYED_SHARE = 0.08
"""About this share of the soak's tasks are submitted with a delay (0.2 to 3 s)."""


def make_specs(
    n: int,
    rng: random.Random,
    sizes: Sequence[int] | None = None,
    pad_rng: random.Random | None = None,
    delay_rng: random.Random | None = None,
) -> list[TaskSpec]:
    """The mixed workload: mostly quick, some slow, some failing, some timing out.

    ``sizes[i]`` is task i's payload size in bytes (0 or absent: tiny);
    ``pad_rng`` cuts the padding (its own generator: ``rng`` draws the same
    workload whatever the sizes); ``delay_rng`` (if given) delays about 8 % of
    the tasks by 0.2 to 3 s (its own generator too).
    """
    specs = _base_specs(n, rng, sizes, pad_rng or random.Random(0))
    if delay_rng is None:
        return specs
    return [
        dataclasses.replace(s, delay_s=round(delay_rng.uniform(0.2, 3.0), 3))
        if delay_rng.random() < DELAYED_SHARE
        else s
        for s in specs
    ]


def _base_specs(
    n: int, rng: random.Random, sizes: Sequence[int] | None, pad_rng: random.Random
) -> list[TaskSpec]:
    specs = []
    for i in range(n):
        roll = rng.random()
        priority = rng.randint(0, 3)
        size = sizes[i] if sizes else 0
        if roll < 0.70:
            specs.append(
                TaskSpec(
                    "noop",
                    make_payload({"i": i}, size, pad_rng),
                    priority=priority,
                    retry=RetryPolicy(max_losses=10),
                )
            )
        elif roll < 0.85:
            seconds = round(rng.uniform(0.05, 0.5), 3)
            specs.append(
                TaskSpec(
                    "sleep",
                    make_payload({"seconds": seconds}, size, pad_rng),
                    priority=priority,
                    retry=RetryPolicy(max_losses=10),
                )
            )
        elif roll < 0.95:
            specs.append(
                TaskSpec(
                    "fail",  # fail(message): the padding goes into the message (errors keep 4 KiB)
                    make_payload({"message": f"planned failure {i}"}, size, pad_rng, pad_field="message"),
                    priority=priority,
                    retry=RetryPolicy(max_retries=2, backoff_s=0.1, max_losses=10),
                )
            )
        else:
            specs.append(
                TaskSpec(
                    "sleep",
                    make_payload({"seconds": 30}, size, pad_rng),
                    priority=priority,
                    timeout_s=0.3,
                    retry=RetryPolicy(max_retries=1, backoff_s=0.1, max_losses=10),
                )
            )
    return specs


def planned_state(task: Task) -> TaskState:
    """The state a task of the workload must end in."""
    if task.type == "fail":
        return TaskState.FAILED
    if task.type == "sleep" and isinstance(task.payload, dict) and task.payload["seconds"] >= task.timeout_s:
        return TaskState.FAILED
    return TaskState.SUCCEEDED


def expected_result(task: Task) -> Any:
    """What a succeeded task of the workload must have returned."""
    if task.type == "noop":
        return task.payload
    if task.type == "sleep":
        return {"slept": task.payload["seconds"]}
    return object()  # nothing else may succeed


def check(
    tasks: list[Task],
    leftovers: dict[str, int],
    report: SoakReport,
    sizes: dict[str, int] | None = None,
    due: dict[str, float] | None = None,
) -> None:
    """Check the invariants; append every violation to the report.

    ``sizes`` maps task ids to their planned payload size (for the counts per
    size); ``due`` the delayed tasks' ids to the ``not_before`` their submit recorded.
    """
    v = report.violations
    due = due or {}
    for task in tasks:
        not_before = due.get(task.id)
        # (the delayed key holds microseconds: allow for that truncation only)
        if not_before is not None and task.attempts and task.attempts[0].started_at < not_before - 1e-3:
            v.append(
                f"{task.id}: started at {task.attempts[0].started_at:.3f}, before its time {not_before:.3f}"
            )
        report.states[task.state.value] += 1
        size = (sizes or {}).get(task.id, 0)
        report.by_payload.setdefault(size, Counter())[task.state.value] += 1
        for a in task.attempts:
            report.attempts[a.outcome.value if a.outcome else "unfinished"] += 1
        if not task.state.terminal:
            v.append(f"{task.id}: not terminal ({task.state.value})")
        elif task.state is not (planned := planned_state(task)):
            v.append(f"{task.id}: {task.type} ended {task.state.value}, planned {planned.value}")
        successes = [a for a in task.attempts if a.outcome is Outcome.SUCCEEDED]
        if len(successes) > 1:
            v.append(f"{task.id}: {len(successes)} successful attempts")
        if successes and task.attempts[-1].outcome is not Outcome.SUCCEEDED:
            v.append(f"{task.id}: a success that is not the last attempt")
        if task.state is TaskState.SUCCEEDED:
            if not successes:
                v.append(f"{task.id}: succeeded without a successful attempt")
            if task.result != expected_result(task):
                v.append(
                    f"{task.id}: result {_short(task.result)} does not match payload {_short(task.payload)}"
                )
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


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


async def _collect(client: Client, ids: list[str]) -> tuple[list[Task], list[Task], dict[str, int]]:
    """The tasks of ``ids``, the cron schedule's tasks, and the keys left under each index."""
    wanted = set(ids)
    tasks, ticks = [], []
    async for t in client.scan():  # paged, not one read per task
        if t.id in wanted:
            tasks.append(t)
        elif t.schedule == soak_workflows.SCHEDULE:
            ticks.append(t)
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
        ("deps", k.deps),
    ):
        leftovers[name] = (await client.store.range(prefix, prefix_end(prefix), count_only=True)).count
    return tasks, ticks, leftovers


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
    stack: Stack,
    tasks: int,
    seed: int,
    interval_s: float,
    timeout_s: float,
    say: Any,
    payloads: PayloadMix = TINY,
) -> SoakReport:
    """Run the workload and chaos against a started stack; return the report."""
    rng = random.Random(seed)
    report = SoakReport(tasks=tasks)
    client = await Client.connect(stack.store_config(), namespace=NAMESPACE)
    started = time.monotonic()
    try:
        await _wait_workers(client, stack.n_workers)
        await soak_workflows.start(client)
        stop = asyncio.Event()
        chaos = asyncio.create_task(_chaos(stack, client, rng, interval_s, report, stop, say))
        sizes = payload_sizes(tasks, payloads, seed)
        specs = make_specs(tasks, rng, sizes, random.Random(seed + 1), random.Random(seed * 7 + 3))
        report.payload_bytes = sum(len(orjson.dumps(s.payload)) for s in specs)
        ids: list[str] = []
        due: dict[str, float] = {}
        for start in range(0, len(specs), 500):
            # submit_many splits by etcd's request size (a few 200 KB payloads per transaction).
            result = await client.submit_many(specs[start : start + 500])
            ids.extend(t.id for t in result.tasks)
            due.update((t.id, t.not_before) for t in result.tasks if t.not_before is not None)
        report.delayed = len(due)
        diamonds = await soak_workflows.submit_diamonds(client, max(5, tasks // 60), random.Random(seed + 2))
        say(f"  submitted {len(diamonds)} diamond workflows ({4 * len(diamonds)} tasks)")
        say(f"  submitted {len(ids)} tasks ({report.payload_bytes / 1e6:.1f} MB of payloads)")
        deadline = time.monotonic() + timeout_s
        k = client.keys
        while time.monotonic() < deadline:
            # Cheap counts (no record scan): what is still waiting or running.
            counts = {}
            for name, prefix in (
                ("queued", k.queues),
                ("running", k.running),
                ("delayed", k.delayed),
                ("waiting", k.deps),
            ):
                counts[name] = (await client.store.range(prefix, prefix_end(prefix), count_only=True)).count
            say("  progress: " + "  ".join(f"{n} {c}" for n, c in counts.items()))
            if not any(counts.values()):
                break
            await asyncio.sleep(2.0)
        stop.set()
        await chaos
        # The schedule stops; its last tasks finish (they are counted under queued/running).
        await client.remove_schedule(soak_workflows.SCHEDULE)
        while time.monotonic() < deadline:
            left = [
                (await client.store.range(p, prefix_end(p), count_only=True)).count
                for p in (k.queues, k.running)
            ]
            if not any(left):
                break
            await asyncio.sleep(0.5)
        workflow_ids = [tid for dm in diamonds for tid in dm.ids.values()]
        everything, ticks, leftovers = await _collect(client, ids + workflow_ids)
        mine = set(ids)
        check(
            [t for t in everything if t.id in mine],
            leftovers,
            report,
            dict(zip(ids, sizes, strict=True)),
            due,
        )
        extra = soak_workflows.WorkflowReport()
        soak_workflows.check_diamonds(diamonds, {t.id: t for t in everything}, extra)
        soak_workflows.check_ticks(ticks, extra)
        soak_workflows.check_concurrency(everything + ticks, extra)
        report.violations += extra.violations
        report.workflows, report.cancelled_by_parent = extra.workflows, extra.cancelled_by_parent
        report.ticks, report.sleep_peak = extra.ticks, extra.sleep_peak
    finally:
        report.seconds = time.monotonic() - started
        await client.close()
    return report


def _keep_logs(logs: Path) -> Path:
    """Copy the processes' logs out of the soak's temporary directory (after a failure)."""
    kept = Path(tempfile.mkdtemp(prefix="tasklease-soak-logs-"))
    if logs.is_dir():
        shutil.copytree(logs, kept, dirs_exist_ok=True)
    return kept


def run_soak(
    tasks: int = 2000,
    workers: int = 3,
    seed: int = 1,
    interval_s: float = 2.0,
    timeout_s: float = 600,
    json_out: bool = False,
    payload_bytes: str | PayloadMix = TINY,
) -> int:
    """Start a stack, soak it, print the report; return the exit code.

    ``payload_bytes`` is a mix or its ``--payload-bytes`` text.

    Raises:
        InvalidOption: A malformed ``payload_bytes``.
    """
    payloads = parse_payload_bytes(payload_bytes) if isinstance(payload_bytes, str) else payload_bytes

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
        mix = ", ".join(f"{size}:{weight}" for size, weight in payloads)
        say(
            f"soak: {tasks} tasks, {workers} workers, 2 schedulers, chaos every ~{interval_s:g} s (seed {seed}); "
            f"payload bytes {mix}"
        )
        report: SoakReport | None = None
        try:
            stack.start()
            stack.start_scheduler("scheduler-b")
            report = asyncio.run(
                run_soak_async(stack, tasks, seed, interval_s, timeout_s, say, payloads=payloads)
            )
        finally:
            stack.stop()
            if report is None or report.violations:
                kept = _keep_logs(Path(tmp) / "logs")
                print(f"soak: the processes' logs are kept in {kept}", file=sys.stderr, flush=True)
    if json_out:
        print(codec.encode_obj(report.as_dict()).decode())
    else:
        print(
            f"\ntasks {report.tasks} in {report.seconds:.1f} s; kills: {report.worker_kills} workers, {report.leader_kills} leaders"
        )
        print("states:   " + ", ".join(f"{k} {v}" for k, v in sorted(report.states.items())))
        print("attempts: " + ", ".join(f"{k} {v}" for k, v in sorted(report.attempts.items())))
        if payloads != TINY:
            for size, states in sorted(report.by_payload.items()):
                print(f"payload {size:>7} B: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
        print(
            f"workflows: {report.workflows} diamonds ({report.cancelled_by_parent} children cancelled by a "
            f"failed parent); cron: {report.ticks} ticks; sleep tasks at once: at most {report.sleep_peak} "
            f"(limit {soak_workflows.SLEEP_CONCURRENCY})"
        )
        print(f"violations: {len(report.violations)}")
        for line in report.violations[:20]:
            print(f"  {line}", file=sys.stderr)
    return 1 if report.violations else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The soak's options, for ``tasklease soak`` and ``python -m tasklease.soak``.

    (``--json`` is not among them: ``tasklease`` has it on every command.)
    """
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--chaos-interval", type=_positive_float, default=2.0, help="mean seconds between kills"
    )
    parser.add_argument("--timeout", type=_positive_float, default=900.0, help="give up after S seconds")
    parser.add_argument(
        "--payload-bytes",
        default="0",
        metavar="SIZES",
        help="payload size of each task in bytes: 4500, or a mix drawn per task by the seed: "
        "0,4500,65536,204800 (weighted: 0:50,4500:40,65536:8,204800:2); 0 = tiny (default)",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def run_from_args(args: argparse.Namespace) -> int:
    """Run the soak the options of :func:`add_arguments` (and ``--json``) describe.

    Raises:
        InvalidOption: Too few tasks or workers, or a malformed ``--payload-bytes``.
    """
    if args.tasks < 1 or args.workers < 2:
        raise InvalidOption("the soak needs --tasks >= 1 and --workers >= 2")
    return run_soak(
        args.tasks,
        args.workers,
        args.seed,
        args.chaos_interval,
        args.timeout,
        getattr(args, "json", False),
        payload_bytes=args.payload_bytes,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tasklease.soak [options]``: the same as ``tasklease soak``."""
    parser = argparse.ArgumentParser(
        prog="python -m tasklease.soak", description=(__doc__ or "").split("\n")[0]
    )
    add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except ValidationError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    sys.exit(main())
