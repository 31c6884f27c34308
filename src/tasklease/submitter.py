"""The client's writes of new tasks: ``submit``, group commit, and ``submit_many``'s batches.

Owns :class:`TaskSpec` (what a submit asks for), :class:`BatchResult`, how a
batch is cut into etcd transactions (:func:`chunk`), the admission of new
tasks against the namespace's quota, and the group commit of concurrent
submits (one :class:`tasklease.groupcommit.GroupCommit`). Every transaction
is :func:`tasklease.transitions.enqueue`'s; a :class:`tasklease.events.Submitted`
is emitted for each task once its transaction landed.

Sizes. Every write of many tasks (``submit_many``, and the group commit of
concurrent submits) is cut into transactions of at most 128 operations (64
plain tasks, 42 with idempotency keys: :func:`txn_ops`) and ``MAX_TXN_BYTES``
(1.4 MB): a task too large to share a transaction goes alone.

Idempotency keys (docs/idempotency.md). A task with an ``idempotency_key``
takes ``unique/{sha256}`` in its own transaction (``transitions.claim_unique``),
so two submits with one key never both create a task, whichever clients send
them. A transaction that fails reads, in its failure branch, who holds each of
its keys; the holders' records are then read (one transaction of gets per 32)
and each submit whose key is held gets the holder as a :class:`SubmitResult`
with ``created`` False; the others are sent again together. Within one group or
one batch, a key given twice is written once: the later submits get the first
one's task (not created). A key whose holder's record is gone (expired,
purged) is taken over: compared unchanged since it was read, the holder's
record still absent.

Parents. A task with ``depends_on`` has its parents read first
(:meth:`Submitter.settle_parents`: transactions of 32 gets): an unknown parent
is refused (``TaskNotFound``, nothing written); a child whose parents all
finished is written queued (or pending, or cancelled if one failed) at once,
otherwise waiting, with its deps key (release.py says how it leaves it).

Errors. Every submit gets the outcome of its own task: when a group
transaction fails, each of its submits either receives the error (etcd refused
the request: auth, permission, no space), the task holding its idempotency key,
or is sent again (together with the others, or alone, which tells whether it
was stored: no answer, request too large, a used id in the group).

May import: codec, transitions, events, groupcommit, ids, keys, models,
quotas, purge (the no-space hint), retention (``unique_for`` leases), retry,
routing, store, waiters, errors, inspector (:func:`stored_revision`), finished
(:func:`read_records`). Nothing imports it but client.py and sync.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from tasklease import codec, transitions
from tasklease.clock import Clock
from tasklease.errors import (
    BatchIncomplete,
    ConflictError,
    CorruptRecord,
    InvalidOption,
    PayloadTooLarge,
    QuotaExceeded,
    StoreAuthError,
    StoreError,
    StoreLeaseNotFound,
    StoreNoSpace,
    StoreUnavailable,
    TaskNotFound,
)
from tasklease.events import Hooks, Submitted
from tasklease.finished import read_kvs, read_records
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
from tasklease.retention import RetentionLeases
from tasklease.routing import check_requires
from tasklease.spec import TaskSpec as TaskSpec  # noqa: PLC0414 (re-exported)
from tasklease.store import KV, MAX_TXN_BYTES, MAX_TXN_OPS, Compare, Get, KVStore, Op, Put
from tasklease.transitions import Txn, unique_holder
from tasklease.waiters import ResultHub

log = logging.getLogger("tasklease.client")

# A plain task is one compare and two puts: 64 fill etcd's 128 ops. An idempotency key adds a
# compare and a put (42 such tasks per transaction): transactions are cut by operations (txn_ops).
TASKS_PER_TXN = MAX_TXN_OPS // 2
# Errors by which etcd refused a whole transaction: nothing was written, and each
# of its tasks alone would be refused the same way.
REFUSALS = (StoreAuthError, StoreNoSpace)
# A write whose idempotency keys keep changing hands (held, released, taken again) is sent at
# most once per task plus this many times, then fails with ConflictError.
EXTRA_ROUNDS = 3
# Idempotency keys read per transaction when a quota refusal is checked for held keys (small values).
GETS_PER_TXN = 64
# Keys to count a new task's operations with (their number does not depend on the namespace).
_SIZING_KEYS = Keyspace()

# One submit in a group: the new task and its encoded record.
Item = tuple[Task, bytes]


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What one submit did: the task, and whether this submit created it.

    Attributes:
        task: The new task; or, when ``created`` is False, the task that holds
            the submit's idempotency key (as stored now: it may have run).
        created: False when the idempotency key was already held: nothing was
            written, and ``task`` is the existing task.
    """

    task: Task
    created: bool = True


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What ``submit_many`` wrote.

    Attributes:
        tasks: The submitted tasks, in the order given; for a spec whose
            idempotency key was held (by an existing task, or by an earlier
            spec of the same batch) the task holding it.
        transactions: How many etcd transactions wrote tasks. With 1 the batch
            was atomic; with more, each transaction was atomic on its own.
        created: For each of ``tasks``, whether this batch created it (False:
            its idempotency key was held, nothing written for that spec).
    """

    tasks: list[Task]
    transactions: int
    created: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.created:  # built without it: every task was created
            object.__setattr__(self, "created", [True] * len(self.tasks))

    @property
    def atomic(self) -> bool:
        """Whether the whole batch was written by one transaction."""
        return self.transactions <= 1

    @property
    def existing(self) -> list[Task]:
        """The tasks this batch did not create (their idempotency keys were held), in order."""
        return [t for t, new in zip(self.tasks, self.created, strict=True) if not new]


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
        retention: The shared retention leases (retention.py): for ``unique_for``
            keys and for a child written cancelled at its submit (its parent
            already failed); None: its own, made here.
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
        retention: RetentionLeases | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.clock = clock
        self.ids = ids
        self.quotas = quotas
        self.hub = hub
        self.hooks = hooks
        self.retention = retention or RetentionLeases(store, keys, clock)
        # Queues this client has put in the queue registry (keys.py: queues/{queue}), or is putting.
        self._registered: set[str] = set()
        self._registering: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        # Concurrent submits waiting for the next group transaction (its own state, loop only).
        self.group: GroupCommit[Item, SubmitResult] = GroupCommit(
            self._write_group,
            cost=lambda item: txn_cost(*item),
            max_items=TASKS_PER_TXN,
            max_bytes=MAX_TXN_BYTES,
            name="tasklease-submits",
            weight=lambda item: txn_ops(item[0]),
            max_weight=MAX_TXN_OPS,
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
        """The first compare and the puts that enqueue one task (``transitions.enqueue``).

        A task with an idempotency key has more compares: see :meth:`submit_txn`.
        """
        txn = transitions.enqueue(self.keys, task, data)
        return txn.compares[0], txn.ops

    async def submit_txn(self, items: Sequence[Item], held: Mapping[str, KV] | None = None) -> Txn:
        """One transaction that enqueues ``items``: their compares, puts and failure reads.

        A task with ``unique_for`` puts its idempotency key under the shared
        lease of that duration and time bucket (retention.py's leases: about a
        hundred per duration, never one per submit). ``held`` maps a task id to
        its key as read, held by a task whose record is gone (taken over).
        """
        txn = Txn()
        for task, data in items:
            lease = 0
            if task.idempotency_key is not None and task.unique_until is not None:
                lease = await self.retention.lease_for(task.unique_until - task.created_at)
            held_kv = None if held is None else held.get(task.id)
            txn.extend(transitions.enqueue(self.keys, task, data, unique_lease=lease, held=held_kv))
        return txn

    def _forget_leases(self, txn: Txn) -> None:
        """Drop the leases of ``txn`` from the cache: etcd no longer has one of them (a restore?)."""
        for op in txn.ops:
            if isinstance(op, Put) and op.lease:
                self.retention.forget(op.lease)

    def _submitted(self, task: Task, revision: int) -> None:
        """``task`` is stored at ``revision``: account for it and tell the hooks."""
        self.quotas.landed(task.id, revision)
        self.hooks.emit(Submitted(at=self.clock.now(), component="client", task=task))

    def _created(self, task: Task, revision: int) -> SubmitResult:
        """``task`` was created by the transaction at ``revision``: tell the hub, quotas and hooks."""
        self.hub.expect(task.id, revision)
        self._submitted(task, revision)
        return SubmitResult(task)

    async def _admit(self, items: list[Item]) -> dict[str, SubmitResult]:
        """Admit ``items`` by the quota; a refusal spares those whose idempotency key is held.

        A submit whose key is held writes nothing, so it is not refused for
        the quota: it gets the holder, as if its transaction had failed on the
        key. Costs nothing unless the quota refuses (then 1 transaction of gets
        per 64 keys, and 1 per 32 holders). Every item is admitted (see
        :meth:`QuotaGuard.admit`) except those answered here.

        Returns:
            The answers of the items whose keys are held, by task id.

        Raises:
            QuotaExceeded: The items whose keys are not held are over the quota.
        """
        try:
            await self.quotas.admit(items)
        except QuotaExceeded:
            held = await self._holders_now([t for t, _ in items])
            if not held:
                raise
            await self.quotas.admit([item for item in items if item[0].id not in held])
            return held
        return {}

    async def _holders_now(self, tasks: Sequence[Task]) -> dict[str, SubmitResult]:
        """The live tasks holding the idempotency keys of ``tasks`` now (not created), by task id."""
        keyed = [t for t in tasks if t.idempotency_key is not None]
        reads: list[list[KV]] = []
        for start in range(0, len(keyed), GETS_PER_TXN):
            gets = [
                Get(self.keys.unique(str(t.idempotency_key))) for t in keyed[start : start + GETS_PER_TXN]
            ]
            reads.extend((await self.store.txn([], gets)).reads)
        answers, _ = await self._resolve(keyed, reads, {})
        return {k: v for k, v in answers.items() if isinstance(v, SubmitResult) and not v.created}

    async def run_again(self, old: Task, old_kv: KV) -> Task | None:
        """Submit a new task with ``old``'s spec, linked both ways (``transitions.rerun``): one transaction.

        Admitted by the quota like any submit. ``None`` if ``old`` changed
        since it was read (read it again and retry). The new task has no
        idempotency key (the key stays with ``old``).

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

    # parents (dependencies) -------------------------------------------------------------------
    async def settle_parents(self, tasks: Sequence[Task], *, cancel: bool) -> list[Task]:
        """New tasks as their parents let them start: waiting, or queued/pending if they all succeeded.

        The parents that are not among ``tasks`` are read (transactions of 32
        gets); those among them must come before their children (a workflow
        builds them in that order). A child whose parents already finished is
        decided now by ``transitions.verdict``: released (queued, or pending
        if delayed), or, with ``cancel``, cancelled with the reason (without
        ``cancel`` it is written waiting and the leader cancels it when it sees
        its deps key: one scheduler hop). A child whose parents have not all
        finished is written waiting; the leader checks its parents again when
        its deps key appears, which closes the window between this read and
        that write (release.py).

        Raises:
            TaskNotFound: A parent does not exist (nothing written).
            InvalidOption: A task names itself, or a later task of ``tasks``, as a parent.
            CorruptRecord: A parent's record cannot be read.
        """
        ids = {t.id for t in tasks}
        seen: set[str] = set()
        outside: dict[str, None] = {}
        for task in tasks:
            for parent in task.depends_on:
                if parent not in ids:
                    outside[parent] = None
                elif parent not in seen:
                    raise InvalidOption(
                        f"task {task.id} depends on {parent}, which is not submitted before it: "
                        "give parents before their children (a task cannot depend on itself)"
                    )
            seen.add(task.id)
        if not outside:
            return list(tasks)
        ends: dict[str, transitions.ParentEnd] = {}
        kvs = await read_kvs(self.store, self.keys, list(outside))
        for parent in outside:
            kv = kvs.get(parent)
            if kv is None:
                missing = TaskNotFound(parent)
                missing.args = (f"parent task {parent!r} not found",)
                raise missing
            end = transitions.parent_end(parent, codec.decode_task(kv.key, kv.value))
            if end is not None:
                ends[parent] = end
        now = self.clock.now()
        settled: list[Task] = []
        for task in tasks:
            new = task
            if task.depends_on:
                verdict = transitions.verdict(task.depends_on, task.on_parent_failure, ends)
                if verdict.action == "release":
                    new = transitions.released(task, now, task.seq)
                elif verdict.action == "cancel" and cancel:
                    new = transitions.cancelled(task, verdict.reason, now)
            settled.append(new)
        return settled

    async def _submit_ended(self, task: Task) -> Task:
        """Write a child that is cancelled at its submit (a parent already failed): one transaction."""
        lease = await self.retention.lease_for(task.retention_s)
        txn = transitions.enqueue_ended(self.keys, task, lease)
        try:
            result = await self.store.txn(txn.compares, txn.ops)
        except StoreUnavailable:
            data = codec.encode_task(task)
            if (revision := await stored_revision(self.store, self.keys, task.id, data)) is None:
                raise
        else:
            if not result.succeeded:
                raise InvalidOption(f"task id {task.id} is already used")
            revision = result.revision
        self.register_queues([task.queue])
        self._submitted(task, revision)
        return task

    def stored(self, task: Task, revision: int) -> None:
        """A new task written by a transaction of another part (workflows.py) landed at ``revision``."""
        self.hub.expect(task.id, revision)
        self._submitted(task, revision)

    # one task ---------------------------------------------------------------------------------
    async def submit(self, spec: TaskSpec) -> SubmitResult:
        """Submit one validated :class:`TaskSpec`; with an idempotency key, maybe the existing task.

        Returns:
            The new task (``created``), or the task holding the spec's
            idempotency key (not ``created``: nothing was written).
        """
        return await self.submit_task(self.new_task(spec, await self.default_retention()))

    async def submit_task(self, task: Task) -> SubmitResult:
        """Write a task made by :meth:`new_task` (as :meth:`submit`): parents, quota, group commit."""
        try:
            if task.depends_on:
                # A keyed child is never written ended: its key must be taken with a
                # compare (enqueue); written waiting, the leader cancels it one hop later.
                task = (await self.settle_parents([task], cancel=task.idempotency_key is None))[0]
                if task.state.terminal:
                    return SubmitResult(await self._submit_ended(task))
            data = encode_queued(task)
            try:
                held = await self._admit([(task, data)])
                if task.id in held:
                    result = held[task.id]
                else:
                    self.register_queues([task.queue])
                    # Told before the write: the hub then keeps its end even if its watch
                    # delivers the submit's own revision before this submit returns.
                    self.hub.expect_soon(task.id)
                    try:
                        result = await self.group.submit((task, data))
                    except BaseException:
                        self.hub.forget(task.id)
                        raise
                    if not result.created:
                        self.hub.forget(task.id)
            except StoreNoSpace as exc:
                raise explain_nospace(exc, "the submit was") from exc
            finally:
                self.quotas.abandon([task.id])
        except BaseException as exc:
            if self.hooks.carriers:
                self.hooks.submit_failed([task.id], exc)
            raise
        if not result.created and self.hooks.carriers:
            self.hooks.submit_failed([task.id], _not_stored(result.task))
        return result

    async def submit_spec(self, spec: TaskSpec) -> Task:
        """Submit one validated :class:`TaskSpec` (see :meth:`tasklease.Client.submit_spec`)."""
        return (await self.submit(spec)).task

    async def _write_group(self, group: list[Pending[Item, SubmitResult]]) -> None:
        """Write a group of submits in one transaction; settle every one of them.

        A key given by several submits of the group is written by the first;
        the others get its task, not created (etcd refuses a transaction that
        puts one key twice, and only one of them may create a task anyway).
        """
        first = duplicate_of([p.item[0] for p in group])
        leaders = [p for i, p in enumerate(group) if first[i] == i]
        alone: list[tuple[Pending[Item, SubmitResult], KV | None]] = [(p, None) for p in leaders]
        if len(leaders) > 1:
            alone = await self._write_together(leaders)
        # Alone, or the group failed: one transaction each tells who is who.
        for pending, held in alone:
            await self._answer_alone(pending, held)
        for i, pending in enumerate(group):
            if first[i] != i:
                await self._follow(pending, group[first[i]])

    async def _write_together(
        self, group: list[Pending[Item, SubmitResult]]
    ) -> list[tuple[Pending[Item, SubmitResult], KV | None]]:
        """Write ``group`` in one transaction, again without those whose keys are held.

        Returns:
            The submits left to be sent alone (with their stale held key, if any).
        """
        remaining, held = group, dict[str, KV]()
        answered: set[str] = set()  # task ids answered here (a caller that left is not: its task goes on)
        for _ in range(len(group) + EXTRA_ROUNDS):
            txn = await self.submit_txn([p.item for p in remaining], held)
            try:
                result = await self.store.txn(txn.compares, txn.ops, txn.failure)
            except REFUSALS as exc:
                # Refused as a whole: nothing was written; every submit gets the error.
                for pending in remaining:
                    pending.fail(exc)
                return []
            except StoreLeaseNotFound:
                self._forget_leases(txn)  # a unique_for lease is gone: a new one next round
                continue
            except StoreError as exc:
                # No answer (it may have landed), too large, or another failure:
                # one transaction each tells what became of every task.
                log.debug(
                    "group submit of %d tasks failed (%s); sending them one by one", len(remaining), exc
                )
                break
            if result.succeeded:
                for pending in remaining:
                    pending.settle(self._created(pending.item[0], result.revision))
                return []
            answers, changed = await self._resolve([p.item[0] for p in remaining], result.reads, held)
            if not changed:
                break  # no key is held: a used task id, which one transaction each tells
            for pending in remaining:
                answer = answers.get(pending.item[0].id)
                if isinstance(answer, SubmitResult):
                    pending.settle(answer)
                elif isinstance(answer, Exception):
                    pending.fail(answer)
            answered |= answers.keys()
            remaining = [p for p in remaining if p.item[0].id not in answered]
            if len(remaining) <= 1:
                break
        return [(p, held.get(p.item[0].id)) for p in remaining]

    async def _answer_alone(self, pending: Pending[Item, SubmitResult], held: KV | None) -> None:
        try:
            answer = await self._submit_one(*pending.item, held=held)
        except Exception as exc:
            pending.fail(exc)
        else:
            pending.settle(answer)

    async def _follow(
        self, pending: Pending[Item, SubmitResult], leader: Pending[Item, SubmitResult]
    ) -> None:
        """Answer a submit whose key an earlier submit of its group wrote: that one's task."""
        done = leader.future
        error = None if not done.done() or done.cancelled() else done.exception()
        if done.done() and not done.cancelled() and error is None:
            pending.settle(SubmitResult(done.result().task, created=False))
        elif isinstance(error, REFUSALS):
            pending.fail(error)  # etcd refuses every write alike (auth, no space)
        else:  # the first failed otherwise (or its caller left): this one finds out for itself
            await self._answer_alone(pending, None)

    async def _resolve(
        self, tasks: Sequence[Task], reads: Sequence[Sequence[KV]], held: dict[str, KV]
    ) -> tuple[dict[str, SubmitResult | Exception], bool]:
        """After a failed transaction: the answer of each task whose idempotency key is held.

        ``reads`` are the transaction's failure reads (its keys as they were).
        A key held by a live task answers with that task (not created); one
        whose holder's record is gone is put in ``held`` (to be taken over by
        the next transaction) and not answered.

        Returns:
            The answers by task id, and whether anything changed: an answer, or
            a stale key not in ``held`` yet. Nothing changed: the transaction
            failed for another reason (a used task id).

        Raises:
            StoreError: Reading the holders failed (nothing was written).
        """
        found = {kv.key: kv for kvs in reads for kv in kvs}
        taken: dict[str, tuple[KV, str]] = {}
        answers: dict[str, SubmitResult | Exception] = {}
        for task in tasks:
            if task.idempotency_key is None:
                continue
            kv = found.get(self.keys.unique(task.idempotency_key))
            if kv is None or (task.id in held and held[task.id].mod_revision == kv.mod_revision):
                continue  # free, or the stale key it was taking over: not why it failed
            try:
                taken[task.id] = (kv, unique_holder(kv))
            except CorruptRecord as exc:
                answers[task.id] = exc
        if not taken:
            return answers, bool(answers)
        holders = await read_records(self.store, self.keys, list({h for _, h in taken.values()}))
        by_id = {t.id: t for t in holders}
        for task_id, (kv, holder_id) in taken.items():
            holder = by_id.get(holder_id)
            if holder is None:
                held[task_id] = kv  # its holder's record is gone: take the key over
            elif holder_id == task_id:
                own = next(t for t in tasks if t.id == task_id)
                answers[task_id] = self._created(own, kv.create_revision)  # an earlier send landed
            else:
                answers[task_id] = SubmitResult(holder, created=False)
        return answers, True

    async def _landed(self, task: Task, data: bytes) -> int | None:
        """After a lost answer: the revision that created ``task``, if it was created."""
        if (revision := await stored_revision(self.store, self.keys, task.id, data)) is not None:
            return revision
        if task.idempotency_key is None:
            return None
        try:  # the record may have moved on (assigned already): its key still names it
            kv, _ = await self.store.get(self.keys.unique(task.idempotency_key))
            if kv is not None and unique_holder(kv) == task.id:
                return kv.create_revision
        except (StoreUnavailable, CorruptRecord):
            pass
        return None

    async def _submit_one(self, task: Task, data: bytes, *, held: KV | None = None) -> SubmitResult:
        stale = {} if held is None else {task.id: held}
        for _ in range(1 + EXTRA_ROUNDS):
            txn = await self.submit_txn([(task, data)], stale)
            try:
                result = await self.store.txn(txn.compares, txn.ops, txn.failure)
            except StoreUnavailable:
                # The transaction may have committed before the answer was lost.
                if (revision := await self._landed(task, data)) is not None:
                    self._submitted(task, revision)
                    return SubmitResult(task)
                raise
            except StoreLeaseNotFound:
                self._forget_leases(txn)
                continue
            if result.succeeded:
                return self._created(task, result.revision)
            answers, changed = await self._resolve([task], result.reads, stale)
            answer = answers.get(task.id)
            if isinstance(answer, SubmitResult):
                return answer
            if isinstance(answer, Exception):
                raise answer
            if changed:
                continue  # its key's holder is gone: take the key over
            if (revision := await stored_revision(self.store, self.keys, task.id, data)) is not None:
                self._submitted(task, revision)
                return SubmitResult(task)  # an earlier group transaction landed after all
            raise InvalidOption(f"task id {task.id} is already used")
        raise ConflictError(f"idempotency key of task {task.id} kept changing hands; submit again")

    # batches ----------------------------------------------------------------------------------
    async def submit_many(self, specs: Iterable[TaskSpec]) -> BatchResult:
        """Submit many tasks in as few transactions as etcd allows.

        Every spec is validated and encoded before anything is written, so one
        invalid task writes nothing. Up to 128 operations (64 plain tasks, 42
        with idempotency keys) and 1.4 MB go in one transaction, which is all or
        nothing; a larger batch is split at that limit, and
        :attr:`BatchResult.transactions` says into how many.

        Idempotency keys: a spec whose key is held by an existing task gets
        that task; a key given twice in the batch creates one task (the first
        spec's), which the later ones get; :attr:`BatchResult.created` says
        which tasks are new. A transaction that fails because some of its keys
        are held is sent again without them.

        Tasks with parents (``depends_on``) may name tasks that exist or tasks
        earlier in the batch; see :meth:`settle_parents`.

        Raises:
            ValidationError: Some spec is invalid (nothing written).
            TaskNotFound: A parent does not exist (nothing written).
            QuotaExceeded: The whole batch is over a quota (nothing written).
            StoreNoSpace: etcd is out of space before anything was written.
            BatchIncomplete: A later transaction failed after earlier ones were
                committed; its ``written`` attribute lists the tasks that were.
            ConflictError: Idempotency keys kept changing hands (held by tasks
                whose records expire just then); the ``written`` of a
                :class:`BatchIncomplete` if earlier transactions were committed.
        """
        tasks: list[Task] = []
        encoded: list[bytes] = []
        default_retention = await self.default_retention()
        try:
            for spec in specs:
                tasks.append(self.new_task(spec, default_retention))
            if len({t.id for t in tasks}) != len(tasks):
                raise InvalidOption("a batch holds the same task id twice")
            if any(t.depends_on for t in tasks):
                tasks = await self.settle_parents(tasks, cancel=False)
            encoded = [encode_queued(t) for t in tasks]
            first = duplicate_of(tasks)
            lead = [(tasks[i], encoded[i]) for i, f in enumerate(first) if f == i]
            try:
                answer = await self._admit(lead)
                items = [item for item in lead if item[0].id not in answer]
                self.register_queues(t.queue for t, _ in items)
                results, transactions = await self._write_batch(items)
            except StoreNoSpace as exc:
                raise explain_nospace(exc, "the batch was") from exc
            finally:
                self.quotas.abandon([t.id for t, _ in lead])
        except BaseException as exc:
            if self.hooks.carriers:  # those written had their Submitted: a carrier ends the others
                self.hooks.submit_failed([t.id for t in tasks], exc)
            raise
        answer.update((t.id, r) for (t, _), r in zip(items, results, strict=True))
        out = [answer[tasks[first[i]].id] for i in range(len(tasks))]
        created = [r.created and first[i] == i for i, r in enumerate(out)]
        if self.hooks.carriers:
            for i, result in enumerate(out):
                if not created[i]:
                    self.hooks.submit_failed([tasks[i].id], _not_stored(result.task))
        return BatchResult([r.task for r in out], transactions, created)

    async def _write_batch(self, items: list[Item]) -> tuple[list[SubmitResult], int]:
        if not items:
            return [], 0
        chunks = chunk([t for t, _ in items], [d for _, d in items])
        if len(chunks) > 1:
            log.info(
                "batch of %d tasks split into %d transactions (etcd allows %d ops each)",
                len(items),
                len(chunks),
                MAX_TXN_OPS,
            )
        written: list[Task] = []
        results: list[SubmitResult] = []
        transactions = 0
        for part in chunks:
            answers, committed = await self._write_chunk(part, written)
            transactions += committed
            results.extend(answers)
            written.extend(r.task for r in answers if r.created)
        return results, transactions

    async def _write_chunk(self, part: list[Item], written: list[Task]) -> tuple[list[SubmitResult], int]:
        """Write one transaction of a batch (again without the tasks whose keys are held).

        Returns:
            Each task's answer, and how many transactions were committed (0 or 1).

        Raises:
            BatchIncomplete: It failed after earlier parts (``written``) were committed.
        """
        answers: dict[str, SubmitResult] = {}
        held: dict[str, KV] = {}
        remaining = part
        for _ in range(len(part) + EXTRA_ROUNDS):
            txn = await self.submit_txn(remaining, held)
            try:
                result = await self.store.txn(txn.compares, txn.ops, txn.failure)
            except StoreUnavailable as exc:
                first_task, first_data = remaining[0]
                stored = await self._landed(first_task, first_data)
                if stored is None:
                    if written:
                        raise BatchIncomplete(written, str(exc)) from exc
                    raise
                return self._chunk_landed(part, remaining, answers, stored), 1
            except StoreLeaseNotFound:
                self._forget_leases(txn)
                continue
            except StoreError as exc:
                # Refused (auth, no space, too large, ...): this part was not written.
                if written:
                    if isinstance(exc, StoreNoSpace):
                        exc = explain_nospace(exc, "the rest of the batch was")
                    raise BatchIncomplete(written, str(exc)) from exc
                raise
            if result.succeeded:
                return self._chunk_landed(part, remaining, answers, result.revision), 1
            found, changed = await self._resolve([t for t, _ in remaining], result.reads, held)
            if not changed:
                self._chunk_failed(written, InvalidOption("a task id in the batch is already used"))
            for task_id, answer in found.items():
                if isinstance(answer, Exception):
                    self._chunk_failed(written, answer)
                answers[task_id] = answer
            remaining = [item for item in remaining if item[0].id not in answers]
            if not remaining:
                return [answers[t.id] for t, _ in part], 0
        self._chunk_failed(written, ConflictError("idempotency keys of the batch kept changing hands"))

    def _chunk_landed(
        self, part: list[Item], remaining: list[Item], answers: dict[str, SubmitResult], revision: int
    ) -> list[SubmitResult]:
        for task, _ in remaining:
            self._submitted(task, revision)
            answers[task.id] = SubmitResult(task)
        return [answers[t.id] for t, _ in part]

    @staticmethod
    def _chunk_failed(written: list[Task], exc: Exception) -> NoReturn:
        """Raise ``exc``, as a :class:`BatchIncomplete` if earlier parts were committed."""
        if written:
            raise BatchIncomplete(written, str(exc)) from exc
        raise exc


