"""The pure parts of idempotent submit: its transaction parts, finishes, and how writes are cut."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasklease import codec, transitions
from tasklease.clock import FakeClock
from tasklease.errors import CorruptRecord
from tasklease.groupcommit import GroupCommit, Pending, first_group_len
from tasklease.ids import IdGenerator
from tasklease.keys import Keyspace
from tasklease.models import Attempt, Outcome, Task, TaskState, evolve
from tasklease.retry import RetryPolicy
from tasklease.store import KV, MAX_TXN_BYTES, MAX_TXN_OPS, Compare, Get, Put
from tasklease.store_types import check_txn_size
from tasklease.submitter import BatchResult, chunk, duplicate_of, txn_cost, txn_ops

KEYS = Keyspace("ns")
IDS = IdGenerator(FakeClock())


def new_task(key: str | None = None, *, payload_bytes: int = 16, **changes: object) -> Task:
    task = Task(
        id=IDS.task_id(), type="t", payload="x" * payload_bytes, seq=IDS.sequence(), idempotency_key=key
    )
    return evolve(task, **changes) if changes else task


def key_kv(holder: str, revision: int = 7) -> KV:
    value = codec.encode_obj({"id": holder, "key": "k"})
    return KV(KEYS.unique("k"), value, create_revision=5, mod_revision=revision, version=1)


# the submit's transaction -------------------------------------------------------------------------
def test_a_task_with_a_key_takes_it_in_its_enqueue_transaction():
    # Given a new task with an idempotency key
    task = new_task("order-1")
    data = codec.encode_task(task)

    # When its enqueue transaction is built
    txn = transitions.enqueue(KEYS, task, data)

    # Then it also compares the key absent, puts it (no lease: held until the record expires),
    # and reads it if a compare fails
    key = KEYS.unique("order-1")
    assert txn.compares == [Compare.absent(KEYS.task(task.id)), Compare.absent(key)]
    assert txn.ops[-1] == Put(key, transitions.unique_value(task), lease=0)
    assert len(txn.ops) == 3
    assert txn.failure == [Get(key)]
    assert codec.decode_obj(key, transitions.unique_value(task)) == {"id": task.id, "key": "order-1"}


def test_a_task_without_a_key_is_unchanged():
    task = new_task()
    txn = transitions.enqueue(KEYS, task, codec.encode_task(task))
    assert len(txn.compares) == 1 and len(txn.ops) == 2 and txn.failure == []


def test_unique_for_puts_the_key_under_the_lease_given():
    task = new_task("k", unique_until=100.0)
    txn = transitions.enqueue(KEYS, task, codec.encode_task(task), unique_lease=42)
    assert txn.ops[-1] == Put(KEYS.unique("k"), transitions.unique_value(task), lease=42)


def test_a_stale_key_is_taken_over_only_if_unchanged_and_its_holder_still_gone():
    # Given the key as read, held by a task whose record was found gone
    task = new_task("k")
    held = key_kv("01HOLDERHOLDERHOLDERHOLDER", revision=9)

    # When the enqueue takes it over
    txn = transitions.enqueue(KEYS, task, codec.encode_task(task), held=held)

    # Then it compares the key's mod revision and the holder's record absent (never a live holder's key)
    assert txn.compares[1:] == [
        Compare(KEYS.unique("k"), "mod", "=", 9),
        Compare.absent(KEYS.task("01HOLDERHOLDERHOLDERHOLDER")),
    ]


@pytest.mark.parametrize("value", [b"not json", b"[]", b'{"key": "k"}', b'{"id": 5}', b'{"id": ""}'])
def test_a_corrupt_key_value_is_a_corrupt_record(value):
    kv = KV(KEYS.unique("k"), value, 1, 1, 1)
    with pytest.raises(CorruptRecord):
        transitions.unique_holder(kv)


# finishes -----------------------------------------------------------------------------------------
def test_a_finish_puts_the_key_again_under_the_records_lease():
    # Given a running task with a key held until its record expires, ending
    task = new_task("k")
    done = evolve(task, state=TaskState.SUCCEEDED)

    # When a finish's extra ops are built
    ops = transitions.finished_ops(KEYS, done, 77)

    # Then its key is put again, naming it, under the record's retention lease
    assert len(ops) == 2
    assert ops[1] == Put(KEYS.unique("k"), transitions.unique_value(done), lease=77)


def test_a_finish_leaves_a_unique_for_key_alone():
    # (its lease may have run out and another task may hold the key now)
    done = new_task("k", unique_until=50.0, state=TaskState.FAILED)
    assert [op.key for op in transitions.finished_ops(KEYS, done, 77)] == [
        transitions.finished_entry(KEYS, done, 77).key
    ]


def test_a_cancel_writes_the_key_with_the_cancelled_record():
    task = new_task("k", state=TaskState.QUEUED)
    kv = KV(KEYS.task(task.id), codec.encode_task(task), 3, 3, 1)
    txn = transitions.rewrite(KEYS, kv, task, transitions.cancelled(task, "no", 1.0), lease=5)
    assert Put(KEYS.unique("k"), transitions.unique_value(task), lease=5) in txn.ops


@pytest.mark.parametrize("key", [None, "k"])
@pytest.mark.parametrize("unique_until", [None, 99.0])
@pytest.mark.parametrize(
    ("outcome", "retries"),
    [(Outcome.SUCCEEDED, 0), (Outcome.FAILED, 0), (Outcome.FAILED, 1), (Outcome.HANDED_BACK, 0)],
)
def test_outcome_ops_counts_what_record_outcome_writes(key, unique_until, outcome, retries):
    # Given a running task ending one of the ways a worker records
    task = new_task(
        key,
        unique_until=unique_until if key else None,
        state=TaskState.RUNNING,
        retry=RetryPolicy(max_retries=retries, backoff_s=0),
        attempts=(Attempt(number=1, worker="w", started_at=1.0),),
    )
    new = transitions.next_record(task, outcome, now=2.0, rng=random.Random(1), new_seq=9, error="e")

    # Then outcome_ops is exactly the number of ops its transaction writes (at most 5)
    ops = transitions.record_outcome(KEYS, "w", 3, new, lease=8).ops
    assert transitions.outcome_ops(new) == len(ops) <= 5


# cutting writes -----------------------------------------------------------------------------------
def test_duplicate_of_points_each_task_at_the_first_with_its_key():
    tasks = [
        new_task("a"),
        new_task(),
        new_task("b"),
        new_task("a"),
        new_task(),
        new_task("b"),
        new_task("a"),
    ]
    assert duplicate_of(tasks) == [0, 1, 2, 0, 4, 2, 0]


def test_txn_ops_counts_the_key():
    assert txn_ops(new_task()) == 2
    assert txn_ops(new_task("k")) == 3
    assert txn_cost(new_task("k" * 512), b"x") > txn_cost(new_task(), b"x") + 1000


@pytest.mark.parametrize("key", [None, "k"])
@pytest.mark.parametrize("expires", [None, 2e9])
@pytest.mark.parametrize("shape", ["queued", "pending", "waiting"])
def test_txn_ops_counted_once_per_shape_equals_the_transaction(key, expires, shape):
    changes: dict[str, Any] = {"expires_at": expires}
    if shape == "pending":
        changes.update(state=TaskState.PENDING, not_before=2e9)
    elif shape == "waiting":
        changes.update(state=TaskState.WAITING, depends_on=(IDS.task_id(),))
    for _ in range(2):  # the second time from the cache
        task = new_task(key, **changes)
        assert txn_ops(task) == len(transitions.enqueue(KEYS, task, b"{}").ops)


def test_a_batch_of_keyed_tasks_is_cut_at_128_operations():
    # Given 100 tasks with keys (3 puts and 2 compares each)
    tasks = [new_task(f"key-{i}") for i in range(100)]
    chunks = chunk(tasks, [codec.encode_task(t) for t in tasks])

    # Then 42 go in a transaction (126 operations), not 64
    assert [len(c) for c in chunks] == [42, 42, 16]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.text(min_size=1, max_size=512).filter(lambda s: s.isprintable())),
            st.sampled_from([0, 1_000, 100_000, 600_000]),
        ),
        min_size=1,
        max_size=150,
    )
)
def test_every_chunk_of_a_mixed_batch_fits_one_transaction(specs):
    # Given tasks with and without keys (up to 512 characters), of various sizes
    tasks = [new_task(key, payload_bytes=size) for key, size in specs]
    encoded = [codec.encode_task(t) for t in tasks]

    # When the batch is cut
    chunks = chunk(tasks, encoded)

    # Then each chunk's real transaction is within etcd's limits, even taking over every key
    assert [t for c in chunks for t, _ in c] == tasks
    for part in chunks:
        txn = transitions.Txn()
        for task, data in part:
            held = None if task.idempotency_key is None else key_kv("01HOLDERHOLDERHOLDERHOLDER")
            txn.extend(transitions.enqueue(KEYS, task, data, unique_lease=1, held=held))
        if len(part) > 1:
            check_txn_size(txn.compares, txn.ops, txn.failure)
            assert txn.size() <= MAX_TXN_BYTES
        assert len(txn.ops) <= MAX_TXN_OPS


def test_first_group_len_stops_at_the_weight_limit():
    assert first_group_len([1] * 64, 64, 10**6, [3] * 64, 128) == 42
    assert first_group_len([1] * 64, 64, 10**6, [2] * 64, 128) == 64
    assert first_group_len([1, 1], 64, 10**6, [500, 1], 128) == 1  # the first always goes


async def test_group_commit_cuts_groups_by_weight():
    # Given a group commit whose items weigh 3 or 2 operations, 10 at most per group
    groups: list[list[int]] = []
    gate = asyncio.Event()

    async def write(group: list[Pending[int, int]]) -> None:
        groups.append([p.item for p in group])
        if len(groups) == 1:
            await gate.wait()
        for p in group:
            p.settle(p.item)

    gc: GroupCommit[int, int] = GroupCommit(
        write,
        cost=lambda i: 1,
        max_items=64,
        max_bytes=10**6,
        name="t",
        weight=lambda i: 3 if i % 2 else 2,
        max_weight=10,
    )
    first = asyncio.create_task(gc.submit(0))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(gc.submit(i)) for i in range(1, 9)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *rest)

    # Then each group weighs at most 10: [1,2,3,4] weighs 3+2+3+2
    assert groups == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]


def test_batch_result_says_which_tasks_are_new():
    a, b = new_task("a"), new_task("b")
    result = BatchResult([a, b, a], 1, [True, True, False])
    assert result.existing == [a]
    assert BatchResult([a, b], 1).created == [True, True]  # built without it: all new
