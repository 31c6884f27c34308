"""Real `tasklease worker` processes against the real etcd, really signalled.

Each test starts worker processes from the venv's `tasklease` binary, creates
assignments the way the scheduler will (`queue.assign_next` with the worker's
id and lease from its node record), and checks what etcd and the OS show:
node records, task records, exit codes, and whether child processes are gone.

Every wait has a deadline; etcd is polled at ~50 ms. Worker output goes to a
log file in tmp_path and its tail is part of every assertion message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

from faults.procs import POLL_S, pid_running, until
from tasklease import __version__, codec
from tasklease.client import Client
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Outcome, Task, TaskState
from tasklease.nodes import list_nodes
from tasklease.queue import assign_next
from tasklease.retry import RetryPolicy
from tasklease.store import Store

TESTS_DIR = Path(__file__).resolve().parents[1]
REGISTER_TIMEOUT_S = 10.0


# helpers ---------------------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerProc:
    """One `tasklease worker` process, its log file, and its node record."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, log_file: IO[bytes]) -> None:
        self.proc = proc
        self.log_path = log_path
        self._log_file = log_file
        self.node: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def id(self) -> str:
        return str(self.node["id"])

    @property
    def lease(self) -> int:
        return int(self.node["lease"])

    def tail(self, lines: int = 40) -> str:
        self._log_file.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def why(self, message: str) -> str:
        """An assertion message with the worker's exit status and log tail."""
        return f"{message} (worker pid {self.pid}, exit code {self.proc.poll()})\n--- worker log tail ---\n{self.tail()}"

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait_registered(self, store: Store, keys: Keyspace) -> dict[str, Any]:
        async def registered() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(self.why("worker exited before registering"))
            for node in await list_nodes(store, keys):
                if node.pid == self.pid:
                    return node.to_json()
            return None

        self.node = await until(
            registered, within_s=REGISTER_TIMEOUT_S, what="the node record", log=self.tail
        )
        return self.node

    async def wait_exit(self, within_s: float) -> int:
        await until(
            lambda: self.proc.poll() is not None, within_s=within_s, what="the worker to exit", log=self.tail
        )
        return self.proc.returncode

    def cleanup(self) -> None:
        """Kill the worker and whatever it started, reap it, close its log."""
        try:
            descendants: list[psutil.Process] = []
            if self.proc.poll() is None:
                with contextlib.suppress(psutil.Error):
                    descendants = psutil.Process(self.pid).children(recursive=True)
                self.proc.kill()
            for child in descendants:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            self.proc.wait(timeout=10)
        finally:
            self._log_file.close()


StartWorker = Callable[..., WorkerProc]


@pytest.fixture
def worker_env(cli_env: dict[str, str]) -> dict[str, str]:
    env = dict(cli_env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)
    env["TASKLEASE_LOG_LEVEL"] = "info"
    return env


@pytest.fixture
def start_worker(tasklease_bin: str, worker_env: dict[str, str], tmp_path: Path) -> Iterator[StartWorker]:
    """Start worker processes; teardown kills leftovers (and their children) and closes logs."""
    started: list[WorkerProc] = []

    def start(*args: str, samples: bool = True) -> WorkerProc:
        n = len(started)
        log_path = tmp_path / f"worker-{n}.log"
        log_file = log_path.open("wb")
        argv = [tasklease_bin, "worker", "--log-format", "text"]
        if samples:
            argv += ["--import", "sample_tasks"]
        argv += list(args)
        try:
            proc = subprocess.Popen(
                argv,
                env=worker_env,
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            log_file.close()
            raise
        worker = WorkerProc(proc, log_path, log_file)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.cleanup()


async def run_cli(
    tasklease_bin: str, env: dict[str, str], *args: str, within_s: float = 30
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [tasklease_bin, *args], env=env, capture_output=True, text=True, timeout=within_s
    )


async def assign(store: Store, keys: Keyspace, worker: WorkerProc, queue: str = "default") -> Task:
    """Assign the head of ``queue`` to ``worker``, as the scheduler will."""
    running = await assign_next(store, keys, queue, worker.id, worker.lease, time.time())
    assert running is not None, worker.why(f"nothing to assign on queue {queue}")
    assert running.state is TaskState.RUNNING
    return running


async def finished(client: Client, task_id: str, worker: WorkerProc, within_s: float = 15) -> Task:
    try:
        return await client.wait(task_id, timeout_s=within_s)
    except Exception as exc:
        record = await client.get(task_id)
        raise AssertionError(worker.why(f"task did not finish: {exc}; record: {record}")) from exc


async def read_pid(path: Path, worker: WorkerProc, within_s: float = 10) -> int:
    def probe() -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text())
        return None

    return int(await until(probe, within_s=within_s, what=f"the child's pid in {path}", log=worker.tail))


