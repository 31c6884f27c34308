"""Real `tasklease scheduler` and `tasklease worker` processes against the real etcd, really killed.

Each test starts schedulers and workers from the venv's `tasklease` binary
(short leases: TTL 2 s, worker heartbeat 0.5 s), submits work with the
client, signals processes (SIGKILL, SIGSTOP/SIGCONT, SIGTERM) and checks what
etcd shows: who leads (the leader key's value is the leader's id, its create
revision the fencing token), and every task's attempts.

Every wait has a deadline and polls at ~50 ms; every process logs to a file in
tmp_path, and the tails of all of them are part of every assertion message.
Measured times are printed as ``[measure] ...`` lines (see them with ``-s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from faults.procs import POLL_S, Proc, Procs, pid_running, process_env, until
from tasklease import codec
from tasklease.client import Client, TaskSpec
from tasklease.errors import WaitTimeout
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Outcome, Task, TaskState
from tasklease.retry import RetryPolicy
from tasklease.store import KV, Store

TTL = 2  # lease TTL of every scheduler and worker unless a test says otherwise
START_S = 30.0  # a process start (Python, gRPC, imports) on a loaded 2-core machine

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def procs(tasklease_bin: str, cli_env: dict[str, str], tmp_path: Path) -> Iterator[Procs]:
    """Process group of the test; teardown SIGKILLs whatever is left and closes the logs."""
    group = Procs(tasklease_bin, process_env(cli_env), tmp_path)
    try:
        yield group
    finally:
        group.cleanup()


def measure(what: str, value: float) -> None:
    print(f"[measure] {what}: {value:.3f} s")


# helpers ---------------------------------------------------------------------------------
async def leader_kv(store: Store, keys: Keyspace) -> KV | None:
    kv, _ = await store.get(keys.leader)
    return kv


async def wait_leader(store: Store, keys: Keyspace, procs: Procs, among: set[str], within_s: float) -> KV:
    """Wait until the leader key names one of ``among``; return it."""

    async def probe() -> KV | None:
        kv = await leader_kv(store, keys)
        return kv if kv is not None and kv.value.decode() in among else None

    return await until(probe, within_s=within_s, what=f"a leader among {sorted(among)}", log=procs.tails)


async def start_schedulers(
    procs: Procs,
    store: Store,
    keys: Keyspace,
    ids: Sequence[str] = ("s1", "s2"),
    *,
    lease_ttl: int = TTL,
    env: Mapping[str, str] | None = None,
) -> tuple[Proc, list[Proc]]:
    """Start schedulers; return (leader, standbys) once one leads and the others stand by."""
    started = [procs.scheduler(i, lease_ttl=lease_ttl, env=env) for i in ids]
    kv = await wait_leader(store, keys, procs, set(ids), START_S)
    leader = procs[kv.value.decode()]
    standbys = [p for p in started if p is not leader]
    for p in standbys:
        # its campaign lost: it now watches the leader key
        await p.wait_log(f"standing by: {leader.name} leads", START_S)
    await leader.wait_log("leading:", START_S)
    return leader, standbys


async def wait_registered(store: Store, keys: Keyspace, worker: Proc) -> dict[str, Any]:
    """Wait for the worker's node record (published by this very process)."""

    async def probe() -> dict[str, Any] | None:
        if not worker.alive:
            raise AssertionError(worker.why("worker exited before registering"))
        kv, _ = await store.get(keys.node(worker.name))
        if kv is None:
            return None
        node = codec.decode_obj(kv.key, kv.value)
        return node if node.get("pid") == worker.pid else None

    return await until(probe, within_s=START_S, what=f"{worker.name}'s node record", log=worker.tail)


async def start_workers(
    procs: Procs, store: Store, keys: Keyspace, ids: Sequence[str], *args: str, **opts: Any
) -> list[Proc]:
    workers = [procs.worker(i, *args, **opts) for i in ids]
    for w in workers:
        await wait_registered(store, keys, w)
    return workers


