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
workflows.py       ``workflow`` (a DAG builder), ``workflow_status``,
                   ``cancel_workflow``
controls.py        ``pause``, ``resume``, ``paused``, ``drain``
limits.py          ``set_limit``, ``limits``, ``remove_limit``
schedules.py       cron schedules: ``add_schedule``, ``list_schedules``, ...
waiting.py         ``wait`` (a lone key watch, or the shared result hub)
client.py          the composition, ``result``, quotas, ``purge``
sync.py            :class:`SyncClient`, the blocking facade
=================  ==========================================================

Round trips (each is one etcd request):

=========================  ===============================================
``submit``                 1 transaction (record + queue key; + its
                           idempotency key, if given: docs/idempotency.md)
``submit`` of a held key   1 failed transaction + 1 read of the holder
``submit_many`` (n tasks)  ceil(n / 64) transactions (fewer if payloads are
                           large: one transaction stays under 1.4 MB)
``get``                    1 range
``list``                   1 range per page of index keys (bounded by bytes)
                           + 1 transaction of gets per 32 records
``stats`` / ``overview``   count-only ranges: a few per queue (overview.py)
``pause`` / ``resume``     1 put / 1 delete
``set_limit``              1 count-only range + 1 put
``limits`` / ``remove``    1 range / 1 delete
``add_schedule``           1 transaction (``replace``: + 1 range + 1 transaction)
``pause_schedule`` etc.    1 range + 1 transaction (repeated on a race)
``drain``                  1 range + 1 transaction
``run_again``              1 range + 1 transaction
``nodes``                  1 range per page of node records
``cancel`` / ``priority``  1 range + 1 transaction (repeated on a race)
``submit`` with parents    + 1 transaction of gets per 32 parents
``workflow(...).submit()`` ceil((n + 1) / 64) transactions for n tasks (+ 1
                           transaction of gets per 32 parents outside it)
``workflow_status``        1-3 ranges + 1 transaction of gets per 32 tasks
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
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any

from tasklease import controls, limits, schedules, workflows
from tasklease.clock import Clock, SystemClock
from tasklease.controls import Pause
from tasklease.editor import MAX_CONFLICT_RETRIES, Editor
from tasklease.errors import ConflictError, InvalidOption, TaskFailed
from tasklease.events import Hook, Hooks, as_hooks
from tasklease.ids import IdGenerator
from tasklease.inspector import Inspector, TaskPage
from tasklease.keys import Keyspace
from tasklease.limits import Limit
from tasklease.models import DEFAULT_PRIORITY, DEFAULT_QUEUE, DEFAULT_TIMEOUT_S, JSON, Task, TaskState
from tasklease.nodes import NodeRecord
from tasklease.overview import Overview
from tasklease.purge import PurgeResult, purge
from tasklease.quotas import Quota, QuotaGuard, Usage, write_quota
from tasklease.retention import RetentionLeases
from tasklease.retry import RetryPolicy
from tasklease.schedules import Schedule
from tasklease.sending import DEFAULT_MAX_IN_FLIGHT, Sender, SubmitFuture
from tasklease.stats import Stats
from tasklease.store import Compare, KVStore, Op, Store, StoreConfig
from tasklease.submitter import (
    TASKS_PER_TXN,
    BatchResult,
    SubmitResult,
    Submitter,
    TaskSpec,
    chunk,
    encode_queued,
    first_chunk_len,
)
from tasklease.sync import SyncClient
from tasklease.waiters import ResultHub
from tasklease.waiting import Waiter
from tasklease.workflows import Workflow, WorkflowBuilder, WorkflowStatus, builder_from_dict

