"""Every task transition's transaction: the one module that decides which keys change together.

A task's state lives in its record (``tasks/{id}``) and in the index keys that
point at it (its queue key while queued, its delayed key while pending, its
assignment and running-index entry while running). Each function here builds
ONE transaction (a :class:`Txn`) that moves a task from one state to the next,
writing the record and its index keys together, guarded by compares on mod
revisions. One move writes no record: an assignment (:func:`assign`) leaves
the record as queued and puts the attempt in the running entry and the
assignment (:func:`running_value`); readers see the running record
(:func:`running_record`, ``recovery.running_view``), and every write of a
queued record is also guarded by its queue key (:func:`queued_compare`), which
the assignment deletes. Components (client, worker, scheduler) decide *when*; this module
decides *what is written* and checks each move against ``models.TRANSITIONS``.

=================  ============================  =====================  ========================
transition         builder                       caller                 guarded by
=================  ============================  =====================  ========================
enqueue            :func:`enqueue`               client (submit)        record absent (+ key free)
assign             :func:`assign`                scheduler (assigner)   queue key + record unchanged
finish (outcome)   :func:`record_outcome`        worker (recorder)      assignment incarnation + record
finish (repair)    :func:`repair`                scheduler (recoverer)  leader + entry + record + assignment
finish (cancel)    :func:`rewrite`               client (cancel)        record + queue key or entry
requeue, delay     the finishes above, when the next state is queued (requeue) or pending (delay)
promote            :func:`promote`               scheduler (recoverer)  leader + delayed key + record
re-prioritise      :func:`rewrite`               client (set_priority)  record + queue key
fail waiting       :func:`fail_waiting`          scheduler              leader + index key + record
expire             :func:`expire`                scheduler (expiry)     leader + record + expiring key (+ queue key)
run again          :func:`rerun`                 client (run_again)     old record unchanged + new id free
release, cascade   :func:`release`               scheduler (releaser)   leader + deps key + record
submit as ended    :func:`enqueue_ended`         client (submit)        record absent
=================  ============================  =====================  ========================

Dependencies. :func:`verdict` decides whether a waiting child may run (its
parents' ends, :class:`ParentEnd`, and its policy); the client applies it at
submit (a child whose parents already finished is written queued, pending or
cancelled at once: :func:`released`, :func:`enqueue_ended`), the leader when a
parent finishes (release.py: :func:`release`, one or many per transaction).

A transaction that writes a finished record also writes :func:`finished_ops`
(its finished-index entry, keys.py, and the release of its idempotency key),
under the same retention lease.

Idempotency keys (``unique/{sha256}``, docs/idempotency.md). A new task with
an ``idempotency_key`` takes its key in its enqueue transaction
(:func:`claim_unique`: the key absent, or held by a task whose record is gone);
the key has no lease while the task is unfinished (or the shared lease of its
``unique_for``), and :func:`finished_ops` puts it again under the record's
retention lease, so it is released exactly when the record expires.

The leader's promotions and expiries are built one task at a time and sent
several per transaction: :func:`pack` groups them within etcd's limits.

The pure record functions (:func:`next_record`, :func:`end_attempt`,
:func:`fit_record`, :func:`bounded_failure`, :func:`cancelled`) compute the
record a transition writes; they use ``models.transition``, which checks the
table. docs/architecture.md lists every transaction with its keys.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from tasklease import codec
from tasklease.errors import CorruptRecord, InvalidTransition, PayloadTooLarge
from tasklease.keys import Keyspace
from tasklease.models import (
    JSON,
    SCHEMA_VERSION,
    Attempt,
    Outcome,
    Task,
    TaskState,
    can_transition,
    check_priority,
    check_type,
    decide,
    evolve,
    transition,
    truncate_error,
)
from tasklease.routing import route
from tasklease.store import KV, MAX_TXN_BYTES, MAX_TXN_OPS, Compare, Delete, Get, Op, Put, txn_size


@dataclass(slots=True)
class Txn:
    """One etcd transaction: compares, the ops if they all hold, the reads if not.

    Attributes:
        compares: The guards.
        ops: Written if every guard holds.
        failure: Read if some guard fails (to explain why).
    """

    compares: list[Compare] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    failure: list[Op] = field(default_factory=list)

    def extend(self, other: Txn) -> None:
        """Add ``other``'s compares and ops (one transaction for both; all or nothing)."""
        self.compares.extend(other.compares)
        self.ops.extend(other.ops)
        self.failure.extend(other.failure)

    def size(self) -> int:
        """An upper bound of its request size in bytes (``store.txn_size``)."""
        return txn_size(self.compares) + txn_size(self.ops) + txn_size(self.failure)


def _check(task: Task, state: TaskState, action: str) -> None:
    if not can_transition(task.state, state):
        raise InvalidTransition(task.id, task.state.value, action)


# index keys -------------------------------------------------------------------------------
def queue_key(keys: Keyspace, task: Task) -> str:
    """The queue key of ``task`` as it is (its queue, priority, sequence and route)."""
    return keys.queue_entry(task.queue, task.priority, task.seq, task.id, task.route)


