"""Repairs made by the leading scheduler, each one fenced transaction.

- **lost** (F1): a running-index entry whose assignment is gone without a
  result: the worker's lease expired or was revoked. The attempt is recorded
  ``lost``; the task goes back to its queue (keeping its place) until
  ``max_losses`` attempts were lost, then it fails.
- **overdue** (F3): a running task past its deadline plus a grace, whose
  worker never reported. The attempt is recorded ``timeout``; the task is
  retried per its policy or fails; its assignment is deleted, which tells a
  still-living worker to stop it.
- **due** (E3): a pending task whose retry backoff has passed goes back to its
  queue (at the back of its priority band).

A process that lost its lease writes nothing; repairs are made only here.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from tasklease import codec
from tasklease.errors import CorruptRecord, PayloadTooLarge
from tasklease.keys import Keyspace
from tasklease.models import Outcome, Task, TaskState, decide, evolve, transition
from tasklease.queue import finished_attempt, place_ops
from tasklease.store import KV, Compare, Delete, Op, Put


@dataclass(frozen=True, slots=True)
class RunningEntry:
    """One entry of the running index, as mirrored by the scheduler.

    Attributes:
        task_id: The task.
        worker: The worker it was assigned to.
        attempt: The attempt number.
        deadline: When the attempt's timeout ends (epoch seconds, on the clock
            of the scheduler that assigned it).
        mod_revision: The entry's mod revision (for the compare).
        timeout: The attempt's timeout in seconds (0 if the entry predates it).
    """

    task_id: str
    worker: str
    attempt: int
    deadline: float
    mod_revision: int
    timeout: float = 0.0


def decode_running(keys: Keyspace, kv: KV) -> RunningEntry:
    """Decode a running-index entry.

    Raises:
        CorruptRecord: If it is not one.
    """
    d = codec.decode_obj(kv.key, kv.value)
    try:
        entry = RunningEntry(
            kv.key[len(keys.running) :],
            str(d["worker"]),
            int(d["n"]),
            float(d["deadline"]),
            kv.mod_revision,
            float(d.get("t", 0.0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptRecord(kv.key, f"bad running entry: {exc}") from exc
    if not (math.isfinite(entry.deadline) and math.isfinite(entry.timeout)):
        raise CorruptRecord(kv.key, "bad running entry: deadline or timeout is not a finite number")
    return entry


def end_attempt(
    task: Task, outcome: Outcome, error: str, now: float, rng: random.Random, new_seq: int
) -> Task:
    """The record after the scheduler ends the current attempt with ``outcome``.

    A task whose record would be too large to queue again (a queued record is
    written twice) fails instead, saying why: its outcome is never lost.
    """
    task = finished_attempt(task, finished_at=now, outcome=outcome, error=error)
    decision = decide(task, outcome, permanent=False, now=now, rng=rng)
    changes: dict[str, object] = {"error": error}
    if decision.state is TaskState.PENDING:
        changes["not_before"] = decision.not_before
    if decision.state is TaskState.QUEUED and outcome is not Outcome.LOST:
        changes["seq"] = new_seq  # a retry goes to the back; a lost task keeps its place
    new = transition(task, decision.state, now=now, **changes)
    try:
        codec.encode_for_write(new)
    except PayloadTooLarge as exc:
        new = transition(task, TaskState.FAILED, now=now, error=f"{error}; not retried: {exc}")
    return new


def fail_waiting_ops(
    keys: Keyspace,
    fence: Compare,
    index_kv: KV,
    record_kv: KV,
    task: Task,
    reason: str,
    now: float,
    lease: int,
) -> tuple[list[Compare], list[Op]]:
    """Compares and ops that fail a waiting (queued or pending) task no transaction can carry.

    ``index_kv`` is its queue or delayed key. If even the failed record is too
    large to write (a record from an older version, or planted), its payload
    is left out, and the error says so.
    """
    failed = transition(task, TaskState.FAILED, now=now, error=reason)
    try:
        data = codec.encode_for_write(failed)
    except PayloadTooLarge:
        failed = evolve(failed, payload=None, error=f"{reason} (payload dropped: the record was too large)")
        data = codec.encode_for_write(failed)
    compares = [
        fence,
        Compare.unchanged(index_kv),
        Compare(record_kv.key, "mod", "=", record_kv.mod_revision),
    ]
    ops: list[Op] = [Delete(index_kv.key), Put(record_kv.key, data, lease=lease)]
    return compares, ops


def repair_ops(
    keys: Keyspace,
    fence: Compare,
    entry: RunningEntry,
    record_kv: KV,
    new_task: Task,
    *,
    assignment_create_revision: int,
    lease: int = 0,
) -> tuple[list[Compare], list[Op]]:
    """Compares and ops to end a running attempt from the scheduler.

    ``assignment_create_revision`` 0 means the assignment must be absent
    (lost); otherwise it must be that incarnation, and it is deleted (overdue).
    """
    assign_key = keys.assignment(entry.worker, entry.task_id)
    compares = [
        fence,
        Compare(keys.running_entry(entry.task_id), "mod", "=", entry.mod_revision),
        Compare.unchanged(record_kv),
        Compare.created_at(assign_key, assignment_create_revision),
    ]
    data = codec.encode_task(new_task)
    ops: list[Op] = [
        Put(record_kv.key, data, lease=lease),
        Delete(keys.running_entry(entry.task_id)),
        *place_ops(keys, new_task, data),
    ]
    if assignment_create_revision:
        ops.append(Delete(assign_key))
    return compares, ops


def promote_ops(
    keys: Keyspace, fence: Compare, delayed_kv: KV, record_kv: KV, task: Task, now: float, new_seq: int
) -> tuple[list[Compare], list[Op]]:
    """Compares and ops that move a pending task whose backoff has passed into its queue."""
    queued = transition(task, TaskState.QUEUED, now=now, seq=new_seq, not_before=None)
    compares = [fence, Compare.unchanged(delayed_kv), Compare.unchanged(record_kv)]
    data = codec.encode_for_write(queued)
    ops: list[Op] = [Delete(delayed_kv.key), Put(record_kv.key, data), *place_ops(keys, queued, data)]
    return compares, ops


def still_running(task: Task, entry: RunningEntry) -> bool:
    """Whether the record still describes the attempt the index entry is about."""
    current = task.current_attempt
    return (
        task.state is TaskState.RUNNING
        and current is not None
        and current.number == entry.attempt
        and current.worker == entry.worker
    )
