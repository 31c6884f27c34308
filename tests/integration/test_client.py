"""The client against a real etcd: submit, read, list, cancel, priority, batch, wait."""

from __future__ import annotations

import asyncio
import random

import pytest

from tasklease import codec
from tasklease.client import TASKS_PER_TXN, Client, TaskSpec
from tasklease.errors import (
    InvalidOption,
    InvalidPayload,
    InvalidPriority,
    InvalidQueueName,
    InvalidTransition,
    PayloadTooLarge,
    TaskNotFound,
    WaitTimeout,
)
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Outcome, TaskState
from tasklease.store import Compare, Put, Store


async def queue_keys(store: Store, keys: Keyspace, queue: str = "default") -> list[str]:
    prefix = keys.queue(queue)
    result = await store.range(prefix, prefix_end(prefix), keys_only=True)
    return [kv.key for kv in result.kvs]


async def all_keys(store: Store, keys: Keyspace) -> list[str]:
    result = await store.range(keys.root, prefix_end(keys.root), keys_only=True)
    return [kv.key for kv in result.kvs]


async def test_submit_writes_record_and_queue_key(client: Client, store: Store, keyspace: Keyspace):
    # When a task is submitted
    task = await client.submit("noop", {"x": 1}, priority=3, queue="q1")
    # Then its record is stored and one queue key points at it
    stored = await client.get(task.id)
    assert stored == task
    assert stored.state is TaskState.QUEUED
    assert stored.payload == {"x": 1}
    keys = await queue_keys(store, keyspace, "q1")
    assert keys == [keyspace.queue_entry("q1", 3, task.seq, task.id, task.route)]


async def test_queue_order_is_priority_then_fifo(client: Client, store: Store, keyspace: Keyspace):
    # Given tasks submitted in a mixed priority order
    submitted = []
    for priority in [0, 2, 3, 0, 1, 3, 2, 0]:
        submitted.append(await client.submit("noop", priority=priority))
    # When the queue is read in plain ascending key order
    listed = await client.list(state=TaskState.QUEUED, queue="default")
    # Then higher priority comes first, FIFO within one priority
    expected = sorted(submitted, key=lambda t: (-t.priority, submitted.index(t)))
    assert [t.id for t in listed] == [t.id for t in expected]


async def test_invalid_input_writes_nothing(client: Client, store: Store, keyspace: Keyspace):
    with pytest.raises(InvalidPriority):
        await client.submit("noop", priority=7)
    with pytest.raises(InvalidQueueName):
        await client.submit("noop", queue="a/b")
    with pytest.raises(InvalidPayload):
        await client.submit("noop", {"f": float("nan")})
    with pytest.raises(PayloadTooLarge):
        await client.submit("noop", "x" * (codec.MAX_PAYLOAD_BYTES + 1))
    assert await all_keys(store, keyspace) == []


async def test_get_unknown_task(client: Client):
    with pytest.raises(TaskNotFound):
        await client.get("01J00000000000000000000000")
    with pytest.raises(TaskNotFound):
        await client.get("not-an-id")


async def test_list_filters_by_state_and_queue(client: Client):
    a = await client.submit("noop", queue="a")
    b = await client.submit("noop", queue="b")
    await client.cancel(b.id)
    assert [t.id for t in await client.list(queue="a")] == [a.id]
    assert [t.id for t in await client.list(state=TaskState.CANCELLED)] == [b.id]
    assert [t.id for t in await client.list()] == [a.id, b.id]
    assert len(await client.list(limit=1)) == 1


async def test_cancel_queued_removes_queue_key(client: Client, store: Store, keyspace: Keyspace):
    task = await client.submit("noop")
    cancelled = await client.cancel(task.id)
    assert cancelled.state is TaskState.CANCELLED
    assert (await client.get(task.id)).state is TaskState.CANCELLED
    assert await queue_keys(store, keyspace) == []
    # A finished task cannot be cancelled again
    with pytest.raises(InvalidTransition):
        await client.cancel(task.id)
    with pytest.raises(TaskNotFound):
        await client.cancel("01J00000000000000000000000")


