"""Submit, inspect, wait for, re-prioritise and cancel tasks.

Round trips (each is one etcd request):

=========================  ===============================================
``submit``                 1 transaction (record + queue key)
``submit_many`` (n tasks)  ceil(n / 64) transactions (fewer if payloads are
                           large: one transaction stays under 1.4 MB)
``get``                    1 range
``list`` / ``stats``       1 range per page (pages bounded by bytes)
``cancel`` / ``priority``  1 range + 1 transaction (repeated on a race)
``wait``                   1 range + 1 watch stream
``purge``                  1 range per page of task records + 1
                           transaction per 64 deletes (purge.py)
=========================  ===============================================

Quotas (quotas.py). The first submit reads the namespace's quota record and
starts one watch on it; no later submit reads it. With ``max_queued`` set, the
waiting tasks are counted (2 ``count_only`` ranges) at most once per second,
shared by concurrent submits; with ``max_queued_bytes`` set, the waiting
records are measured incrementally (see quotas.py for the cost and exactly how
strict each limit is). A submit over a limit raises ``QuotaExceeded`` and
writes nothing.

No space. When etcd is at its space quota (NOSPACE alarm), ``submit`` and
``submit_many`` raise ``StoreNoSpace`` saying what to do: ``tasklease purge``,
``etcdctl compact``, ``etcdctl defrag``, ``etcdctl alarm disarm``.

Sizes. Records are up to 1 MiB, so every read of many records goes through
:meth:`Store.scan`, whose pages are bounded by bytes as well as by count, and
every write of many tasks (``submit_many``, and the group commit of concurrent
submits) is cut into transactions of at most 64 tasks and 1.4 MB: a task too
large to share a transaction goes alone.

Errors. Every submit gets the outcome of its own task: when a group
transaction fails, each of its submits either receives the error (etcd refused
the request: auth, permission, no space) or is sent again alone, which tells
whether it was stored (no answer, request too large, a used id in the group).

Task ids given to ``get``, ``cancel``, ``set_priority`` and ``wait`` are read
case-insensitively (:func:`tasklease.ids.parse_task_id`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import math
import random
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, TypeVar

from tasklease import codec, transitions
from tasklease.clock import Clock, SystemClock
from tasklease.errors import (
    BatchIncomplete,
    ConflictError,
    CorruptRecord,
    InvalidOption,
    PayloadTooLarge,
    StoreAuthError,
    StoreError,
    StoreNoSpace,
    StoreUnavailable,
    TaskFailed,
    TaskNotFound,
    WaitTimeout,
    WatchCompacted,
)
from tasklease.ids import IdGenerator, is_task_id, parse_task_id
from tasklease.keys import Keyspace, check_name, prefix_end
from tasklease.models import (
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
    DEFAULT_RETENTION_S,
    DEFAULT_TIMEOUT_S,
    JSON,
    Task,
    TaskState,
    check_priority,
    check_retention,
    check_timeout,
    check_type,
)
from tasklease.purge import PurgeResult, explain_nospace, purge
from tasklease.quotas import Quota, QuotaGuard, Usage, write_quota
from tasklease.retention import RetentionLeases
from tasklease.retry import RetryPolicy
from tasklease.routing import Requires, check_requires
from tasklease.stats import Stats, check_window, collect_stats
from tasklease.store import (
    FIRST_PAGE,
    KV,
    MAX_TXN_BYTES,
    MAX_TXN_OPS,
    Compare,
    KVStore,
    Op,
    Store,
    StoreConfig,
)
from tasklease.waiters import ResultHub

log = logging.getLogger("tasklease.client")

T = TypeVar("T")

# Each submitted task is one compare and two puts: 64 fill etcd's 128 ops.
TASKS_PER_TXN = MAX_TXN_OPS // 2
# How often a read-modify-write is retried when someone else won the race.
MAX_CONFLICT_RETRIES = 50
# Errors by which etcd refused a whole transaction: nothing was written, and each
# of its tasks alone would be refused the same way.
REFUSALS = (StoreAuthError, StoreNoSpace)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What to run: everything a submit needs, validated on construction.

    Attributes:
        type: The executor name (task type).
        payload: JSON arguments.
        queue: Queue name.
        priority: 0 (low) .. 3 (urgent).
        timeout_s: Limit of one attempt.
        retry: Retry policy.
        task_id: An id to use instead of a new one (must be unused).
        retention_s: How long the record is kept once the task has finished
            (seconds; ``None``: 7 days, or the namespace's maximum retention
            if that is lower, see quotas.py).
        requires: Tags a worker must have (``{"zone": "eu"}``): only workers
            started with matching ``--tags`` run it.
    """

    type: str
    payload: JSON = None
    queue: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    task_id: str | None = None
    retention_s: float | None = None
    requires: Mapping[str, str] | Requires | None = None

    def __post_init__(self) -> None:
        check_type(self.type)  # [A-Za-z0-9_.:-]{1,128}: a new type is plain text
        if self.retention_s is not None:
            check_retention(self.retention_s)
        check_priority(self.priority)
        check_name(self.queue)
        check_timeout(self.timeout_s)
        codec.encode_json(self.payload)
        if self.task_id is not None and not is_task_id(self.task_id):
            # A new id must be canonical (upper case): it is stored as given.
            raise InvalidOption(f"bad task id {self.task_id!r}")
        check_requires(self.requires)


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


