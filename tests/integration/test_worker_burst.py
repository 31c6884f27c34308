"""Burst mode: a worker that runs until nothing is left for it, then drains and exits.

In process: a burst worker and a real scheduler (the ``cluster`` fixture) on a
real etcd. One test runs the ``tasklease worker --burst`` command as a process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

from faults.procs import until
from tasklease.client import Client, TaskSpec
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Outcome, TaskState
from tasklease.store import Store
from tasklease.worker import WorkerConfig

TESTS_DIR = Path(__file__).resolve().parents[1]
PAD = "p" * 4500  # a realistic payload: 4.5 KB


async def submit(client: Client, count: int, **spec) -> list[str]:
    ids: list[str] = []
    specs = [TaskSpec("pad_echo", {"pad": PAD, "n": n}, **spec) for n in range(count)]
    for start in range(0, count, 64):
        result = await client.submit_many(specs[start : start + 64])
        ids += [t.id for t in result.tasks]
    return ids


async def queued_keys(store: Store, keyspace: Keyspace) -> int:
    return (await store.range(keyspace.queues, prefix_end(keyspace.queues), count_only=True)).count


def test_burst_is_a_boolean_option():
    assert WorkerConfig().burst is False
    assert WorkerConfig(burst=True).burst is True


async def test_a_burst_worker_runs_every_queued_task_then_stops_by_itself(cluster, client, store, keyspace):
    # Given 200 queued tasks of 4.5 KB, a scheduler, and a burst worker
    ids = await submit(client, 200)
    await cluster.scheduler()
    worker = await cluster.worker(burst=True, concurrency=8)

    # When the worker has run them, its wait ends by itself (nobody stops it)
    await asyncio.wait_for(worker.wait_stopped(), 90)

    # Then every task succeeded, once
    finals = [await client.get(i) for i in ids]
    assert Counter(f.state for f in finals) == {TaskState.SUCCEEDED: 200}
    assert all([a.outcome for a in f.attempts] == [Outcome.SUCCEEDED] for f in finals)
    assert {f.attempts[0].worker for f in finals} == {worker.id}
    assert sorted(f.result["n"] for f in finals if isinstance(f.result, dict)) == list(range(200))
    # and it is gone: its node record went with its lease
    assert (await store.get(keyspace.node(worker.id)))[0] is None
    assert worker.completed == 200


async def test_a_burst_worker_on_an_empty_queue_exits_at_once(cluster, store, keyspace):
    started = time.monotonic()
    worker = await cluster.worker(burst=True)
    await asyncio.wait_for(worker.wait_stopped(), 10)
    assert time.monotonic() - started < 5
    assert (await store.get(keyspace.node(worker.id)))[0] is None


async def test_tasks_it_may_not_run_do_not_keep_a_burst_worker_alive(cluster, client, store, keyspace):
    # Given queued tasks of a type it does not run, tasks that need a tag it lacks,
    # and tasks in a queue it does not serve
    await submit(client, 5)  # pad_echo: not a built-in
    await client.submit("noop", 1, requires={"zone": "eu"})
    await client.submit("noop", 2, queue="other")
    # and a burst worker that runs the built-ins only, in the default queue, without tags
    worker = await cluster.worker(burst=True, types=builtin_registry())

    # Then it exits at once, and the tasks wait for another worker
    await asyncio.wait_for(worker.wait_stopped(), 10)
    assert await queued_keys(store, keyspace) == 7


async def test_a_burst_worker_waits_for_a_task_it_may_run_that_is_queued(cluster, client, store, keyspace):
    # Given a burst worker with a task it may run queued, and no scheduler yet
    (task_id,) = await submit(client, 1)
    worker = await cluster.worker(burst=True)
    await asyncio.sleep(1.5)  # longer than its re-check interval
    assert not worker._stopped.is_set(), "it left a task it may run behind"

    # When a scheduler comes, the task runs, and then the worker stops by itself
    await cluster.scheduler()
    await asyncio.wait_for(worker.wait_stopped(), 30)
    assert (await client.get(task_id)).state is TaskState.SUCCEEDED


async def test_the_worker_command_with_burst_exits_0_once_the_tasks_are_done(
    cluster, client, cli_env, tasklease_bin, tmp_path
):
    # Given queued tasks and a scheduler
    ids = await submit(client, 20)
    await cluster.scheduler()
    env = dict(cli_env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)
    log_path = tmp_path / "worker.log"

    # When `tasklease worker --burst` runs
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [tasklease_bin, "worker", "--burst", "--import", "sample_tasks", "--log-format", "text"],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            await until(
                lambda: proc.poll() is not None,
                within_s=60,
                what="the burst worker to exit",
                log=log_path.read_text,
            )
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)

    # Then it exited 0 by itself, after every task succeeded
    log_text = log_path.read_text(errors="replace")
    assert proc.returncode == 0, log_text
    assert "burst: no task left" in log_text
    assert {(await client.get(i)).state for i in ids} == {TaskState.SUCCEEDED}
