"""transitions.py: which keys each transition writes, and that every one is checked against the table."""

from __future__ import annotations

import dataclasses
import random

import orjson
import pytest

from tasklease import codec, transitions
from tasklease.errors import InvalidTransition
from tasklease.keys import Keyspace
from tasklease.models import Attempt, Outcome, Task, TaskState
from tasklease.recovery import decode_running, running_view
from tasklease.retry import RetryPolicy
from tasklease.store import KV, Compare, Delete, Get, Put

K = Keyspace("ns")
NOW = 1_700_000_000.0
TASK_ID = "01HZZZZZZZZZZZZZZZZZZZZZZZ"
FENCE = Compare.created_at(K.leader, 7)


def queued(**changes: object) -> Task:
    base: dict[str, object] = {
        "id": TASK_ID,
        "type": "t",
        "payload": {"x": "y" * 4500},
        "seq": 10**15,
        "priority": 1,
        "state": TaskState.QUEUED,
    }
    base.update(changes)
    return Task(**base)  # type: ignore[arg-type]


def running(worker: str = "w1", **changes: object) -> Task:
    attempt = Attempt(number=1, worker=worker, started_at=NOW)
    return queued(state=TaskState.RUNNING, attempts=(attempt,), **changes)


def kv(key: str, task: Task, revision: int = 5) -> KV:
    return KV(key, codec.encode_task(task), revision, revision, 0)


def keys_of(ops: list) -> list[tuple[str, str]]:
    return [(type(op).__name__, op.key) for op in ops]


def test_enqueue_writes_the_record_and_its_queue_key_without_the_payload_if_the_id_is_free():
    task = queued(payload={"blob": "x" * 4500})
    data = codec.encode_task(task)
    txn = transitions.enqueue(K, task, data)
    assert txn.compares == [Compare.absent(K.task(TASK_ID))]
    assert keys_of(txn.ops) == [("Put", K.task(TASK_ID)), ("Put", transitions.queue_key(K, task))]
    record, entry = txn.ops
    assert isinstance(record, Put) and record.value == data
    # The queue key's value: the record without its payload (written once), with the record's size.
    assert isinstance(entry, Put) and entry.value == codec.encode_index_record(task, len(data))
    assert b"x" * 100 not in entry.value and len(entry.value) < 1000 < 4500 < len(data)
    slim = codec.decode_task(entry.key, entry.value)
    assert slim.payload_omitted and slim.payload is None
    assert dataclasses.replace(slim, payload=task.payload, payload_omitted=False) == task
    assert codec.index_record_bytes(entry.value) == len(data)
    with pytest.raises(ValueError, match="without its payload"):
        codec.encode_task(slim)  # never written as a record


@pytest.mark.parametrize("state", [TaskState.RUNNING, TaskState.PENDING, TaskState.SUCCEEDED])
def test_enqueue_refuses_a_task_that_is_not_new_and_queued(state):
    with pytest.raises(InvalidTransition):
        transitions.enqueue(K, queued(state=state), b"{}")


def test_assign_claims_the_queue_key_and_record_and_writes_assignment_and_running_entry():
    task = queued()
    qkey = transitions.queue_key(K, task)
    pick = transitions.Pick(kv(qkey, task), kv(K.task(TASK_ID), task), "w1", lease=42)
    txn, run = transitions.assign(K, pick, NOW)
    assert run.state is TaskState.RUNNING and run.attempts[-1].worker == "w1"
    assert txn.compares == [Compare.unchanged(pick.queue_kv), Compare.unchanged(pick.record_kv)]
    # The record is not written: the attempt lives in the assignment and the running entry.
    assert keys_of(txn.ops) == [
        ("Delete", qkey),
        ("Put", K.assignment("w1", TASK_ID)),
        ("Put", K.running_entry(TASK_ID)),
    ]
    assignment, entry = txn.ops[1], txn.ops[2]
    assert isinstance(assignment, Put) and assignment.lease == 42
    assert isinstance(entry, Put) and entry.lease == 0 and entry.value == assignment.value
    value = orjson.loads(assignment.value)
    assert value == {
        "worker": "w1",
        "n": 1,
        "deadline": NOW + task.timeout_s,
        "t": task.timeout_s,
        "q": task.queue,
        "ty": task.type,
        "s": NOW,
        "rv": pick.record_kv.mod_revision,
    }
    # What readers, the worker and the repairs see: the record plus the entry's attempt.
    seen = running_view(
        pick.record_kv, task, decode_running(K, KV(K.running_entry(TASK_ID), entry.value, 9, 9, 0))
    )
    assert seen == run