async def gone(pid: int, worker: WorkerProc, within_s: float = 5) -> None:
    await until(lambda: not pid_alive(pid), within_s=within_s, what=f"pid {pid} to be gone", log=worker.tail)


async def node_kv(store: Store, keys: Keyspace, worker: WorkerProc) -> Any:
    kv, _ = await store.get(keys.node(worker.id))
    return kv


async def node_gone(store: Store, keys: Keyspace, worker: WorkerProc) -> bool:
    return await node_kv(store, keys, worker) is None


async def queue_keys(store: Store, keys: Keyspace, queue: str = "default") -> list[str]:
    prefix = keys.queue(queue)
    result = await store.range(prefix, prefix_end(prefix))
    return [kv.key for kv in result.kvs]


# 1. registration and expiry --------------------------------------------------------------
async def test_registers_full_node_record_and_vanishes_after_sigkill(start_worker, store, keyspace):
    # Given a worker with every node option set
    before = time.time()
    w = start_worker(
        "--lease-ttl", "2", "--heartbeat", "0.5", "--queues", "a,b", "--weight", "2",
        "--tags", "zone=x,rack=1", "--concurrency", "3",
        samples=False,
    )  # fmt: skip
    node = await w.wait_registered(store, keyspace)
    # Then its node record describes it
    assert node["pid"] == w.pid
    assert isinstance(node["id"], str)
    assert str(w.pid) in node["id"]
    assert node["host"] == socket.gethostname()
    assert node["queues"] == ["a", "b"]
    assert node["capacity"] == 3
    assert node["running"] == 0
    assert isinstance(node["cpu"], int | float)
    assert isinstance(node["memory"], int | float)
    assert 0 <= node["memory"] <= 100
    assert node["weight"] == 2
    assert node["tags"] == {"zone": "x", "rack": "1"}
    assert node["version"] == __version__
    assert before - 1 <= node["started_at"] <= time.time()
    kv = await node_kv(store, keyspace, w)
    assert node["lease"] != 0
    assert kv.lease == node["lease"], "the node key is bound to the lease it publishes"

    # When it is SIGKILLed (no chance to revoke its lease)
    w.signal(signal.SIGKILL)
    killed_at = time.monotonic()

    # Then etcd expires the lease and the record is gone within TTL + 1 s
    await until(
        lambda: node_gone(store, keyspace, w), within_s=6, what="the node record to expire", log=w.tail
    )
    elapsed = time.monotonic() - killed_at
    assert elapsed < 3.5, w.why(f"node record outlived the kill by {elapsed:.2f} s (TTL 2 s)")
    assert await w.wait_exit(5) == -signal.SIGKILL


# 2. `tasklease nodes --json` -------------------------------------------------------------
async def test_nodes_json_lists_the_worker_named_in_attempts(
    start_worker, store, keyspace, client, tasklease_bin, worker_env
):
    w = start_worker()
    await w.wait_registered(store, keyspace)
    task = await client.submit("noop", {"x": 1})
    await assign(store, keyspace, w)
    done = await finished(client, task.id, w)
    assert done.state is TaskState.SUCCEEDED, w.why(str(done))

    status = await run_cli(tasklease_bin, worker_env, "status", task.id, "--json")
    assert status.returncode == 0, status.stderr
    attempts = json.loads(status.stdout)["attempts"]
    assert len(attempts) == 1
    attempt_worker = attempts[0]["worker"]

    nodes = await run_cli(tasklease_bin, worker_env, "nodes", "--json")
    assert nodes.returncode == 0, nodes.stderr
    listed = json.loads(nodes.stdout)
    assert [n["id"] for n in listed] == [attempt_worker]
    assert listed[0]["pid"] == w.pid


