"""Submit, inspect, wait for, re-prioritise and cancel tasks: the async :class:`Client`.

The client composes one part per concept, as Asynq splits its Client and
Inspector:

=================  ==========================================================
submitter.py       :class:`TaskSpec`, :class:`BatchResult`, ``submit`` /
                   ``submit_many``, batch chunking, quota admission, the group
                   commit of concurrent submits
inspector.py       ``get``, ``list`` / ``list_page``, ``scan``, ``stats``,
                   ``nodes`` (reads only, typed results)
editor.py          ``cancel``, ``set_priority`` (read-modify-write)
controls.py        ``pause``, ``resume``, ``paused``, ``drain``
waiting.py         ``wait`` (a lone key watch, or the shared result hub)
client.py          the composition, ``result``, quotas, ``purge``
sync.py            :class:`SyncClient`, the blocking facade
=================  ==========================================================

Round trips (each is one etcd request):

=========================  ===============================================
``submit``                 1 transaction (record + queue key)
``submit_many`` (n tasks)  ceil(n / 64) transactions (fewer if payloads are
                           large: one transaction stays under 1.4 MB)
``get``                    1 range
``list``                   1 range per page of index keys (bounded by bytes)
                           + 1 transaction of gets per 32 records
``stats`` / ``overview``   count-only ranges: a few per queue (overview.py)
``pause`` / ``resume``     1 put / 1 delete
``drain``                  1 range + 1 transaction
``run_again``              1 range + 1 transaction
``nodes``                  1 range per page of node records
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

Events. Each change the client made is reported to its hooks once it is
stored (events.py): :class:`~tasklease.events.Submitted` per task,
:class:`~tasklease.events.Cancelled`, :class:`~tasklease.events.Reprioritised`.

Task ids given to ``get``, ``cancel``, ``set_priority`` and ``wait`` are read
case-insensitively (:func:`tasklease.ids.parse_task_id`).

May import: the modules above, and clock, events, ids, keys, models, purge,
quotas, retention, retry, stats, nodes, store, waiters, errors, codec.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import replace
from types import TracebackType

from tasklease import controls
from tasklease.clock import Clock, SystemClock
from tasklease.controls import Pause
from tasklease.editor import MAX_CONFLICT_RETRIES, Editor
from tasklease.errors import ConflictError, TaskFailed
from tasklease.events import Hook, Hooks, as_hooks
from tasklease.ids import IdGenerator
from tasklease.inspector import Inspector, TaskPage
from tasklease.keys import Keyspace
from tasklease.models import DEFAULT_PRIORITY, DEFAULT_QUEUE, DEFAULT_TIMEOUT_S, JSON, Task, TaskState
from tasklease.nodes import NodeRecord
from tasklease.overview import Overview
from tasklease.purge import PurgeResult, purge
from tasklease.quotas import Quota, QuotaGuard, Usage, write_quota
from tasklease.retention import RetentionLeases
from tasklease.retry import RetryPolicy
from tasklease.stats import Stats
from tasklease.store import Compare, KVStore, Op, Store, StoreConfig
from tasklease.submitter import (
    TASKS_PER_TXN,
    BatchResult,
    Submitter,
    TaskSpec,
    chunk,
    encode_queued,
    first_chunk_len,
)
from tasklease.sync import SyncClient
from tasklease.waiters import ResultHub
from tasklease.waiting import Waiter

__all__ = [
    "TASKS_PER_TXN",
    "BatchResult",
    "Client",
    "SyncClient",
    "TaskPage",
    "TaskSpec",
]

# Their former names here (tests import them).
_chunk = chunk
_encode_queued = encode_queued
_first_chunk_len = first_chunk_len


class Client:
    """The async client.

    Args:
        store: A connected store.
        keyspace: The namespace's keys.
        clock: Time source.
        ids: Id and sequence generator.
        hooks: Receive the client's events (None: :func:`tasklease.events.default_hooks`,
            which logs them).

    Use :meth:`connect` to build one from a :class:`StoreConfig`.
    """

    def __init__(
        self,
        store: KVStore,
        keyspace: Keyspace,
        *,
        clock: Clock | None = None,
        ids: IdGenerator | None = None,
        hooks: Hooks | Iterable[Hook] | None = None,
    ) -> None:
        self.store = store
        self.keys = keyspace
        self.clock = clock or SystemClock()
        self.ids = ids or IdGenerator(self.clock)
        self.hooks = as_hooks(hooks)
        self._owns_store = False  # set by connect() only
        self.retention = RetentionLeases(store, keyspace, self.clock)
        self._hub = ResultHub(store, keyspace)
        # The namespace's quota (read at the first submit, then watched) and usage.
        self.quotas = QuotaGuard(store, keyspace, clock=self.clock)
        self.inspector = Inspector(store, keyspace, clock=self.clock)
        self.submitter = Submitter(
            store,
            keyspace,
            clock=self.clock,
            ids=self.ids,
            quotas=self.quotas,
            hub=self._hub,
            hooks=self.hooks,
        )
        self.editor = Editor(
            store, self.inspector, clock=self.clock, retention=self.retention, hooks=self.hooks
        )
        self.waiter = Waiter(store, self.inspector, self._hub)

    @classmethod
    async def connect(
        cls,
        config: StoreConfig | None = None,
        *,
        namespace: str = "tasklease",
        hooks: Hooks | Iterable[Hook] | None = None,
    ) -> Client:
        """Connect to etcd and return a client that owns the connection."""
        keyspace = Keyspace(namespace)
        store = Store(config)
        await store.connect()
        client = cls(store, keyspace, hooks=hooks)
        client._owns_store = True
        return client

    async def close(self) -> None:
        """Finish pending submits, stop the result watch; close the connection if this client opened it."""
        await self.submitter.close()
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

    # submit (submitter.py) ---------------------------------------------------------------------
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
        delay_s: float | None = None,
        run_at: float | None = None,
        expires_s: float | None = None,
        expires_at: float | None = None,
    ) -> Task:
        """Submit one task: one transaction writes its record and its queue key.

        ``delay_s`` / ``run_at`` (epoch seconds) delay it: it waits ``pending``
        and the scheduler queues it when due (the later of the two).
        ``expires_s`` / ``expires_at`` discard it (cancelled, the reason
        recorded) if it has not started by then (the earlier of the two).
        See docs/delays.md.

        Returns:
            The task as stored (state ``queued``, or ``pending`` if delayed).

        Raises:
            ValidationError: Bad priority, queue, timeout, payload (nothing written).
            QuotaExceeded: Over a quota of the namespace (nothing written).
            InvalidOption: ``task_id`` is already used.
            StoreNoSpace: etcd is out of space (the message says how to recover).
            StoreError: etcd failed.
        """
        spec = TaskSpec(
            type,
            payload,
            queue,
            priority,
            timeout_s,
            retry or RetryPolicy(),
            task_id,
            retention_s,
            requires,
            delay_s=delay_s,
            run_at=run_at,
            expires_s=expires_s,
            expires_at=expires_at,
        )
        return await self.submitter.submit_spec(spec)

    async def submit_spec(self, spec: TaskSpec) -> Task:
        """Submit one validated :class:`TaskSpec`.

        Submits made concurrently on one client are grouped: those that arrive
        while a submit transaction is in flight go out together in the next one
        (group commit). Each returns once its own task is durably stored.
        """
        return await self.submitter.submit_spec(spec)

    async def submit_many(self, specs: Iterable[TaskSpec]) -> BatchResult:
        """Submit many tasks in as few transactions as etcd allows (:meth:`Submitter.submit_many`)."""
        return await self.submitter.submit_many(specs)

    def _submit_ops(self, task: Task, data: bytes) -> tuple[Compare, builtins.list[Op]]:
        return self.submitter.submit_ops(task, data)

    # read (inspector.py) ---------------------------------------------------------------------
    async def get(self, task_id: str) -> Task:
        """See :meth:`Inspector.get`."""
        return await self.inspector.get(task_id)

    async def list(
        self,
        *,
        state: TaskState | None = None,
        queue: str | None = None,
        limit: int = 100,
        task_type: str | None = None,
    ) -> builtins.list[Task]:
        """List tasks: the first page of :meth:`list_page`."""
        return await self.inspector.list(state=state, queue=queue, limit=limit, task_type=task_type)

    async def list_page(
        self,
        *,
        state: TaskState | None = None,
        queue: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        task_type: str | None = None,
        since: float | None = None,
    ) -> TaskPage:
        """One page of tasks from the index of their state; finished ones newest first (:meth:`Inspector.list_page`)."""
        return await self.inspector.list_page(
            state=state, queue=queue, limit=limit, cursor=cursor, task_type=task_type, since=since
        )

    def scan(self) -> AsyncGenerator[Task, None]:
        """See :meth:`Inspector.scan`."""
        return self.inspector.scan()

    async def stats(self, window_s: float = 60.0) -> Stats:
        """See :meth:`Inspector.stats`."""
        return await self.inspector.stats(window_s)

    async def overview(self, window_s: float = 60.0) -> Overview:
        """The cluster at a glance, from index keys at one revision (:meth:`Inspector.overview`)."""
        return await self.inspector.overview(window_s)

    async def nodes(self) -> builtins.list[NodeRecord]:
        """See :meth:`Inspector.nodes`."""
        return await self.inspector.nodes()

    # change (editor.py) ------------------------------------------------------------------------
    async def cancel(self, task_id: str, reason: str = "cancelled by request") -> Task:
        """Cancel a task that has not finished (:meth:`Editor.cancel`)."""
        return await self.editor.cancel(task_id, reason)

    async def set_priority(self, task_id: str, priority: int) -> Task:
        """Change the priority of a task that waits, queued or pending (:meth:`Editor.set_priority`)."""
        return await self.editor.set_priority(task_id, priority)

    async def run_again(self, task_id: str) -> Task:
        """Submit a failed or cancelled task again: a new task with the same spec, linked both ways.

        The new task's ``rerun_of`` is the old id; the old record's ``reruns``
        gains the new id, in the same transaction (``transitions.rerun``).

        Raises:
            TaskNotFound: No such task.
            InvalidTransition: It is not failed or cancelled.
            ConflictError: It kept changing under 50 attempts.
        """
        for _ in range(MAX_CONFLICT_RETRIES):
            old, kv, _ = await self.inspector.read(task_id)
            new = await self.submitter.run_again(old, kv)
            if new is not None:
                return new
        raise ConflictError(f"could not run task {task_id} again: it kept changing")

    # operator controls (controls.py) --------------------------------------------------------
    async def pause(self, queue: str, reason: str = "") -> Pause:
        """Pause a queue: the scheduler assigns nothing from it until :meth:`resume` (1 put).

        Running tasks go on; submits still queue. Pausing again replaces the time and reason.
        """
        return await controls.pause(self.store, self.keys, queue, self.clock.now(), reason)

    async def resume(self, queue: str) -> bool:
        """Resume a paused queue (1 delete); whether it was paused."""
        return await controls.resume(self.store, self.keys, queue)

    async def paused(self) -> dict[str, Pause]:
        """The paused queues, by name."""
        return await controls.paused(self.store, self.keys)

    async def drain(self, worker_id: str) -> None:
        """Ask a live worker to drain: it stops taking work and stops as on SIGTERM (controls.py).

        Raises:
            WorkerNotFound: No live worker with that id.
        """
        await controls.request_drain(self.store, self.keys, worker_id, self.clock.now())

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

    # wait (waiting.py) -----------------------------------------------------------------------
    async def wait(self, task_id: str, timeout_s: float | None = None) -> Task:
        """Wait until the task is terminal, by watch, no polling (:meth:`Waiter.wait`)."""
        return await self.waiter.wait(task_id, timeout_s)

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