def test_assign_refuses_a_record_that_is_not_queued():
    task = running()
    pick = transitions.Pick(kv("q", task), kv(K.task(TASK_ID), task), "w2", lease=1)
    with pytest.raises(InvalidTransition):
        transitions.assign(K, pick, NOW)


@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        (Outcome.SUCCEEDED, TaskState.SUCCEEDED),
        (Outcome.FAILED, TaskState.QUEUED),  # no backoff: queued again at once
        (Outcome.HANDED_BACK, TaskState.QUEUED),
        (Outcome.LOST, TaskState.QUEUED),
    ],
)
def test_next_record_follows_decide(outcome, state):
    task = running(retry=RetryPolicy(max_retries=3, backoff_s=0.0, jitter=0.0))
    new = transitions.next_record(task, outcome, now=NOW, rng=random.Random(1), new_seq=99, error="e")
    assert new.state is state
    assert new.attempts[-1].outcome is outcome
    # a retry goes to the back; lost and handed back keep their place
    assert new.seq == (99 if outcome is Outcome.FAILED else task.seq)


def test_a_retry_request_replaces_the_backoff_and_still_counts_against_max_retries():
    task = running(retry=RetryPolicy(max_retries=1, backoff_s=1.0, jitter=0.0))
    new = transitions.next_record(
        task, Outcome.FAILED, now=NOW, rng=random.Random(1), new_seq=1, error="later", retry_after=30.0
    )
    assert new.state is TaskState.PENDING and new.not_before == NOW + 30.0
    second = transitions.next_record(
        transitions.assign(
            K,
            transitions.Pick(
                kv("q", promoted := queued(attempts=new.attempts, seq=2)),
                kv(K.task(TASK_ID), promoted),
                "w1",
                1,
            ),
            NOW + 31,
        )[1],
        Outcome.FAILED,
        now=NOW + 32,
        rng=random.Random(1),
        new_seq=3,
        error="again",
        retry_after=30.0,
    )
    assert second.state is TaskState.FAILED


def test_next_record_refuses_a_task_that_is_not_running():
    with pytest.raises(InvalidTransition):
        transitions.next_record(queued(), Outcome.SUCCEEDED, now=NOW, rng=random.Random(), new_seq=1)


def test_record_outcome_is_fenced_on_the_assignment_and_places_a_retry():
    new = queued(attempts=running().attempts, seq=77)
    txn = transitions.record_outcome(K, "w1", 12, new, lease=0)
    assert txn.compares == [
        Compare.created_at(K.assignment("w1", TASK_ID), 12),
        Compare(K.task(TASK_ID), "mod", "=", 12),
    ]
    assert keys_of(txn.ops) == [
        ("Put", K.task(TASK_ID)),
        ("Delete", K.assignment("w1", TASK_ID)),
        ("Delete", K.running_entry(TASK_ID)),
        ("Put", transitions.queue_key(K, new)),
    ]
    assert txn.failure == [Get(K.assignment("w1", TASK_ID))]
    with pytest.raises(InvalidTransition):
        transitions.record_outcome(K, "w1", 12, running())


def test_record_outcome_is_fenced_on_the_record_as_it_was_assigned():
    # An assignment does not write the record: the outcome compares the record's revision then.
    new = queued(attempts=running().attempts, seq=77)
    txn = transitions.record_outcome(K, "w1", 12, new, record_revision=7)
    assert txn.compares == [
        Compare.created_at(K.assignment("w1", TASK_ID), 12),
        Compare(K.task(TASK_ID), "mod", "=", 7),
    ]


def test_a_write_of_a_queued_record_is_fenced_on_its_queue_key_an_assignment_deletes():
    old = queued()
    record_kv = kv(K.task(TASK_ID), old, revision=5)
    for new in (transitions.cancelled(old, "x", NOW), transitions.reprioritised(old, 3, NOW)):
        txn = transitions.rewrite(K, record_kv, old, new)
        assert txn.compares == [
            Compare.unchanged(record_kv),
            Compare(transitions.queue_key(K, old), "mod", "=", 5),
        ]
    pending = queued(state=TaskState.PENDING, not_before=NOW + 5)
    txn = transitions.rewrite(
        K, kv(K.task(TASK_ID), pending), pending, transitions.cancelled(pending, "x", NOW)
    )
    assert len(txn.compares) == 1  # a pending task is never assigned