async def finished(client: Client, task_id: str, procs: Procs, within_s: float) -> Task:
    """client.wait with the process logs in the failure message."""
    try:
        return await client.wait(task_id, timeout_s=within_s)
    except WaitTimeout:
        record = await client.get(task_id)
        raise AssertionError(
            procs.why(f"task {task_id} not finished within {within_s:g} s: {record}")
        ) from None


async def wait_all(client: Client, ids: Sequence[str], procs: Procs, within_s: float) -> list[Task]:
    """Wait for every task (one shared deadline); the final records in the order given."""
    deadline = time.monotonic() + within_s
    finals: list[Task] = []
    for task_id in ids:
        try:
            finals.append(await client.wait(task_id, timeout_s=max(0.1, deadline - time.monotonic())))
        except WaitTimeout:
            stats = await client.stats()
            record = await client.get(task_id)
            raise AssertionError(
                procs.why(
                    f"only {len(finals)}/{len(ids)} tasks finished within {within_s:g} s; "
                    f"states now {stats['states']}; first unfinished: {record}"
                )
            ) from None
    return finals


def delivery_problems(finals: Sequence[Task]) -> list[str]:
    """Every task succeeded exactly once, attempts numbered 1..n with no number twice."""
    problems = []
    for t in finals:
        wins = sum(1 for a in t.attempts if a.outcome is Outcome.SUCCEEDED)
        numbers = [a.number for a in t.attempts]
        if t.state is not TaskState.SUCCEEDED:
            problems.append(f"{t.id} ended {t.state.value}: {t.error}")
        if wins != 1:
            problems.append(f"{t.id} has {wins} successful attempts: {t.attempts}")
        if numbers != list(range(1, len(numbers) + 1)):
            problems.append(f"{t.id} attempt numbers {numbers}: {t.attempts}")
    return problems


async def submit_batches(
    client: Client, specs: Sequence[TaskSpec], ids: list[str], *, batch: int, pause_s: float
) -> None:
    """Submit ``specs`` in batches (one transaction each), ``pause_s`` apart; extend ``ids``."""
    for start in range(0, len(specs), batch):
        if start:
            await asyncio.sleep(pause_s)
        result = await client.submit_many(specs[start : start + batch])
        ids.extend(t.id for t in result.tasks)