# 3. a CPU-bound task does not starve the keep-alive --------------------------------------
async def test_cpu_bound_task_keeps_the_lease(start_worker, store, keyspace, client):
    w = start_worker("--lease-ttl", "2", "--heartbeat", "0.5")
    await w.wait_registered(store, keyspace)
    first = await node_kv(store, keyspace, w)
    assert first is not None
    lease = codec.decode_obj(first.key, first.value)["lease"]
    assert lease == first.lease == w.lease

    task = await client.submit("spin", {"seconds": 5})
    await assign(store, keyspace, w)
    # Throughout the run (longer than the TTL) the node key is the same key under the same lease
    wait = asyncio.create_task(client.wait(task.id, timeout_s=20))
    checks = 0
    try:
        while not wait.done():
            kv = await node_kv(store, keyspace, w)
            assert kv is not None, w.why("node record vanished during a CPU-bound task")
            assert kv.create_revision == first.create_revision, w.why("node key was re-created")
            assert kv.lease == lease
            assert codec.decode_obj(kv.key, kv.value)["lease"] == lease, w.why("lease changed")
            checks += 1
            await asyncio.wait({wait}, timeout=POLL_S)
        done = wait.result()
    finally:
        wait.cancel()
        with contextlib.suppress(BaseException):
            await wait
    assert done.state is TaskState.SUCCEEDED, w.why(str(done))
    assert done.result > 0
    assert len(done.attempts) == 1
    assert checks > 20
    last = await node_kv(store, keyspace, w)
    assert last.create_revision == first.create_revision
    assert codec.decode_obj(last.key, last.value)["lease"] == lease
    assert last.mod_revision > first.mod_revision, "heartbeats re-put the record"


# 4. SIGTERM drains --------------------------------------------------------------------------
async def test_sigterm_lets_the_running_task_finish_then_revokes(
    start_worker, store, keyspace, client, tmp_path
):
    w = start_worker("--grace", "10", "--lease-ttl", "30", "--heartbeat", "1")
    await w.wait_registered(store, keyspace)
    pid_file = tmp_path / "child.pid"
    task = await client.submit("sync_sleep", {"seconds": 1.5, "pid_file": str(pid_file)})
    await assign(store, keyspace, w)
    child = await read_pid(pid_file, w)
    assert (await client.get(task.id)).state is TaskState.RUNNING

    w.signal(signal.SIGTERM)
    signalled = time.monotonic()

    # While it drains, the node record says so (the scheduler assigns it nothing more)
    async def draining() -> bool:
        kv = await node_kv(store, keyspace, w)
        return kv is None or codec.decode_obj(kv.key, kv.value).get("draining") is True

    await until(draining, within_s=5, what="draining=true in the node record", log=w.tail)
    assert await node_kv(store, keyspace, w) is not None, w.why("node record vanished before the task ended")

    done = await finished(client, task.id, w)
    assert done.state is TaskState.SUCCEEDED, w.why(str(done))
    assert done.result == 1.5
    assert done.attempts[-1].outcome is Outcome.SUCCEEDED
    code = await w.wait_exit(8)
    exited = time.monotonic()
    assert code == 0, w.why("worker did not exit 0 after draining")
    assert exited - signalled < 8
    # The lease was revoked: the record is gone now, not after the 30 s TTL
    await until(lambda: node_gone(store, keyspace, w), within_s=2, what="node record gone", log=w.tail)
    assert time.monotonic() - exited < 2
    await gone(child, w)


