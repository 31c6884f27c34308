"""Real `tasklease worker --http` and `tasklease scheduler --http` processes, scraped and killed.

1. A worker and a scheduler serve ``/metrics`` and ``/readyz``; the worker's
   counters match the tasks it ran; SIGTERM still exits 0.
2. ``tasklease health`` exit codes: 0 for a 200, 1 for a 404, a 503 or no
   answer, 2 for a bad URL; ``TASKLEASE_HTTP`` is its default URL.
3. Leader-only gauges: of two schedulers exactly one (the leader) exports
   the cluster gauges (``tasklease_queue_depth``, ``tasklease_workers``...),
   and once it is SIGKILLed the other one does.

Processes come from the venv (procs.py); their log tails are part of every
assertion message. Every wait has a deadline; scrapes use the same client as
``tasklease health`` (health.check), from a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from faults.procs import Proc, Procs, process_env, until
from tasklease.client import Client, TaskSpec
from tasklease.etcd_server import free_port
from tasklease.health import check
from tasklease.keys import Keyspace
from tasklease.models import TaskState
from tasklease.store import Store, StoreConfig

pytestmark = pytest.mark.timeout(240)

START_S = 30.0  # a process start (Python, gRPC, imports) on a loaded 2-core machine
TTL = 2


@pytest.fixture
def procs(tasklease_bin: str, cli_env: dict[str, str], tmp_path: Path) -> Iterator[Procs]:
    group = Procs(tasklease_bin, process_env(cli_env), tmp_path)
    try:
        yield group
    finally:
        group.cleanup()


async def scrape(port: int) -> dict[str, Any] | None:
    """The process's metric families by name, or None if it does not answer (yet)."""
    try:
        code, body = await asyncio.to_thread(check, f"http://127.0.0.1:{port}/metrics", timeout_s=10)
    except OSError:
        return None
    assert code == 200, body
    return {f.name: f for f in text_string_to_metric_families(body + "\n")}


async def readyz(port: int) -> tuple[int, dict[str, Any]] | None:
    try:
        code, body = await asyncio.to_thread(check, f"http://127.0.0.1:{port}/readyz", timeout_s=10)
    except OSError:
        return None
    return code, orjson.loads(body)