def _not_stored(holder: Task) -> InvalidOption:
    """Why a submit whose idempotency key was held wrote nothing (told to the trace carriers)."""
    return InvalidOption(f"not stored: its idempotency key is held by task {holder.id}")


def duplicate_of(tasks: Sequence[Task]) -> list[int]:
    """For each task, the index of the first task with its idempotency key (its own if none)."""
    first: dict[str, int] = {}
    return [
        i if t.idempotency_key is None else first.setdefault(t.idempotency_key, i)
        for i, t in enumerate(tasks)
    ]


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
    # record + queue key (the record without its payload: never larger) + the compare.
    cost = 2 * len(data) + 4 * (len(task.id) + len(task.queue) + 100) + 64
    if task.idempotency_key is not None:
        # Its key (about 100 bytes) in up to 2 compares, a put and a failure read; the holder's
        # record key in a compare; the put's value (the id and the key's text, JSON-escaped).
        cost += 5 * 200 + 2 * len(task.idempotency_key.encode()) + 64
    return cost


def txn_ops(task: Task) -> int:
    """Operations one new task adds to a transaction (``transitions.enqueue``'s puts).

    Its compares and failure reads are never more: a plain queued task is 2
    (record, queue key), one with an idempotency key 3 (and its key's read).
    """
    # Counted once per shape (state, delay, expiry, key): building the transaction for each
    # submit just to count it was a few percent of a busy client's CPU.
    shape = (
        task.state,
        task.not_before is not None,
        task.expires_at is not None,
        task.idempotency_key is not None,
    )
    ops = _OPS_BY_SHAPE.get(shape)
    if ops is None:
        ops = _OPS_BY_SHAPE[shape] = len(transitions.enqueue(_SIZING_KEYS, task, b"").ops)
    return ops