# 5. SIGTERM with a short grace hands the task back ---------------------------------------
async def test_sigterm_after_grace_hands_the_task_back(start_worker, store, keyspace, client, tmp_path):
    w = start_worker("--grace", "0.5", "--lease-ttl", "10", "--heartbeat", "1")
    await w.wait_registered(store, keyspace)
    pid_file = tmp_path / "child.pid"
    task = await client.submit("sync_sleep", {"seconds": 30, "pid_file": str(pid_file)})
    await assign(store, keyspace, w)
    child = await read_pid(pid_file, w)
    assert await queue_keys(store, keyspace) == []

    w.signal(signal.SIGTERM)

    async def requeued() -> Task | None:
        record = await client.get(task.id)
        return record if record.state is TaskState.QUEUED else None

    record = await until(requeued, within_s=8, what="the task back in its queue", log=w.tail)
    assert len(record.attempts) == 1
    assert record.attempts[0].outcome is Outcome.HANDED_BACK, w.why(str(record))
    assert [keyspace.parse_queue_entry(k).task_id for k in await queue_keys(store, keyspace)] == [task.id]
    running_kv, _ = await store.get(keyspace.running_entry(task.id))
    assert running_kv is None
    assert await w.wait_exit(10) == 0, w.why("worker did not exit 0")
    await gone(child, w, within_s=3)
    assert await node_kv(store, keyspace, w) is None


# 6. a second signal stops at once ----------------------------------------------------------
async def test_second_signal_stops_at_once(start_worker, store, keyspace, client, tmp_path):
    w = start_worker("--grace", "30", "--lease-ttl", "10", "--heartbeat", "1")
    await w.wait_registered(store, keyspace)
    pid_file = tmp_path / "child.pid"
    task = await client.submit("sync_sleep", {"seconds": 30, "pid_file": str(pid_file)})
    await assign(store, keyspace, w)
    child = await read_pid(pid_file, w)

    w.signal(signal.SIGTERM)

    # The first signal drains (the node record says so) rather than exiting
    async def draining() -> bool:
        kv = await node_kv(store, keyspace, w)
        return kv is not None and codec.decode_obj(kv.key, kv.value).get("draining") is True

    await until(draining, within_s=5, what="draining=true in the node record", log=w.tail)
    assert w.proc.poll() is None, w.why("the first SIGTERM should drain, not exit")
    w.signal(signal.SIGINT)
    interrupted = time.monotonic()
    code = await w.wait_exit(10)
    assert time.monotonic() - interrupted < 5, w.why("hard stop took too long")
    assert code == 0, w.why("unexpected exit code")
    await gone(child, w, within_s=3)
    # Nothing was recorded for the task; its assignment vanished with the revoked lease
    assert await node_kv(store, keyspace, w) is None
    kv, _ = await store.get(keyspace.assignment(w.id, task.id))
    assert kv is None
    assert (await client.get(task.id)).state is TaskState.RUNNING  # left for recovery


# 7. cancel from the CLI ---------------------------------------------------------------------
async def test_cli_cancel_stops_the_running_task(
    start_worker, store, keyspace, client, tmp_path, tasklease_bin, worker_env
):
    w = start_worker()
    await w.wait_registered(store, keyspace)
    pid_file = tmp_path / "child.pid"
    task = await client.submit("sync_sleep", {"seconds": 30, "pid_file": str(pid_file)})
    await assign(store, keyspace, w)
    child = await read_pid(pid_file, w)

    out = await run_cli(tasklease_bin, worker_env, "cancel", task.id)
    assert out.returncode == 0, out.stderr

    done = await finished(client, task.id, w, within_s=5)
    assert done.state is TaskState.CANCELLED
    assert done.attempts[-1].outcome is Outcome.CANCELLED
    await gone(child, w, within_s=5)
    assert w.proc.poll() is None, w.why("worker died")

    # The same worker then runs another task
    follow = await client.submit("noop", {"after": "cancel"})
    await assign(store, keyspace, w)
    done2 = await finished(client, follow.id, w)
    assert done2.state is TaskState.SUCCEEDED, w.why(str(done2))
    assert done2.result == {"after": "cancel"}
    assert done2.attempts[0].worker == w.id
    # The cancelled task's record was not overwritten by the worker
    assert (await client.get(task.id)).state is TaskState.CANCELLED