def place_ops(keys: Keyspace, task: Task, data: bytes | None = None) -> list[Op]:
    """The index key a task needs in its (new) state: queue key or delayed key.

    A queue key's value is the task record without its payload, with the
    record's size (``codec.encode_index_record``; ``data``: the record's
    encoding), written by the same transaction as the record: while a task
    is queued, its queue key and its record have the same mod revision, so
    the scheduler needs no read to assign it (it does not write the record).
    """
    if task.state is TaskState.QUEUED:
        record_bytes = len(data) if data is not None else len(codec.encode_task(task))
        return [Put(queue_key(keys, task), codec.encode_index_record(task, record_bytes))]
    if task.state is TaskState.PENDING and task.not_before is not None:
        size = len(data) if data is not None else None
        return [Put(keys.delayed_entry(task.not_before, task.id), delayed_value(task, size))]
    if task.state is TaskState.WAITING:
        return [Put(keys.deps_entry(task.queue, task.id), deps_value(task))]
    return []


def deps_value(task: Task) -> bytes:
    """A deps key's value: the parents of a waiting task, its queue and its parent-failure policy."""
    return codec.encode_obj({"parents": list(task.depends_on), "q": task.queue, "p": task.on_parent_failure})


def delayed_value(task: Task, size: int | None = None) -> bytes:
    """A delayed key's value: the task's id, queue and record size (JSON; older versions wrote the bare id).

    ``n``, the bytes of the record when the key was written, lets the leader
    read the due records in groups bounded by bytes (recoverer.py); the
    record itself is not copied here (it would double the bytes of every
    pending task, in etcd and in the leader's memory: docs/delays.md).
    """
    value: dict[str, object] = {"id": task.id, "q": task.queue}
    if size is not None:
        value["n"] = size
    return codec.encode_obj(value)


def expiring_value(task: Task, size: int) -> bytes:
    """An expiring key's value: the task's id, queue and record size at submit (JSON; see :func:`delayed_value`)."""
    return codec.encode_obj({"id": task.id, "q": task.queue, "n": size})


def expiring_ops(keys: Keyspace, task: Task, data: bytes) -> list[Op]:
    """The expiring key of a new task with an expiry (none without one); ``data``: its record."""
    if task.expires_at is None:
        return []
    return [Put(keys.expiring_entry(task.expires_at, task.id), expiring_value(task, len(data)))]


FINISHED_ERROR_CHARS = 200


def finished_entry(keys: Keyspace, task: Task, lease: int) -> Put:
    """The finished-index entry of a finished ``task``, under its record's retention ``lease``.

    Its value carries what a listing filters on and shows without reading the
    record: the type and the start of the error.
    """
    value: dict[str, object] = {"type": task.type}
    if task.error:
        value["error"] = task.error[:FINISHED_ERROR_CHARS]
    key = keys.finished_entry(task.state.value, task.queue, task.updated_at, task.id)
    return Put(key, codec.encode_obj(value), lease=lease)


def finished_ops(keys: Keyspace, task: Task, lease: int) -> list[Op]:
    """What every transaction that finishes ``task`` writes beside its record, under its ``lease``.

    Its finished-index entry (:func:`finished_entry`) and, for a task with an
    idempotency key held until its record expires (no ``unique_until``), that
    key again, now under the record's retention lease: the key is released
    exactly when the record expires (or is purged with it). The one place a
    finish's extra keys are decided: every finish builder here calls it.

    Why no compare on the key: without ``unique_until`` the key is this task's
    for as long as its record exists. It was put without a lease in the
    enqueue transaction; only purge deletes it, in the transaction that deletes
    the record; and a submit takes over a held key only when the holder's
    record is absent (:func:`claim_unique`). A key with ``unique_until`` is
    left alone: it lives under its ``unique_for`` lease, which may have run out
    and let another task take the key, so re-putting it could overwrite that
    task's key. It is released when that lease expires, or earlier when the
    record is gone (the next submit with the key takes it over).
    """
    ops: list[Op] = [finished_entry(keys, task, lease)]
    if _keeps_key_with_record(task):
        assert task.idempotency_key is not None
        ops.append(Put(keys.unique(task.idempotency_key), unique_value(task), lease=lease))
    return ops


def _keeps_key_with_record(task: Task) -> bool:
    """Whether ``task``'s idempotency key is released with its record (see :func:`finished_ops`)."""
    return task.idempotency_key is not None and task.unique_until is None


def outcome_ops(new: Task) -> int:
    """How many operations :func:`record_outcome` writes for ``new`` (for batching outcomes).

    The record, the assignment's and the running entry's deletes; a retry's
    queue or delayed key; a finish's :func:`finished_ops`.
    """
    placed = 1 if new.state in (TaskState.QUEUED, TaskState.PENDING) else 0
    finished = (2 if _keeps_key_with_record(new) else 1) if new.state.terminal else 0
    return 3 + placed + finished


# idempotency keys ---------------------------------------------------------------------------
def unique_value(task: Task) -> bytes:
    """A held idempotency key's value: the holding task's id and the key's text (JSON)."""
    return codec.encode_obj({"id": task.id, "key": task.idempotency_key})


def unique_holder(kv: KV) -> str:
    """The id of the task holding an idempotency key (a ``unique/`` key as read).

    Raises:
        CorruptRecord: The value is not what :func:`unique_value` writes.
    """
    holder = codec.decode_obj(kv.key, kv.value).get("id")
    if not isinstance(holder, str) or not holder:
        raise CorruptRecord(kv.key, "an idempotency key without the id of its task")
    return holder


def claim_unique(keys: Keyspace, task: Task, lease: int = 0, held: KV | None = None) -> Txn:
    """The part of a new task's transaction that takes its idempotency key.

    The compares: the key is absent; or, with ``held`` (the key as read, held
    by a task whose record was found gone: expired, purged, deleted), the key
    is unchanged since that read and the holder's record still absent, so a
    stale key is taken over and a live one never. The put: the key, naming the
    task, under ``lease`` (0 while the task is unfinished; the shared
    ``unique_for`` lease with one). The failure branch reads the key: a
    failed transaction tells who holds it, with no other request.
    """
    assert task.idempotency_key is not None
    key = keys.unique(task.idempotency_key)
    if held is None:
        compares = [Compare.absent(key)]
    else:
        compares = [Compare.unchanged(held), Compare.absent(keys.task(unique_holder(held)))]
    return Txn(compares, [Put(key, unique_value(task), lease=lease)], [Get(key)])


