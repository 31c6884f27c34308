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

A process that lost its lease writes nothing; repairs are made only by the
leader. This module holds what the repairs read (the running index); their
transactions are built in transitions.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tasklease import codec, transitions
from tasklease.errors import CorruptRecord
from tasklease.keys import Keyspace
from tasklease.models import Task, TaskState
from tasklease.store import KV, Get, KVStore


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
        queue: The task's queue ("" if the entry predates it).
        type: The task's type ("" if the entry predates it): the leader counts
            running tasks per type and per queue for concurrency limits (limiter.py).
        started_at: When the attempt started (0 if the entry predates it).
        record_revision: The record's mod revision when the task was assigned:
            the record is not written at assignment, so it stays at this
            revision while the attempt runs. 0: the entry predates it, and its
            assignment wrote the record (state running).
    """

    task_id: str
    worker: str
    attempt: int
    deadline: float
    mod_revision: int
    timeout: float = 0.0
    queue: str = ""
    type: str = ""
    started_at: float = 0.0
    record_revision: int = 0


def decode_running(keys: Keyspace, kv: KV) -> RunningEntry:
    """Decode a running-index entry.

    Raises:
        CorruptRecord: If it is not one.
    """
    d = codec.decode_obj(kv.key, kv.value)
    try:
        entry = RunningEntry(
            keys.parse_running(kv.key),
            str(d["worker"]),
            int(d["n"]),
            float(d["deadline"]),
            kv.mod_revision,
            float(d.get("t", 0.0)),
            str(d.get("q", "")),
            str(d.get("ty", "")),
            float(d.get("s", 0.0)),
            int(d.get("rv", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptRecord(kv.key, f"bad running entry: {exc}") from exc
    if not (math.isfinite(entry.deadline) and math.isfinite(entry.timeout)):
        raise CorruptRecord(kv.key, "bad running entry: deadline or timeout is not a finite number")
    return entry


def still_running(task: Task, entry: RunningEntry) -> bool:
    """Whether ``task`` (a running record) still describes the attempt the index entry is about."""
    current = task.current_attempt
    return (
        task.state is TaskState.RUNNING
        and current is not None
        and current.number == entry.attempt
        and current.worker == entry.worker
    )


def running_view(record_kv: KV, task: Task, entry: RunningEntry) -> Task | None:
    """The running record of the attempt ``entry`` is about, from the stored record; None if stale.

    The record of a running task is the record as it was queued, at the
    revision the entry names (``record_revision``), plus the attempt the entry
    holds (:func:`transitions.running_record`). A record written running (by
    an older version) is its own view. None: the record moved on (the attempt
    ended, the task was cancelled): the entry is stale.
    """
    if task.state is TaskState.RUNNING:
        return task if still_running(task, entry) else None
    if (
        task.state is TaskState.QUEUED
        and entry.record_revision
        and record_kv.mod_revision == entry.record_revision
        and task.next_attempt_number == entry.attempt
    ):
        return transitions.running_record(task, entry.worker, entry.attempt, entry.started_at)
    return None


def view_with_entry(keys: Keyspace, record_kv: KV, task: Task, entry_kv: KV) -> Task | None:
    """:func:`running_view` of ``task`` with its running entry as stored; None if stale or corrupt."""
    try:
        return running_view(record_kv, task, decode_running(keys, entry_kv))
    except CorruptRecord:
        return None


# Running entries read per transaction when records are shown as readers see them.
ENTRIES_PER_TXN = 64


async def as_seen(store: KVStore, keys: Keyspace, records: Sequence[tuple[KV, Task]]) -> list[Task]:
    """Each record as readers see it: a queued record whose task runs is shown running.

    An assignment does not rewrite the record: the attempt is in the running
    entry (:func:`running_view`). The entries of the queued records are read
    in transactions of gets (:data:`ENTRIES_PER_TXN`; an entry is ~150 bytes).
    """
    queued = [(kv, t) for kv, t in records if t.state is TaskState.QUEUED]
    views: dict[str, Task] = {}
    for start in range(0, len(queued), ENTRIES_PER_TXN):
        group = queued[start : start + ENTRIES_PER_TXN]
        result = await store.txn([], [Get(keys.running_entry(t.id)) for _, t in group])
        for (kv, task), found in zip(group, result.reads, strict=True):
            if found and (view := view_with_entry(keys, kv, task, found[0])) is not None:
                views[task.id] = view
    return [views.get(t.id, t) for _, t in records]
