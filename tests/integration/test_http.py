"""The HTTP endpoint of a worker and a scheduler, in-process, against a real etcd.

Each component is built the way ``tasklease worker --http`` / ``scheduler
--http`` builds it (runners.Instruments and runners.serve_http: its own
Metrics, the metrics hook beside the defaults, the store observer, the
scrape-time gauges) and is asked over real HTTP, from a thread, with the
client ``tasklease health`` uses (health.check). Every wait has a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

import sample_tasks
from faults.procs import until
from tasklease.client import Client
from tasklease.executors.builtin import builtin_registry
from tasklease.health import check
from tasklease.httpserver import HttpAddress
from tasklease.keys import Keyspace
from tasklease.runners import Instruments, serve_http
from tasklease.scheduler import Scheduler, SchedulerConfig
from tasklease.store import StoreConfig
from tasklease.worker import Worker, WorkerConfig

pytestmark = pytest.mark.timeout(180)

WITHIN_S = 60.0  # bound of every wait (a loaded 2-core machine, an etcd restart)


def registry():
    reg = builtin_registry()
    reg.update([sample_tasks.registry])
    return reg


async def get(url: str) -> tuple[int, str]:
    """GET from a thread: the server runs on this test's event loop."""
    return await asyncio.to_thread(check, url, timeout_s=10)


async def ready(base: str) -> tuple[int, dict[str, Any]]:
    code, body = await get(f"{base}/readyz")
    return code, orjson.loads(body)


async def metrics(base: str) -> dict[str, Any]:
    code, body = await get(f"{base}/metrics")
    assert code == 200, body
    return {f.name: f for f in text_string_to_metric_families(body + "\n")}


@contextlib.asynccontextmanager
async def served_worker(
    config: StoreConfig, keys: Keyspace, **options: Any
) -> AsyncIterator[tuple[Worker, str]]:
    """A worker with its endpoint on a free port, as `tasklease worker --http 127.0.0.1:0` has."""
    options.setdefault("lease_ttl_s", 3)
    options.setdefault("heartbeat_s", 0.5)
    instruments = Instruments("worker", HttpAddress("127.0.0.1", 0))
    assert instruments.metrics is not None
    store = instruments.store(config)
    await store.connect()
    try:
        worker = Worker(store, keys, registry(), WorkerConfig(**options), hooks=instruments.hooks())
        instruments.metrics.track_worker(worker)
        async with serve_http(instruments, store, worker.readiness) as server:
            assert server is not None
            try:
                await worker.start()
                yield worker, server.url
            finally:
                await worker.kill()
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def served_scheduler(
    config: StoreConfig, keys: Keyspace, scheduler_id: str
) -> AsyncIterator[tuple[Scheduler, str]]:
    """A scheduler with its endpoint on a free port, as `tasklease scheduler --http 127.0.0.1:0` has."""
    instruments = Instruments("scheduler", HttpAddress("127.0.0.1", 0))
    assert instruments.metrics is not None
    store = instruments.store(config)
    await store.connect()
    try:
        scheduler = Scheduler(
            store, keys, SchedulerConfig(scheduler_id=scheduler_id, lease_ttl_s=3), hooks=instruments.hooks()
        )
        instruments.metrics.track_scheduler(scheduler)
        async with serve_http(instruments, store, scheduler.readiness) as server:
            assert server is not None
            try:
                await scheduler.start()
                yield scheduler, server.url
            finally:
                await scheduler.stop()
    finally:
        await store.close()


async def until_ready(base: str, want: int, *, reason: str = "") -> dict[str, Any]:
    """Poll ``/readyz`` until it answers ``want`` (and a reason containing ``reason``)."""
    seen: dict[str, Any] = {}

    async def probe() -> dict[str, Any] | None:
        code, body = await ready(base)
        seen.update(code=code, body=body)
        return body if code == want and reason in body["reason"] else None

    try:
        answer: dict[str, Any] = await until(probe, within_s=WITHIN_S, what=f"/readyz {want} {reason!r}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answer {seen}") from None
    return answer


