"""The client's writes of new tasks: ``submit``, group commit, and ``submit_many``'s batches.

Owns :class:`TaskSpec` (what a submit asks for), :class:`BatchResult`, how a
batch is cut into etcd transactions (:func:`chunk`), the admission of new
tasks against the namespace's quota, and the group commit of concurrent
submits (one :class:`tasklease.groupcommit.GroupCommit`). Every transaction
is :func:`tasklease.transitions.enqueue`'s; a :class:`tasklease.events.Submitted`
is emitted for each task once its transaction landed.

Sizes. Every write of many tasks (``submit_many``, and the group commit of
concurrent submits) is cut into transactions of at most 64 tasks and
``MAX_TXN_BYTES`` (1.4 MB): a task too large to share a transaction goes alone.

Errors. Every submit gets the outcome of its own task: when a group
transaction fails, each of its submits either receives the error (etcd refused
the request: auth, permission, no space) or is sent again alone, which tells
whether it was stored (no answer, request too large, a used id in the group).

May import: codec, transitions, events, groupcommit, ids, keys, models,
quotas, purge (the no-space hint), retry, routing, store, waiters, errors,
inspector (:func:`stored_revision`). Nothing imports it but client.py and sync.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tasklease import codec, transitions
from tasklease.clock import Clock
from tasklease.errors import (
    BatchIncomplete,
    InvalidOption,
    PayloadTooLarge,
    StoreAuthError,
    StoreError,
    StoreNoSpace,
    StoreUnavailable,
)
from tasklease.events import Hooks, Submitted
from tasklease.groupcommit import GroupCommit, Pending, first_group_len
from tasklease.ids import IdGenerator
from tasklease.inspector import stored_revision
from tasklease.keys import Keyspace
from tasklease.models import (
    DEFAULT_RETENTION_S,
    Task,
    TaskState,
    bound_trace,
    evolve,
)
from tasklease.purge import explain_nospace
from tasklease.quotas import QuotaGuard
from tasklease.routing import check_requires
from tasklease.spec import TaskSpec as TaskSpec  # noqa: PLC0414 (re-exported)
from tasklease.store import KV, MAX_TXN_BYTES, MAX_TXN_OPS, Compare, KVStore, Op
from tasklease.waiters import ResultHub

log = logging.getLogger("tasklease.client")

# Each submitted task is one compare and two puts: 64 fill etcd's 128 ops.
TASKS_PER_TXN = MAX_TXN_OPS // 2
# Errors by which etcd refused a whole transaction: nothing was written, and each
# of its tasks alone would be refused the same way.
REFUSALS = (StoreAuthError, StoreNoSpace)

# One submit in a group: the new task and its encoded record.
Item = tuple[Task, bytes]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What ``submit_many`` wrote.

    Attributes:
        tasks: The submitted tasks, in the order given.
        transactions: How many etcd transactions it took. With 1 the batch was
            atomic; with more, each transaction was atomic on its own.
    """

    tasks: list[Task]
    transactions: int

    @property
    def atomic(self) -> bool:
        """Whether the whole batch was written by one transaction."""
        return self.transactions <= 1