def unplace_ops(keys: Keyspace, task: Task) -> list[Op]:
    """Delete the index key of a waiting task (queued or pending)."""
    if task.state is TaskState.QUEUED:
        return [Delete(queue_key(keys, task))]
    if task.state is TaskState.PENDING and task.not_before is not None:
        return [Delete(keys.delayed_entry(task.not_before, task.id))]
    if task.state is TaskState.WAITING:
        return [Delete(keys.deps_entry(task.queue, task.id))]
    return []


# enqueue ----------------------------------------------------------------------------------
NEW_STATES = (TaskState.QUEUED, TaskState.PENDING, TaskState.WAITING)
"""The states a new task starts in: queued, pending (a delayed submit), waiting (it has parents)."""


def enqueue(keys: Keyspace, task: Task, data: bytes, *, unique_lease: int = 0, held: KV | None = None) -> Txn:
    """Write a new task, if its id is free: its record (``data``) and its index key.

    A queued task gets its queue key (whose value is ``data`` too), a delayed
    one (pending, ``not_before``) its delayed key, one with parents (waiting)
    its deps key. A task with an idempotency key takes it in the same
    transaction (:func:`claim_unique`, with ``unique_lease`` and ``held``):
    one more compare, one more put, and a read of the key if it fails.
    One with an expiry (``expires_at``) also gets its expiring key.

    Raises:
        InvalidTransition: ``task`` is not a new task.
    """
    if (
        task.state not in NEW_STATES
        or task.attempts
        or (task.state is TaskState.PENDING and task.not_before is None)
    ):
        raise InvalidTransition(task.id, task.state.value, "enqueue")
    task_key = keys.task(task.id)
    ops = [Put(task_key, data), *place_ops(keys, task, data), *expiring_ops(keys, task, data)]
    txn = Txn([Compare.absent(task_key)], ops)
    if task.idempotency_key is not None:
        txn.extend(claim_unique(keys, task, unique_lease, held))
    return txn


def rerun(keys: Keyspace, old_kv: KV, linked: Task, new: Task, data: bytes) -> Txn:
    """Run a finished task again: the new queued task and the old record naming it, one transaction.

    ``linked`` is the old (failed or cancelled) record with the new id added
    to its ``reruns``; it keeps its lease (its retention). ``new`` (``data``,
    its encoding) has ``rerun_of`` set. Guarded by the old record being
    unchanged and the new id being free.

    Raises:
        InvalidTransition: The old task is not failed or cancelled.
    """
    if linked.state not in (TaskState.FAILED, TaskState.CANCELLED):
        raise InvalidTransition(linked.id, linked.state.value, "run again")
    txn = enqueue(keys, new, data)
    txn.compares.append(Compare.unchanged(old_kv))
    txn.ops.insert(0, Put(old_kv.key, codec.encode_task(linked), lease=old_kv.lease))
    return txn


# assign -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Pick:
    """One task chosen for one worker."""

    queue_kv: KV
    record_kv: KV
    worker: str
    lease: int


def assign(keys: Keyspace, pick: Pick, now: float) -> tuple[Txn, Task]:
    """The transaction part that moves one queued task to a worker (batched by the assigner).

    Compares the queue key and the record on their mod revisions (the claim: a
    task is never assigned twice), deletes the queue key, writes the record as
    running with its new attempt, the assignment under the worker's lease and
    the running-index entry.

    Returns:
        The transaction part and the running record.

    Raises:
        CorruptRecord: The queued record cannot be decoded.
        InvalidTransition: The record is not queued.
        PayloadTooLarge: The running record would be over its limit.
    """
    return assign_task(keys, pick, codec.decode_task(pick.record_kv.key, pick.record_kv.value), now)


def assign_task(keys: Keyspace, pick: Pick, task: Task, now: float) -> tuple[Txn, Task]:
    """:func:`assign` of a record already decoded (``task``: ``pick.record_kv``'s value, decoded).

    The record is not written: the attempt lives in the running-index entry
    and the assignment (:func:`running_value`), and the record stays as it
    was queued until the attempt ends. The assigner decodes the queued record
    itself: it needs its ``updated_at`` (when the task entered its queue) for
    the ``Assigned`` event's queue wait.

    Returns:
        The transaction part and the running record as readers see it
        (:func:`running_record`; without the payload when ``task`` was
        decoded from a queue key's value).

    Raises:
        InvalidTransition: The record is not queued.
    """
    running = running_record(task, pick.worker, task.next_attempt_number, now)
    value = running_value(running, pick.record_kv.mod_revision)
    ops: list[Op] = [
        Delete(pick.queue_kv.key),
        Put(keys.assignment(pick.worker, task.id), value, lease=pick.lease),
        Put(keys.running_entry(task.id), value),
    ]
    return Txn([Compare.unchanged(pick.queue_kv), Compare.unchanged(pick.record_kv)], ops), running


def running_record(task: Task, worker: str, number: int, started_at: float) -> Task:
    """The running record of a queued ``task`` whose attempt ``number`` started on ``worker``.

    Never written: it is what readers see (the record as queued, plus the
    running entry), what the worker runs and what ends the attempt.

    Raises:
        InvalidTransition: The record is not queued.
    """
    attempt = Attempt(number=number, worker=worker, started_at=started_at)
    return transition(task, TaskState.RUNNING, now=started_at, attempts=(*task.attempts, attempt))


