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

import random
from dataclasses import dataclass

from tasklease import codec
from tasklease.errors import CorruptRecord
from tasklease.keys import Keyspace
from tasklease.models import Outcome, Task, TaskState, decide, transition
from tasklease.queue import finished_attempt, place_ops
from tasklease.store import KV, Compare, Delete, Op, Put


@dataclass(frozen=True, slots=True)
class RunningEntry:
    """One entry of the running index, as mirrored by the scheduler.

    Attributes:
        task_id: The task.
        worker: The worker it was assigned to.
        attempt: The attempt number.
        deadline: When the attempt's timeout ends (epoch seconds).
        mod_revision: The entry's mod revision (for the compare).
    """

    task_id: str
    worker: str
    attempt: int
    deadline: float
    mod_revision: int


def decode_running(keys: Keyspace, kv: KV) -> RunningEntry:
    """Decode a running-index entry.

    Raises:
        CorruptRecord: If it is not one.
    """
    d = codec.decode_obj(kv.key, kv.value)
    try:
        return RunningEntry(
            kv.key[len(keys.running) :], str(d["worker"]), int(d["n"]), float(d["deadline"]), kv.mod_revision
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptRecord(kv.key, f"bad running entry: {exc}") from exc


def end_attempt(
    task: Task, outcome: Outcome, error: str, now: float, rng: random.Random, new_seq: int
) -> Task:
    """The record after the scheduler ends the current attempt with ``outcome``."""
    task = finished_attempt(task, finished_at=now, outcome=outcome, error=error)
    decision = decide(task, outcome, permanent=False, now=now, rng=rng)
    changes: dict[str, object] = {"error": error}
    if decision.state is TaskState.PENDING:
        changes["not_before"] = decision.not_before
    if decision.state is TaskState.QUEUED and outcome is not Outcome.LOST:
        changes["seq"] = new_seq  # a retry goes to the back; a lost task keeps its place
    return transition(task, decision.state, now=now, **changes)


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
    ops: list[Op] = [
        Put(record_kv.key, codec.encode_task(new_task), lease=lease),
        Delete(keys.running_entry(entry.task_id)),
        *place_ops(keys, new_task),
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
    data = codec.encode_task(queued)
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
