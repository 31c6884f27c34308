"""Dependencies and workflows (W1) with an in-process scheduler and workers against a real etcd.

A child runs only once its parents succeeded; a failed or cancelled parent
cancels its descendants with a reason naming it (or, with policy ``run``, they
run anyway); workflows are written in one transaction when they fit; the
parents' results reach the child's function. Order is checked from the
attempts' recorded times, never from timings.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

import sample_tasks
import workflow_tasks
from faultstore import FaultyStore
from tasklease import codec
from tasklease.client import Client, TaskSpec
from tasklease.errors import (
    BatchIncomplete,
    InvalidOption,
    StoreNoSpace,
    StoreUnavailable,
    TaskNotFound,
    WorkflowNotFound,
)
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Task, TaskState
from tasklease.scheduler import Scheduler, SchedulerConfig
from tasklease.store import Delete, Put, Store, StoreConfig
from tasklease.workflows import builder_from_dict

pytestmark = pytest.mark.timeout(180)

WAIT_S = 60.0  # a hang guard only
MISSING = "0" * 26  # a well-formed id no task has
KB = "x" * 1024


def types():
    reg = builtin_registry()
    reg.update([sample_tasks.registry, workflow_tasks.registry])
    return reg


async def start(cluster, workers: int = 1, concurrency: int = 8):
    await cluster.scheduler()
    for _ in range(workers):
        await cluster.worker(types=types(), concurrency=concurrency)


async def finals(client: Client, ids: list[str]) -> list[Task]:
    return list(await asyncio.gather(*(client.wait(i, timeout_s=WAIT_S) for i in ids)))


def started(task: Task) -> float:
    return task.attempts[0].started_at


def ended(task: Task) -> float:
    end = task.attempts[-1].finished_at
    assert end is not None
    return end


async def keys_under(store: Store, prefix: str) -> list[str]:
    return [kv.key for kv in (await store.range(prefix, prefix_end(prefix), keys_only=True)).kvs]


# shapes ---------------------------------------------------------------------------------------
async def test_a_diamond_runs_each_task_once_after_its_parents(client, cluster, store, keyspace):
    # Given a scheduler and two workers
    await start(cluster, workers=2)
    # When a diamond a -> (b, c) -> d is submitted as one workflow
    wf = client.workflow(name="diamond")
    a = wf.add("noop", {"n": 1, "pad": KB})
    b = wf.add("noop", {"n": 2, "pad": KB}, after=[a])
    c = wf.add("noop", {"n": 3, "pad": KB}, after=[a])
    d = wf.add("async_total", {"extra": 10}, after=[b, c])
    workflow = await client.submit_workflow(wf)

    # Then it was one transaction; the root queued and the others waiting
    assert workflow.transactions == 1
    assert [t.state for t in workflow.tasks] == [
        TaskState.QUEUED,
        TaskState.WAITING,
        TaskState.WAITING,
        TaskState.WAITING,
    ]
    fa, fb, fc, fd = await finals(client, [a.id, b.id, c.id, d.id])
    assert all(t.state is TaskState.SUCCEEDED and len(t.attempts) == 1 for t in (fa, fb, fc, fd))
    assert ended(fa) <= started(fb) and ended(fa) <= started(fc)
    assert max(ended(fb), ended(fc)) <= started(fd)
    # and d got b's and c's results, in its parents' order
    assert fd.result == {"n": 15, "parents": 2, "order": [b.id, c.id]}
    assert {t.workflow for t in (fa, fb, fc, fd)} == {workflow.id}
    status = await client.workflow_status(workflow.id)
    assert status.name == "diamond" and status.finished
    assert [t.id for t in status.tasks] == [a.id, b.id, c.id, d.id]
    assert status.states == {"succeeded": 4}
    assert status.tasks[3].parents == (b.id, c.id)
    # the status is found from any of its tasks too, and nothing waits any more
    assert (await client.workflow_status(c.id)).id == workflow.id
    assert await keys_under(store, keyspace.deps) == []


async def test_a_chain_of_10_runs_in_order(client, cluster):
    await start(cluster, workers=2)
    wf = client.workflow(name="chain")
    nodes = wf.chain(TaskSpec("noop", {"i": i, "pad": KB}) for i in range(10))
    await wf.submit()
    done = await finals(client, [n.id for n in nodes])
    assert all(t.state is TaskState.SUCCEEDED and len(t.attempts) == 1 for t in done)
    for parent, child in itertools.pairwise(done):
        assert child.depends_on == (parent.id,)
        assert ended(parent) <= started(child)


async def test_a_fan_in_of_100_parents_runs_the_child_once_with_every_result(client, cluster):
    # Given 100 parents submitted on their own (kilobyte payloads)
    await start(cluster, workers=2, concurrency=16)
    batch = await client.submit_many(TaskSpec("number", {"n": i, "pad": KB}) for i in range(100))
    parents = [t.id for t in batch.tasks]
    # When one child depends on all of them (a sync function: it runs in a child process)
    child = await client.submit("total", None, depends_on=parents)
    # Then it runs once, after the last of them, with every result
    done = await client.wait(child.id, timeout_s=WAIT_S)
    assert done.state is TaskState.SUCCEEDED, done.error
    assert len(done.attempts) == 1
    assert done.result == {"n": sum(range(100)), "parents": 100}
    last = max(ended(t) for t in await finals(client, parents))
    assert last <= started(done)


async def test_chord_group_and_chain_helpers_build_fan_out_and_fan_in(client, cluster):
    await start(cluster, workers=2)
    wf = client.workflow(name="chord")
    (first,) = wf.chain([TaskSpec("number", {"n": 1})])
    header, callback = wf.chord(
        [TaskSpec("number", {"n": n}) for n in (2, 3, 4)], TaskSpec("async_total"), after=[first]
    )
    await wf.submit()
    done = await client.wait(callback.id, timeout_s=WAIT_S)
    assert done.result["n"] == 9 and done.result["order"] == [h.id for h in header]
    assert all(h.spec.depends_on == (first.id,) for h in header)


# failures ------------------------------------------------------------------------------------
async def test_a_failed_parent_cancels_its_descendants_naming_it_and_policy_run_runs_anyway(client, cluster):
    await start(cluster)
    wf = client.workflow(name="failing")
    bad = wf.add("fail", {"message": "disk full"})
    child = wf.add("noop", after=[bad])
    grandchild = wf.add("noop", after=[child])
    cleanup = wf.add("seen", {"tag": "cleanup"}, after=[bad], on_parent_failure="run")
    await wf.submit()
    f_bad, f_child, f_grand, f_cleanup = await finals(client, [bad.id, child.id, grandchild.id, cleanup.id])
    assert f_bad.state is TaskState.FAILED
    assert f_child.state is TaskState.CANCELLED and f_child.attempts == ()
    assert f_child.error == f"parent {bad.id} failed: RuntimeError: disk full"
    assert f_grand.state is TaskState.CANCELLED
    assert f_grand.error is not None and f_grand.error.startswith(
        f"parent {child.id} cancelled: parent {bad.id}"
    )
    # policy run: it ran, and got None for the parent that did not succeed
    assert f_cleanup.state is TaskState.SUCCEEDED
    assert f_cleanup.result == {"tag": "cleanup", "parents": {bad.id: None}}
    # the cascade is listed like any cancel: the finished index names them
    cancelled = {t.id for t in await client.list(state=TaskState.CANCELLED)}
    assert {child.id, grandchild.id} <= cancelled


async def test_a_cancelled_parent_cancels_its_waiting_child(client, cluster):
    # Given no worker: the parent stays queued
    await cluster.scheduler()
    parent = await client.submit("noop")
    child = await client.submit("noop", depends_on=[parent.id])
    # When the parent is cancelled
    await client.cancel(parent.id, "not needed")
    # Then the leader cancels the child, naming the parent and its reason
    done = await client.wait(child.id, timeout_s=WAIT_S)
    assert done.state is TaskState.CANCELLED
    assert done.error == f"parent {parent.id} cancelled: not needed"


# submits -------------------------------------------------------------------------------------
async def test_an_unknown_parent_is_refused_and_nothing_is_written(client, store, keyspace):
    parent = await client.submit("noop")
    with pytest.raises(TaskNotFound, match=MISSING):
        await client.submit("noop", depends_on=[parent.id, MISSING])
    wf = client.workflow()
    wf.add("noop", after=[MISSING])
    with pytest.raises(TaskNotFound):
        await wf.submit()
    assert await keys_under(store, keyspace.deps) == []
    assert await keys_under(store, keyspace.workflows) == []
    assert [kv for kv in await keys_under(store, keyspace.tasks)] == [keyspace.task(parent.id)]


async def test_a_child_submitted_after_its_parent_finished_starts_at_once(client, cluster, store, keyspace):
    await start(cluster)
    ok = await client.submit("number", {"n": 7})
    bad = await client.submit("fail")
    await finals(client, [ok.id, bad.id])
    # a succeeded parent: queued at once (no deps key written)
    child = await client.submit("seen", {"tag": "late"}, depends_on=[ok.id])
    assert child.state is TaskState.QUEUED
    # a failed parent: cancelled at once, with the reason; with policy run: queued
    doomed = await client.submit("noop", depends_on=[ok.id, bad.id])
    assert doomed.state is TaskState.CANCELLED
    assert doomed.error is not None and doomed.error.startswith(f"parent {bad.id} failed")
    anyway = await client.submit("noop", depends_on=[bad.id], on_parent_failure="run")
    assert anyway.state is TaskState.QUEUED
    assert (await client.get(doomed.id)).state is TaskState.CANCELLED
    done = await client.wait(child.id, timeout_s=WAIT_S)
    assert done.result == {"tag": "late", "parents": {ok.id: {"n": 7}}}
    assert (await client.wait(anyway.id, timeout_s=WAIT_S)).state is TaskState.SUCCEEDED
    assert await keys_under(store, keyspace.deps) == []
    # the cancelled one is in the finished index like any other cancel
    assert doomed.id in {t.id for t in await client.list(state=TaskState.CANCELLED)}


async def test_a_delayed_child_goes_pending_when_released(client, cluster):
    await start(cluster)
    parent = await client.submit("noop")
    child = await client.submit_spec(TaskSpec("noop", depends_on=[parent.id], delay_s=3600))
    assert child.state in (TaskState.WAITING, TaskState.PENDING)

    async def pending() -> Task:
        while (task := await client.get(child.id)).state is TaskState.WAITING:
            await asyncio.sleep(0.05)
        return task

    task = await asyncio.wait_for(pending(), WAIT_S)
    assert task.state is TaskState.PENDING and task.not_before is not None


async def test_a_task_cannot_depend_on_itself_or_a_later_task_of_its_batch(client):
    own = "7" * 26
    with pytest.raises(InvalidOption, match="itself"):
        await client.submit_spec(TaskSpec("noop", task_id=own, depends_on=[own]))
    later = "8" * 26
    with pytest.raises(InvalidOption, match="before"):
        await client.submit_many([TaskSpec("noop", depends_on=[later]), TaskSpec("noop", task_id=later)])


async def test_a_batch_may_name_earlier_tasks_of_it_as_parents(client, cluster):
    await start(cluster)
    first = "9" * 26
    batch = await client.submit_many(
        [TaskSpec("number", {"n": 5}, task_id=first), TaskSpec("seen", {"tag": "b"}, depends_on=[first])]
    )
    assert [t.state for t in batch.tasks] == [TaskState.QUEUED, TaskState.WAITING]
    done = await client.wait(batch.tasks[1].id, timeout_s=WAIT_S)
    assert done.result == {"tag": "b", "parents": {first: {"n": 5}}}


# waiting, listed and counted -----------------------------------------------------------------
async def test_waiting_tasks_are_listed_counted_and_reprioritised(client):
    parent = await client.submit("noop", queue="etl")
    children = [await client.submit("noop", {"i": i}, queue="etl", depends_on=[parent.id]) for i in range(3)]
    listed = await client.list(state=TaskState.WAITING)
    assert sorted(t.id for t in listed) == sorted(c.id for c in children)
    assert [t.id for t in await client.list(state=TaskState.WAITING, queue="default")] == []
    assert len((await client.list_page(state=TaskState.WAITING, queue="etl", limit=2)).tasks) == 2
    stats = await client.stats()
    assert stats["states"]["waiting"] == 3
    assert stats["queues"]["etl"]["waiting"] == 3 and stats["queues"]["etl"]["queued"] == 1
    # a waiting task's priority changes (its deps key stays)
    moved = await client.set_priority(children[0].id, 3)
    assert moved.state is TaskState.WAITING and moved.priority == 3
    assert len(await client.list(state=TaskState.WAITING)) == 3


async def test_a_reprioritised_waiting_child_is_released_with_its_new_priority(client, cluster):
    await cluster.scheduler()
    parent = await client.submit("noop")
    child = await client.submit("noop", depends_on=[parent.id])
    await client.set_priority(child.id, 3)
    await cluster.worker(types=types())
    done = await client.wait(child.id, timeout_s=WAIT_S)
    assert done.state is TaskState.SUCCEEDED and done.priority == 3


# workflows -----------------------------------------------------------------------------------
async def test_cancelling_a_workflow_cancels_every_unfinished_task(client, cluster, tmp_path: Path):
    await start(cluster)
    gate = tmp_path / "gate"
    wf = client.workflow(name="long")
    done_first = wf.add("noop")
    running = wf.add("wait_for_file", {"path": str(gate)}, after=[done_first])
    waiting = [wf.add("noop", after=[running]) for _ in range(5)]
    tail = wf.add("noop", after=waiting)
    workflow = await wf.submit()
    await client.wait(done_first.id, timeout_s=WAIT_S)

    async def is_running() -> None:
        while (await client.get(running.id)).state is not TaskState.RUNNING:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(is_running(), WAIT_S)
    cancelled = await client.cancel_workflow(workflow.id, "stop it")
    assert {t.id for t in cancelled} == {running.id, tail.id, *(w.id for w in waiting)}
    status = await client.workflow_status(workflow.id)
    assert status.finished
    assert status.states == {"succeeded": 1, "cancelled": 7}
    assert all(t.error == "stop it" for t in status.tasks[1:])
    # again: nothing left to cancel
    assert await client.cancel_workflow(tail.id) == []


async def test_a_workflow_too_large_for_one_transaction_is_written_in_order(client, cluster):
    # Given 150 tasks of 4 KiB (3 transactions of at most 64)
    await start(cluster, workers=2, concurrency=16)
    wf = client.workflow(name="wide")
    root = wf.add("number", {"n": 0})
    leaves = [wf.add("number", {"n": i, "pad": "y" * 4096}, after=[root]) for i in range(148)]
    sink = wf.add("total", after=leaves)
    workflow = await wf.submit()
    assert workflow.transactions == 3
    done = await client.wait(sink.id, timeout_s=WAIT_S)
    assert done.result == {"n": sum(range(148)), "parents": 148}


async def test_a_workflow_that_fails_part_way_names_what_was_written(
    store_config: StoreConfig, keyspace: Keyspace, store: Store
):
    # Given a store that refuses the second transaction that writes task records
    async with FaultyStore(store_config) as faulty:
        writes = {"n": 0}

        def second_write(compares, success, failure) -> bool:
            if any(isinstance(op, Put) and op.key.startswith(keyspace.tasks) for op in success):
                writes["n"] += 1
                return writes["n"] == 2
            return False

        faulty.fail("txn", lambda: StoreNoSpace("etcd is out of space"), when=second_write)
        client = Client(faulty, keyspace)
        try:
            wf = client.workflow(name="part")
            nodes = wf.chain(TaskSpec("noop", {"i": i}) for i in range(100))
            # When it is submitted (2 transactions: 63 tasks, then 37)
            with pytest.raises(BatchIncomplete) as caught:
                await wf.submit()
        finally:
            await client.close()
    # Then the first 63 were written, named by the error; the others show as missing
    assert [t.id for t in caught.value.written] == [n.id for n in nodes[:63]]
    async with Client(store, keyspace) as reader:
        status = await reader.workflow_status(nodes[0].id)
    assert status.states == {"queued": 1, "waiting": 62, "missing": 37}


async def test_a_workflow_from_its_json_form(client, cluster):
    await start(cluster)
    body = {
        "name": "from json",
        "tasks": [
            {"key": "a", "type": "number", "payload": {"n": 2}},
            {"key": "b", "type": "number", "payload": {"n": 3}, "priority": 2},
            {"key": "sum", "type": "async_total", "after": ["a", "b"]},
        ],
    }
    workflow = await client.submit_workflow(body)
    assert set(workflow.keys) == {"a", "b", "sum"}
    done = await client.wait(workflow.keys["sum"], timeout_s=WAIT_S)
    assert done.result["n"] == 5
    assert workflow.as_dict()["tasks"][1]["state"] == "queued"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({"tasks": []}, "non-empty"),
        ({"tasks": [{"type": "noop"}], "extra": 1}, "unknown workflow field"),
        ({"tasks": [{"type": "noop", "after": ["nope"]}]}, "tasks\\[0\\]"),
        ({"tasks": [{"key": "a", "type": "noop"}, {"key": "a", "type": "noop"}]}, "used twice"),
        ({"tasks": [{"type": "noop", "bogus": 1}]}, "unknown task field"),
        ({"tasks": [{"type": "noop", "after": "a"}]}, "after must be"),
    ],
)
async def test_a_bad_json_workflow_is_refused_with_one_line(client, body, message):
    with pytest.raises(InvalidOption, match=message):
        builder_from_dict(client.submitter, body)


async def test_an_unknown_workflow_is_not_found(client):
    with pytest.raises(WorkflowNotFound):
        await client.workflow_status(MISSING)
    plain = await client.submit("noop")
    with pytest.raises(WorkflowNotFound):
        await client.workflow_status(plain.id)
    with pytest.raises(WorkflowNotFound):
        await client.cancel_workflow(MISSING)


async def test_a_workflow_id_or_task_id_already_used_writes_nothing(client, store, keyspace):
    first = client.workflow()
    first.add("noop")
    workflow = await first.submit()
    again = client.workflow(workflow_id=workflow.id)
    again.add("noop")
    with pytest.raises(InvalidOption, match="already used"):
        await again.submit()
    assert len(await keys_under(store, keyspace.tasks)) == 1


# the leader ------------------------------------------------------------------------------------
async def test_a_new_leader_releases_children_whose_parents_finished_while_none_led(
    client, cluster, store, keyspace: Keyspace
):
    # Given a child waiting for a parent, and no scheduler: the parent is run to its end by
    # hand (its outcome written as a worker would), so nobody sees it finish
    parent = await client.submit("noop")
    child = await client.submit("noop", depends_on=[parent.id])
    kv, _ = await store.get(keyspace.task(parent.id))
    assert kv is not None
    record = codec.task_to_dict(codec.decode_task(kv.key, kv.value))
    record.update(state="succeeded", result={"ok": True})
    await store.put(keyspace.task(parent.id), codec.encode_obj(record))
    for key in await keys_under(store, keyspace.queues):
        await store.delete(key)
    # When a scheduler starts leading (its first look at every waiting child)
    await cluster.scheduler()
    await cluster.worker(types=types())
    # Then the child is released and runs, once
    done = await client.wait(child.id, timeout_s=WAIT_S)
    assert done.state is TaskState.SUCCEEDED and len(done.attempts) == 1


async def test_a_parent_whose_record_is_gone_cancels_its_child_and_a_deps_key_alone_is_dropped(
    client, cluster, store, keyspace
):
    # Given a child whose parent's record then vanished (expired, purged: here deleted by hand,
    # with its queue key), and a deps key whose task record was deleted
    parent = await client.submit("noop")
    child = await client.submit("noop", depends_on=[parent.id])
    orphan = await client.submit("noop", depends_on=[parent.id])
    await store.delete(keyspace.task(parent.id))
    for key in await keys_under(store, keyspace.queues):
        await store.delete(key)
    await store.delete(keyspace.task(orphan.id))
    # When a leader looks at them
    await cluster.scheduler()
    # Then the child is cancelled saying so, and the lone deps key is deleted
    done = await client.wait(child.id, timeout_s=WAIT_S)
    assert done.state is TaskState.CANCELLED
    assert done.error == f"parent {parent.id} no longer exists"

    async def deps_left() -> list[str]:
        while keys := await keys_under(store, keyspace.deps):
            await asyncio.sleep(0.05)
        return keys

    assert await asyncio.wait_for(deps_left(), WAIT_S) == []


async def test_a_release_refused_by_etcd_is_tried_again(client, cluster, store_config, keyspace):
    # Given a leader whose store refuses its first two release transactions (etcd unavailable)
    async with FaultyStore(store_config) as faulty:

        def releases(compares, success, failure) -> bool:
            return any(isinstance(op, Delete) and op.key.startswith(keyspace.deps) for op in success)

        fault = faulty.fail("txn", lambda: StoreUnavailable("etcd is away"), times=2, when=releases)
        scheduler = Scheduler(faulty, keyspace, SchedulerConfig(scheduler_id="faulty", lease_ttl_s=3))
        await scheduler.start()
        try:
            await cluster.worker(types=types())
            parent = await client.submit("number", {"n": 1})
            children = [
                await client.submit("seen", {"tag": str(i)}, depends_on=[parent.id]) for i in range(3)
            ]
            # When the parent succeeds, Then every child runs once all the same
            done = await finals(client, [c.id for c in children])
            assert all(t.state is TaskState.SUCCEEDED and len(t.attempts) == 1 for t in done)
            assert fault.fired == 2
        finally:
            await scheduler.stop()


def test_the_sync_client_submits_with_parents_and_workflows(etcd_endpoint, namespace):
    from tasklease import SyncClient

    with SyncClient(StoreConfig.from_text(etcd_endpoint), namespace=namespace) as sync:
        parent = sync.submit("noop")
        child = sync.submit("noop", depends_on=[parent.id], on_parent_failure="run")
        assert child.state is TaskState.WAITING and child.on_parent_failure == "run"
        wf = sync.workflow(name="sync")
        first = wf.add("noop")
        wf.add("noop", after=[first, parent.id])
        workflow = sync.submit_workflow(wf)
        assert sync.workflow_status(workflow.id).states == {"queued": 1, "waiting": 1}
        assert len(sync.cancel_workflow(first.id)) == 2
        with pytest.raises(WorkflowNotFound):
            sync.workflow_status(parent.id)
