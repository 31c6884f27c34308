"""The task hand-over transactions: enqueue, claim-and-assign, and leaving ``running``.

Each function returns or runs ONE etcd transaction; docs/architecture.md lists
them with their compares. The scheduler batches :func:`assign_ops` (the queue
key's value is the record, so it reads nothing); :func:`assign` and
:func:`assign_next` serve tests and tools; workers use :func:`leave_running_ops`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tasklease import codec
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Attempt, Task, TaskState, evolve, transition
from tasklease.store import KV, Compare, Delete, Get, Op, Put, Store, TxnResult


def queue_key(keys: Keyspace, task: Task) -> str:
    """The queue key of ``task`` as it is (its queue, priority, sequence and route)."""
    return keys.queue_entry(task.queue, task.priority, task.seq, task.id, task.route)


def place_ops(keys: Keyspace, task: Task, data: bytes | None = None) -> list[Op]:
    """The index key a task needs in its (new) state: queue key or delayed key.

    A queue key's value is the task record itself (``data``, its encoding),
    written by the same transaction as the record: while a task is queued,
    its queue key and its record have the same value and mod revision, so
    the scheduler needs no read to assign it.
    """
    if task.state is TaskState.QUEUED:
        value = data if data is not None else codec.encode_task(task)
        return [Put(queue_key(keys, task), value)]
    if task.state is TaskState.PENDING and task.not_before is not None:
        return [Put(keys.delayed_entry(task.not_before, task.id), task.id.encode())]
    return []


def unplace_ops(keys: Keyspace, task: Task) -> list[Op]:
    """Delete the index key of a waiting task (queued or pending)."""
    if task.state is TaskState.QUEUED:
        return [Delete(queue_key(keys, task))]
    if task.state is TaskState.PENDING and task.not_before is not None:
        return [Delete(keys.delayed_entry(task.not_before, task.id))]
    return []


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


@dataclass(frozen=True, slots=True)
class Pick:
    """One task chosen for one worker."""

    queue_kv: KV
    record_kv: KV
    worker: str
    lease: int


def assign_ops(keys: Keyspace, pick: Pick, now: float) -> tuple[list[Compare], list[Op], Task]:
    """Compares and ops that move one queued task to a worker.

    Returns:
        The compares, the ops and the running task record.

    Raises:
        CorruptRecord: The queued record cannot be decoded.
        PayloadTooLarge: The running record would be over its limit.
    """
    task = codec.decode_task(pick.record_kv.key, pick.record_kv.value)
    attempt = Attempt(number=task.next_attempt_number, worker=pick.worker, started_at=now)
    running = transition(task, TaskState.RUNNING, now=now, attempts=(*task.attempts, attempt))
    data = codec.encode_for_write(running)  # written twice: the record and the assignment
    compares = [Compare.unchanged(pick.queue_kv), Compare.unchanged(pick.record_kv)]
    ops: list[Op] = [
        Delete(pick.queue_kv.key),
        Put(pick.record_kv.key, data),
        Put(keys.assignment(pick.worker, task.id), data, lease=pick.lease),
        Put(
            keys.running_entry(task.id),
            codec.encode_obj(
                {
                    "worker": pick.worker,
                    "n": attempt.number,
                    "deadline": now + task.timeout_s,
                    "t": task.timeout_s,
                }
            ),
        ),
    ]
    return compares, ops, running


async def assign(store: Store, keys: Keyspace, picks: Sequence[Pick], now: float) -> TxnResult:
    """Assign every pick in ONE transaction, or none of them.

    Compares each queue key and each record on its mod revision (the claim:
    a task is never assigned twice), deletes the queue keys, writes each
    record as running with its new attempt, writes each assignment under its
    worker's lease and each running-index entry.
    """
    compares: list[Compare] = []
    ops: list[Op] = []
    for pick in picks:
        c, o, _ = assign_ops(keys, pick, now)
        compares.extend(c)
        ops.extend(o)
    return await store.txn(compares, ops)


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
    pick = Pick(head.kvs[0], record_kv, worker, lease)
    compares, ops, running = assign_ops(keys, pick, now)
    result = await store.txn(compares, ops)
    return running if result.succeeded else None


def leave_running_ops(
    keys: Keyspace, assignment: Assignment, new_task: Task, lease: int = 0
) -> tuple[list[Compare], list[Op], list[Op]]:
    """Compares and ops that move an assigned task out of ``running``.

    Fenced on the assignment's create revision and on the record being as
    the assignment wrote it: if the task was reassigned, cancelled or
    recovered meanwhile, the compares fail and nothing is written. A finished
    record goes under ``lease``, its retention lease (retention.py).

    Returns:
        compares, success ops, failure ops (reads that explain a failure).
    """
    task_key = keys.task(new_task.id)
    assign_key = keys.assignment(assignment.worker, new_task.id)
    compares = [
        Compare.created_at(assign_key, assignment.token),
        Compare(task_key, "mod", "=", assignment.token),
    ]
    data = codec.encode_task(new_task)
    ops: list[Op] = [
        Put(task_key, data, lease=lease),
        Delete(assign_key),
        Delete(keys.running_entry(new_task.id)),
        *place_ops(keys, new_task, data),
    ]
    return compares, ops, [Get(assign_key)]


def finished_attempt(task: Task, **changes: object) -> Task:
    """Return ``task`` with its current attempt updated by ``changes``."""
    current = task.current_attempt
    assert current is not None
    return evolve(task, attempts=(*task.attempts[:-1], evolve(current, **changes)))
