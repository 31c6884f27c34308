"""Heterogeneous fleets (issue: step 6b): a task goes only to a worker that can run it.

Workers with different task types and tags share one etcd; the scheduler
assigns each task only to a live worker that serves its queue, runs its type
and has its required tags. Tasks nobody can run wait queued, visibly, without
blocking the tasks behind them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest

import sample_tasks
from faults.procs import until
from tasklease.client import TaskSpec
from tasklease.errors import InvalidOption
from tasklease.executors.base import Registry
from tasklease.executors.builtin import builtin_registry
from tasklease.models import Outcome, TaskState


def only(*names: str) -> Registry:
    """A registry with just these types (built-in or from sample_tasks)."""
    full = builtin_registry()
    full.update([sample_tasks.registry])
    reg = Registry()
    for name in names:
        executor = full.get(name)
        if executor is not None:
            reg.register(name, executor)
        else:
            fn = full.function(name)
            assert fn is not None, name
            reg.update([_single(fn)])
    return reg


def _single(fn) -> Registry:
    reg = Registry()
    reg._functions[fn.name] = fn
    return reg


def versioned(version: int) -> Registry:
    """A worker image: v1 runs noop; v2 also runs `new_type`."""
    reg = only("noop")
    if version >= 2:
        reg.task(name="new_type")(sample_tasks.async_add.fn)
    return reg


@pytest.mark.timeout(240)
@pytest.mark.parametrize("balancer", ["least_load", "round_robin", "random", "weighted"])
async def test_disjoint_types_each_task_runs_where_its_type_is(balancer, client, cluster):
    # Given two workers with disjoint task types
    # (TTL 10: this test keeps both workers busy in this one process; a lease lost to
    # a starved event loop would only add a "lost" attempt, which the checks allow)
    await cluster.worker(worker_id="w-builtin", types=only("noop", "sleep"), concurrency=8, lease_ttl_s=10)
    await cluster.worker(
        worker_id="w-app", types=only("add", "async_add"), concurrency=8, weight=2, lease_ttl_s=10
    )
    await cluster.scheduler(balancer=balancer)

    # When a mixed workload of 1,000 tasks is submitted
    specs = []
    for i in range(1000):
        if i % 2:
            specs.append(TaskSpec("noop", {"i": i}))
        else:
            specs.append(TaskSpec("async_add" if i % 4 else "add", {"a": i, "b": 1}))
    batch = await client.submit_many(specs)
    done = await asyncio.gather(*(client.wait(t.id, timeout_s=180) for t in batch.tasks))

    # Then every task succeeded once, on a worker that has its type
    where: Counter[str] = Counter()
    for task in done:
        assert task.state is TaskState.SUCCEEDED, (task.type, task.error)
        right = "w-builtin" if task.type == "noop" else "w-app"
        # every attempt ran where the type is; none failed (an unknown type would fail it)
        assert all(a.worker == right for a in task.attempts), (task.type, task.attempts)
        assert not any(a.outcome is Outcome.FAILED for a in task.attempts), task.attempts
        assert sum(1 for a in task.attempts if a.outcome is Outcome.SUCCEEDED) == 1
        where[right] += 1
    assert where == {"w-builtin": 500, "w-app": 500}


@pytest.mark.timeout(120)
async def test_a_type_without_a_worker_waits_visibly_and_does_not_block_the_queue(client, cluster, caplog):
    # Given a worker that runs noop only, and a scheduler
    await cluster.worker(worker_id="w-noop", types=only("noop"))
    with caplog.at_level(logging.WARNING, logger="tasklease.scheduler"):
        await cluster.scheduler()

        # When a task of a type nobody runs is queued ahead of ordinary tasks in the same queue
        stuck = [await client.submit("async_add", {"a": 1, "b": 2}, priority=3) for _ in range(3)]
        behind = [await client.submit("noop", {"i": i}, priority=0) for i in range(20)]

        # Then the tasks behind it run meanwhile
        for t in behind:
            assert (await client.wait(t.id, timeout_s=30)).state is TaskState.SUCCEEDED
        # and it waits queued (not failed), visible in stats and logged once
        for t in stuck:
            assert (await client.get(t.id)).state is TaskState.QUEUED
        stats = await client.stats()
        assert stats["waiting_without_worker"] == [
            {"queue": "default", "type": "async_add", "requires": {}, "queued": 3}
        ]
        await until(lambda: "no live worker may run them" in caplog.text, within_s=10, what="the warning")
        assert caplog.text.count("no live worker may run them") == 1

    # When a worker with the type registers, it runs at once
    await cluster.worker(worker_id="w-app", types=only("async_add"))
    for t in stuck:
        final = await client.wait(t.id, timeout_s=30)
        assert final.state is TaskState.SUCCEEDED and final.attempts[0].worker == "w-app"
    assert (await client.stats())["waiting_without_worker"] == []


@pytest.mark.timeout(120)
async def test_tag_constraints_choose_matching_workers_and_unmet_ones_wait(client, cluster):
    # Given workers tagged zone=eu (one with gpu=true) and zone=us
    await cluster.worker(worker_id="w-eu", tags={"zone": "eu"})
    await cluster.worker(worker_id="w-eu-gpu", tags={"zone": "eu", "gpu": "true"})
    await cluster.worker(worker_id="w-us", tags={"zone": "us"})
    await cluster.scheduler(balancer="round_robin")

    # When tasks require zone=eu, zone=eu+gpu, zone=us, or nothing, and one requires zone=ap
    eu = [await client.submit("noop", {"i": i}, requires={"zone": "eu"}) for i in range(12)]
    gpu = [await client.submit("noop", {"i": i}, requires={"zone": "eu", "gpu": "true"}) for i in range(6)]
    us = [await client.submit("noop", {"i": i}, requires={"zone": "us"}) for i in range(6)]
    anywhere = [await client.submit("noop", {"i": i}) for i in range(12)]
    nowhere = await client.submit("noop", {"i": 0}, requires={"zone": "ap"})

    # Then each runs only on a matching worker
    async def ran_on(tasks) -> set[str]:
        finals = await asyncio.gather(*(client.wait(t.id, timeout_s=30) for t in tasks))
        assert all(f.state is TaskState.SUCCEEDED for f in finals)
        return {f.attempts[0].worker for f in finals}

    assert await ran_on(eu) <= {"w-eu", "w-eu-gpu"}
    assert await ran_on(gpu) == {"w-eu-gpu"}
    assert await ran_on(us) == {"w-us"}
    assert len(await ran_on(anywhere)) >= 2
    # and the unmet constraint waits, visibly
    assert (await client.get(nowhere.id)).state is TaskState.QUEUED
    assert (await client.stats())["waiting_without_worker"] == [
        {"queue": "default", "type": "noop", "requires": {"zone": "ap"}, "queued": 1}
    ]
    with pytest.raises(InvalidOption):
        await client.submit("noop", None, requires={"zone": "\x1b[2J"})


@pytest.mark.timeout(180)
async def test_rolling_upgrade_adds_a_type_and_none_of_its_tasks_fails(client, cluster):
    # Given two workers of image v1 (noop only)
    old = [
        await cluster.worker(worker_id=f"w{i}-v1", types=versioned(1), concurrency=4, grace_s=10)
        for i in (1, 2)
    ]
    await cluster.scheduler()

    # When tasks of the new type are submitted while the workers restart one by one as v2
    submitted = []

    async def submit_stream(n: int) -> None:
        for i in range(n):
            submitted.append(await client.submit("new_type", {"a": i, "b": 1}))
            submitted.append(await client.submit("noop", {"i": i}))
            await asyncio.sleep(0.01)

    feeder = asyncio.create_task(submit_stream(150))
    for i, worker in enumerate(old, start=1):
        await asyncio.sleep(0.5)
        await worker.stop()
        await cluster.worker(worker_id=f"w{i}-v2", types=versioned(2), concurrency=4)
    await feeder

    # Then every task succeeds; none of the new type failed for an unknown type
    finals = await asyncio.gather(*(client.wait(t.id, timeout_s=60) for t in submitted))
    for f in finals:
        assert f.state is TaskState.SUCCEEDED, (f.type, f.error, f.attempts)
        assert not any("unknown task type" in (a.error or "") for a in f.attempts)
        if f.type == "new_type":
            assert all(a.worker.endswith("-v2") for a in f.attempts if a.outcome is Outcome.SUCCEEDED)


@pytest.mark.timeout(120)
async def test_unroutable_after_fails_tasks_no_worker_may_run_and_keeps_the_rest(client, cluster):
    # Given a scheduler that fails unroutable tasks after 2 s, and a noop worker
    await cluster.worker(worker_id="w-noop", types=only("noop"))
    await cluster.scheduler(unroutable_after_s=2.0)

    # When a task of a type nobody runs and an ordinary task are submitted
    lost = await client.submit("async_add", {"a": 1, "b": 2})
    fine = await client.submit("noop", {"i": 1})

    # Then the first fails with the reason, the second succeeds
    failed = await client.wait(lost.id, timeout_s=30)
    assert failed.state is TaskState.FAILED
    assert "no live worker may run type async_add" in (failed.error or "")
    assert (await client.wait(fine.id, timeout_s=30)).state is TaskState.SUCCEEDED
