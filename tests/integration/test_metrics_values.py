"""Metrics against a real etcd: values checked against the run, and leader-only cluster gauges.

Each component gets its own :class:`~tasklease.metrics.Metrics` (as each
process would), its hook after the default ones, and a store with its
observer. Every wait is bounded; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

import sample_tasks
from faults.procs import until
from tasklease.client import Client
from tasklease.events import Promoted, RecordingHook, Retried, default_hooks
from tasklease.executors.base import Registry
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace
from tasklease.metrics import Metrics
from tasklease.models import Outcome, Task, TaskState
from tasklease.retry import RetryPolicy
from tasklease.scheduler import Scheduler, SchedulerConfig
from tasklease.spec import TaskSpec
from tasklease.store import Store, StoreConfig
from tasklease.worker import Worker, WorkerConfig

CLUSTER_GAUGES = {
    "tasklease_queue_depth",
    "tasklease_running_tasks",
    "tasklease_delayed_tasks",
    "tasklease_workers",
    "tasklease_free_capacity",
}

# attempts per flaky key (the async task runs on the worker's own loop, in this process)
FLAKY: dict[str, int] = {}


def registry_with_flaky() -> Registry:
    """The built-in task types, tests/sample_tasks.py, and ``flaky``."""
    reg = builtin_registry()
    extra = Registry()

    @extra.task
    async def flaky(key: str) -> str:
        """Fails its first attempt, succeeds the next."""
        FLAKY[key] = FLAKY.get(key, 0) + 1
        if FLAKY[key] == 1:
            raise RuntimeError("first attempt fails")
        return key

    reg.update([sample_tasks.registry, extra])
    return reg


class Metered:
    """Schedulers and workers of this test, each with its own Metrics, hook and observed store."""

    def __init__(self, store_config: StoreConfig, keyspace: Keyspace) -> None:
        self.store_config = store_config
        self.keyspace = keyspace
        self.stores: list[Store] = []
        self.workers: list[tuple[Worker, Metrics]] = []
        self.schedulers: list[tuple[Scheduler, Metrics]] = []
        self.recorder = RecordingHook()  # sees every component's events too

    async def _store(self, metrics: Metrics) -> Store:
        store = Store(self.store_config, observer=metrics.store_observer())
        await store.connect()
        self.stores.append(store)
        return store

    async def scheduler(self, **config: Any) -> tuple[Scheduler, Metrics]:
        metrics = Metrics("scheduler")
        config.setdefault("scheduler_id", f"s{len(self.schedulers)}")
        config.setdefault("lease_ttl_s", 3)
        scheduler = Scheduler(
            await self._store(metrics),
            self.keyspace,
            SchedulerConfig(**config),
            hooks=[*default_hooks(), metrics.hook(), self.recorder],
        )
        metrics.track_scheduler(scheduler)
        await scheduler.start()
        self.schedulers.append((scheduler, metrics))
        return scheduler, metrics

    async def worker(self, **config: Any) -> tuple[Worker, Metrics]:
        metrics = Metrics("worker")
        config.setdefault("worker_id", f"w{len(self.workers)}")
        config.setdefault("lease_ttl_s", 3)
        config.setdefault("heartbeat_s", 0.5)
        worker = Worker(
            await self._store(metrics),
            self.keyspace,
            registry_with_flaky(),
            WorkerConfig(**config),
            hooks=[*default_hooks(), metrics.hook(), self.recorder],
        )
        metrics.track_worker(worker)
        await worker.start()
        self.workers.append((worker, metrics))
        return worker, metrics

    def worker_sum(self, name: str, **labels: str) -> float:
        return sum(value(m, name, **labels) for _, m in self.workers)

    async def close(self) -> None:
        for worker, _ in self.workers:
            await worker.kill()
        for scheduler, _ in self.schedulers:
            await scheduler.stop()
        for store in self.stores:
            await store.close()


@pytest.fixture
async def metered(store_config: StoreConfig, keyspace: Keyspace) -> AsyncIterator[Metered]:
    m = Metered(store_config, keyspace)
    yield m
    await m.close()


def value(m: Metrics, name: str, **labels: str) -> float:
    got = m.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def total(m: Metrics, name: str, **match: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``match``."""
    return sum(
        s.value
        for family in m.registry.collect()
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in match.items())
    )


