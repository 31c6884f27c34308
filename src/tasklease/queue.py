"""A task as its worker is given it (:class:`Assignment`), and a hand assignment for tests and tools.

The transactions themselves are built in transitions.py; the scheduler
batches :func:`transitions.assign` (the queue key's value is the record, so it
reads nothing); :func:`assign_next` assigns one queue head the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasklease import codec, transitions
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Attempt, Task
from tasklease.store import KV, Store


@dataclass(frozen=True, slots=True)
class Assignment:
    """A task given to a worker, as the worker sees it.

    Attributes:
        task: The record as the assignment transaction wrote it (state running,
            the new attempt last).
        worker: The worker id.
        token: The assignment key's create revision: the attempt's fencing
            token. It is also the record's mod revision at assignment, since
            both were written by the same transaction.
    """

    task: Task
    worker: str
    token: int

    @property
    def attempt(self) -> Attempt:
        """The attempt this assignment is for."""
        attempt = self.task.current_attempt
        assert attempt is not None
        return attempt


def decode_assignment(keys: Keyspace, worker: str, kv: KV) -> Assignment:
    """Decode an assignment key (its value is the running task record).

    Raises:
        CorruptRecord: If the value is not a task record.
    """
    return Assignment(codec.decode_task(kv.key, kv.value), worker, kv.create_revision)


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