def test_cancel_of_a_running_task_seen_through_its_entry_is_fenced_on_the_entry():
    record = queued()
    record_kv = kv(K.task(TASK_ID), record, revision=5)
    entry_value = transitions.running_value(transitions.running_record(record, "w1", 1, NOW), 5)
    entry_kv = KV(K.running_entry(TASK_ID), entry_value, 6, 6, 0)
    seen = running_view(record_kv, record, decode_running(K, entry_kv))
    assert seen is not None and seen.state is TaskState.RUNNING
    new = transitions.cancelled(seen, "stop", NOW + 1)
    assert new.attempts[-1].outcome is Outcome.CANCELLED and new.attempts[-1].worker == "w1"
    txn = transitions.rewrite(K, record_kv, seen, new, lease=3, running_kv=entry_kv)
    assert txn.compares == [Compare.unchanged(record_kv), Compare.unchanged(entry_kv)]
    assert keys_of(txn.ops)[:3] == [
        ("Put", K.task(TASK_ID)),
        ("Delete", K.assignment("w1", TASK_ID)),
        ("Delete", K.running_entry(TASK_ID)),
    ]
    # A record that moved on (another revision) is not the entry's attempt any more.
    assert running_view(kv(K.task(TASK_ID), record, revision=8), record, decode_running(K, entry_kv)) is None


def test_repair_of_a_lost_attempt_requires_the_assignment_absent_and_keeps_it_absent():
    old = running()
    new = transitions.end_attempt(old, Outcome.LOST, "gone", NOW, random.Random(), 5)
    record_kv = kv(K.task(TASK_ID), old)
    txn = transitions.repair(K, FENCE, 9, "w1", record_kv, old, new, assignment_create_revision=0)
    assert txn.compares[0] == FENCE
    assert Compare.created_at(K.assignment("w1", TASK_ID), 0) in txn.compares
    assert ("Delete", K.assignment("w1", TASK_ID)) not in keys_of(txn.ops)
    overdue = transitions.repair(K, FENCE, 9, "w1", record_kv, old, new, assignment_create_revision=8)
    assert ("Delete", K.assignment("w1", TASK_ID)) in keys_of(overdue.ops)


def test_cancel_of_a_running_task_deletes_its_assignment_and_running_entry():
    old = running()
    new = transitions.cancelled(old, "stop", NOW)
    assert new.state is TaskState.CANCELLED and new.attempts[-1].outcome is Outcome.CANCELLED
    txn = transitions.rewrite(K, kv(K.task(TASK_ID), old), old, new, lease=3)
    assert keys_of(txn.ops) == [
        ("Put", K.task(TASK_ID)),
        ("Delete", K.assignment("w1", TASK_ID)),
        ("Delete", K.running_entry(TASK_ID)),
        ("Put", K.finished_entry("cancelled", old.queue, NOW, TASK_ID)),
    ]
    assert txn.ops[-1] == transitions.finished_entry(K, new, 3)
    with pytest.raises(InvalidTransition):
        transitions.cancelled(new, "again", NOW)


def test_every_finish_writes_the_finished_index_entry_under_the_record_lease():
    # Given a running task that ends each way a task can end
    old = running(retry=RetryPolicy(max_retries=0, max_losses=1))
    record_kv = kv(K.task(TASK_ID), old)
    succeeded = transitions.next_record(
        old, Outcome.SUCCEEDED, now=NOW, rng=random.Random(), new_seq=1, result={"ok": 1}
    )
    failed = transitions.end_attempt(old, Outcome.LOST, "gone", NOW, random.Random(), 1)
    assert failed.state is TaskState.FAILED
    txns = [
        (succeeded, transitions.record_outcome(K, "w1", 12, succeeded, lease=7)),
        (
            failed,
            transitions.repair(
                K, FENCE, 9, "w1", record_kv, old, failed, assignment_create_revision=0, lease=7
            ),
        ),
    ]
    for new, txn in txns:
        # Then the transaction puts the index entry, with the type and error, under the same lease
        entry = [op for op in txn.ops if isinstance(op, Put) and op.key.startswith(K.finished)]
        assert len(entry) == 1, txn.ops
        parsed = K.parse_finished(entry[0].key)
        assert (parsed.state, parsed.queue, parsed.task_id) == (new.state.value, new.queue, TASK_ID)
        assert entry[0].lease == 7
        assert codec.decode_obj(entry[0].key, entry[0].value)["type"] == new.type


def test_a_requeue_or_delay_writes_no_finished_index_entry():
    old = running()
    again = transitions.end_attempt(old, Outcome.LOST, "gone", NOW, random.Random(), 5)
    assert not again.state.terminal
    txn = transitions.record_outcome(K, "w1", 12, again)
    assert not [op for op in txn.ops if op.key.startswith(K.finished)]