def exports_cluster_gauges(m: Metrics) -> bool:
    return bool({f.name for f in m.registry.collect()} & CLUSTER_GAUGES)


def attempt_outcomes(finals: list[Task]) -> dict[str, int]:
    """How each attempt of the run ended, as the worker's ``outcome`` label names it."""
    counts = {"succeeded": 0, "failed": 0, "retried": 0}
    for final in finals:
        for i, attempt in enumerate(final.attempts):
            if attempt.outcome is Outcome.SUCCEEDED:
                counts["succeeded"] += 1
            elif final.state is TaskState.FAILED and i == len(final.attempts) - 1:
                counts["failed"] += 1
            else:
                counts["retried"] += 1
    return counts


async def test_metric_values_match_a_run_of_200_tasks_with_failures_and_retries(
    client: Client, metered: Metered
):
    # Given a scheduler and two workers, each with its metrics
    _, sched = await metered.scheduler()
    await metered.worker(concurrency=8)
    await metered.worker(concurrency=4)
    retry = RetryPolicy(max_retries=1, backoff_s=0.05, jitter=0)

    # When 200 tasks run: 140 succeed at once, 40 fail once then succeed, 20 fail twice (for good)
    specs = [TaskSpec("noop", {"i": i}, queue="default", priority=i % 4) for i in range(140)]
    run = uuid.uuid4().hex
    specs += [TaskSpec("flaky", {"key": f"{run}-{i}"}, retry=retry, priority=2) for i in range(40)]
    specs += [TaskSpec("fail", {"message": f"boom {i}"}, retry=retry) for i in range(20)]
    batch = await client.submit_many(specs)
    finals = await asyncio.gather(*(client.wait(t.id, timeout_s=60) for t in batch.tasks))

    # Then the workers' counts are the run's
    states = [f.state for f in finals]
    assert states.count(TaskState.SUCCEEDED) == 180 and states.count(TaskState.FAILED) == 20
    outcomes = attempt_outcomes(finals)
    assert outcomes == {"succeeded": 180, "failed": 20, "retried": 60}
    attempts = sum(len(f.attempts) for f in finals)
    name = "tasklease_worker_attempts_total"
    await until(
        lambda: total_outcomes(metered, name) == outcomes,
        within_s=15,
        what="every attempt's end counted",
        log=lambda: str(total_outcomes(metered, name)),
    )
    assert (
        metered.worker_sum("tasklease_worker_attempts_total", queue="default", type="fail", outcome="failed")
        == 20
    )
    assert sum(total(m, "tasklease_worker_execution_seconds_count") for _, m in metered.workers) == attempts
    assert sum(total(m, "tasklease_task_end_to_end_seconds_count") for _, m in metered.workers) == 200
    assert (
        sum(total(m, "tasklease_task_end_to_end_seconds_count", state="failed") for _, m in metered.workers)
        == 20
    )
    # and the scheduler's: every attempt assigned once, each with its queue wait and in a batch
    assert value(sched, "tasklease_scheduler_assignments_total", queue="default") == attempts == 260
    assert total(sched, "tasklease_scheduler_queue_wait_seconds_count") == attempts
    assert total(sched, "tasklease_scheduler_queue_wait_seconds_count", priority="3") == 35
    assert value(sched, "tasklease_scheduler_batch_size_sum") == attempts
    assert 1 <= value(sched, "tasklease_scheduler_batch_size_count") <= attempts
    promoted = len(metered.recorder.of(Promoted))
    retried = [e for e in metered.recorder.of(Retried) if isinstance(e, Retried)]
    retried_pending = [e for e in retried if e.task.state is TaskState.PENDING]
    assert promoted == len(retried_pending) == 60
    assert value(sched, "tasklease_scheduler_recoveries_total", reason="promoted") == 60
    assert value(sched, "tasklease_scheduler_recoveries_total", reason="lost") == 0
    assert value(sched, "tasklease_scheduler_is_leader") == 1
    assert value(sched, "tasklease_scheduler_leader_changes_total") == 1

    # and the leader's cluster gauges come back to an empty cluster with two idle workers
    def cluster_idle() -> bool:
        return (
            total(sched, "tasklease_queue_depth") == 0
            and value(sched, "tasklease_running_tasks") == 0
            and value(sched, "tasklease_delayed_tasks") == 0
            and value(sched, "tasklease_free_capacity") == 12
        )

    await until(cluster_idle, within_s=15, what="the mirror to show an idle cluster")
    assert (
        sched.registry.get_sample_value("tasklease_queue_depth", {"queue": "default", "priority": "1"}) == 0
    )
    assert value(sched, "tasklease_workers", state="live") == 2
    assert value(sched, "tasklease_workers", state="draining") == 0
    for worker, m in metered.workers:
        assert value(m, "tasklease_worker_running_tasks") == 0
        assert value(m, "tasklease_worker_capacity") == worker.config.concurrency
        assert not exports_cluster_gauges(m)  # workers never export the leader's gauges

    # and every process timed its etcd requests: transactions among them, and the workers' keep-alives
    assert value(sched, "tasklease_etcd_request_seconds_count", operation="txn") > 0
    assert value(sched, "tasklease_etcd_request_seconds_count", operation="range") > 0
    for _, m in metered.workers:
        assert value(m, "tasklease_etcd_request_seconds_count", operation="txn") > 0
    await until(
        lambda: all(value(m, "tasklease_worker_lease_refresh_seconds_count") > 0 for _, m in metered.workers),
        within_s=10,
        what="a lease refresh on each worker",
    )
    for _, m in metered.workers:
        assert value(m, "tasklease_etcd_request_seconds_count", operation="keepalive") > 0
    assert total(sched, "tasklease_etcd_errors_total") == 0


