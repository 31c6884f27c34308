"""A task as its worker is given it (:class:`Assignment`), and a hand assignment for tests and tools.

The transactions themselves are built in transitions.py; the scheduler
batches :func:`transitions.assign` (the queue key's value is the record
without its payload, so it reads nothing); :func:`assign_next` assigns one
queue head the same way. The assignment's value is small (the attempt and the
record's revision): the worker reads the record to run it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasklease import codec, transitions
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Attempt, Task
from tasklease.recovery import decode_running, running_view
from tasklease.store import KV, Store


@dataclass(frozen=True, slots=True)
class Assignment:
    """A task given to a worker, as the worker sees it.

    Attributes:
        task: The running record: the record as it was queued plus the new
            attempt (``transitions.running_record``), or, for an assignment
            written by an older version, the running record it held.
        worker: The worker id.
        token: The assignment key's create revision: the attempt's fencing token.
        record_revision: The record's mod revision when the task was assigned:
            the outcome is written only if the record is still at it (an
            assignment of an older version wrote the record: ``token``).
    """

    task: Task
    worker: str
    token: int
    record_revision: int = 0

    @property
    def attempt(self) -> Attempt:
        """The attempt this assignment is for."""
        attempt = self.task.current_attempt
        assert attempt is not None
        return attempt


def is_running_value(value: bytes) -> bool:
    """Whether an assignment's value is a running value (``transitions.running_value``).

    Such an assignment needs its record read to run; an older version's
    assignment holds the whole running record instead.
    """
    return value.startswith(b'{"worker"')


def decode_assignment(keys: Keyspace, worker: str, kv: KV, record_kv: KV | None = None) -> Assignment | None:
    """The assignment ``kv`` with its record ``record_kv`` (read by the worker); None if stale.

    Stale: the record is gone or moved on since the task was assigned (the
    task was cancelled or recovered, and the assignment's deletion is on its
    way): nothing to run.

    Raises:
        CorruptRecord: If the value (or the record) cannot be decoded.
    """
    if not is_running_value(kv.value):  # an older version's: the running record itself
        return Assignment(codec.decode_task(kv.key, kv.value), worker, kv.create_revision, kv.create_revision)
    entry = decode_running(keys, KV(keys.running_entry(keys.parse_assignment(kv.key)[1]), kv.value, 0, 0, 0))
    if record_kv is None:
        return None
    view = running_view(record_kv, codec.decode_task(record_kv.key, record_kv.value), entry)
    if view is None:
        return None
    return Assignment(view, worker, kv.create_revision, entry.record_revision)


async def assign_next(
    store: Store, keys: Keyspace, queue: str, worker: str, lease: int, now: float
) -> Task | None:
    """Assign the head of ``queue`` to ``worker`` (tests and tools; the scheduler batches).

    Returns:
        The running record, or None if the queue is empty or the race was lost.
    """
    prefix = keys.queue(queue)
    head = await store.range(prefix, prefix_end(prefix), limit=1)
    if not head.kvs:
        return None
    task_id = keys.parse_queue_entry(head.kvs[0].key).task_id
    record_kv, _ = await store.get(keys.task(task_id))
    if record_kv is None:
        return None
    txn, running = transitions.assign(keys, transitions.Pick(head.kvs[0], record_kv, worker, lease), now)
    result = await store.txn(txn.compares, txn.ops)
    return running if result.succeeded else None