class Submitter:
    """Writes new tasks: one at a time (grouped when concurrent) or in batches.

    Args:
        store: The connection.
        keys: The namespace.
        clock: Time source (creation times, event times).
        ids: Id and sequence generator.
        quotas: The namespace's quota, checked before anything is written.
        hub: The client's result hub, told the revision of each own submit.
        hooks: Receive a :class:`Submitted` per task once it is stored.
    """

    def __init__(
        self,
        store: KVStore,
        keys: Keyspace,
        *,
        clock: Clock,
        ids: IdGenerator,
        quotas: QuotaGuard,
        hub: ResultHub,
        hooks: Hooks,
    ) -> None:
        self.store = store
        self.keys = keys
        self.clock = clock
        self.ids = ids
        self.quotas = quotas
        self.hub = hub
        self.hooks = hooks
        # Queues this client has put in the queue registry (keys.py: queues/{queue}), or is putting.
        self._registered: set[str] = set()
        self._registering: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        # Concurrent submits waiting for the next group transaction (its own state, loop only).
        self.group: GroupCommit[Item, Task] = GroupCommit(
            self._write_group,
            cost=lambda item: txn_cost(*item),
            max_items=TASKS_PER_TXN,
            max_bytes=MAX_TXN_BYTES,
            name="tasklease-submits",
        )

    async def close(self) -> None:
        """Wait for the submits in flight (each caller gets its own answer) and the registry puts."""
        await self.group.drain()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def default_retention(self) -> float:
        """The retention of a submit that gives none (the namespace's quota may lower it)."""
        quota = await self.quotas.current()
        return quota.default_retention_s() if quota is not None else DEFAULT_RETENTION_S

    def register_queues(self, queues: Iterable[str]) -> None:
        """Put the registry key of each queue this client has not registered yet, in the background.

        The registry lets the overview and listings name the queues without a
        scan (keys.py). It is a hint, written beside the submit and never in its
        transaction (which stays as it was, grouped with its neighbours): a put
        that fails is logged and tried again at the next submit to that queue;
        :meth:`close` waits for the puts in flight.
        """
        for queue in set(queues) - self._registered - self._registering:
            self._registering.add(queue)
            task = asyncio.create_task(self._register(queue), name=f"tasklease-register-{queue}")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _register(self, queue: str) -> None:
        try:
            await self.store.put(self.keys.known_queue(queue), b"")
        except StoreError as exc:
            log.debug("queue registry: %s not registered (%s); tried again at its next submit", queue, exc)
        else:
            self._registered.add(queue)
        finally:
            self._registering.discard(queue)

    def new_task(self, spec: TaskSpec, default_retention_s: float = DEFAULT_RETENTION_S) -> Task:
        """The record of a new task (its id, sequence, times and first state are given here).

        It starts ``waiting`` if it has parents, ``pending`` if it may not run
        yet (``delay_s``, ``run_at``), else ``queued``.

        Its ``trace`` is what the hooks that carry trace context give (events.py),
        else the spec's own; without such hooks nothing is asked.
        """
        now = self.clock.now()
        starts = [
            t for t in (None if spec.delay_s is None else now + spec.delay_s, spec.run_at) if t is not None
        ]
        not_before = max(starts) if starts and max(starts) > now else None
        ends = [
            t
            for t in (None if spec.expires_s is None else now + spec.expires_s, spec.expires_at)
            if t is not None
        ]
        state = TaskState.QUEUED
        if spec.depends_on:
            state = TaskState.WAITING
        elif not_before is not None:
            state = TaskState.PENDING
        task = Task(
            id=spec.task_id or self.ids.task_id(),
            type=spec.type,
            payload=spec.payload,
            queue=spec.queue,
            priority=spec.priority,
            timeout_s=float(spec.timeout_s),
            retry=spec.retry,
            state=state,
            seq=self.ids.sequence(),
            created_at=now,
            updated_at=now,
            retention_s=float(spec.retention_s if spec.retention_s is not None else default_retention_s),
            requires=check_requires(spec.requires),
            trace=bound_trace(spec.trace),
            not_before=not_before,
            depends_on=tuple(spec.depends_on or ()),
            on_parent_failure=spec.on_parent_failure,
            expires_at=min(ends) if ends else None,
            idempotency_key=spec.idempotency_key,
            unique_until=None if spec.unique_for_s is None else now + spec.unique_for_s,
        )
        if self.hooks.carriers and (trace := self.hooks.trace_context(task)):
            task = evolve(task, trace=trace)
        return task

    def submit_ops(self, task: Task, data: bytes) -> tuple[Compare, list[Op]]:
        """The compare and the puts that enqueue one task (``transitions.enqueue``)."""
        txn = transitions.enqueue(self.keys, task, data)
        return txn.compares[0], txn.ops

    def _merged(self, items: Iterable[Item]) -> tuple[list[Compare], list[Op]]:
        compares: list[Compare] = []
        ops: list[Op] = []
        for task, data in items:
            compare, task_ops = self.submit_ops(task, data)
            compares.append(compare)
            ops.extend(task_ops)
        return compares, ops

    def _submitted(self, task: Task, revision: int) -> None:
        """``task`` is stored at ``revision``: account for it and tell the hooks."""
        self.quotas.landed(task.id, revision)
        self.hooks.emit(Submitted(at=self.clock.now(), component="client", task=task))

    async def run_again(self, old: Task, old_kv: KV) -> Task | None:
        """Submit a new task with ``old``'s spec, linked both ways (``transitions.rerun``): one transaction.

        Admitted by the quota like any submit. ``None`` if ``old`` changed
        since it was read (read it again and retry).

        Raises:
            InvalidTransition: ``old`` is not failed or cancelled.
        """
        spec = TaskSpec(
            type=old.type,
            payload=old.payload,
            queue=old.queue,
            priority=old.priority,
            timeout_s=old.timeout_s,
            retry=old.retry,
            retention_s=old.retention_s,
            requires=old.requires or None,
        )
        new = evolve(self.new_task(spec), rerun_of=old.id)
        data = encode_queued(new)
        txn = transitions.rerun(self.keys, old_kv, evolve(old, reruns=(*old.reruns, new.id)), new, data)
        await self.quotas.admit([(new, data)])
        try:
            self.register_queues([new.queue])
            result = await self.store.txn(txn.compares, txn.ops)
        except StoreNoSpace as exc:
            raise explain_nospace(exc, "the new task was") from exc
        finally:
            self.quotas.abandon([new.id])
        if not result.succeeded:
            return None
        self._submitted(new, result.revision)
        return new

    # one task ---------------------------------------------------------------------------------
    async def submit_spec(self, spec: TaskSpec) -> Task:
        """Submit one validated :class:`TaskSpec` (see :meth:`tasklease.Client.submit_spec`)."""
        task = self.new_task(spec, await self.default_retention())
        try:
            data = encode_queued(task)
            try:
                await self.quotas.admit([(task, data)])
                self.register_queues([task.queue])
                return await self.group.submit((task, data))
            except StoreNoSpace as exc:
                raise explain_nospace(exc, "the submit was") from exc
            finally:
                self.quotas.abandon([task.id])
        except BaseException as exc:
            if self.hooks.carriers:
                self.hooks.submit_failed([task.id], exc)
            raise

    async def _write_group(self, group: list[Pending[Item, Task]]) -> None:
        """Write a group of submits in one transaction; settle every one of them."""
        if len(group) > 1:
            compares, ops = self._merged(p.item for p in group)
            try:
                result = await self.store.txn(compares, ops)
            except REFUSALS as exc:
                # Refused as a whole: nothing was written; every submit gets the error.
                for pending in group:
                    pending.fail(exc)
                return
            except StoreError as exc:
                # No answer (it may have landed), too large, or another failure:
                # one transaction each tells what became of every task.
                log.debug("group submit of %d tasks failed (%s); sending them one by one", len(group), exc)
                result = None
            if result is not None and result.succeeded:
                for pending in group:
                    task = pending.item[0]
                    self.hub.expect(task.id, result.revision)
                    self._submitted(task, result.revision)
                    pending.settle(task)
                return
        # Alone, or the group failed: one transaction each tells who is who.
        for pending in group:
            try:
                stored = await self._submit_one(*pending.item)
            except Exception as exc:
                pending.fail(exc)
            else:
                pending.settle(stored)

    async def _submit_one(self, task: Task, data: bytes) -> Task:
        compare, ops = self.submit_ops(task, data)
        try:
            result = await self.store.txn([compare], ops)
        except StoreUnavailable:
            # The transaction may have committed before the answer was lost.
            if (revision := await stored_revision(self.store, self.keys, task.id, data)) is not None:
                self._submitted(task, revision)
                return task
            raise
        if not result.succeeded:
            if (revision := await stored_revision(self.store, self.keys, task.id, data)) is not None:
                self._submitted(task, revision)
                return task  # an earlier group transaction landed after all
            raise InvalidOption(f"task id {task.id} is already used")
        self.hub.expect(task.id, result.revision)
        self._submitted(task, result.revision)
        return task

    # batches ----------------------------------------------------------------------------------
    async def submit_many(self, specs: Iterable[TaskSpec]) -> BatchResult:
        """Submit many tasks in as few transactions as etcd allows.

        Every spec is validated and encoded before anything is written, so one
        invalid task writes nothing. Up to 64 tasks (and 1.4 MB) go in one
        transaction, which is all or nothing; a larger batch is split at that
        limit, and :attr:`BatchResult.transactions` says into how many.

        Raises:
            ValidationError: Some spec is invalid (nothing written).
            QuotaExceeded: The whole batch is over a quota (nothing written).
            StoreNoSpace: etcd is out of space before anything was written.
            BatchIncomplete: A later transaction failed after earlier ones were
                committed; its ``written`` attribute lists the tasks that were.
        """
        tasks: list[Task] = []
        encoded: list[bytes] = []
        default_retention = await self.default_retention()
        try:
            for spec in specs:
                task = self.new_task(spec, default_retention)
                tasks.append(task)
                encoded.append(encode_queued(task))
            if len({t.id for t in tasks}) != len(tasks):
                raise InvalidOption("a batch holds the same task id twice")
            try:
                await self.quotas.admit(list(zip(tasks, encoded, strict=True)))
                self.register_queues(t.queue for t in tasks)
                return await self._write_batch(tasks, encoded)
            except StoreNoSpace as exc:
                raise explain_nospace(exc, "the batch was") from exc
            finally:
                self.quotas.abandon([t.id for t in tasks])
        except BaseException as exc:
            if self.hooks.carriers:  # those written had their Submitted: a carrier ends the others
                self.hooks.submit_failed([t.id for t in tasks], exc)
            raise

    async def _write_batch(self, tasks: list[Task], encoded: list[bytes]) -> BatchResult:
        chunks = chunk(tasks, encoded)
        if len(chunks) > 1:
            log.info(
                "batch of %d tasks split into %d transactions (etcd allows %d ops each)",
                len(tasks),
                len(chunks),
                MAX_TXN_OPS,
            )
        written: list[Task] = []
        for part in chunks:
            revision = await self._write_chunk(part, written)
            for task, _ in part:
                self._submitted(task, revision)
            written.extend(task for task, _ in part)
        return BatchResult(tasks, len(chunks))

    async def _write_chunk(self, part: list[Item], written: list[Task]) -> int:
        """Write one transaction of a batch; the revision it landed at.

        Raises:
            BatchIncomplete: It failed after earlier parts (``written``) were committed.
        """
        compares, ops = self._merged(part)
        try:
            result = await self.store.txn(compares, ops)
        except StoreUnavailable as exc:
            first_task, first_data = part[0]
            stored = await stored_revision(self.store, self.keys, first_task.id, first_data)
            if stored is None:
                if written:
                    raise BatchIncomplete(written, str(exc)) from exc
                raise
            return stored
        except StoreError as exc:
            # Refused (auth, no space, too large, ...): this part was not written.
            if written:
                if isinstance(exc, StoreNoSpace):
                    exc = explain_nospace(exc, "the rest of the batch was")
                raise BatchIncomplete(written, str(exc)) from exc
            raise
        if not result.succeeded:
            reason = "a task id in the batch is already used"
            if written:
                raise BatchIncomplete(written, reason)
            raise InvalidOption(reason)
        return result.revision