async def test_priority_change_moves_queue_key(client: Client, store: Store, keyspace: Keyspace):
    first = await client.submit("noop", priority=0)
    second = await client.submit("noop", priority=0)
    # When the later task is raised to urgent
    raised = await client.set_priority(second.id, 3)
    # Then its record and its queue key move in one step, and it is dequeued first
    assert raised.priority == 3
    assert await queue_keys(store, keyspace) == [
        keyspace.queue_entry("default", 3, second.seq, second.id, second.route),
        keyspace.queue_entry("default", 0, first.seq, first.id, first.route),
    ]
    assert (await client.get(second.id)).priority == 3
    with pytest.raises(InvalidPriority):
        await client.set_priority(second.id, -1)
    await client.cancel(first.id)
    with pytest.raises(InvalidTransition):
        await client.set_priority(first.id, 2)


async def test_batch_submit_is_one_transaction_up_to_the_limit(
    client: Client, store: Store, keyspace: Keyspace
):
    specs = [TaskSpec("noop", {"i": i}, priority=i % 4) for i in range(TASKS_PER_TXN)]
    result = await client.submit_many(specs)
    assert result.transactions == 1
    assert result.atomic
    assert len(await queue_keys(store, keyspace)) == TASKS_PER_TXN
    # One transaction means one revision for all of them
    revisions = set()
    for task in result.tasks:
        kv, _ = await store.get(keyspace.task(task.id))
        assert kv is not None
        revisions.add(kv.mod_revision)
    assert len(revisions) == 1


async def test_batch_of_100_splits_and_says_so(client: Client, store: Store, keyspace: Keyspace):
    result = await client.submit_many(TaskSpec("noop", {"i": i}) for i in range(100))
    assert result.transactions == 2
    assert not result.atomic
    assert len(await queue_keys(store, keyspace)) == 100


async def test_batch_with_one_invalid_task_writes_nothing(client: Client, store: Store, keyspace: Keyspace):
    good = [TaskSpec("noop", {"i": i}) for i in range(10)]
    with pytest.raises(InvalidPriority):
        await client.submit_many([*good, TaskSpec("noop", priority=9)])  # invalid spec
    with pytest.raises(InvalidPayload):
        await client.submit_many([*good, TaskSpec("noop", {"x": {1, 2}})])
    assert await all_keys(store, keyspace) == []


async def test_batch_with_a_used_id_writes_nothing(client: Client, store: Store, keyspace: Keyspace):
    existing = await client.submit("noop")
    before = await all_keys(store, keyspace)
    specs = [TaskSpec("noop", {"i": i}) for i in range(5)] + [TaskSpec("noop", task_id=existing.id)]
    with pytest.raises(Exception, match="already used"):
        await client.submit_many(specs)
    assert await all_keys(store, keyspace) == before


async def finish(store: Store, keyspace: Keyspace, client: Client, task_id: str) -> None:
    """Play a worker: mark the task succeeded the way a worker's result transaction does."""
    from dataclasses import replace

    kv, _ = await store.get(keyspace.task(task_id))
    assert kv is not None
    task = codec.decode_task(kv.key, kv.value)
    done = replace(task, state=TaskState.SUCCEEDED, result={"ok": True})
    await store.txn(
        [Compare.unchanged(kv)],
        [Put(kv.key, codec.encode_task(done))],
    )


async def test_wait_wakes_on_a_change_by_another_client(
    client: Client, store_config, keyspace: Keyspace, store: Store
):
    task = await client.submit("noop")
    # Given a second, independent connection that will finish the task
    async with Store(store_config) as other:
        waiter = asyncio.create_task(client.wait(task.id, timeout_s=10))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        other_client = Client(other, keyspace)
        await finish(other, keyspace, other_client, task.id)
        final = await asyncio.wait_for(waiter, 5)
    assert final.state is TaskState.SUCCEEDED
    assert await client.result(task.id, timeout_s=1) == {"ok": True}


async def test_wait_returns_at_once_for_a_finished_task_and_times_out_otherwise(client: Client):
    task = await client.submit("noop")
    with pytest.raises(WaitTimeout):
        await client.wait(task.id, timeout_s=0.3)
    await client.cancel(task.id)
    assert (await client.wait(task.id, timeout_s=1)).state is TaskState.CANCELLED