class Client:
    """The async client.

    Args:
        store: A connected store.
        keyspace: The namespace's keys.
        clock: Time source.
        ids: Id and sequence generator.

    Use :meth:`connect` to build one from a :class:`StoreConfig`.
    """

    def __init__(
        self,
        store: KVStore,
        keyspace: Keyspace,
        *,
        clock: Clock | None = None,
        ids: IdGenerator | None = None,
    ) -> None:
        self.store = store
        self.keys = keyspace
        self.clock = clock or SystemClock()
        self.ids = ids or IdGenerator(self.clock)
        self._owns_store = False
        self._rng = random.Random()
        self.retention = RetentionLeases(store, keyspace, self.clock)
        self._hub = ResultHub(store, keyspace)
        # Submits waiting for the next group transaction; only _flush_submits takes them.
        self._pending_submits: builtins.list[tuple[Task, bytes, asyncio.Future[Task]]] = []
        self._submitter: asyncio.Task[None] | None = None
        # Lone waits in flight on their own key watch (see _wait).
        self._waiting = 0
        # The namespace's quota (read at the first submit, then watched) and usage.
        self.quotas = QuotaGuard(store, keyspace, clock=self.clock)

    @classmethod
    async def connect(cls, config: StoreConfig | None = None, *, namespace: str = "tasklease") -> Client:
        """Connect to etcd and return a client that owns the connection."""
        keyspace = Keyspace(namespace)
        store = Store(config)
        await store.connect()
        client = cls(store, keyspace)
        client._owns_store = True
        return client

    async def close(self) -> None:
        """Finish pending submits, stop the result watch; close the connection if this client opened it."""
        if self._submitter is not None:
            await asyncio.gather(self._submitter, return_exceptions=True)
        await self._hub.close()
        await self.quotas.close()
        if self._owns_store:
            await self.store.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # submit -----------------------------------------------------------------------------
    async def _default_retention(self) -> float:
        """The retention of a submit that gives none (the namespace's quota may lower it)."""
        quota = await self.quotas.current()
        return quota.default_retention_s() if quota is not None else DEFAULT_RETENTION_S

    def _new_task(self, spec: TaskSpec, default_retention_s: float = DEFAULT_RETENTION_S) -> Task:
        now = self.clock.now()
        return Task(
            id=spec.task_id or self.ids.task_id(),
            type=spec.type,
            payload=spec.payload,
            queue=spec.queue,
            priority=spec.priority,
            timeout_s=float(spec.timeout_s),
            retry=spec.retry,
            state=TaskState.QUEUED,
            seq=self.ids.sequence(),
            created_at=now,
            updated_at=now,
            retention_s=float(spec.retention_s if spec.retention_s is not None else default_retention_s),
            requires=check_requires(spec.requires),
        )

    def _submit_ops(self, task: Task, data: bytes) -> tuple[Compare, list[Op]]:
        txn = transitions.enqueue(self.keys, task, data)
        return txn.compares[0], txn.ops

    async def submit(
        self,
        type: str,
        payload: JSON = None,
        *,
        queue: str = DEFAULT_QUEUE,
        priority: int = DEFAULT_PRIORITY,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        task_id: str | None = None,
        retention_s: float | None = None,
        requires: Mapping[str, str] | None = None,
    ) -> Task:
        """Submit one task: one transaction writes its record and its queue key.

        Returns:
            The task as stored (state ``queued``).

        Raises:
            ValidationError: Bad priority, queue, timeout, payload (nothing written).
            QuotaExceeded: Over a quota of the namespace (nothing written).
            InvalidOption: ``task_id`` is already used.
            StoreNoSpace: etcd is out of space (the message says how to recover).
            StoreError: etcd failed.
        """
        spec = TaskSpec(
            type, payload, queue, priority, timeout_s, retry or RetryPolicy(), task_id, retention_s, requires
        )
        return await self.submit_spec(spec)

    async def submit_spec(self, spec: TaskSpec) -> Task:
        """Submit one validated :class:`TaskSpec`.

        Submits made concurrently on one client are grouped: those that arrive
        while a submit transaction is in flight go out together in the next one
        (group commit). Each returns once its own task is durably stored.
        """
        task = self._new_task(spec, await self._default_retention())
        data = _encode_queued(task)
        try:
            await self.quotas.admit([(task, data)])
            done: asyncio.Future[Task] = asyncio.get_running_loop().create_future()
            self._pending_submits.append((task, data, done))
            if self._submitter is None or self._submitter.done():
                self._submitter = asyncio.create_task(self._flush_submits(), name="tasklease-submits")
            return await done
        except StoreNoSpace as exc:
            raise explain_nospace(exc, "the submit was") from exc
        finally:
            self.quotas.abandon([task.id])

    async def _flush_submits(self) -> None:
        batch: builtins.list[tuple[Task, bytes, asyncio.Future[Task]]] = []
        try:
            while self._pending_submits:
                pending = self._pending_submits
                size = _first_chunk_len([(t, d) for t, d, _ in pending])
                batch, self._pending_submits = pending[:size], pending[size:]
                await self._commit_group(batch)
                batch = []
        except BaseException as exc:
            # Whatever stopped this loop must reach every submit still waiting.
            stranded, self._pending_submits = [*batch, *self._pending_submits], []
            for _, _, done in stranded:
                if done.done():
                    continue
                if isinstance(exc, Exception):
                    done.set_exception(exc)
                else:
                    done.cancel()
            raise

    async def _commit_group(self, batch: builtins.list[tuple[Task, bytes, asyncio.Future[Task]]]) -> None:
        """Write a group of submits in one transaction; settle every one of their futures."""
        if len(batch) > 1:
            compares: list[Compare] = []
            ops: list[Op] = []
            for task, data, _ in batch:
                compare, task_ops = self._submit_ops(task, data)
                compares.append(compare)
                ops.extend(task_ops)
            try:
                result = await self.store.txn(compares, ops)
            except REFUSALS as exc:
                # Refused as a whole: nothing was written; every submit gets the error.
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                return
            except StoreError as exc:
                # No answer (it may have landed), too large, or another failure:
                # one transaction each tells what became of every task.
                log.debug("group submit of %d tasks failed (%s); sending them one by one", len(batch), exc)
                result = None
            if result is not None and result.succeeded:
                for task, _, done in batch:
                    self._hub.expect(task.id, result.revision)
                    self.quotas.landed(task.id, result.revision)
                    if not done.done():
                        done.set_result(task)
                return
        # Alone, or the group failed: one transaction each tells who is who.
        for task, data, done in batch:
            try:
                stored = await self._submit_one(task, data)
            except Exception as exc:
                if not done.done():
                    done.set_exception(exc)
            else:
                if not done.done():
                    done.set_result(stored)

    async def _submit_one(self, task: Task, data: bytes) -> Task:
        compare, ops = self._submit_ops(task, data)
        try:
            result = await self.store.txn([compare], ops)
        except StoreUnavailable:
            # The transaction may have committed before the answer was lost.
            if (revision := await self._stored_revision(task.id, data)) is not None:
                self.quotas.landed(task.id, revision)
                return task
            raise
        if not result.succeeded:
            if (revision := await self._stored_revision(task.id, data)) is not None:
                self.quotas.landed(task.id, revision)
                return task  # an earlier group transaction landed after all
            raise InvalidOption(f"task id {task.id} is already used")
        self._hub.expect(task.id, result.revision)
        self.quotas.landed(task.id, result.revision)
        log.debug("submitted", extra={"task_id": task.id, "queue": task.queue})
        return task

    async def _stored_as(self, task_id: str, data: bytes) -> bool:
        return await self._stored_revision(task_id, data) is not None

    async def _stored_revision(self, task_id: str, data: bytes) -> int | None:
        """The revision that stored exactly ``data`` as the task's record, if it is there."""
        try:
            kv, _ = await self.store.get(self.keys.task(task_id))
        except StoreUnavailable:
            return None
        return kv.mod_revision if kv is not None and kv.value == data else None

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
        default_retention = await self._default_retention()
        for spec in specs:
            task = self._new_task(spec, default_retention)
            tasks.append(task)
            encoded.append(_encode_queued(task))
        if len({t.id for t in tasks}) != len(tasks):
            raise InvalidOption("a batch holds the same task id twice")
        try:
            await self.quotas.admit(list(zip(tasks, encoded, strict=True)))
            return await self._write_batch(tasks, encoded)
        except StoreNoSpace as exc:
            raise explain_nospace(exc, "the batch was") from exc
        finally:
            self.quotas.abandon([t.id for t in tasks])

    async def _write_batch(self, tasks: builtins.list[Task], encoded: builtins.list[bytes]) -> BatchResult:
        chunks = _chunk(tasks, encoded)
        if len(chunks) > 1:
            log.info(
                "batch of %d tasks split into %d transactions (etcd allows %d ops each)",
                len(tasks),
                len(chunks),
                MAX_TXN_OPS,
            )
        written: list[Task] = []
        for chunk in chunks:
            compares: list[Compare] = []
            ops: list[Op] = []
            for task, data in chunk:
                compare, task_ops = self._submit_ops(task, data)
                compares.append(compare)
                ops.extend(task_ops)
            try:
                result = await self.store.txn(compares, ops)
                revision = result.revision
            except StoreUnavailable as exc:
                first_task, first_data = chunk[0]
                stored = await self._stored_revision(first_task.id, first_data)
                if stored is None:
                    if written:
                        raise BatchIncomplete(written, str(exc)) from exc
                    raise
                result, revision = None, stored
            except StoreError as exc:
                # Refused (auth, no space, too large, ...): this chunk was not written.
                if written:
                    if isinstance(exc, StoreNoSpace):
                        exc = explain_nospace(exc, "the rest of the batch was")
                    raise BatchIncomplete(written, str(exc)) from exc
                raise
            if result is not None and not result.succeeded:
                reason = "a task id in the batch is already used"
                if written:
                    raise BatchIncomplete(written, reason)
                raise InvalidOption(reason)
            for task, _ in chunk:
                self.quotas.landed(task.id, revision)
            written.extend(task for task, _ in chunk)
        return BatchResult(tasks, len(chunks))

    # read -------------------------------------------------------------------------------
    async def _read(self, task_id: str) -> tuple[Task, KV, int]:
        task_id = parse_task_id(task_id)
        key = self.keys.task(task_id)
        kv, revision = await self.store.get(key)
        if kv is None:
            raise TaskNotFound(task_id)
        return codec.decode_task(key, kv.value), kv, revision

    async def get(self, task_id: str) -> Task:
        """Return a task's record (the id is read case-insensitively).

        Raises:
            TaskNotFound: No such task (or it expired); ``MalformedTaskId``
                (a subclass) if ``task_id`` cannot be a task id.
            CorruptRecord: The stored record cannot be decoded.
        """
        task, _, _ = await self._read(task_id)
        return task

    async def list(
        self,
        *,
        state: TaskState | None = None,
        queue: str | None = None,
        limit: int = 100,
    ) -> list[Task]:
        """List tasks, oldest first; queued tasks of one queue in dequeue order.

        ``state=queued`` with a ``queue`` reads that queue's keys (cost grows
        with ``limit``); any other filter scans task records in pages. Pages
        are bounded by bytes (:meth:`Store.scan`), so large records are fine.
        Records that cannot be decoded are skipped with an error log.

        Args:
            state: Only this state.
            queue: Only this queue.
            limit: At most this many (1..10000).
        """
        if not 1 <= limit <= 10_000:
            raise InvalidOption("limit must be in 1..10000")
        if queue is not None:
            check_name(queue)
        if state is TaskState.QUEUED and queue is not None:
            return await self._list_queue(queue, limit)
        found: list[Task] = []
        async with contextlib.aclosing(self.scan()) as tasks:
            async for task in tasks:
                if state is not None and task.state is not state:
                    continue
                if queue is not None and task.queue != queue:
                    continue
                found.append(task)
                if len(found) >= limit:
                    break
        return found

    async def _list_queue(self, queue: str, limit: int) -> builtins.list[Task]:
        # A queue key's value is the queued record itself (queue.place_ops).
        tasks: builtins.list[Task] = []
        async with contextlib.aclosing(self._values(self.keys.queue(queue), limit)) as kvs:
            async for kv in kvs:
                task = self._decode_or_log(kv)
                if task is not None and task.state is TaskState.QUEUED:
                    tasks.append(task)
        return tasks

    async def _values(self, prefix: str, limit: int = 0) -> AsyncGenerator[KV, None]:
        """The keys under ``prefix`` with their values, read in pages bounded by bytes.

        One snapshot (:meth:`Store.scan`); with ``limit``, at most that many
        keys are read (the first page no larger than ``limit``).
        """
        first = min(limit, FIRST_PAGE) if limit else FIRST_PAGE
        count = 0
        # Close the scan when stopping early.
        async with contextlib.aclosing(
            self.store.scan(prefix, prefix_end(prefix), first_page=first)
        ) as stream:
            async for page in stream:
                for kv in page.kvs:
                    yield kv
                    count += 1
                    if limit and count >= limit:
                        return

    def _decode_or_log(self, kv: KV) -> Task | None:
        try:
            return codec.decode_task(kv.key, kv.value)
        except CorruptRecord as exc:
            log.error("skipping corrupt task record: %s", exc)
            return None

    async def scan(self) -> AsyncGenerator[Task, None]:
        """Yield every decodable task record, in id order, from one snapshot.

        Read in pages bounded by bytes as well as by count (:meth:`Store.scan`).
        Close it (``contextlib.aclosing``) when stopping early.
        """
        async with contextlib.aclosing(self._values(self.keys.tasks)) as kvs:
            async for kv in kvs:
                task = self._decode_or_log(kv)
                if task is not None:
                    yield task

    async def stats(self, window_s: float = 60.0) -> Stats:
        """Tasks per state and per queue, live workers, and recent throughput.

        Scans every task record (cost grows with the number of records kept;
        finished records expire after their retention).

        Args:
            window_s: Throughput is measured over the last ``window_s`` seconds
                (a finite number > 0).
        """
        check_window(window_s)
        now = self.clock.now()
        return await collect_stats(self.store, self.keys, self.scan(), now=now, window_s=window_s)

    # quotas and purge ---------------------------------------------------------------------
    async def quota(self) -> Quota | None:
        """The namespace's quota (``None``: none), as this client enforces it.

        Raises:
            CorruptRecord: The quota record cannot be read.
        """
        return await self.quotas.current()

    async def set_quota(self, quota: Quota | None) -> int:
        """Replace the namespace's quota (``None`` or an empty :class:`Quota` removes it).

        Every client sees the change through its watch of the record.

        Returns:
            The etcd revision of the change.

        Raises:
            ConflictError: Someone changed it at the same time.
        """
        kv, _ = await self.store.get(self.keys.quota)  # replaced as is, even if it cannot be read
        if quota is not None:
            quota = replace(quota, updated_at=self.clock.now())
        revision = await write_quota(self.store, self.keys, quota, expect=kv)
        self.quotas.note(quota, revision)
        return revision

    async def quota_usage(self, *, with_bytes: bool = True) -> Usage:
        """Measure what waits in the namespace now: tasks, and (``with_bytes``) their records' bytes.

        Counting costs 2 ``count_only`` ranges; bytes read every waiting key
        (keys only) and each record this client has not measured yet (quotas.py).
        """
        return await self.quotas.measure(with_bytes=with_bytes)

    async def purge(
        self,
        older_than_s: float,
        *,
        states: Iterable[TaskState | str] | None = None,
        queue: str | None = None,
        dry_run: bool = True,
    ) -> PurgeResult:
        """Delete finished tasks (succeeded, failed, cancelled) that finished ``older_than_s`` ago or more.

        A dry run by default: pass ``dry_run=False`` to delete. Deletes go in
        transactions of at most 64, each guarded by the records' mod revisions;
        it works while etcd is out of space (purge.py).

        Args:
            older_than_s: Minimum age since the task finished (seconds, >= 0).
            states: Only these finished states (default: all three).
            queue: Only this queue.
            dry_run: Count only.
        """
        return await purge(
            self.store,
            self.keys,
            older_than_s=older_than_s,
            states=states,
            queue=queue,
            dry_run=dry_run,
            clock=self.clock,
        )

    # change -----------------------------------------------------------------------------
    async def _modify(self, task_id: str, action: str, change: Callable[[Task], Task | None]) -> Task:
        """Read-modify-write with a compare on the record's mod revision, retried on races.

        ``change(task)`` returns the new record, or ``None`` for no change; the
        transaction (record and index keys) is ``transitions.rewrite``'s.
        """
        task_id = parse_task_id(task_id)
        for _ in range(MAX_CONFLICT_RETRIES):
            task, kv, _ = await self._read(task_id)
            new_task = change(task)
            if new_task is None:
                return task
            lease = await self.retention.lease_for(new_task.retention_s) if new_task.state.terminal else 0
            txn = transitions.rewrite(self.keys, kv, task, new_task, lease)
            try:
                result = await self.store.txn(txn.compares, txn.ops)
            except StoreUnavailable:
                if await self._stored_as(task_id, codec.encode_task(new_task)):
                    return new_task
                raise
            if result.succeeded:
                return new_task
            await asyncio.sleep(self._rng.uniform(0, 0.005))
        raise ConflictError(f"could not {action} task {task_id}: it kept changing")

    async def cancel(self, task_id: str, reason: str = "cancelled by request") -> Task:
        """Cancel a task that has not finished.

        A queued task leaves its queue; a running task's assignment is deleted,
        which tells its worker to stop it (and fences off its result).

        Raises:
            TaskNotFound: No such task.
            InvalidTransition: It already finished.
        """

        def change(task: Task) -> Task:
            return transitions.cancelled(task, reason, self.clock.now())

        return await self._modify(task_id, "cancel", change)

    async def set_priority(self, task_id: str, priority: int) -> Task:
        """Change the priority of a task that waits (queued or pending).

        A queued task's queue key moves to the new band in the same
        transaction; it keeps its place in time (its sequence).

        Raises:
            InvalidPriority: Priority outside 0..3.
            TaskNotFound: No such task.
            InvalidTransition: It is running or finished.
        """
        check_priority(priority)

        def change(task: Task) -> Task | None:
            new_task = transitions.reprioritised(task, priority, self.clock.now())
            return None if task.priority == priority else new_task

        return await self._modify(task_id, "change the priority of", change)

    # wait -------------------------------------------------------------------------------
    async def wait(self, task_id: str, timeout_s: float | None = None) -> Task:
        """Wait until the task is terminal, by watch (no polling).

        A lone wait watches its task's key; once a client waits for several
        tasks at once, its waits share one watch on the task prefix (waiters.py).

        Args:
            task_id: The task (read case-insensitively).
            timeout_s: Give up after this long (None = wait forever; otherwise
                a finite number > 0).

        Returns:
            The terminal record.

        Raises:
            WaitTimeout: The time ran out.
            TaskNotFound: No such task, or it was deleted while waiting.
        """
        if timeout_s is not None and (
            isinstance(timeout_s, bool)
            or not isinstance(timeout_s, int | float)
            or not 0 < timeout_s < math.inf
        ):
            raise InvalidOption(f"wait timeout must be a finite number of seconds > 0, got {timeout_s!r}")
        task_id = parse_task_id(task_id)
        try:
            async with asyncio.timeout(timeout_s):
                return await self._wait(task_id)
        except TimeoutError:
            raise WaitTimeout(task_id, timeout_s or 0) from None

    async def _wait(self, task_id: str) -> Task:
        # A lone wait (e.g. `tasklease wait ID`) watches its one key; as soon as a
        # client waits for several tasks at once, all its waits share one watch.
        if self._hub.running or self._waiting > 0:
            return await self._hub.wait(task_id)
        self._waiting += 1
        try:
            return await self._wait_one(task_id)
        finally:
            self._waiting -= 1

    async def _wait_one(self, task_id: str) -> Task:
        key = self.keys.task(task_id)
        while True:
            task, _, revision = await self._read(task_id)
            if task.state.terminal:
                return task
            try:
                async for events in self.store.watch(key, key + "\0", revision + 1):
                    for ev in events:
                        if ev.type == "delete":
                            raise TaskNotFound(task_id)
                        task = codec.decode_task(key, ev.kv.value)
                        if task.state.terminal:
                            return task
            except WatchCompacted:
                continue

    async def result(self, task_id: str, timeout_s: float | None = None) -> JSON:
        """Wait for the task and return its result.

        Raises:
            TaskFailed: It ended failed or cancelled.
            WaitTimeout: The time ran out.
        """
        task = await self.wait(task_id, timeout_s)
        if task.state is not TaskState.SUCCEEDED:
            raise TaskFailed(task.id, task.state.value, task.error)
        return task.result