def test_newer_finishes_sort_first_in_the_finished_index():
    older = K.finished_entry("failed", "q", 1000.0, "A" * 26)
    newer = K.finished_entry("failed", "q", 1000.000001, "B" * 26)
    assert newer < older
    assert K.parse_finished(newer).finished_at == pytest.approx(1000.000001)


def test_cancel_of_a_queued_or_pending_task_deletes_its_index_key():
    for old in (queued(), queued(state=TaskState.PENDING, not_before=NOW + 5)):
        new = transitions.cancelled(old, "x", NOW)
        txn = transitions.rewrite(K, kv(K.task(TASK_ID), old), old, new)
        assert keys_of(txn.ops)[1:-1] == keys_of(transitions.unplace_ops(K, old))
        assert txn.ops[-1] == transitions.finished_entry(K, new, 0)


def test_reprioritise_moves_a_queue_key_and_leaves_a_delayed_key_alone():
    old = queued()
    new = transitions.reprioritised(old, 3, NOW)
    txn = transitions.rewrite(K, kv(K.task(TASK_ID), old), old, new)
    assert keys_of(txn.ops) == [
        ("Put", K.task(TASK_ID)),
        ("Delete", transitions.queue_key(K, old)),
        ("Put", transitions.queue_key(K, new)),
    ]
    pending = queued(state=TaskState.PENDING, not_before=NOW + 5)
    moved = transitions.reprioritised(pending, 0, NOW)
    txn = transitions.rewrite(K, kv(K.task(TASK_ID), pending), pending, moved)
    assert keys_of(txn.ops) == [("Put", K.task(TASK_ID))]  # never the same key twice in one txn
    with pytest.raises(InvalidTransition):
        transitions.reprioritised(running(), 0, NOW)


def test_promote_requires_a_pending_task_and_places_it_at_the_back_of_its_queue():
    task = queued(state=TaskState.PENDING, not_before=NOW - 1)
    delayed_kv = KV(K.delayed_entry(NOW - 1, TASK_ID), TASK_ID.encode(), 3, 3, 0)
    txn, queued_record = transitions.promote(K, FENCE, delayed_kv, kv(K.task(TASK_ID), task), task, NOW, 123)
    assert queued_record.state is TaskState.QUEUED and queued_record.seq == 123
    assert keys_of(txn.ops)[0] == ("Delete", delayed_kv.key)
    assert keys_of(txn.ops)[2][1].startswith(K.queue(task.queue))
    with pytest.raises(InvalidTransition):
        transitions.promote(K, FENCE, delayed_kv, kv(K.task(TASK_ID), queued()), queued(), NOW, 1)


def test_fail_waiting_drops_a_payload_too_large_to_record():
    task = queued(payload="x" * (codec.MAX_RECORD_BYTES + 10))
    index_kv = KV(transitions.queue_key(K, task), b"", 4, 4, 0)
    txn, written = transitions.fail_waiting(
        K, FENCE, index_kv, KV(K.task(TASK_ID), b"", 4, 4, 0), task, "why", NOW, 0
    )
    put = txn.ops[1]
    assert isinstance(put, Put)
    failed = codec.decode_task(put.key, put.value)
    assert (
        failed.state is TaskState.FAILED
        and failed.payload is None
        and "payload dropped" in (failed.error or "")
    )
    assert isinstance(txn.ops[0], Delete)
    assert written == failed


def test_fit_record_turns_an_oversized_retry_into_a_bounded_failure():
    payload = "x" * (codec.MAX_QUEUED_RECORD_BYTES - 1000)
    retry = transitions.next_record(
        running(payload=payload, retry=RetryPolicy(max_retries=3, backoff_s=0.0, jitter=0.0)),
        Outcome.FAILED,
        now=NOW,
        rng=random.Random(),
        new_seq=1,
        error="e" * 4000,
    )
    assert retry.state is TaskState.QUEUED
    assert len(codec.encode_task(retry)) > codec.MAX_QUEUED_RECORD_BYTES
    fitted = transitions.fit_record(retry, NOW)
    assert fitted.state is TaskState.FAILED
    assert "too large to requeue" in (fitted.error or "")
    assert len(codec.encode_task(fitted)) <= codec.MAX_RECORD_BYTES
    small = transitions.next_record(
        running(), Outcome.FAILED, now=NOW, rng=random.Random(), new_seq=1, error="e"
    )
    assert transitions.fit_record(small, NOW) is small