_OPS_BY_SHAPE: dict[tuple[TaskState, bool, bool, bool], int] = {}


def chunk(tasks: Sequence[Task], encoded: Sequence[bytes]) -> list[list[Item]]:
    """Cut tasks, in order, into transactions of at most 128 operations (64 tasks) and ``MAX_TXN_BYTES``."""
    chunks: list[list[Item]] = []
    current: list[Item] = []
    size = ops = 0
    for task, data in zip(tasks, encoded, strict=True):
        cost, weight = txn_cost(task, data), txn_ops(task)
        if current and (
            len(current) >= TASKS_PER_TXN or size + cost > MAX_TXN_BYTES or ops + weight > MAX_TXN_OPS
        ):
            chunks.append(current)
            current, size, ops = [], 0, 0
        current.append((task, data))
        size += cost
        ops += weight
    if current:
        chunks.append(current)
    return chunks


def first_chunk_len(items: Sequence[Item]) -> int:
    """How many of ``items`` the first transaction of :func:`chunk` takes (at least 1)."""
    head = items[:TASKS_PER_TXN]
    return first_group_len(
        [txn_cost(t, d) for t, d in head],
        TASKS_PER_TXN,
        MAX_TXN_BYTES,
        [txn_ops(t) for t, _ in head],
        MAX_TXN_OPS,
    )