def running_value(running: Task, record_revision: int) -> bytes:
    """The value of a running-index entry and of the assignment (the same bytes).

    ``worker``, ``n`` (attempt), ``deadline``, ``t`` (timeout), ``q`` (queue),
    ``ty`` (type), ``s`` (when the attempt started) and ``rv``: the record's
    mod revision when it was assigned (the record is not written then, so
    the attempt is fenced on it).
    """
    attempt = running.current_attempt
    assert attempt is not None
    return codec.encode_obj(
        {
            "worker": attempt.worker,
            "n": attempt.number,
            "deadline": attempt.started_at + running.timeout_s,
            "t": running.timeout_s,
            "q": running.queue,
            "ty": running.type,
            "s": attempt.started_at,
            "rv": record_revision,
        }
    )


# the record after an attempt ----------------------------------------------------------------
def finished_attempt(task: Task, **changes: object) -> Task:
    """Return ``task`` with its current attempt updated by ``changes``."""
    current = task.current_attempt
    assert current is not None
    return evolve(task, attempts=(*task.attempts[:-1], evolve(current, **changes)))


def next_record(
    task: Task,
    outcome: Outcome,
    *,
    now: float,
    rng: random.Random,
    new_seq: int,
    result: JSON = None,
    error: str | None = None,
    permanent: bool = False,
    retry_after: float | None = None,
) -> Task:
    """The record after the current attempt of a running ``task`` ended with ``outcome``.

    The next state is ``models.decide``'s. A retry goes to the back of its
    priority band (``new_seq``); a lost or handed-back task keeps its place.

    Args:
        task: The running record.
        outcome: How the attempt ended.
        now: Current time.
        rng: Randomness for the backoff's jitter.
        new_seq: The sequence number a retry gets.
        result: The result, for a success.
        error: The attempt's error, if any.
        permanent: Retrying cannot help: fail now.
        retry_after: The task asked for a retry after this many seconds
            (``tasklease.Retry``) instead of its policy's backoff.

    Raises:
        InvalidTransition: ``task`` is not running.
    """
    if task.state is not TaskState.RUNNING:
        raise InvalidTransition(task.id, task.state.value, f"end an attempt ({outcome.value}) of")
    task = finished_attempt(task, finished_at=now, outcome=outcome, error=error)
    decision = decide(task, outcome, permanent=permanent, now=now, rng=rng, retry_after=retry_after)
    changes: dict[str, object] = {}
    if decision.state is TaskState.SUCCEEDED:
        changes.update(result=result, error=None)
    elif error is not None:
        changes["error"] = error
    if decision.state is TaskState.PENDING:
        changes["not_before"] = decision.not_before
    if decision.state is TaskState.QUEUED and outcome not in (Outcome.HANDED_BACK, Outcome.LOST):
        changes["seq"] = new_seq
    return transition(task, decision.state, now=now, **changes)


def end_attempt(
    task: Task, outcome: Outcome, error: str, now: float, rng: random.Random, new_seq: int
) -> Task:
    """The record after the scheduler ends the current attempt with ``outcome`` (lost, timeout).

    A task whose record would be too large to queue again (over
    ``codec.MAX_QUEUED_RECORD_BYTES``) fails instead, saying why: its outcome
    is never lost.
    """
    new = next_record(task, outcome, now=now, rng=rng, new_seq=new_seq, error=error)
    try:
        codec.encode_for_write(new)
    except PayloadTooLarge as exc:
        task = finished_attempt(task, finished_at=now, outcome=outcome, error=error)
        new = transition(task, TaskState.FAILED, now=now, error=f"{error}; not retried: {exc}")
    return new


def fit_record(new: Task, now: float) -> Task:
    """``new`` if every write of it fits, else a bounded FAILED record saying why.

    A retry (queued now, or pending and queued later) must stay within
    ``codec.MAX_QUEUED_RECORD_BYTES``; any other record within
    ``codec.record_limit`` of its state. A record that has outgrown that
    (a payload near its maximum and long errors, attempt after attempt)
    fails instead of being retried: recorded, rather than sent in a
    transaction etcd refuses and dropped.
    """
    retry = new.state in (TaskState.QUEUED, TaskState.PENDING)
    limit = codec.MAX_QUEUED_RECORD_BYTES if retry else codec.record_limit(new.state)
    try:
        size = len(codec.encode_task(new))
        if size > limit:
            raise PayloadTooLarge(f"{new.state.value} task record {new.id}", size, limit)
    except PayloadTooLarge as exc:
        if retry:
            reason = f"not retried: the task record grew too large to requeue ({exc})"
        else:
            reason = f"the task record grew too large to record this outcome ({exc}); result dropped"
        return bounded_failure(new, reason, now)
    return new