def encode_queued(task: Task) -> bytes:
    """A new task's record, refused if over the queued record limit.

    Raises:
        PayloadTooLarge: Over ``codec.MAX_QUEUED_RECORD_BYTES``.
    """
    data = codec.encode_task(task)
    if len(data) > codec.MAX_QUEUED_RECORD_BYTES:
        raise PayloadTooLarge(f"queued task record {task.id}", len(data), codec.MAX_QUEUED_RECORD_BYTES)
    return data


def txn_cost(task: Task, data: bytes) -> int:
    """Request bytes one submitted task adds to a transaction (an upper bound)."""
    # record + queue key (whose value is the record too) + the compare.
    return 2 * len(data) + 4 * (len(task.id) + len(task.queue) + 100) + 64


def chunk(tasks: Sequence[Task], encoded: Sequence[bytes]) -> list[list[Item]]:
    """Cut tasks, in order, into transactions of at most 64 tasks, 128 ops and ``MAX_TXN_BYTES``."""
    chunks: list[list[Item]] = []
    current: list[Item] = []
    size = ops = 0
    for task, data in zip(tasks, encoded, strict=True):
        cost = txn_cost(task, data)
        n_ops = transitions.enqueue_op_count(task)  # 3 with an expiring key
        if current and (
            len(current) >= TASKS_PER_TXN or size + cost > MAX_TXN_BYTES or ops + n_ops > MAX_TXN_OPS
        ):
            chunks.append(current)
            current, size, ops = [], 0, 0
        current.append((task, data))
        size += cost
        ops += n_ops
    if current:
        chunks.append(current)
    return chunks


def first_chunk_len(items: Sequence[Item]) -> int:
    """How many of ``items`` the first transaction of :func:`chunk` takes (at least 1)."""
    return first_group_len([txn_cost(t, d) for t, d in items[:TASKS_PER_TXN]], TASKS_PER_TXN, MAX_TXN_BYTES)
