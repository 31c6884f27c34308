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
from dataclasses import dataclass

from tasklease import codec
from tasklease.errors import CorruptRecord
from tasklease.keys import Keyspace
from tasklease.models import Task, TaskState
from tasklease.store import KV


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
    """

    task_id: str
    worker: str
    attempt: int
    deadline: float
    mod_revision: int
    timeout: float = 0.0
    queue: str = ""
    type: str = ""


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
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptRecord(kv.key, f"bad running entry: {exc}") from exc
    if not (math.isfinite(entry.deadline) and math.isfinite(entry.timeout)):
        raise CorruptRecord(kv.key, "bad running entry: deadline or timeout is not a finite number")
    return entry


def still_running(task: Task, entry: RunningEntry) -> bool:
    """Whether the record still describes the attempt the index entry is about."""
    current = task.current_attempt
    return (
        task.state is TaskState.RUNNING
        and current is not None
        and current.number == entry.attempt
        and current.worker == entry.worker
    )