def _encode_queued(task: Task) -> bytes:
    data = codec.encode_task(task)
    if len(data) > codec.MAX_QUEUED_RECORD_BYTES:
        raise PayloadTooLarge(f"queued task record {task.id}", len(data), codec.MAX_QUEUED_RECORD_BYTES)
    return data


def _txn_cost(task: Task, data: bytes) -> int:
    """Request bytes one submitted task adds to a transaction (an upper bound)."""
    # record + queue key (whose value is the record too) + the compare.
    return 2 * len(data) + 4 * (len(task.id) + len(task.queue) + 100) + 64


def _chunk(tasks: Sequence[Task], encoded: Sequence[bytes]) -> list[list[tuple[Task, bytes]]]:
    """Cut tasks, in order, into transactions of at most 64 tasks and ``MAX_TXN_BYTES``."""
    chunks: list[list[tuple[Task, bytes]]] = []
    current: list[tuple[Task, bytes]] = []
    size = 0
    for task, data in zip(tasks, encoded, strict=True):
        cost = _txn_cost(task, data)
        if current and (len(current) >= TASKS_PER_TXN or size + cost > MAX_TXN_BYTES):
            chunks.append(current)
            current, size = [], 0
        current.append((task, data))
        size += cost
    if current:
        chunks.append(current)
    return chunks