async def wait_ready(proc: Proc, port: int, reason: str = "") -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        if not proc.alive:
            raise AssertionError(proc.why(f"{proc.name} exited"))
        answer = await readyz(port)
        if answer is not None and answer[0] == 200 and reason in answer[1]["reason"]:
            return answer[1]
        return None

    body: dict[str, Any] = await until(
        probe, within_s=START_S, what=f"{proc.name} ready {reason!r}", log=proc.tail
    )
    return body


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    family_name = name.removesuffix("_total")
    family = families.get(family_name)
    if family is None:
        return 0.0
    return sum(
        s.value
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def health(tasklease_bin: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tasklease_bin, "health", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


# 1 ------------------------------------------------------------------------------------------
async def test_worker_and_scheduler_processes_serve_metrics_and_readiness(
    procs: Procs, store: Store, keyspace: Keyspace
):
    sched_port, worker_port = free_port(), free_port()
    sched = procs.scheduler("s1", "--http", f"127.0.0.1:{sched_port}", lease_ttl=TTL)
    worker = procs.worker("w1", "--http", str(worker_port), lease_ttl=TTL, concurrency=3)  # a bare port
    # Given both ready
    body = await wait_ready(sched, sched_port, "leader")
    assert body["status"] == "ready"
    body = await wait_ready(worker, worker_port)
    assert body["reason"].startswith("registered under lease ")
    # When they run 20 tasks, 5 of them failing for good
    client = Client(store, keyspace)
    try:
        batch = await client.submit_many(
            [TaskSpec("noop", {"i": i}) for i in range(15)] + [TaskSpec("fail", {}) for _ in range(5)]
        )
        finals = [await client.wait(t.id, timeout_s=START_S) for t in batch.tasks]
    finally:
        await client.close()
    succeeded = sum(f.state is TaskState.SUCCEEDED for f in finals)
    failed = sum(f.state is TaskState.FAILED for f in finals)
    assert (succeeded, failed) == (15, 5)
    # Then the worker's counters say so
    families = await until(lambda: scrape(worker_port), within_s=START_S, what="the worker's metrics")
    assert value(families, "tasklease_worker_attempts_total", outcome="succeeded") == succeeded
    assert value(families, "tasklease_worker_attempts_total", outcome="failed") == failed
    assert value(families, "tasklease_worker_capacity") == 3
    assert value(families, "tasklease_build_info", component="worker") == 1
    # And the scheduler's: it leads and assigned every task once
    families = await until(lambda: scrape(sched_port), within_s=START_S, what="the scheduler's metrics")
    assert value(families, "tasklease_scheduler_is_leader") == 1
    assert value(families, "tasklease_scheduler_assignments_total") == 20
    assert value(families, "tasklease_workers", state="live") == 1
    # When the worker gets SIGTERM, it exits 0 and its endpoint is gone
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(START_S) == 0, worker.why("worker exit code")
    assert await readyz(worker_port) is None
    sched.signal(signal.SIGTERM)
    assert await sched.wait_exit(START_S) == 0, sched.why("scheduler exit code")


# 2 ------------------------------------------------------------------------------------------
async def test_tasklease_health_exit_codes(procs: Procs, tasklease_bin: str, cli_env: dict[str, str]):
    port = free_port()
    env = {**cli_env, "TASKLEASE_HTTP": ""}
    sched = procs.scheduler("s1", "--http", f"127.0.0.1:{port}", lease_ttl=TTL)
    await wait_ready(sched, port)
    # A ready process: exit 0, its JSON reason on stdout
    done = health(tasklease_bin, env, f"http://127.0.0.1:{port}")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["status"] == "ready"
    # TASKLEASE_HTTP (as the process was given it) is the default
    done = health(tasklease_bin, {**env, "TASKLEASE_HTTP": f"0.0.0.0:{port}"})
    assert done.returncode == 0, done.stderr
    # Liveness, by path
    done = health(tasklease_bin, env, f"127.0.0.1:{port}", "--timeout", "10")
    assert done.returncode == 0, done.stderr
    done = health(tasklease_bin, env, f"http://127.0.0.1:{port}/healthz")
    assert (done.returncode, done.stdout.strip()) == (0, '{"status":"ok"}')
    # A path it does not serve: 404, exit 1
    done = health(tasklease_bin, env, f"http://127.0.0.1:{port}/nope")
    assert done.returncode == 1
    assert orjson.loads(done.stdout)["status"] == "not found"
    # Nobody listening: exit 1, one line on stderr
    closed = free_port()
    done = health(tasklease_bin, env, str(closed))
    assert done.returncode == 1
    assert done.stderr.startswith(f"tasklease: error: http://127.0.0.1:{closed}/readyz: no answer")
    # A bad URL, or none at all: exit 2
    for args in (("https://127.0.0.1:1/readyz",), ("127.0.0.1:http",), ()):
        done = health(tasklease_bin, env, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("tasklease: error: ")
    # A process that is not ready: 503, exit 1, the reason on stdout
    # (a worker told to stop, draining for as long as its task runs)
    worker_port = free_port()
    worker = procs.worker("w1", "--http", str(worker_port), "--grace", "120", lease_ttl=TTL)
    await wait_ready(worker, worker_port)
    async with Store(StoreConfig.from_text(cli_env["TASKLEASE_ETCD"])) as store:
        client = Client(store, Keyspace(cli_env["TASKLEASE_NAMESPACE"]))
        try:
            task = await client.submit("sleep", {"seconds": 120}, timeout_s=300)
            await until(
                lambda: _running(client, task.id), within_s=START_S, what="the task to run", log=procs.tails
            )
            # running = assigned; wait until the worker executes it (it reads the record
            # first), or a SIGTERM before that hands it back and the worker exits at once
            await until(
                lambda: _executing(worker_port),
                within_s=START_S,
                what="the worker to run it",
                log=worker.tail,
            )
            worker.signal(signal.SIGTERM)
            await until(
                lambda: _not_ready(worker_port), within_s=START_S, what="the worker to drain", log=worker.tail
            )
            # --timeout: a loaded CI machine once took over the default 5 s to answer
            done = health(tasklease_bin, env, str(worker_port), "--timeout", "30")
            assert (done.returncode, done.stdout.strip() != "") == (1, True), done.stderr
            assert orjson.loads(done.stdout) == {"status": "not ready", "reason": "draining"}
            await client.cancel(task.id)
        finally:
            await client.close()
    assert await worker.wait_exit(START_S) == 0, worker.why("worker exit code")


async def _running(client: Client, task_id: str) -> bool:
    return (await client.get(task_id)).state is TaskState.RUNNING


async def _executing(port: int) -> bool:
    families = await scrape(port)
    return families is not None and value(families, "tasklease_worker_running_tasks") >= 1


async def _not_ready(port: int) -> bool:
    answer = await readyz(port)
    return answer is not None and answer[0] == 503


async def test_a_bad_http_option_is_a_usage_error(procs: Procs):
    sched = procs.scheduler("s1", "--http", "nope", lease_ttl=TTL)
    assert await sched.wait_exit(START_S) == 2
    assert "bad HTTP address 'nope'" in sched.log_text()
    busy = free_port()
    with contextlib.closing(socket.socket()) as holder:
        holder.bind(("127.0.0.1", busy))
        holder.listen()
        worker = procs.worker("w1", "--http", f"127.0.0.1:{busy}", lease_ttl=TTL)
        assert await worker.wait_exit(START_S) == 2
    assert f"--http 127.0.0.1:{busy}: cannot listen" in worker.log_text()
    env_bad = procs.spawn("s2", "scheduler", "--id", "s2", env={"TASKLEASE_HTTP": "1.2.3.4:99999"})
    assert await env_bad.wait_exit(START_S) == 2
    assert "environment variable TASKLEASE_HTTP" in env_bad.log_text()


# 3 ------------------------------------------------------------------------------------------
CLUSTER_GAUGES = (
    "tasklease_queue_depth",
    "tasklease_running_tasks",
    "tasklease_delayed_tasks",
    "tasklease_workers",
    "tasklease_free_capacity",
)


async def test_only_the_leader_exports_cluster_gauges_and_the_survivor_takes_over(
    procs: Procs, store: Store, keyspace: Keyspace
):
    ports = {"s1": free_port(), "s2": free_port()}
    schedulers = {
        name: procs.scheduler(name, "--http", f"127.0.0.1:{port}", lease_ttl=TTL)
        for name, port in ports.items()
    }
    worker = procs.worker("w1", lease_ttl=TTL)
    # Given a worker and 7 queued tasks it cannot run (a type nobody runs): they stay queued
    client = Client(store, keyspace)
    try:
        await client.submit_many([TaskSpec("nobody-runs-this", {"i": i}, priority=2) for i in range(7)])
    finally:
        await client.close()
    for name, port in ports.items():
        await wait_ready(schedulers[name], port)

    async def exporters(expect_workers: int) -> dict[str, dict[str, Any]] | None:
        """Scrapes of the schedulers still alive, once one of them shows the whole cluster."""
        found = {}
        for name, port in ports.items():
            if not schedulers[name].alive:
                continue
            families = await scrape(port)
            if families is None:
                return None
            found[name] = families
        leaders = [n for n, f in found.items() if value(f, "tasklease_scheduler_is_leader") == 1]
        full = [
            n
            for n in leaders
            if value(found[n], "tasklease_queue_depth", queue="default", priority="2") == 7
            and value(found[n], "tasklease_workers", state="live") == expect_workers
        ]
        return found if full else None

    # Then exactly one scheduler, the leader, exports the cluster gauges, with the right values
    found = await until(
        lambda: exporters(1), within_s=START_S, what="a leader with the cluster gauges", log=procs.tails
    )
    leader = next(n for n, f in found.items() if value(f, "tasklease_scheduler_is_leader") == 1)
    standby = next(n for n in found if n != leader)
    assert value(found[standby], "tasklease_scheduler_is_leader") == 0
    for name in CLUSTER_GAUGES:
        assert name in found[leader], name
        assert name not in found[standby], name
    assert value(found[leader], "tasklease_queue_depth") == 7
    assert value(found[leader], "tasklease_free_capacity") == 4
    assert worker.alive
    # When the leader is SIGKILLed
    schedulers[leader].signal(signal.SIGKILL)
    await schedulers[leader].wait_exit(START_S)
    # Then the survivor leads and exports them (same values), and is the only one left to ask
    found = await until(
        lambda: exporters(1), within_s=START_S, what="the survivor's cluster gauges", log=procs.tails
    )
    assert set(found) == {standby}
    for name in CLUSTER_GAUGES:
        assert name in found[standby], name
    assert value(found[standby], "tasklease_scheduler_is_leader") == 1
    assert value(found[standby], "tasklease_queue_depth") == 7
    assert value(found[standby], "tasklease_scheduler_leader_changes_total") == 1
