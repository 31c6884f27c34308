"""TaskSpec validation and how ``submit_many`` splits a batch into etcd transactions."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasklease import codec
from tasklease.client import TASKS_PER_TXN, Client, TaskSpec, _chunk
from tasklease.clock import FakeClock
from tasklease.codec import MAX_PAYLOAD_BYTES, MAX_QUEUED_RECORD_BYTES
from tasklease.errors import (
    InvalidOption,
    InvalidPayload,
    InvalidPriority,
    InvalidQueueName,
    PayloadTooLarge,
    ValidationError,
)
from tasklease.ids import IdGenerator
from tasklease.keys import Keyspace
from tasklease.models import Task
from tasklease.store import MAX_TXN_BYTES, MAX_TXN_OPS, Store, txn_size

IDS = IdGenerator(FakeClock())


def make_tasks(count, payload_bytes=0):
    """``count`` distinct tasks, each with a string payload of ``payload_bytes``."""
    return [
        Task(id=IDS.task_id(), type="t", payload="x" * payload_bytes, seq=IDS.sequence())
        for _ in range(count)
    ]


def txn_bytes(chunk):
    """The request size of the transaction ``submit_many`` sends for ``chunk``."""
    client = Client(Store(), Keyspace())  # never connected: only builds the ops
    total = 0
    for task, data in chunk:
        compare, ops = client._submit_ops(task, data)
        total += txn_size(ops) + len(compare.key) + 16
    return total


def assert_valid_split(tasks, chunks):
    """Every task once, in order; every chunk fits one etcd transaction."""
    assert [t for chunk in chunks for t, _ in chunk] == tasks
    for chunk in chunks:
        assert 1 <= len(chunk) <= TASKS_PER_TXN
        assert len(chunk) * 3 <= 2 * MAX_TXN_OPS  # 1 compare + 2 puts per task
        assert txn_bytes(chunk) <= MAX_TXN_BYTES


# TaskSpec validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"priority": 5}, InvalidPriority),
        ({"priority": -1}, InvalidPriority),
        ({"priority": True}, InvalidPriority),
        ({"priority": "2"}, InvalidPriority),
        ({"queue": "a/b"}, InvalidQueueName),
        ({"queue": ""}, InvalidQueueName),
        ({"queue": "q" * 65}, InvalidQueueName),
        ({"payload": {1, 2}}, InvalidPayload),
        ({"payload": {"when": object()}}, InvalidPayload),
        ({"payload": [float("nan")]}, InvalidPayload),
        ({"payload": b"raw bytes"}, InvalidPayload),
        ({"payload": "x" * MAX_PAYLOAD_BYTES}, PayloadTooLarge),
        ({"task_id": "nope"}, InvalidOption),
        ({"task_id": ""}, InvalidOption),
        ({"task_id": "01hzzzzzzzzzzzzzzzzzzzzzzz"}, InvalidOption),
        ({"task_id": "01HZZZZZZZZZZZZZZZZZZZZZZZZ"}, InvalidOption),
        ({"timeout_s": 0}, InvalidOption),
        ({"type": ""}, InvalidOption),
    ],
    ids=lambda v: repr(v)[:60],
)
def test_bad_spec_raises_the_matching_validation_error(kwargs, error):
    # Given spec arguments with one bad field
    args = {"type": "t"} | kwargs

    # When / Then building the spec raises that field's error, a ValidationError
    with pytest.raises(error) as info:
        TaskSpec(**args)
    assert isinstance(info.value, ValidationError)


def test_good_spec_is_accepted():
    # Given / When a spec with every field set is built
    task_id = IDS.task_id()
    spec = TaskSpec("t", {"n": 1}, queue="q.1", priority=3, timeout_s=5, task_id=task_id)

    # Then it keeps them
    assert (spec.queue, spec.priority, spec.task_id) == ("q.1", 3, task_id)


# _chunk -------------------------------------------------------------------------------------


def test_small_tasks_are_split_at_tasks_per_txn():
    # Given 200 small tasks
    tasks = make_tasks(200, payload_bytes=10)
    encoded = [codec.encode_task(t) for t in tasks]

    # When the batch is split
    chunks = _chunk(tasks, encoded)

    # Then it takes ceil(200 / 64) transactions of at most 64 tasks each
    assert TASKS_PER_TXN == 64
    assert [len(c) for c in chunks] == [64, 64, 64, 8]
    assert len(chunks) == math.ceil(200 / TASKS_PER_TXN)
    assert_valid_split(tasks, chunks)


def test_large_tasks_are_split_by_bytes():
    # Given five tasks whose records are about 300 KB each (written twice per
    # submit: the record and its queue key, whose value is the record)
    tasks = make_tasks(5, payload_bytes=300_000)
    encoded = [codec.encode_task(t) for t in tasks]

    # When the batch is split
    chunks = _chunk(tasks, encoded)

    # Then two fit a transaction, three would not, and no chunk is over the byte limit
    assert [len(c) for c in chunks] == [2, 2, 1]
    assert_valid_split(tasks, chunks)


def test_small_tasks_after_a_large_one_share_its_transaction_when_they_fit():
    # Given one ~300 KB task followed by small ones, then another large one
    tasks = make_tasks(1, 300_000) + make_tasks(10, 10) + make_tasks(1, 300_000) + make_tasks(1, 300_000)
    encoded = [codec.encode_task(t) for t in tasks]

    # When the batch is split
    chunks = _chunk(tasks, encoded)

    # Then bytes, not task counts, decide: 12 tasks, then the last large one
    assert [len(c) for c in chunks] == [12, 1]
    assert_valid_split(tasks, chunks)


def test_a_record_at_the_size_limit_fits_a_transaction_alone():
    # Given tasks whose records are just under the queued-record limit
    tasks = make_tasks(3, payload_bytes=MAX_QUEUED_RECORD_BYTES - 2000)
    encoded = [codec.encode_task(t) for t in tasks]
    assert all(len(d) <= MAX_QUEUED_RECORD_BYTES for d in encoded)

    # When the batch is split
    chunks = _chunk(tasks, encoded)

    # Then each goes alone and still fits
    assert [len(c) for c in chunks] == [1, 1, 1]
    assert_valid_split(tasks, chunks)


def test_empty_batch_has_no_chunks():
    # Given / When / Then nothing to submit means no transaction
    assert _chunk([], []) == []


def test_tasks_and_records_must_pair_up():
    # Given more tasks than records
    tasks = make_tasks(2)

    # When / Then splitting refuses the mismatch
    with pytest.raises(ValueError, match="zip"):
        _chunk(tasks, [codec.encode_task(tasks[0])])


RECORD_SIZES = [0, 1_000, 50_000, 300_000, 600_000, MAX_QUEUED_RECORD_BYTES - 2000]
RECORDS = {size: codec.encode_task(make_tasks(1, size)[0]) for size in RECORD_SIZES}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(RECORD_SIZES), max_size=150))
def test_any_batch_splits_into_transactions_etcd_accepts(sizes):
    # Given a batch mixing records of many sizes
    tasks = make_tasks(len(sizes))
    encoded = [RECORDS[size] for size in sizes]

    # When it is split
    chunks = _chunk(tasks, encoded)

    # Then every task is sent once, in order, and each transaction fits etcd's limits
    assert_valid_split(tasks, chunks)