def bounded_failure(new: Task, reason: str, now: float) -> Task:
    """``new`` turned into a FAILED record that says ``reason`` and fits ``codec.MAX_RECORD_BYTES``.

    ``new`` is the record an attempt's end would write (it replaces it: the
    transition is still running -> failed). The result is dropped; if that is
    not enough, the errors of earlier attempts are shortened, and as a last
    resort the payload is dropped (each step is said in the error).
    """
    last = new.current_attempt
    attempts = new.attempts
    first_error = reason if new.error is None else f"{reason}; last error: {new.error}"
    if last is not None and last.outcome is Outcome.SUCCEEDED:
        attempts = (*attempts[:-1], evolve(last, outcome=Outcome.FAILED, error=truncate_error(reason)))
    failed = evolve(
        new,
        state=TaskState.FAILED,
        attempts=attempts,
        result=None,
        not_before=None,
        error=truncate_error(first_error),
        updated_at=now,
    )
    if _fits(failed):
        return failed
    short = tuple(
        a if a.error is None or i == len(failed.attempts) - 1 else evolve(a, error=a.error[:200])
        for i, a in enumerate(failed.attempts)
    )
    failed = evolve(failed, attempts=short, error=truncate_error(f"{reason}; earlier errors shortened"))
    if _fits(failed):
        return failed
    return evolve(failed, payload=None, error=truncate_error(f"{reason}; payload dropped"))


def _fits(task: Task) -> bool:
    try:
        return len(codec.encode_task(task)) <= codec.record_limit(task.state)
    except PayloadTooLarge:
        return False


# finish: out of running -------------------------------------------------------------------
def _leave_running(keys: Keyspace, new: Task, lease: int, assignment_key: str | None) -> list[Op]:
    data = codec.encode_task(new)
    ops: list[Op] = [Put(keys.task(new.id), data, lease=lease)]
    if assignment_key is not None:
        ops.append(Delete(assignment_key))
    ops.append(Delete(keys.running_entry(new.id)))
    ops.extend(place_ops(keys, new, data))
    if new.state.terminal:
        ops += finished_ops(keys, new, lease)
    return ops


def record_outcome(
    keys: Keyspace, worker: str, token: int, new: Task, lease: int = 0, *, record_revision: int | None = None
) -> Txn:
    """A worker's outcome: the running task leaves ``running`` (finish, requeue or delay).

    Fenced on the assignment's create revision (``token``) and on the record
    being as it was when the task was assigned (``record_revision``; None:
    ``token``, for an assignment of an older version, which wrote the record
    with it): if the task was reassigned, cancelled or recovered meanwhile,
    the compares fail and nothing is written; the failure reads the
    assignment (gone or another incarnation tells a fenced outcome from a lost
    answer). A finished record goes under ``lease``, its retention lease
    (retention.py).
    """
    if new.state is TaskState.RUNNING:
        raise InvalidTransition(new.id, new.state.value, "record an outcome with")
    task_key = keys.task(new.id)
    assign_key = keys.assignment(worker, new.id)
    fence_rev = token if record_revision is None else record_revision
    compares = [Compare.created_at(assign_key, token), Compare(task_key, "mod", "=", fence_rev)]
    return Txn(compares, _leave_running(keys, new, lease, assign_key), [Get(assign_key)])


def outcome_bytes(new: Task) -> int:
    """About what :func:`record_outcome` carries (the record, twice when queued), for batching."""
    copies = 2 if new.state is TaskState.QUEUED else 1
    return copies * len(codec.encode_task(new)) + 2048


def repair(
    keys: Keyspace,
    fence: Compare,
    running_kv_revision: int,
    worker: str,
    record_kv: KV,
    old: Task,
    new: Task,
    *,
    assignment_create_revision: int,
    lease: int = 0,
) -> Txn:
    """The scheduler ends a running attempt (lost or overdue): finish, requeue or delay.

    ``assignment_create_revision`` 0 means the assignment must be absent
    (lost); otherwise it must be that incarnation, and it is deleted (overdue,
    or a worker that stopped heartbeating: tells it to stop).
    """
    _check(old, new.state, f"end its attempt as {new.state.value}")
    assign_key = keys.assignment(worker, new.id)
    compares = [
        fence,
        Compare(keys.running_entry(new.id), "mod", "=", running_kv_revision),
        Compare.unchanged(record_kv),
        Compare.created_at(assign_key, assignment_create_revision),
    ]
    return Txn(compares, _leave_running(keys, new, lease, assign_key if assignment_create_revision else None))


def drop_running_entry(
    keys: Keyspace, fence: Compare, task_id: str, worker: str, revision: int, *, with_assignment: bool
) -> Txn:
    """Delete a stale or unrepairable running-index entry (and its assignment, which stops a worker)."""
    entry_key = keys.running_entry(task_id)
    ops: list[Op] = [Delete(entry_key)]
    if with_assignment:
        ops.append(Delete(keys.assignment(worker, task_id)))
    return Txn([fence, Compare(entry_key, "mod", "=", revision)], ops)


# client rewrites: cancel, re-prioritise -----------------------------------------------------
def cancelled(task: Task, reason: str, now: float) -> Task:
    """The record of ``task`` cancelled for ``reason`` (a running attempt ends ``cancelled``).

    Raises:
        InvalidTransition: It already finished.
    """
    attempts = task.attempts
    if task.state is TaskState.RUNNING and (current := task.current_attempt):
        attempts = (
            *attempts[:-1],
            evolve(current, finished_at=now, outcome=Outcome.CANCELLED, error=reason),
        )
    if task.state.terminal:
        raise InvalidTransition(task.id, task.state.value, "cancel")
    return transition(task, TaskState.CANCELLED, now=now, attempts=attempts, error=reason)


def reprioritised(task: Task, priority: int, now: float) -> Task:
    """The record of a waiting ``task`` with ``priority`` (it keeps its place in time, its sequence).

    Raises:
        InvalidTransition: It is running or finished.
    """
    if task.state not in (TaskState.QUEUED, TaskState.PENDING, TaskState.WAITING):
        raise InvalidTransition(task.id, task.state.value, "change the priority of")
    return transition(task, task.state, now=now, priority=priority)