async def test_cancel_of_an_assigned_task_deletes_its_assignment(
    client: Client, store: Store, keyspace: Keyspace
):
    # Given a task that a scheduler has assigned (written as the scheduler will)
    from dataclasses import replace

    from tasklease.models import Attempt

    task = await client.submit("noop")
    kv, _ = await store.get(keyspace.task(task.id))
    assert kv is not None
    running = replace(task, state=TaskState.RUNNING, attempts=(Attempt(1, "w1", 1.0),))
    assert (
        await store.txn(
            [Compare.unchanged(kv)],
            [
                Put(kv.key, codec.encode_task(running)),
                Put(keyspace.assignment("w1", task.id), b"{}"),
                Put(keyspace.running_entry(task.id), b"{}"),
            ],
        )
    ).succeeded
    # When it is cancelled
    cancelled = await client.cancel(task.id)
    # Then the attempt ends cancelled and the assignment (the worker's signal) is gone
    assert cancelled.state is TaskState.CANCELLED
    assert cancelled.attempts[-1].outcome is Outcome.CANCELLED
    assert (await store.get(keyspace.assignment("w1", task.id)))[0] is None
    assert (await store.get(keyspace.running_entry(task.id)))[0] is None


class GatedStore(Store):
    """The real store; a chosen transaction waits at a gate before it is sent.

    Drives an interleaving deterministically: the transaction has been prepared
    from a read, and is held until the test has let the other party write.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hold_key: str | None = None  # hold the next txn that puts this key
        self.held = asyncio.Event()
        self.gate = asyncio.Event()
        self.txns_putting: dict[str, int] = {}

    async def txn(self, compares, success, failure=(), **kwargs):
        for op in success:
            if isinstance(op, Put):
                self.txns_putting[op.key] = self.txns_putting.get(op.key, 0) + 1
        if self.hold_key is not None and any(
            isinstance(op, Put) and op.key == self.hold_key for op in success
        ):
            self.hold_key = None
            self.held.set()
            await self.gate.wait()
        return await super().txn(compares, success, failure, **kwargs)


@pytest.mark.parametrize("first", ["cancel", "priority"])
async def test_cancel_and_priority_race_both_outcomes(
    client: Client, store_config, keyspace: Keyspace, store: Store, first: str
):
    # Given a queued task and two clients about to cancel it and raise its priority
    task = await client.submit("noop", priority=0)
    async with GatedStore(store_config) as gated_store:
        gated = Client(gated_store, keyspace)
        # the later party has read the record and prepared its transaction: hold it there
        gated_store.hold_key = keyspace.task(task.id)
        if first == "cancel":
            late = asyncio.create_task(gated.set_priority(task.id, 3))
        else:
            late = asyncio.create_task(gated.cancel(task.id))
        async with asyncio.timeout(30):  # hang guard only
            await gated_store.held.wait()
            # When the other party writes first ...
            if first == "cancel":
                early = await client.cancel(task.id)
                assert early.state is TaskState.CANCELLED and early.priority == 0
            else:
                early = await client.set_priority(task.id, 3)
                assert early.state is TaskState.QUEUED and early.priority == 3
            # ... and then the held transaction goes (its compare fails: it re-reads)
            gated_store.gate.set()
            late_result = await asyncio.gather(late, return_exceptions=True)
        await gated.close()
    final = await client.get(task.id)
    assert final.state is TaskState.CANCELLED
    assert await queue_keys(store, keyspace) == []
    if first == "cancel":
        # Then the priority change finds the task cancelled and refuses; the record
        # keeps the priority it had when it was cancelled
        assert isinstance(late_result[0], InvalidTransition), late_result
        assert final.priority == 0
        assert gated_store.txns_putting[keyspace.task(task.id)] == 1  # the held one, which failed
    else:
        # Then the cancel, on its second try, cancels the task at its new priority and
        # deletes the queue key of its new band (none is left behind)
        assert not isinstance(late_result[0], BaseException), late_result
        assert late_result[0].state is TaskState.CANCELLED
        assert gated_store.txns_putting[keyspace.task(task.id)] == 2  # the held one failed
        assert final.priority == 3


async def test_cancel_and_priority_race_leaves_one_consistent_state(
    client: Client, store_config, keyspace: Keyspace, store: Store
):
    # Two independent clients race cancel against a priority change, many times.
    async with Store(store_config) as other_store:
        other = Client(other_store, keyspace)
        rng = random.Random(7)
        for _ in range(40):
            task = await client.submit("noop", priority=0)
            new_priority = rng.randint(1, 3)
            results = await asyncio.gather(
                client.cancel(task.id),
                other.set_priority(task.id, new_priority),
                return_exceptions=True,
            )
            final = await client.get(task.id)
            keys = await queue_keys(store, keyspace)
            # Then: the task is cancelled (cancel always wins eventually or first) ...
            assert final.state is TaskState.CANCELLED
            assert not isinstance(results[0], BaseException)
            # ... no queue key is left behind, whichever order they ran in, and the
            # record's priority says which: the new one if the change came first
            assert keys == []
            if isinstance(results[1], InvalidTransition):
                assert final.priority == 0
            else:
                assert not isinstance(results[1], BaseException), results[1]
                assert final.priority == new_priority
        await other.close()


async def test_task_ids_are_read_case_insensitively(client: Client):
    task = await client.submit("noop", priority=0)
    lower = task.id.lower()
    assert (await client.get(lower)).id == task.id
    assert (await client.set_priority(lower, 2)).priority == 2
    assert (await client.get(task.id)).priority == 2
    cancelled = await client.cancel(f" {lower} ")
    assert cancelled.id == task.id and cancelled.state is TaskState.CANCELLED
    assert (await client.wait(lower, timeout_s=5)).state is TaskState.CANCELLED
    with pytest.raises(TaskNotFound, match="malformed task id 'not-an-id'"):
        await client.wait("not-an-id", timeout_s=1)
    with pytest.raises(TaskNotFound, match="malformed task id"):
        await client.cancel("x")


async def test_concurrent_priority_changes_keep_exactly_one_queue_key(
    client: Client, store_config, keyspace: Keyspace, store: Store
):
    async with Store(store_config) as other_store:
        other = Client(other_store, keyspace)
        for _ in range(25):
            task = await client.submit("noop", priority=0)
            await asyncio.gather(client.set_priority(task.id, 1), other.set_priority(task.id, 3))
            final = await client.get(task.id)
            keys = await queue_keys(store, keyspace)
            assert keys == [keyspace.queue_entry("default", final.priority, final.seq, final.id, final.route)]
            await client.cancel(task.id)


async def test_concurrent_submits_are_grouped_and_each_is_durable(
    client: Client, store: Store, keyspace: Keyspace
):
    # When 200 tasks are submitted concurrently on one client
    tasks = await asyncio.gather(*(client.submit("noop", {"i": i}) for i in range(200)))
    # Then each is stored with its queue key ...
    assert len(await queue_keys(store, keyspace)) == 200
    revisions = set()
    for task in tasks:
        kv, _ = await store.get(keyspace.task(task.id))
        assert kv is not None and codec.decode_task(kv.key, kv.value) == task
        revisions.add(kv.mod_revision)
    # ... by far fewer transactions than tasks (group commit), FIFO kept
    assert len(revisions) < 50
    listed = await client.list(state=TaskState.QUEUED, queue="default", limit=200)
    assert [t.id for t in listed] == [t.id for t in sorted(tasks, key=lambda t: t.seq)]


async def test_a_used_id_in_a_group_fails_alone(client: Client, store: Store, keyspace: Keyspace):
    existing = await client.submit("noop")
    results = await asyncio.gather(
        *(client.submit("noop", {"i": i}) for i in range(10)),
        client.submit("noop", task_id=existing.id),
        return_exceptions=True,
    )
    assert isinstance(results[-1], Exception) and "already used" in str(results[-1])
    assert all(not isinstance(r, BaseException) for r in results[:-1])
    assert len(await queue_keys(store, keyspace)) == 11


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0, -1, "5", True])
async def test_wait_and_stats_refuse_non_finite_or_non_positive_times(client: Client, bad):
    task = await client.submit("noop")
    with pytest.raises(InvalidOption, match="finite number of seconds > 0"):
        await client.wait(task.id, timeout_s=bad)
    with pytest.raises(InvalidOption, match="finite number of seconds > 0"):
        await client.stats(window_s=bad)
