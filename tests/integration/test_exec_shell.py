"""The ``shell`` built-in through a worker in this process: timeouts that end, stdin that
does not deadlock, no file descriptor leaked, nothing left running.

Each task is assigned by hand (``queue.assign_next``, as the scheduler does).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faults.procs import pid_running, until
from tasklease.client import Client
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace
from tasklease.models import Outcome, Task, TaskState
from tasklease.queue import assign_next
from tasklease.store import Store
from tasklease.worker import Worker, WorkerConfig


@pytest.fixture
async def worker(store: Store, keyspace: Keyspace) -> AsyncIterator[Worker]:
    config = WorkerConfig(worker_id="wsh", lease_ttl_s=3, heartbeat_s=0.5, grace_s=1.0)
    w = Worker(store, keyspace, builtin_registry(frozenset({"shell"})), config)
    await w.start()
    yield w
    await w.kill()


async def run_shell(
    client: Client, store: Store, keyspace: Keyspace, worker: Worker, payload: dict, timeout_s: float = 30
) -> Task:
    task = await client.submit("shell", payload, timeout_s=timeout_s)
    assigned = await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    assert assigned is not None and assigned.id == task.id
    return await client.wait(task.id, timeout_s=timeout_s + 20)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_yes_times_out_and_leaks_no_file_descriptor(client, store, keyspace, worker):
    # A warm-up run opens whatever the process keeps open for good (the child watcher...)
    warm = await run_shell(client, store, keyspace, worker, {"argv": ["true"]})
    assert warm.state is TaskState.SUCCEEDED, warm
    before = open_fds()
    # `yes` fills its stdout pipe at once; at its timeout the worker used to wait for it
    # forever (`await proc.wait()` with the full pipe unread), one pipe leaked per task.
    tasks = [await client.submit("shell", {"argv": ["yes"]}, timeout_s=1) for _ in range(4)]
    for _ in tasks:
        await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    for task in tasks:
        final = await client.wait(task.id, timeout_s=30)
        assert final.state is TaskState.FAILED, final
        assert [a.outcome for a in final.attempts] == [Outcome.TIMEOUT]
        assert "timed out after 1 s" in (final.error or "")
    await until(
        lambda: open_fds() <= before, within_s=10, what=f"open fds back to {before} (now {open_fds()})"
    )
    assert worker.running == 0


async def test_a_400_kb_stdin_is_written_while_the_output_is_read(client, store, keyspace, worker):
    # `cat` echoes what it reads: with the whole stdin written before stdout was read,
    # both pipes filled up and neither side moved again.
    final = await run_shell(client, store, keyspace, worker, {"argv": ["cat"], "stdin": "x" * 400_000})
    assert final.state is TaskState.SUCCEEDED, final
    assert final.result["exit_code"] == 0
    assert final.result["stdout"] == "x" * 64 * 1024
    assert final.result["truncated"] is True
    counted = await run_shell(client, store, keyspace, worker, {"argv": ["wc", "-c"], "stdin": "y" * 400_000})
    assert counted.result["stdout"].strip() == "400000"


async def test_stdin_the_command_does_not_read_is_not_an_error(client, store, keyspace, worker):
    final = await run_shell(client, store, keyspace, worker, {"argv": ["true"], "stdin": "z" * 400_000})
    assert final.state is TaskState.SUCCEEDED, final
    assert final.result == {"exit_code": 0, "stdout": "", "stderr": "", "truncated": False}


async def test_background_jobs_left_by_the_command_are_killed_when_it_exits(client, store, keyspace, worker):
    # The background `sleep` holds stdout open: the attempt used to last until its timeout.
    final = await run_shell(
        client, store, keyspace, worker, {"argv": ["sh", "-c", "sleep 60 & echo $!"]}, timeout_s=30
    )
    assert final.state is TaskState.SUCCEEDED, final
    assert final.attempts[0].outcome is Outcome.SUCCEEDED
    left = int(final.result["stdout"])
    await until(lambda: not pid_running(left), within_s=5, what=f"the background sleep {left} to be gone")


async def test_exit_status_signals_and_exec_errors(client, store, keyspace, worker, tmp_path: Path):
    signalled = await run_shell(
        client, store, keyspace, worker, {"argv": ["sh", "-c", "kill -TERM $$"], "check": False}
    )
    assert signalled.state is TaskState.SUCCEEDED, signalled
    assert signalled.result["exit_code"] == -15
    code = await run_shell(client, store, keyspace, worker, {"argv": ["sh", "-c", "exit 7"], "check": False})
    assert code.result["exit_code"] == 7
    # A program that exists but cannot be executed fails at once, naming it
    bad = tmp_path / "not-a-program"
    bad.write_bytes(b"\x7fELF garbage")
    bad.chmod(0o755)
    final = await run_shell(client, store, keyspace, worker, {"argv": [str(bad)]})
    assert final.state is TaskState.FAILED, final
    assert len(final.attempts) == 1
    assert "cannot run" in (final.error or "") and "not-a-program" in (final.error or ""), final.error