# 8. timeouts kill for real ------------------------------------------------------------------
async def test_timeouts_kill_shell_and_python_children(start_worker, store, keyspace, client, tmp_path):
    w = start_worker("--allow", "shell")
    await w.wait_registered(store, keyspace)
    shell_pid_file = tmp_path / "shell.pid"
    py_pid_file = tmp_path / "py.pid"
    shell = await client.submit(
        "shell", {"argv": ["sh", "-c", f"echo $$ > {shell_pid_file}; exec sleep 30"]}, timeout_s=1
    )
    # 3 s: the timeout also covers starting the child process, which is slow on a loaded machine
    py = await client.submit("sync_sleep", {"seconds": 30, "pid_file": str(py_pid_file)}, timeout_s=3)
    await assign(store, keyspace, w)
    await assign(store, keyspace, w)
    shell_pid = await read_pid(shell_pid_file, w)
    py_pid = await read_pid(py_pid_file, w)

    for task in (shell, py):
        done = await finished(client, task.id, w, within_s=10)
        assert done.state is TaskState.FAILED, w.why(str(done))
        assert len(done.attempts) == 1
        assert done.attempts[0].outcome is Outcome.TIMEOUT, w.why(str(done))
        assert "timed out" in (done.error or "")
    await gone(shell_pid, w, within_s=3)
    await gone(py_pid, w, within_s=3)
    assert w.proc.poll() is None


# 9. --allow enforcement ---------------------------------------------------------------------
async def test_shell_without_allow_is_handed_back_naming_the_types(start_worker, store, keyspace, client):
    # A worker without --allow shell that is assigned a shell task (the scheduler saw
    # an earlier node record) does not run it, and does not fail it: it hands it back.
    w = start_worker()
    await w.wait_registered(store, keyspace)
    task = await client.submit("shell", {"argv": ["true"]}, retry=RetryPolicy(max_retries=3, backoff_s=0))
    await assign(store, keyspace, w)

    async def requeued() -> Task | None:
        record = await client.get(task.id)
        return record if record.state is TaskState.QUEUED else None

    done = await until(requeued, within_s=15, what="the task handed back", log=w.tail)
    assert len(done.attempts) == 1
    assert done.attempts[0].outcome is Outcome.HANDED_BACK, w.why(str(done))
    error = done.attempts[0].error or ""
    assert "'shell'" in error
    for registered in ("noop", "sleep", "sync_sleep", "spin"):
        assert registered in error, error
    assert [keyspace.parse_queue_entry(k).task_id for k in await queue_keys(store, keyspace)] == [task.id]
    assert done.seq == task.seq, "it keeps its place"
    assert not (await store.range(keyspace.delayed, prefix_end(keyspace.delayed))).kvs
    assert w.proc.poll() is None


async def test_allow_bogus_is_a_usage_error(tasklease_bin, worker_env):
    out = await run_cli(tasklease_bin, worker_env, "worker", "--allow", "bogus", within_s=30)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("tasklease: error:")
    assert "bogus" in lines[0]
    assert "Traceback" not in out.stderr


# 10. a crashing child ----------------------------------------------------------------------
async def test_crashing_child_fails_the_attempt_not_the_worker(start_worker, store, keyspace, client):
    w = start_worker()
    await w.wait_registered(store, keyspace)
    task = await client.submit("crash")
    await assign(store, keyspace, w)
    done = await finished(client, task.id, w)
    assert done.state is TaskState.FAILED, w.why(str(done))
    assert done.attempts[0].outcome is Outcome.FAILED
    assert "child process" in (done.error or ""), done.error
    assert w.proc.poll() is None, w.why("the worker died with its child")

    follow = await client.submit("noop", 7)
    await assign(store, keyspace, w)
    done2 = await finished(client, follow.id, w)
    assert done2.state is TaskState.SUCCEEDED, w.why(str(done2))
    assert done2.result == 7


# a hard-killed worker must not leave its task's child running (executors/orphan.py) ------
async def test_sigkilled_worker_leaves_no_task_child_running(start_worker, store, keyspace, client, tmp_path):
    w = start_worker("--lease-ttl", "2", "--heartbeat", "0.5")
    await w.wait_registered(store, keyspace)
    pid_file = tmp_path / "child.pid"
    await client.submit("sync_sleep", {"seconds": 30, "pid_file": str(pid_file)})
    await assign(store, keyspace, w)
    child = await read_pid(pid_file, w)
    try:
        w.signal(signal.SIGKILL)
        await w.wait_exit(5)
        # The lease expires after 2 s; by then the attempt's code should have been stopped too.
        await until(lambda: not pid_running(child), within_s=3, what=f"orphaned task child {child} to stop")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