__all__ = [
    "TASKS_PER_TXN",
    "BatchResult",
    "Client",
    "SubmitResult",
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
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
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
            retention=self.retention,
        )
        self.sender = Sender(self.submitter, max_in_flight=max_in_flight)
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
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> Client:
        """Connect to etcd and return a client that owns the connection.

        ``config``: where etcd is and how to log in; by default what the
        environment says, as for the CLI (:meth:`StoreConfig.from_env`:
        ``TASKLEASE_ETCD*``, and a local ``tasklease etcd`` or ``dev`` logged in to).
        ``max_in_flight``: sends (:meth:`send`) pending before the next one waits.
        """
        keyspace = Keyspace(namespace)
        store = Store(config)
        await store.connect()
        client = cls(store, keyspace, hooks=hooks, max_in_flight=max_in_flight)
        client._owns_store = True
        return client

    async def close(self) -> None:
        """Finish pending submits and sends, stop the result watch; close the connection if this client opened it.

        A send that failed and whose future nobody looked at is logged (error).
        """
        await self.sender.close()
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
        idempotency_key: str | None = None,
        unique_for_s: float | None = None,
        depends_on: Sequence[str] | None = None,
        on_parent_failure: str = "cancel",
        delay_s: float | None = None,
        run_at: float | None = None,
        expires_s: float | None = None,
        expires_at: float | None = None,
    ) -> Task:
        """Submit one task: one transaction writes its record and its queue key.

        With an ``idempotency_key`` (1..512 characters), a second submit with
        the same key returns the task the first created instead of a new one,
        race-free, until that task's record expires (its retention after it
        finished), or for ``unique_for_s`` seconds after the submit if given
        (docs/idempotency.md). :meth:`submit_unique` also says whether the task
        is new.

        With ``depends_on`` (its parents' ids) the task runs once they all
        succeeded (docs/workflows.md): the parents are read first (1
        transaction of gets per 32); it is stored ``waiting`` until then, or
        ``queued`` at once if they already succeeded. ``on_parent_failure``:
        ``"cancel"`` (a parent that fails or is cancelled cancels it, and its
        descendants) or ``"run"`` (it runs anyway once every parent finished).

        ``delay_s`` / ``run_at`` (epoch seconds) delay it: it waits ``pending``
        and the scheduler queues it when due (the later of the two).
        ``expires_s`` / ``expires_at`` discard it (cancelled, the reason
        recorded) if it has not started by then (the earlier of the two).
        See docs/delays.md.

        Returns:
            The task as stored (state ``queued``; ``pending`` if delayed; ``waiting``
            with parents), or the task holding ``idempotency_key``.

        Raises:
            TaskNotFound: A parent does not exist (nothing written).
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
            idempotency_key=idempotency_key,
            unique_for_s=unique_for_s,
            depends_on=depends_on,
            on_parent_failure=on_parent_failure,
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
        (group commit). Each returns once its own task is durably stored. With
        an idempotency key held already, the task holding it is returned.
        """
        return await self.submitter.submit_spec(spec)

    async def send(self, type: str, payload: JSON = None, **options: Any) -> SubmitFuture:
        """Fire and confirm: start a submit and return at once with its :class:`SubmitFuture`.

        Takes :meth:`submit`'s arguments. The task is validated (a bad one
        raises here, nothing sent) and given its id (``future.id``) and its
        place in its queue now, in call order; ``await future`` returns the task
        once it is durably stored, or raises :meth:`submit`'s error. Sends made
        in a loop go out together (up to 64 per transaction). ``send`` waits
        only while ``max_in_flight`` sends are pending (backpressure).
        :meth:`flush` waits for all of them; :meth:`close` flushes first
        (docs/client.md, "Fire and confirm").
        """
        if "retry" in options and options["retry"] is None:
            del options["retry"]
        return await self.sender.send(TaskSpec(type, payload, **options))

    async def send_spec(self, spec: TaskSpec) -> SubmitFuture:
        """:meth:`send` for a validated :class:`TaskSpec`."""
        return await self.sender.send(spec)

    async def flush(self) -> builtins.list[SubmitFuture]:
        """Wait until every :meth:`send` so far is stored or failed; return the futures that failed.

        Each failed send is returned by one flush only (the next returns the
        failures since); an empty list means every send since the last flush
        is durable.
        """
        return await self.sender.flush()

    async def submit_unique(self, spec: TaskSpec) -> SubmitResult:
        """Submit a :class:`TaskSpec` that has an idempotency key; say whether it created the task.

        Returns:
            ``SubmitResult(task, created=True)`` for a new task; ``created``
            False when the key was held: nothing was written, and ``task`` is
            the task holding it, as stored now.

        Raises:
            InvalidOption: ``spec`` has no idempotency key; or its task id is used.
            (And as :meth:`submit`.)
        """
        if spec.idempotency_key is None:
            raise InvalidOption("submit_unique needs a spec with an idempotency_key")
        return await self.submitter.submit(spec)

    async def submit_many(self, specs: Iterable[TaskSpec]) -> BatchResult:
        """Submit many tasks in as few transactions as etcd allows (:meth:`Submitter.submit_many`).

        Specs with idempotency keys: :attr:`BatchResult.created` tells the new
        tasks from those whose key was held (by an existing task, or by an
        earlier spec of the batch).
        """
        return await self.submitter.submit_many(specs)

    def _submit_ops(self, task: Task, data: bytes) -> tuple[Compare, builtins.list[Op]]:
        return self.submitter.submit_ops(task, data)

    # workflows (workflows.py) ------------------------------------------------------------------
    def workflow(self, name: str = "", *, workflow_id: str | None = None) -> WorkflowBuilder:
        """Start building a workflow (a DAG of tasks); ``await builder.submit()`` writes it.

        ``builder.add(type, payload, after=[...])`` returns a node to name as a
        later task's parent (docs/workflows.md).
        """
        return WorkflowBuilder(self.submitter, name=name, workflow_id=workflow_id)

    async def submit_workflow(self, workflow: WorkflowBuilder | Mapping[str, Any]) -> Workflow:
        """Submit a workflow: a builder, or its JSON form (:func:`tasklease.workflows.builder_from_dict`)."""
        if not isinstance(workflow, WorkflowBuilder):
            workflow = builder_from_dict(self.submitter, workflow)
        return await workflow.submit()

    async def workflow_status(self, workflow_id: str) -> WorkflowStatus:
        """The workflow (by its id, or the id of any of its tasks) and each task's state.

        Raises:
            WorkflowNotFound: No such workflow (a ``TaskNotFound``).
        """
        return await workflows.read_status(self.store, self.keys, workflow_id)

    async def cancel_workflow(
        self, workflow_id: str, reason: str = "workflow cancelled by request"
    ) -> builtins.list[Task]:
        """Cancel every task of the workflow that has not finished (waiting ones too); those cancelled.

        Raises:
            WorkflowNotFound: No such workflow (a ``TaskNotFound``).
        """
        _, cancelled = await workflows.cancel(self.store, self.keys, self.editor, workflow_id, reason)
        return cancelled

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

    # rate and concurrency limits (limits.py) ---------------------------------------------------
    async def set_limit(
        self,
        kind: str,
        name: str,
        *,
        rate: str | None = None,
        burst: int | None = None,
        concurrency: int | None = None,
    ) -> Limit:
        """Limit a task type or a queue, cluster-wide: replaces its limit, if any (1 put).

        The leading scheduler applies it at its next assignment pass.

        Args:
            kind: ``"type"`` or ``"queue"``.
            name: The task type or queue.
            rate: Most starts: ``"100/s"``, ``"100/min"``, ``"5000/h"``, ``"20000/d"``.
            burst: Most starts at once after a quiet spell (with a rate; default:
                0.1 s worth of the rate, at least 1).
            concurrency: Most tasks running at once.

        Raises:
            InvalidOption: A bad kind, type, rate or number, or neither a rate nor a concurrency.
            InvalidQueueName: A bad queue name.
        """
        limit = limits.make_limit(
            kind, name, rate=rate, burst=burst, concurrency=concurrency, now=self.clock.now()
        )
        return await limits.set_limit(self.store, self.keys, limit)

    async def limits(self) -> builtins.list[Limit]:
        """Every limit: types first, then queues, by name."""
        return await limits.list_limits(self.store, self.keys)

    async def remove_limit(self, kind: str, name: str) -> bool:
        """Remove the limit of a type or queue (1 delete); whether there was one."""
        return await limits.remove_limit(self.store, self.keys, kind, name)

    # cron schedules (schedules.py) ----------------------------------------------------------
    async def add_schedule(
        self,
        name: str,
        cron: str,
        task: TaskSpec,
        *,
        tz: str = "UTC",
        overlap: str = schedules.DEFAULT_OVERLAP,
        catch_up: str = schedules.DEFAULT_CATCH_UP,
        paused: bool = False,
        replace: bool = False,
    ) -> Schedule:
        """Add a cron schedule: the leading scheduler submits ``task`` at each tick, exactly once.

        Args:
            name: Its name (``[A-Za-z0-9_.-]{1,64}``).
            cron: 5 fields (``minute hour day month weekday``), 6 with the
                seconds first, or a macro (``@hourly``).
            task: What each tick submits (no task id, parents, delay or start
                time, idempotency key or trace: they name one task or one moment).
                Its retention, if not given, is the namespace's default now.
            tz: The IANA time zone the expression is read in.
            overlap: ``allow`` or ``skip`` (skip a tick while the previous task runs).
            catch_up: Ticks missed in an outage or a pause: ``none``, ``one`` or ``all``.
            paused: Add it paused.
            replace: Replace a schedule of that name (its firing state is kept).

        Returns:
            The schedule as stored.

        Raises:
            ScheduleExists: The name is taken (and not ``replace``).
            ValidationError: A bad name, expression, zone, policy or task (nothing written).
        """
        if task.retention_s is None:
            task = schedules.with_retention(task, await self.submitter.default_retention())
        now = self.clock.now()
        schedule = Schedule(
            name,
            cron,
            task,
            tz=tz,
            overlap=overlap,
            catch_up=catch_up,
            paused=paused,
            created_at=now,
            updated_at=now,
            since=now,
        )
        return await schedules.add(self.store, self.keys, schedule, replace_existing=replace)

    async def get_schedule(self, name: str) -> Schedule:
        """The schedule ``name`` (1 range).

        Raises:
            ScheduleNotFound: None with that name.
        """
        return (await schedules.read(self.store, self.keys, name))[0]

    async def list_schedules(self) -> builtins.list[Schedule]:
        """Every schedule, by name."""
        return await schedules.list_schedules(self.store, self.keys)

    async def pause_schedule(self, name: str) -> Schedule:
        """Pause a schedule: it does not fire until resumed (1 range + 1 transaction)."""
        return await schedules.set_paused(self.store, self.keys, name, True, self.clock.now())

    async def resume_schedule(self, name: str) -> Schedule:
        """Resume a paused schedule; its catch-up policy decides about the ticks it missed."""
        return await schedules.set_paused(self.store, self.keys, name, False, self.clock.now())

    async def remove_schedule(self, name: str) -> bool:
        """Remove a schedule (1 delete); whether it existed. Tasks it fired are not touched."""
        return await schedules.remove(self.store, self.keys, name)

    async def next_fire_times(self, name: str, count: int = 5) -> builtins.list[float]:
        """The next ``count`` ticks of ``name`` after now (epoch seconds; as if resumed, when paused).

        Raises:
            ScheduleNotFound: None with that name.
            InvalidOption: ``count`` outside 1..1000.
        """
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= schedules.MAX_NEXT:
            raise InvalidOption(f"count must be in 1..{schedules.MAX_NEXT}, got {count!r}")
        schedule = await self.get_schedule(name)
        return schedule.expr.next_times(max(schedule.cursor, self.clock.now()), count)

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