# a worker ---------------------------------------------------------------------------------
async def test_a_worker_serves_liveness_metrics_and_readiness(store_config, keyspace):
    async with served_worker(store_config, keyspace, concurrency=7) as (worker, base):
        # Given a registered worker, Then it is alive ...
        assert await get(f"{base}/healthz") == (200, '{"status":"ok"}')
        # ... ready, holding its lease ...
        code, body = await ready(base)
        assert code == 200, body
        assert body == {
            "status": "ready",
            "reason": f"registered under lease {worker.lease_id:x}, not draining",
        }
        # ... and its metrics parse, with its capacity and the etcd requests of its registration
        families = await metrics(base)
        assert families["tasklease_worker_capacity"].samples[0].value == 7
        assert families["tasklease_worker_running_tasks"].samples[0].value == 0
        info = families["tasklease_build_info"].samples[0]
        assert info.labels["component"] == "worker"
        requests = families["tasklease_etcd_request_seconds"]
        operations = {s.labels["operation"] for s in requests.samples if s.name.endswith("_count")}
        assert {"grant", "txn", "status"} <= operations
        # And a path or method it does not serve is refused, the server going on
        assert (await get(f"{base}/nope"))[0] == 404
        assert (await get(f"{base}/healthz"))[0] == 200


async def test_a_draining_worker_is_not_ready(store_config, keyspace, store, cluster):
    await cluster.scheduler()
    client = Client(store, keyspace)
    try:
        async with served_worker(store_config, keyspace) as (worker, base):
            # Given a worker running a long task
            task = await client.submit("sleep", {"seconds": 120}, timeout_s=300)
            await until(lambda: worker.running == 1, within_s=WITHIN_S, what="the task to start")
            await until_ready(base, 200)
            # When it is told to stop (SIGTERM), with a long grace period
            stopping = asyncio.create_task(worker.stop(grace_s=120))
            # Then, while it drains, it is not ready
            body = await until_ready(base, 503, reason="draining")
            assert body == {"status": "not ready", "reason": "draining"}
            assert not stopping.done()
            # When its task ends, it stops, still not ready
            await client.cancel(task.id)
            async with asyncio.timeout(WITHIN_S):
                await stopping
            assert await ready(base) == (503, {"status": "not ready", "reason": "stopped"})
    finally:
        await client.close()


# schedulers -------------------------------------------------------------------------------
async def test_a_leader_and_a_standby_are_both_ready(store_config, keyspace):
    async with served_scheduler(store_config, keyspace, "s1") as (first, base1):
        await asyncio.wait_for(first.leading.wait(), WITHIN_S)
        body = await until_ready(base1, 200, reason="leader")
        assert body["reason"].startswith("leader, watching from revision ")
        async with served_scheduler(store_config, keyspace, "s2") as (second, base2):
            body = await until_ready(base2, 200, reason="standby")
            assert body == {"status": "ready", "reason": "standby, watching the leader key"}
            assert (await metrics(base1))["tasklease_scheduler_is_leader"].samples[0].value == 1
            assert (await metrics(base2))["tasklease_scheduler_is_leader"].samples[0].value == 0
            # When the leader stops, the standby leads
            await first.stop()
            await until_ready(base2, 200, reason="leader")
            assert not second.fatal
            # And the stopped one's endpoint (still up) says it is not running
            assert await ready(base1) == (503, {"status": "not ready", "reason": "not running"})


# etcd goes away and comes back ------------------------------------------------------------
async def test_readyz_flips_to_503_when_etcd_stops_and_back_when_it_returns(own_etcd, namespace):
    config = StoreConfig.from_text(own_etcd.endpoint, timeout_s=2.0)
    keys = Keyspace(namespace)
    async with (
        served_scheduler(config, keys, "s1") as (_, sched),
        served_worker(config, keys) as (_, work),
    ):
        # Given a ready worker and a ready leader
        await until_ready(work, 200)
        await until_ready(sched, 200, reason="leader")
        # When etcd dies
        own_etcd.kill()
        own_etcd.stop()
        # Then both say not ready, naming etcd, while they stay alive
        for base in (work, sched):
            body = await until_ready(base, 503, reason="etcd unreachable")
            assert body["status"] == "not ready"
            assert "\n" not in body["reason"]
            assert await get(f"{base}/healthz") == (200, '{"status":"ok"}')
        # When it comes back (same data, same ports)
        await asyncio.to_thread(own_etcd.start)
        # Then both are ready again: the worker under its (maybe new) lease, the scheduler leading
        await until_ready(work, 200, reason="registered under lease")
        await until_ready(sched, 200, reason="leader")
        # And the outage shows in their metrics as etcd errors of kind unavailable
        errors = (await metrics(work))["tasklease_etcd_errors"]
        kinds = {s.labels["kind"]: s.value for s in errors.samples if s.name.endswith("_total")}
        assert kinds.get("unavailable", 0) > 0, kinds