async def stop_task(task: asyncio.Task[Any]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def run_cli(
    tasklease_bin: str, env: Mapping[str, str], *args: str, within_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [tasklease_bin, *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=within_s,
    )


# 1. the leader is SIGKILLed while work streams in -------------------------------------------
async def test_leader_sigkill_mid_stream_standby_takes_over_and_nothing_is_lost(
    procs: Procs, store: Store, keyspace: Keyspace, client: Client
) -> None:
    n_tasks, batch, before_kill = 1000, 50, 400
    await start_workers(procs, store, keyspace, ("w1", "w2"), concurrency=8)
    leader, (standby,) = await start_schedulers(procs, store, keyspace)
    old = await leader_kv(store, keyspace)
    assert old is not None

    specs = [TaskSpec("sleep", {"seconds": 0.01, "i": i}) for i in range(n_tasks)]
    ids: list[str] = []
    killed = asyncio.Event()

    async def stream() -> None:
        # 400 quickly, then (once the leader is dead) the other 600 through the take-over
        await submit_batches(client, specs[:before_kill], ids, batch=batch, pause_s=0.05)
        await killed.wait()
        await submit_batches(client, specs[before_kill:], ids, batch=batch, pause_s=0.2)

    submitter = asyncio.create_task(stream())
    try:
        await until(lambda: len(ids) >= 200 or submitter.done(), within_s=30, what="200 submitted")
        if submitter.done():
            submitter.result()  # it failed: raise its error
        # ~200 succeeded: the 200th task (FIFO) is done
        await finished(client, ids[199], procs, within_s=60)
        succeeded_at_kill = (await client.stats())["states"]["succeeded"]
        standby_log_at_kill = standby.log_size()
        leader.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        killed.set()
        new = await wait_leader(store, keyspace, procs, {standby.name}, within_s=TTL + 15)
        takeover_s = time.monotonic() - killed_at
        await asyncio.wait_for(asyncio.shield(submitter), timeout=60)
    finally:
        await stop_task(submitter)
    await standby.wait_log("leading:", within_s=10, start=standby_log_at_kill)
    took_over = re.search(r"leading: .*?(?= \[)", standby.log_text(standby_log_at_kill))
    print(f"[measure] new leader's view at take-over: {took_over.group(0) if took_over else '?'}")
    measure(
        f"leader SIGKILL -> standby leads (TTL {TTL} s; {succeeded_at_kill} succeeded at the kill)",
        takeover_s,
    )
    assert takeover_s < TTL + 3, procs.why(f"take-over took {takeover_s:.2f} s (TTL {TTL} s)")
    assert new.create_revision != old.create_revision, "the new leader has a new fencing token"
    assert 100 <= succeeded_at_kill < n_tasks - 300, procs.why(
        f"the kill was not mid-stream: {succeeded_at_kill} already succeeded"
    )

    finals = await wait_all(client, ids, procs, within_s=120)
    assert len(finals) == n_tasks
    problems = delivery_problems(finals)
    assert not problems, procs.why(f"{len(problems)} problems, first: {problems[:5]}")
    # The workers never died: no attempt was lost or repeated
    reruns = [t for t in finals if len(t.attempts) != 1]
    assert not reruns, procs.why(f"{len(reruns)} tasks ran more than once, first: {reruns[:2]}")
    assert [t.payload["i"] for t in finals] == list(range(n_tasks))
    assert all(t.result == {"slept": 0.01} for t in finals)
    assert {t.attempts[0].worker for t in finals} == {"w1", "w2"}
    assert await leader.wait_exit(5) == -signal.SIGKILL
    assert standby.alive, standby.why("the new leader died")
    kv = await leader_kv(store, keyspace)
    assert kv is not None and kv.create_revision == new.create_revision, "leadership changed again"


# 2. the leader is paused past its lease, then resumes ----------------------------------------
ASSIGNED_LINE = re.compile(r"assigned (\d+) tasks")


async def running_index_puts(store: Store, keys: Keyspace, from_revision: int, expected: int) -> list[int]:
    """Revisions of the running-index puts since ``from_revision`` (etcd's history; no compaction).

    Reads until ``expected`` puts and as many deletes (every attempt has ended) were seen.
    """
    revisions: list[int] = []
    deletes = 0
    try:
        async with asyncio.timeout(30):
            watch = store.watch(keys.running, prefix_end(keys.running), from_revision)
            async with contextlib.aclosing(watch) as events_stream:
                async for events in events_stream:
                    for ev in events:
                        if ev.type == "put":
                            revisions.append(ev.kv.mod_revision)
                        else:
                            deletes += 1
                    if len(revisions) >= expected and deletes >= expected:
                        break
    except TimeoutError:
        raise AssertionError(
            f"history: {len(revisions)} puts, {deletes} deletes, expected {expected}"
        ) from None
    return revisions


async def test_paused_leader_is_deposed_and_its_writes_are_fenced_after_sigcont(
    procs: Procs, store: Store, keyspace: Keyspace, client: Client
) -> None:
    n_tasks = 500
    await start_workers(procs, store, keyspace, ("w1", "w2"), concurrency=8)
    # debug: the schedulers log every successful assignment transaction ("assigned N tasks")
    leader, (standby,) = await start_schedulers(procs, store, keyspace, env={"TASKLEASE_LOG_LEVEL": "debug"})
    old = await leader_kv(store, keyspace)
    assert old is not None
    specs = [TaskSpec("sleep", {"seconds": 0.01, "i": i}) for i in range(n_tasks)]
    ids: list[str] = []

    await submit_batches(client, specs[:150], ids, batch=50, pause_s=0.05)
    await finished(client, ids[99], procs, within_s=60)
    assert ASSIGNED_LINE.search(leader.log_text()), leader.why("the leader logged no assignment")

    leader.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        # Work keeps arriving while the leader is frozen; its lease runs out
        await submit_batches(client, specs[150:350], ids, batch=50, pause_s=0.25)
        new = await wait_leader(store, keyspace, procs, {standby.name}, within_s=TTL + 15)
        takeover_s = time.monotonic() - stopped_at
        measure(f"leader SIGSTOP -> standby leads (TTL {TTL} s)", takeover_s)
        assert takeover_s < TTL + 3, procs.why(f"take-over took {takeover_s:.2f} s (TTL {TTL} s)")
        assert new.create_revision != old.create_revision
        # The new leader makes progress while the old one is still frozen
        await finished(client, ids[349], procs, within_s=60)
        resumed_from = leader.log_size()
    finally:
        leader.signal(signal.SIGCONT)
    resumed_at = time.monotonic()
    # More work while the old leader wakes up: its watch shows it queued tasks it may try to assign
    await submit_batches(client, specs[350:], ids, batch=50, pause_s=0.05)
    await leader.wait_log("leadership lost", within_s=TTL + 15, start=resumed_from)
    await leader.wait_log(f"standing by: {standby.name} leads", within_s=TTL + 15, start=resumed_from)
    measure("old leader SIGCONT -> stands by", time.monotonic() - resumed_at)

    finals = await wait_all(client, ids, procs, within_s=120)
    problems = delivery_problems(finals)
    assert not problems, procs.why(f"{len(problems)} problems, first: {problems[:5]}")
    reruns = [t for t in finals if len(t.attempts) != 1]
    assert not reruns, procs.why(f"{len(reruns)} tasks ran more than once, first: {reruns[:2]}")

    # Fencing, from etcd's history: every assignment transaction writes one running-index
    # entry per task. Those written after the take-over revision are exactly the ones the
    # new leader reports; the old leader's (an answer may reach it only after SIGCONT)
    # all committed before it.
    puts = await running_index_puts(
        store, keyspace, old.create_revision, sum(len(t.attempts) for t in finals)
    )
    logged = {p.name: sum(int(n) for n in ASSIGNED_LINE.findall(p.log_text())) for p in (leader, standby)}
    after = leader.log_text(resumed_from)
    print(f"[measure] assignment lines the old leader logged after SIGCONT: {ASSIGNED_LINE.findall(after)}")
    # A transaction whose answer was lost (an error after a long pause) is not in the log
    assert "assignment transaction failed" not in standby.log_text(), standby.why("unexpected store error")
    assert sum(1 for r in puts if r > new.create_revision) == logged[standby.name], procs.why(
        f"assignments after the take-over {new.create_revision} != the new leader's: {logged}"
    )
    before = sum(1 for r in puts if r < new.create_revision)
    if "assignment transaction failed" in leader.log_text():
        assert before >= logged[leader.name], procs.why(
            f"{before} assignments before the take-over: {logged}"
        )
    else:
        assert before == logged[leader.name], procs.why(
            f"{before} assignments before the take-over: {logged}"
        )
    # Waking up with a stale mirror, it may read records of queue keys already taken (by the
    # new leader) and skip them ("cannot move to running"); no other error.
    stale = re.findall(r"ERROR\s+tasklease\.scheduler: skipping queued task: cannot move to running", after)
    errors = re.findall(r"ERROR\s+tasklease\.scheduler.*", after)
    print(f"[measure] stale-mirror skips by the old leader after SIGCONT: {len(stale)}")
    assert len(errors) == len(stale), leader.why(f"the deposed leader failed: {errors}")
    assert leader.alive, leader.why("the deposed leader exited")
    kv = await leader_kv(store, keyspace)
    assert kv is not None and kv.value.decode() == standby.name
    assert kv.create_revision == new.create_revision, "leadership changed again"


# 3. a worker is SIGKILLed mid-task -----------------------------------------------------------
async def test_worker_sigkill_mid_task_reruns_it_on_the_survivor(
    procs: Procs, store: Store, keyspace: Keyspace, client: Client, tmp_path: Path
) -> None:
    duration = 3.0
    await start_workers(procs, store, keyspace, ("worker-1", "worker-2"))
    await start_schedulers(procs, store, keyspace, ("s1",))
    pid_file = tmp_path / "child.pid"
    task = await client.submit("sync_sleep", {"seconds": duration, "pid_file": str(pid_file)})

    async def running() -> Task | None:
        record = await client.get(task.id)
        return record if record.state is TaskState.RUNNING else None

    record = await until(running, within_s=30, what="the task running", log=procs.tails)
    a = procs[record.attempts[0].worker]
    b = procs["worker-2" if a.name == "worker-1" else "worker-1"]

    def child_pid() -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(pid_file.read_text())
        return None

    # the task's code really runs (in A's child process)
    child = int(await until(child_pid, within_s=30, what="the task's child pid", log=a.tail))
    pid_file.unlink()
    assert (await client.get(task.id)).state is TaskState.RUNNING, a.why("finished before the kill")
    assert b.alive

    a.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    final = await finished(client, task.id, procs, within_s=TTL + 3 + duration + 30)
    recovery_s = time.monotonic() - killed_at
    measure(f"worker SIGKILL -> task succeeded elsewhere (TTL {TTL} s, task {duration:g} s)", recovery_s)

    assert final.state is TaskState.SUCCEEDED, procs.why(str(final))
    assert [(x.worker, x.outcome) for x in final.attempts] == [
        (a.name, Outcome.LOST),
        (b.name, Outcome.SUCCEEDED),
    ], procs.why(str(final.attempts))
    assert "vanished" in (final.attempts[0].error or "")
    assert final.result == duration
    assert recovery_s < TTL + 3 + duration, procs.why(f"recovery took {recovery_s:.2f} s")
    assert await a.wait_exit(5) == -signal.SIGKILL
    # A's copy of the attempt died with A
    await until(lambda: not pid_running(child), within_s=5, what=f"A's task child {child} gone", log=a.tail)
    assert b.alive, b.why("the survivor died")


# 4. a task that kills every worker it runs on -------------------------------------------------
async def test_task_that_crashes_its_worker_fails_after_max_losses(
    procs: Procs, store: Store, keyspace: Keyspace, client: Client
) -> None:
    max_workers = 10
    workers = await start_workers(procs, store, keyspace, ("w1", "w2"))
    await start_schedulers(procs, store, keyspace, ("s1",))
    crasher = await client.submit("kill_own_worker", retry=RetryPolicy(max_losses=3))
    # The noop may be assigned to a worker the crasher is about to kill; such a loss is
    # legitimate, so it may lose more attempts than the crasher before it succeeds.
    noop = await client.submit("noop", {"alongside": True}, retry=RetryPolicy(max_losses=10))

    started_at = time.monotonic()
    deadline = started_at + 120
    while True:
        records = [await client.get(crasher.id), await client.get(noop.id)]
        if all(r.state.terminal for r in records):
            break
        assert time.monotonic() < deadline, procs.why(f"not finished within 120 s: {records}")
        if sum(w.alive for w in workers) < 2:
            assert len(workers) < max_workers, procs.why(f"{max_workers} workers started: {records}")
            workers.append(procs.worker(f"w{len(workers) + 1}"))
        await asyncio.sleep(POLL_S)
    measure("3 losses -> failed (TTL 2 s)", time.monotonic() - started_at)

    final = await finished(client, crasher.id, procs, within_s=5)
    assert final.state is TaskState.FAILED, procs.why(str(final))
    assert [x.outcome for x in final.attempts] == [Outcome.LOST] * 3, procs.why(str(final.attempts))
    assert [x.number for x in final.attempts] == [1, 2, 3]
    killed = [x.worker for x in final.attempts]
    assert len(set(killed)) == 3, f"each loss is a different worker: {killed}"
    for name in killed:
        assert await procs[name].wait_exit(5) == -signal.SIGKILL, procs[name].why("not SIGKILLed")
    assert "vanished" in (final.error or "")

    done = await finished(client, noop.id, procs, within_s=5)
    assert done.state is TaskState.SUCCEEDED, procs.why(str(done))
    assert done.result == {"alongside": True}
    assert all(x.outcome is Outcome.LOST for x in done.attempts[:-1])
    print(f"[measure] noop attempts: {[(x.worker, cast(Outcome, x.outcome).value) for x in done.attempts]}")
    assert sum(not w.alive for w in workers) == 3, procs.why("only the crasher's workers died")


# 5. SIGTERM: the leader resigns at once --------------------------------------------------------
async def test_sigterm_on_the_leader_resigns_at_once(
    procs: Procs, store: Store, keyspace: Keyspace, client: Client
) -> None:
    ttl = 10
    await start_workers(procs, store, keyspace, ("w1",))
    leader, (standby,) = await start_schedulers(procs, store, keyspace, lease_ttl=ttl)

    leader.signal(signal.SIGTERM)
    signalled = time.monotonic()
    await wait_leader(store, keyspace, procs, {standby.name}, within_s=ttl + 10)
    takeover_s = time.monotonic() - signalled
    measure(f"leader SIGTERM -> standby leads (TTL {ttl} s)", takeover_s)
    assert takeover_s < 2, procs.why(f"take-over took {takeover_s:.2f} s: the leader did not resign")
    assert await leader.wait_exit(10) == 0, leader.why("the leader did not exit 0")
    assert "Traceback" not in leader.log_text(), leader.why("traceback on SIGTERM")

    # The new leader serves
    task = await client.submit("noop", 5)
    done = await finished(client, task.id, procs, within_s=30)
    assert done.state is TaskState.SUCCEEDED and done.result == 5
    assert [x.worker for x in done.attempts] == ["w1"]


# 6. `tasklease stats --json` on a running system --------------------------------------------------
async def test_stats_json_counts_tasks_per_state_and_queue(
    procs: Procs, store: Store, keyspace: Keyspace, client: Client, tmp_path: Path, tasklease_bin: str
) -> None:
    env = procs.env
    await start_workers(procs, store, keyspace, ("w1", "w2"), "--queues", "alpha,beta")
    await start_schedulers(procs, store, keyspace, ("s1",))
    gate = tmp_path / "gate"

    async def stats() -> dict[str, Any]:
        out = await run_cli(tasklease_bin, env, "stats", "--json")
        assert out.returncode == 0, procs.why(f"stats failed: {out.stderr}")
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    # 3 tasks that run until the gate opens hold the system busy
    gated = (
        await client.submit_many(
            TaskSpec("wait_for_file", {"path": str(gate)}, queue="beta") for _ in range(3)
        )
    ).tasks

    async def all_running() -> bool:
        states = [(await client.get(t.id)).state for t in gated]
        return all(s is TaskState.RUNNING for s in states)

    await until(all_running, within_s=30, what="the gated tasks running", log=procs.tails)
    specs = [TaskSpec("noop", {"i": i}, queue="alpha") for i in range(40)]
    specs += [TaskSpec("fail", {"message": f"no {i}"}, queue="alpha") for i in range(5)]
    specs += [TaskSpec("sleep", {"seconds": 0.05}, queue="beta") for _ in range(20)]
    specs += [TaskSpec("noop", None, queue="gamma") for _ in range(2)]  # no worker serves gamma
    batch = (await client.submit_many(specs)).tasks
    gamma = [t for t in batch if t.queue == "gamma"]
    await client.cancel(gamma[0].id)
    await wait_all(client, [t.id for t in batch if t.queue != "gamma"], procs, within_s=60)

    zero = {s.value: 0 for s in TaskState}
    expected = {
        "alpha": {**zero, "succeeded": 40, "failed": 5},
        "beta": {**zero, "running": 3, "succeeded": 20},
        "gamma": {**zero, "queued": 1, "cancelled": 1},
    }
    live = await stats()
    assert live["queues"] == expected, procs.why(f"while running: {live}")
    assert live["states"] == {s: sum(q[s] for q in expected.values()) for s in zero}
    assert live["total"] == 3 + len(specs)
    assert live["workers"]["live"] == 2
    assert live["workers"]["capacity"] == 8

    gate.touch()
    await wait_all(client, [t.id for t in gated], procs, within_s=30)
    expected["beta"] = {**zero, "succeeded": 23}
    final = await stats()
    assert final["queues"] == expected, procs.why(f"when done: {final}")
    assert final["states"] == {**zero, "succeeded": 63, "failed": 5, "queued": 1, "cancelled": 1}
    assert final["total"] == 70
    assert final["throughput"]["finished"] >= 69


# 5. realistic payload sizes: a worker SIGKILLed mid-task ------------------------------------
async def test_worker_sigkill_with_payloads_from_0_bytes_to_the_maximum_reruns_every_task(
    procs: Procs, store: Store, keyspace: Keyspace, client: Client
) -> None:
    # Given five tasks running on worker A, with payloads of 0 B, 4.5 KB, 64 KB, 200 KB and 512 KiB
    (a,) = await start_workers(procs, store, keyspace, ("worker-a",), concurrency=5)
    await start_schedulers(procs, store, keyspace, ("s1",))
    sizes = [0, 4500, 64 * 1024, 200 * 1024, codec.MAX_PAYLOAD_BYTES]
    tasks = []
    for size in sizes:
        base = len(json.dumps({"pad": "", "seconds": 3.0}, separators=(",", ":")))
        pad = "x" * max(0, size - base)
        tasks.append(await client.submit("pad_sleep", {"pad": pad, "seconds": 3.0}))

    async def all_running() -> bool:
        return all([(await client.get(t.id)).state is TaskState.RUNNING for t in tasks])

    await until(all_running, within_s=30, what="five tasks running on A", log=procs.tails)
    (b,) = await start_workers(procs, store, keyspace, ("worker-b",), concurrency=5)

    # When A is SIGKILLed
    a.signal(signal.SIGKILL)

    # Then every task is recovered and succeeds on B, its payload intact
    for task, size in zip(tasks, sizes, strict=True):
        final = await finished(client, task.id, procs, within_s=TTL + 30)
        assert final.state is TaskState.SUCCEEDED, procs.why(str(final.error))
        assert [(x.worker, x.outcome) for x in final.attempts] == [
            (a.name, Outcome.LOST),
            (b.name, Outcome.SUCCEEDED),
        ], procs.why(str(final.attempts))
        assert final.payload == task.payload
        assert final.result == len(task.payload["pad"])
        assert size == 0 or abs(len(codec.encode_json(final.payload)) - size) <= 16


# 6. a dead worker's lease kept alive from outside ---------------------------------------------
async def test_a_lease_kept_alive_from_outside_does_not_keep_a_dead_worker_eligible(
    procs: Procs, store: Store, keyspace: Keyspace, client: Client
) -> None:
    # Given a worker A running a task, a survivor B, and a leader
    a_proc = procs.worker("worker-a", concurrency=1)
    a = await wait_registered(store, keyspace, a_proc)
    await start_schedulers(procs, store, keyspace, ("s1",))
    task = await client.submit("sync_sleep", {"seconds": 8})

    async def running_on_a() -> bool:
        record = await client.get(task.id)
        return record.state is TaskState.RUNNING and record.attempts[-1].worker == "worker-a"

    await until(running_on_a, within_s=30, what="the task running on A", log=procs.tails)
    (b_proc,) = await start_workers(procs, store, keyspace, ("worker-b",), concurrency=4)

    # When A is SIGKILLed and someone else keeps its lease alive (as another namespace's
    # user could, etcd < 3.5.9)
    a_proc.signal(signal.SIGKILL)
    lease = int(a["lease"])

    async def keep_alive() -> None:
        while True:
            await store.keepalive(lease)
            await asyncio.sleep(0.5)

    keeper = asyncio.create_task(keep_alive())
    try:
        # Then the scheduler treats A as dead after its TTL (+ margin) without heartbeats:
        # the task is recorded lost and runs on B; new tasks go to B only
        final = await finished(client, task.id, procs, within_s=TTL + 2 + 8 + 30)
        later = [await client.submit("noop", {"i": i}) for i in range(10)]
        finals = [await finished(client, t.id, procs, within_s=30) for t in later]
        node_a, _ = await store.get(keyspace.node("worker-a"))
    finally:
        keeper.cancel()
    assert node_a is not None, "the lease kept alive from outside keeps A's node key"
    assert final.state is TaskState.SUCCEEDED, procs.why(str(final))
    assert [(x.worker, x.outcome) for x in final.attempts] == [
        ("worker-a", Outcome.LOST),
        (b_proc.name, Outcome.SUCCEEDED),
    ], procs.why(str(final.attempts))
    assert "stopped heartbeating" in (final.attempts[0].error or "")
    assert {f.attempts[-1].worker for f in finals} == {"worker-b"}