def queued_compare(keys: Keyspace, task: Task, record_kv: KV) -> Compare:
    """That a queued ``task`` (read as ``record_kv``) is still queued: not assigned since.

    An assignment does not write the record: it deletes the queue key, which
    every write of a queued record puts with it (same mod revision).
    """
    return Compare(queue_key(keys, task), "mod", "=", record_kv.mod_revision)


def rewrite(
    keys: Keyspace, record_kv: KV, old: Task, new: Task, lease: int = 0, *, running_kv: KV | None = None
) -> Txn:
    """A read-modify-write of a task (cancel, re-prioritise): record and index keys, one transaction.

    Guarded by the record's mod revision, and for a queued task by its queue
    key (:func:`queued_compare`: an assignment writes no record); for a
    running task read as its record and running-index entry (``running_kv``,
    :func:`running_record`), by that entry. The old index keys go (queue or
    delayed key; for a running task its assignment, which tells the worker
    to stop and fences off its result, and its running-index entry); the new
    state's index key comes. A key in both is written once.
    """
    _check(old, new.state, f"move to {new.state.value}")
    data = codec.encode_task(new)
    placed = place_ops(keys, new, data)
    gone = unplace_ops(keys, old)
    # etcd refuses a transaction that names a key twice: an index key that
    # stays is not deleted, and a delayed key (its value is the id) is not rewritten.
    same = {op.key for op in placed} & {op.key for op in gone}
    ops: list[Op] = [Put(record_kv.key, data, lease=lease)]
    ops += [op for op in gone if op.key not in same]
    if old.state is TaskState.RUNNING and new.state is not TaskState.RUNNING and (a := old.current_attempt):
        ops += [Delete(keys.assignment(a.worker, old.id)), Delete(keys.running_entry(old.id))]
    ops += [op for op in placed if op.key not in same or new.state is TaskState.QUEUED]
    if new.state.terminal and not old.state.terminal:
        ops += finished_ops(keys, new, lease)
    compares = [Compare.unchanged(record_kv)]
    if running_kv is not None:
        compares.append(Compare.unchanged(running_kv))
    elif old.state is TaskState.QUEUED:
        compares.append(queued_compare(keys, old, record_kv))
    return Txn(compares, ops)


# scheduler: promote, fail what waits ----------------------------------------------------------
def promote(
    keys: Keyspace, fence: Compare, delayed_kv: KV, record_kv: KV, task: Task, now: float, new_seq: int
) -> tuple[Txn, Task]:
    """Move a pending task whose delay has passed into its queue (at the back of its band).

    Returns:
        The transaction and the queued record it writes.

    Raises:
        InvalidTransition: It is not pending.
        PayloadTooLarge: Its queued record would be over the limit (fail it instead).
    """
    if task.state is not TaskState.PENDING:
        raise InvalidTransition(task.id, task.state.value, "promote")
    queued = transition(task, TaskState.QUEUED, now=now, seq=new_seq, not_before=None)
    data = codec.encode_for_write(queued)
    compares = [fence, Compare.unchanged(delayed_kv), Compare.unchanged(record_kv)]
    ops: list[Op] = [Delete(delayed_kv.key), Put(record_kv.key, data), *place_ops(keys, queued, data)]
    return Txn(compares, ops), queued


def promote_record(
    keys: Keyspace, fence: Compare, delayed_kv: KV, record_kv: KV, now: float, new_seq: int
) -> tuple[Txn, dict[str, Any]] | None:
    """:func:`promote` without building a :class:`Task`: the leader's fast path for many due tasks.

    Promotion changes four fields of the record (state, sequence, update time,
    ``not_before``), so the record's JSON is patched in place (its keys keep
    their order): the bytes written are exactly those :func:`promote` writes
    (a unit test checks it), at a fraction of the CPU (no decoding into a
    ``Task``, no validation of what the submit validated). It applies only to
    a pending record of this schema version whose queue-key fields are sound;
    for anything else it returns None and the caller takes :func:`promote`
    (which validates everything and raises what is wrong).

    Returns:
        The transaction and the queued record's dict (to decode for an event), or None.
    """
    try:
        d = orjson.loads(record_kv.value)
        if (
            not isinstance(d, dict)
            or d.get("v") != SCHEMA_VERSION
            or d.get("state") != TaskState.PENDING.value
            or isinstance(d.get("not_before"), bool)
            or not isinstance(d.get("not_before"), int | float)
            or not isinstance(d.get("type"), str)
            or not isinstance(d.get("priority"), int)
            or d.get("id") != keys.task_id_of(record_kv.key)
        ):
            return None
        requires = d.get("requires") or {}
        if not isinstance(requires, dict) or not all(isinstance(v, str) for v in requires.values()):
            return None
        d["state"] = TaskState.QUEUED.value
        d["seq"] = new_seq
        d["updated_at"] = now
        d["not_before"] = None
        data = orjson.dumps(d)
        task_route = _route_text(d["type"], tuple(sorted(requires.items())))
        key = keys.queue_entry(d["queue"], check_priority(d["priority"]), new_seq, d["id"], task_route)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):  # ValidationError is a ValueError
        return None
    if len(data) > codec.MAX_QUEUED_RECORD_BYTES:
        return None  # promote() fails it with the reason
    compares = [fence, Compare.unchanged(delayed_kv), Compare.unchanged(record_kv)]
    ops: list[Op] = [
        Delete(delayed_kv.key),
        Put(record_kv.key, data),
        Put(key, codec.index_record_of(d, len(data))),
    ]
    return Txn(compares, ops), d