def _first_chunk_len(items: Sequence[tuple[Task, bytes]]) -> int:
    """How many of ``items`` the first transaction of :func:`_chunk` takes (at least 1)."""
    size = 0
    for count, (task, data) in enumerate(items[:TASKS_PER_TXN]):
        size += _txn_cost(task, data)
        if count and size > MAX_TXN_BYTES:
            return count
    return max(1, min(len(items), TASKS_PER_TXN))


class SyncClient:
    """A blocking facade over :class:`Client` for WSGI apps and scripts.

    It runs the async client on an event loop in a background thread; every
    method has the async client's meaning and errors.

    Args:
        config: Where etcd is.
        namespace: The deployment's namespace.
    """

    def __init__(self, config: StoreConfig | None = None, *, namespace: str = "tasklease") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        try:
            self._client = self._run(Client.connect(config, namespace=namespace))
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def close(self) -> None:
        """Close the connection and the background loop."""
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._stop_loop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, type: str, payload: JSON = None, **options: Any) -> Task:
        """See :meth:`Client.submit`."""
        return self._run(self._client.submit(type, payload, **options))

    def submit_many(self, specs: Iterable[TaskSpec]) -> BatchResult:
        """See :meth:`Client.submit_many`."""
        return self._run(self._client.submit_many(list(specs)))

    def get(self, task_id: str) -> Task:
        """See :meth:`Client.get`."""
        return self._run(self._client.get(task_id))

    def list(self, **filters: Any) -> list[Task]:
        """See :meth:`Client.list`."""
        return self._run(self._client.list(**filters))

    def cancel(self, task_id: str) -> Task:
        """See :meth:`Client.cancel`."""
        return self._run(self._client.cancel(task_id))

    def set_priority(self, task_id: str, priority: int) -> Task:
        """See :meth:`Client.set_priority`."""
        return self._run(self._client.set_priority(task_id, priority))

    def wait(self, task_id: str, timeout_s: float | None = None) -> Task:
        """See :meth:`Client.wait`."""
        return self._run(self._client.wait(task_id, timeout_s))

    def result(self, task_id: str, timeout_s: float | None = None) -> JSON:
        """See :meth:`Client.result`."""
        return self._run(self._client.result(task_id, timeout_s))

    def quota(self) -> Quota | None:
        """See :meth:`Client.quota`."""
        return self._run(self._client.quota())

    def set_quota(self, quota: Quota | None) -> int:
        """See :meth:`Client.set_quota`."""
        return self._run(self._client.set_quota(quota))

    def purge(self, older_than_s: float, **options: Any) -> PurgeResult:
        """See :meth:`Client.purge`."""
        return self._run(self._client.purge(older_than_s, **options))