def total_outcomes(metered: Metered, name: str) -> dict[str, int]:
    return {
        o: int(sum(total(m, name, outcome=o) for _, m in metered.workers))
        for o in ("succeeded", "failed", "retried")
    }


async def test_of_two_schedulers_only_the_leader_exports_cluster_gauges_then_the_other(metered: Metered):
    # Given two schedulers, each with its own metrics (as two processes would have)
    first, m_first = await metered.scheduler()
    await until(first.leading.is_set, within_s=10, what="the first scheduler to lead")
    second, m_second = await metered.scheduler()
    await metered.worker(concurrency=2)

    # Then exactly one exports the cluster gauges, once its mirror is loaded: the leader
    await until(lambda: exports_cluster_gauges(m_first), within_s=10, what="the leader's cluster gauges")
    assert value(m_first, "tasklease_workers", state="live") in (0, 1)  # the worker may not be seen yet
    assert (
        value(m_first, "tasklease_scheduler_is_leader"),
        value(m_second, "tasklease_scheduler_is_leader"),
    ) == (1, 0)
    assert not exports_cluster_gauges(m_second)

    # When the leader stops
    await first.stop()

    # Then the other one leads and exports them, and the old one no longer does
    await until(lambda: exports_cluster_gauges(m_second), within_s=15, what="the new leader's cluster gauges")
    await until(
        lambda: value(m_second, "tasklease_workers", state="live") == 1,
        within_s=10,
        what="the worker in its mirror",
    )
    assert not exports_cluster_gauges(m_first)
    assert (
        value(m_first, "tasklease_scheduler_is_leader"),
        value(m_second, "tasklease_scheduler_is_leader"),
    ) == (0, 1)
    assert value(m_first, "tasklease_scheduler_leader_changes_total") == 2  # elected, resigned
    assert value(m_second, "tasklease_scheduler_leader_changes_total") == 1
    assert second.leading.is_set()


async def test_requests_are_timed_by_operation_and_errors_counted_by_kind(
    store_config: StoreConfig, keyspace: Keyspace
):
    # Given a store with metrics
    metrics = Metrics("client")
    async with Store(store_config, observer=metrics.store_observer()) as store:
        # When a request names a lease etcd does not have
        with pytest.raises(Exception, match="lease"):
            await store.put(keyspace.task("01ARZ3NDEKTSV4RRFFQ6900001"), b"{}", lease=0x7FFFFFFF)
        await store.get(keyspace.task("01ARZ3NDEKTSV4RRFFQ6900001"))

    # Then its error is counted by kind and every request is timed by operation
    assert value(metrics, "tasklease_etcd_errors_total", kind="lease_not_found") == 1
    assert value(metrics, "tasklease_etcd_request_seconds_count", operation="put") == 1
    assert value(metrics, "tasklease_etcd_request_seconds_count", operation="get") == 1