@functools.lru_cache(maxsize=1024)
def _route_text(task_type: str, requires: tuple[tuple[str, str], ...]) -> str:
    """A route's text, checked once per (type, tags): promotions of one kind of task share it."""
    return route(check_type(task_type), requires)


def drop_delayed(fence: Compare, delayed_kv: KV) -> Txn:
    """Delete a delayed key with nothing to promote (record gone, corrupt or no longer pending)."""
    return Txn([fence, Compare.unchanged(delayed_kv)], [Delete(delayed_kv.key)])


def fail_waiting(
    keys: Keyspace,
    fence: Compare,
    index_kv: KV,
    record_kv: KV,
    task: Task,
    reason: str,
    now: float,
    lease: int,
) -> tuple[Txn, Task]:
    """Fail a waiting (queued or pending) task that no transaction can carry.

    ``index_kv`` is its queue or delayed key. If even the failed record is too
    large to write (a record from an older version, or planted), its payload
    is left out, and the error says so.

    Returns:
        The transaction and the failed record it writes.
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
    ops: list[Op] = [
        Delete(index_kv.key),
        Put(record_kv.key, data, lease=lease),
        *finished_ops(keys, failed, lease),
    ]
    return Txn(compares, ops), failed


# dependencies: decide, release, cascade ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ParentEnd:
    """How a parent ended, as far as its child is concerned.

    Attributes:
        task_id: The parent.
        state: Its finished state (succeeded, failed, cancelled), or ``None``:
            its record no longer exists (expired or purged).
        error: Its error, if any (the start of it goes into a cancelled child's reason).
    """

    task_id: str
    state: TaskState | None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        """Whether it succeeded."""
        return self.state is TaskState.SUCCEEDED

    def reason(self) -> str:
        """Why a child with ``on_parent_failure="cancel"`` is cancelled: names this parent."""
        if self.state is None:
            return f"parent {self.task_id} no longer exists"
        text = f"parent {self.task_id} {self.state.value}"
        if self.error:
            text += f": {self.error[:PARENT_ERROR_CHARS]}"
        return text


PARENT_ERROR_CHARS = 200
"""How much of a failed parent's error a cancelled child's reason quotes."""


def parent_end(task_id: str, task: Task | None) -> ParentEnd | None:
    """The end of parent ``task_id`` from its record (``None``: missing), or ``None`` if it has not finished."""
    if task is None:
        return ParentEnd(task_id, None)
    if not task.state.terminal:
        return None
    return ParentEnd(task_id, task.state, task.error)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What happens to a waiting child, given what is known of its parents.

    Attributes:
        action: ``"wait"`` (some parent has not finished), ``"release"`` (run
            it: every parent succeeded, or finished with policy ``run``) or
            ``"cancel"`` (a parent failed, was cancelled or no longer exists,
            with policy ``cancel``).
        reason: For ``cancel``: the reason recorded, naming the parent.
    """

    action: str
    reason: str = ""


WAIT = Verdict("wait")
RELEASE = Verdict("release")


def verdict(parents: tuple[str, ...], policy: str, ends: dict[str, ParentEnd]) -> Verdict:
    """The one pure function for "may this child run yet" (client at submit, leader at release).

    Args:
        parents: The child's parents, in its order.
        policy: Its ``on_parent_failure``: ``"cancel"`` or ``"run"``.
        ends: The known ends of (some of) its parents; a parent not in it has
            not finished.

    Returns:
        With ``cancel``: the first parent (in the child's order) that did not
        succeed cancels it at once, whether or not the others finished. Else
        it is released once every parent has an end, and waits until then.
    """
    if policy == "cancel":
        for parent in parents:
            end = ends.get(parent)
            if end is not None and not end.succeeded:
                return Verdict("cancel", end.reason())
    if all(parent in ends for parent in parents):
        return RELEASE
    return WAIT


def released(task: Task, now: float, new_seq: int) -> Task:
    """The record of a waiting ``task`` whose parents let it run: queued (at the back of its band).

    Pending instead, if its own delay (``not_before``) is still ahead.

    Raises:
        InvalidTransition: It is not waiting.
    """
    if task.state is not TaskState.WAITING:
        raise InvalidTransition(task.id, task.state.value, "release")
    if task.not_before is not None and task.not_before > now:
        return transition(task, TaskState.PENDING, now=now)
    return transition(task, TaskState.QUEUED, now=now, seq=new_seq, not_before=None)


def release(
    keys: Keyspace, fence: Compare, deps_kv: KV, record_kv: KV, old: Task, new: Task, lease: int = 0
) -> Txn:
    """The leader moves a waiting task on: released (queued or pending) or cascaded (cancelled, failed).

    Guarded by the leadership ``fence``, the deps key and the record being
    unchanged since read: a cancel, a re-prioritisation or another leader's
    release in between makes it fail (and the caller reads again). Deletes the
    deps key and writes the record and its new index key (:func:`rewrite`); a
    cancelled or failed record goes under its retention ``lease`` with
    :func:`finished_ops`. Several of these go in one transaction (:meth:`Txn.extend`).

    Raises:
        InvalidTransition: ``old`` is not waiting, or the move is not allowed.
        PayloadTooLarge: A queued ``new`` is over the queued record limit.
    """
    if old.state is not TaskState.WAITING:
        raise InvalidTransition(old.id, old.state.value, "release")
    if new.state is TaskState.QUEUED:
        codec.encode_for_write(new)  # queued: within the queued limit
    txn = rewrite(keys, record_kv, old, new, lease)
    if deps_kv.key != keys.deps_entry(old.queue, old.id):  # never in practice: the key names the queue
        txn.ops.append(Delete(deps_kv.key))
    txn.compares[:0] = [fence, Compare.unchanged(deps_kv)]
    return txn


def enqueue_ended(keys: Keyspace, task: Task, lease: int) -> Txn:
    """Write a new task that ends at its submit (its parent already failed): record and finished ops.

    Guarded by its id being free, like :func:`enqueue`; the record goes under
    its retention ``lease``.

    Raises:
        InvalidTransition: ``task`` is not finished, or has attempts.
    """
    if not task.state.terminal or task.attempts or task.idempotency_key is not None:
        # (a key is taken only with a compare: a keyed task is written waiting instead)
        raise InvalidTransition(task.id, task.state.value, "submit as finished")
    task_key = keys.task(task.id)
    data = codec.encode_task(task)
    return Txn(
        [Compare.absent(task_key)], [Put(task_key, data, lease=lease), *finished_ops(keys, task, lease)]
    )


def parse_deps_value(key: str, value: bytes) -> tuple[tuple[str, ...], str]:
    """The parents and the parent-failure policy a deps key holds (:func:`deps_value`).

    Raises:
        CorruptRecord: It is not such a value.
    """
    d = codec.decode_obj(key, value)
    parents = d.get("parents")
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise CorruptRecord(key, "deps value without a list of parents")
    policy = "run" if d.get("p") == "run" else "cancel"
    return tuple(parents), policy


# scheduler: expire --------------------------------------------------------------------------
EXPIRABLE = (TaskState.WAITING, TaskState.PENDING, TaskState.QUEUED)
"""The states of a task that has not started yet (if it never ran): it may expire."""


def expired(task: Task, now: float) -> Task:
    """The record of ``task`` discarded at ``now`` because it had not started by its expiry.

    Cancelled, the reason naming the expiry time (UTC).
    """
    assert task.expires_at is not None
    when = datetime.fromtimestamp(task.expires_at, UTC).isoformat(timespec="milliseconds")
    return cancelled(task, f"expired: not started by {when.replace('+00:00', 'Z')}", now)


def expire(
    keys: Keyspace,
    fence: Compare,
    expiring_kv: KV,
    record_kv: KV,
    task: Task,
    now: float,
    lease: int,
) -> tuple[Txn, Task]:
    """Discard a task that has not started by its expiry: cancelled, with the reason recorded.

    Guarded by the leadership, the record and the expiring key being as read:
    the record goes cancelled under its retention ``lease`` with its finished
    ops; its index key (queue, delayed or deps key) and its expiring key go.
    A task assigned meanwhile lost its queue key: the compares fail.

    Returns:
        The transaction and the cancelled record it writes.

    Raises:
        InvalidTransition: It is not waiting, pending or queued, or it ran before.
    """
    if task.state not in EXPIRABLE or task.attempts:
        raise InvalidTransition(task.id, task.state.value, "expire")
    new = expired(task, now)
    compares = [fence, Compare.unchanged(record_kv), Compare.unchanged(expiring_kv)]
    if task.state is TaskState.QUEUED:
        compares.append(queued_compare(keys, task, record_kv))  # not assigned since
    ops: list[Op] = [
        Put(record_kv.key, codec.encode_task(new), lease=lease),
        *unplace_ops(keys, task),
        *finished_ops(keys, new, lease),
        Delete(expiring_kv.key),
    ]
    return Txn(compares, ops), new


def drop_expiring(fence: Compare, expiring_kv: KV) -> Txn:
    """Delete an expiring key with nothing to expire (the task started, finished or vanished)."""
    return Txn([fence, Compare.unchanged(expiring_kv)], [Delete(expiring_kv.key)])


# batches of the leader's repairs --------------------------------------------------------------
def pack(
    parts: Sequence[Txn], *, max_ops: int = MAX_TXN_OPS, max_bytes: int = MAX_TXN_BYTES
) -> list[tuple[Txn, list[int]]]:
    """Group independent transactions (one task each) into as few as etcd's limits allow.

    Each part stays whole and keeps its order; a compare that several parts
    share (the leadership fence) is sent once per group; a group never names
    a key twice among its writes (etcd refuses that) and stays within
    ``max_ops`` compares, ``max_ops`` operations and ``max_bytes`` (an upper
    bound: ``Txn.size``). A part that fits no group goes alone. The group is
    all or nothing: if a compare of one part fails, nothing of the group is
    written, and the sender tries each part alone (``recoverer.commit_parts``).

    Returns:
        ``(transaction, indexes of its parts)`` for each group, in order.
    """
    groups: list[tuple[Txn, list[int]]] = []
    current = Txn()
    indexes: list[int] = []
    seen: set[Compare] = set()
    written: set[str] = set()
    size = 0
    for i, part in enumerate(parts):
        new_compares = [c for c in dict.fromkeys(part.compares) if c not in seen]
        keys_written = {op.key for op in part.ops}
        part_size = part.size()
        fits = (
            len(current.compares) + len(new_compares) <= max_ops
            and len(current.ops) + len(part.ops) <= max_ops
            and size + part_size <= max_bytes
            and not keys_written & written
        )
        if indexes and not fits:
            groups.append((current, indexes))
            current, indexes, seen, written, size = Txn(), [], set(), set(), 0
            new_compares = list(dict.fromkeys(part.compares))
        current.compares.extend(new_compares)
        current.ops.extend(part.ops)
        seen.update(new_compares)
        written |= keys_written
        size += part_size
        indexes.append(i)
    if indexes:
        groups.append((current, indexes))
    return groups
