"""Execution: a worker's executors, its process pool, its slots and its runs; running one attempt.

Owns the runs table (which attempts this worker holds, and why one is being
stopped), the slots (at most ``concurrency`` attempts execute at once), the
executors (async functions on the event loop, sync functions in the process
pool, built-ins) and the mapping of how an attempt ended (returned, raised
``Retry`` or ``PermanentError``, timed out, cancelled) to its outcome. The
outcome is handed to the ``record`` callable it is given (recorder.py writes
it); membership.py feeds it assignments (:meth:`Execution.accept`) and
revocations (:meth:`Execution.revoke`).

May import: codec, errors, events, executors, keys, models, queue (the
assignment as a worker sees it). Not store, session or transitions: it writes
nothing to etcd itself.

Runs. A run is one attempt, known by its task id *and* its attempt token (the
assignment's create revision): a retry of a task may be assigned to this
worker again while the old attempt is still being torn down, and the two are
separate runs (the old one's end never makes the worker forget the new one,
its cancellation or its hand-back on shutdown). An attempt ends in one of
three ways: the task returned or raised (the outcome is recorded), the worker
cancelled it (revoked, lease lost, shutdown: nothing is recorded, or
``handed_back``), or it timed out. A ``CancelledError`` that the worker did not
cause (the task code raised it itself) is a failed attempt, retried per policy.
An attempt of a task type this worker does not run (the scheduler assigned it
from a node record of an earlier process under this id: a restart under another
image) is handed back (``handed_back``, its place in its queue kept), never
failed; the node record's ``types`` lists exactly the types this worker runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from tasklease import codec
from tasklease.clock import Clock
from tasklease.errors import CorruptRecord, PayloadTooLarge, Retry, TaskleaseError
from tasklease.events import Hooks, Started
from tasklease.executors.base import (
    Executor,
    PermanentError,
    Registry,
    TaskContext,
    UnknownTaskType,
    child_environment,
)
from tasklease.executors.netpolicy import NetworkPolicy
from tasklease.executors.python import AsyncFunctionExecutor, ProcessPool, SyncFunctionExecutor
from tasklease.keys import Keyspace
from tasklease.models import JSON, Outcome, Task, truncate_error
from tasklease.queue import Assignment, decode_assignment
from tasklease.store import KV

log = logging.getLogger("tasklease.worker")

ReadParents = Callable[[Sequence[str]], Awaitable[dict[str, JSON]]]
"""Reads the results of the given parents, by id (finished.parent_results)."""

RecordOutcome = Callable[[Assignment, Outcome, JSON, "str | None", bool, "float | None"], Awaitable[None]]
"""Writes an attempt's outcome: (assignment, outcome, result, error, permanent, retry_after)."""


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """How one attempt ended, before anything is written.

    Attributes:
        outcome: The attempt's outcome.
        result: What the task returned (succeeded only).
        error: Why it failed, bounded (``models.truncate_error``).
        permanent: Never retry (``PermanentError``, a result too large).
        retry_after: The delay the task asked for (``Retry(after=...)``).
    """

    outcome: Outcome
    result: JSON = None
    error: str | None = None
    permanent: bool = False
    retry_after: float | None = None


@dataclass
class Run:
    """One attempt this worker holds. Touched only on the event loop."""

    assignment: Assignment
    task: asyncio.Task[None] | None = None
    # Why it is being stopped, if it is: "revoked" (assignment deleted),
    # "lease" (lease lost), "handback" (shutdown), "abandon" (hard stop).
    stop_reason: str | None = None
    # Set when the outcome is being written: the deletion of the assignment
    # that our own transaction causes must not be taken for a revocation.
    recording: bool = False


def build_executors(registry: Registry, pool: ProcessPool) -> dict[str, Executor]:
    """An executor per registered type: async functions on the loop, sync ones in ``pool``."""
    executors: dict[str, Executor] = {}
    for name in registry.names:
        tf = registry.function(name)
        if tf is None:
            executor = registry.get(name)
            assert executor is not None
            executors[name] = executor
        elif tf.is_async:
            executors[name] = AsyncFunctionExecutor(tf)
        else:
            executors[name] = SyncFunctionExecutor(tf, pool)
    return executors


class Execution:
    """Runs the attempts assigned to one worker.

    Args:
        keys: The namespace (to parse assignment keys).
        registry: The task types this worker runs.
        worker_id: The worker's id.
        concurrency: At most this many attempts execute at once.
        imports: Modules the pool's children import.
        pass_env: Environment variables passed to task processes.
        http_nets: ``(allowed, denied)`` networks of ``http`` tasks.
        clock: Time source (event times).
        hooks: Receive :class:`~tasklease.events.Started`.
        record: Writes an attempt's outcome (recorder.py).
        lease_id: The worker's current lease (0 when not registered).
        on_idle: Called whenever the last run is forgotten (burst mode).
        read_parents: Reads the results of a task's parents (finished.parent_results),
            for a task with parents whose executor wants them (``wants_parents``).
    """

    def __init__(
        self,
        keys: Keyspace,
        registry: Registry,
        worker_id: str,
        *,
        concurrency: int,
        imports: Sequence[str],
        pass_env: Sequence[str],
        http_nets: tuple[Sequence[str], Sequence[str]],
        clock: Clock,
        hooks: Hooks,
        record: RecordOutcome,
        lease_id: Callable[[], int],
        on_idle: Callable[[], None] | None = None,
        read_parents: ReadParents | None = None,
    ) -> None:
        self.keys = keys
        self.registry = registry
        self.worker_id = worker_id
        self._clock = clock
        self._hooks = hooks
        self._record = record
        self._lease_id = lease_id
        self._on_idle = on_idle
        self._read_parents = read_parents
        self._extra = {"component": "worker", "worker": worker_id}
        # What processes started for tasks get of our environment, and where http may go.
        self.child_env = child_environment(pass_env)
        self.network = NetworkPolicy.from_options(*http_nets)
        self.pool = ProcessPool(concurrency, tuple(imports), self.child_env)
        self.executors = build_executors(registry, self.pool)
        # All of the following are touched only on the event loop.
        # Runs by task id, then by attempt token (the assignment's create
        # revision): a task may have two here at once, an attempt still being
        # torn down and a newer attempt of the same task assigned to us again.
        self.runs: dict[str, dict[int, Run]] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self.executing = 0  # changed by _execute only
        self.draining = False  # set by Worker.stop only: new assignments are handed back

    # the runs table -----------------------------------------------------------------------
    @property
    def assigned(self) -> int:
        """Attempts held (running, waiting for a slot, or being torn down)."""
        return sum(len(runs) for runs in self.runs.values())

    @property
    def idle(self) -> bool:
        """Whether this worker holds no attempt at all."""
        return not self.runs

    def all_runs(self) -> list[Run]:
        """Every run, those being torn down included (a copy: safe to mutate ``runs``)."""
        return [run for runs in self.runs.values() for run in runs.values()]

    def _forget(self, run: Run) -> None:
        """Remove ``run`` (and only it: a newer attempt of the same task stays)."""
        runs = self.runs.get(run.assignment.task.id)
        if runs is not None and runs.get(run.assignment.token) is run:
            del runs[run.assignment.token]
            if not runs:
                del self.runs[run.assignment.task.id]
                if not self.runs and self._on_idle is not None:
                    self._on_idle()

    # intake (membership.Intake) -----------------------------------------------------------
    def accept(self, kv: KV, record_kv: KV | None = None) -> None:
        """An assignment was put (or read): start its run, unless it is known, stale or not ours.

        ``record_kv``: the task's record, read after the assignment (its value
        names the attempt, not the task: ``queue.decode_assignment``).
        """
        _, task_id = self.keys.parse_assignment(kv.key)
        if kv.lease != self._lease_id():
            return  # left over from an earlier lease of ours: it is about to vanish
        runs = self.runs.get(task_id, {})
        if kv.create_revision in runs:
            return  # seen already (a re-read after a watch gap)
        try:
            assignment = decode_assignment(self.keys, self.worker_id, kv, record_kv)
        except CorruptRecord as exc:
            log.error("skipping corrupt assignment: %s", exc, extra={**self._extra, "task_id": task_id})
            return
        if assignment is None:
            # The record moved on since (cancelled, recovered): its deletion follows.
            log.info("skipping an outdated assignment", extra={**self._extra, "task_id": task_id})
            return
        # An older attempt of this task: its assignment was deleted before this
        # one was created, whether or not we have seen the deletion yet.
        for older in list(runs.values()):
            if older.assignment.token < kv.create_revision:
                self._stop_revoked(older)
        run = Run(assignment)
        self.runs.setdefault(task_id, {})[assignment.token] = run
        if self.draining:
            run.stop_reason = "handback"
        run.task = asyncio.create_task(self._execute(run), name=f"task-{task_id}")

    def revoke(self, key: str, revision: int) -> None:
        """The assignment ``key`` was deleted at ``revision``: stop the attempts it fenced."""
        _, task_id = self.keys.parse_assignment(key)
        for run in list(self.runs.get(task_id, {}).values()):
            if run.assignment.token < revision:
                self._stop_revoked(run)

    def reconcile(self, current: Sequence[tuple[KV, KV | None]]) -> None:
        """After a watch gap: ``current`` is every assignment now (with its record); stop the runs it lacks, start the new."""
        live = {(self.keys.parse_assignment(kv.key)[1], kv.create_revision) for kv, _ in current}
        for run in self.all_runs():
            if (run.assignment.task.id, run.assignment.token) not in live:
                self._stop_revoked(run)
        for kv, record_kv in current:
            self.accept(kv, record_kv)

    async def lease_lost(self) -> None:
        """Stop every run; nothing is written (their assignments are gone with the lease)."""
        runs = [r for r in self.all_runs() if r.task is not None]
        log.error("lease lost: stopping %d tasks, their outcomes are dropped", len(runs), extra=self._extra)
        for run in runs:
            run.stop_reason = "lease"
            assert run.task is not None
            run.task.cancel()
        await asyncio.gather(*(r.task for r in runs if r.task), return_exceptions=True)

    def _stop_revoked(self, run: Run) -> None:
        if run.task is None or run.task.done() or run.recording or run.stop_reason == "revoked":
            return
        log.info(
            "assignment revoked: stopping the task",
            extra={
                **self._extra,
                "task_id": run.assignment.task.id,
                "attempt": run.assignment.attempt.number,
            },
        )
        run.stop_reason = "revoked"
        run.task.cancel()

    # shutdown (called by Worker) ----------------------------------------------------------
    def tasks(self) -> list[asyncio.Task[None]]:
        """The asyncio tasks of every run."""
        return [r.task for r in self.all_runs() if r.task is not None]

    def hand_back(self, still: Collection[asyncio.Task[None]]) -> None:
        """Cancel the runs of ``still`` to hand them back (a run already being stopped writes nothing)."""
        for run in self.all_runs():
            if run.task is not None and run.task in still and run.stop_reason is None:
                run.stop_reason = "handback"
                run.task.cancel()

    def abandon_all(self) -> None:
        """Cancel every run; none writes anything (a hard stop)."""
        for run in self.all_runs():
            if run.task is not None:
                run.stop_reason = "abandon"
                run.task.cancel()

    async def cancel_rest(self) -> None:
        """Cancel the runs still going (keeping a reason already given) and wait for them."""
        tasks = []
        for run in self.all_runs():
            if run.task is not None and not run.task.done():
                run.stop_reason = run.stop_reason or "abandon"
                run.task.cancel()
                tasks.append(run.task)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop the process pool's children."""
        await self.pool.close()

    # one attempt ----------------------------------------------------------------------------
    async def _execute(self, run: Run) -> None:
        assignment = run.assignment
        attempt = AttemptResult(Outcome.FAILED)
        try:
            if run.stop_reason == "handback":
                attempt = AttemptResult(Outcome.HANDED_BACK)
            else:
                async with self._slots:
                    self.executing += 1
                    try:
                        attempt = await self._invoke(assignment)
                    finally:
                        self.executing -= 1
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # we handle it: later awaits must not see it
            if run.stop_reason == "handback":
                attempt = AttemptResult(Outcome.HANDED_BACK, error="worker shut down")
            else:
                # Revoked, lease lost or hard stop: someone else owns the task now.
                # Forget this run only: a newer attempt of the same task may
                # have been assigned to us meanwhile, and it keeps its entry
                # (so its own cancellation and drain still find it).
                log.info(
                    "task stopped (%s); nothing recorded",
                    run.stop_reason,
                    extra={
                        **self._extra,
                        "task_id": assignment.task.id,
                        "attempt": assignment.attempt.number,
                    },
                )
                self._forget(run)
                return
        run.recording = True
        try:
            await asyncio.shield(
                self._record(
                    assignment,
                    attempt.outcome,
                    attempt.result,
                    attempt.error,
                    attempt.permanent,
                    attempt.retry_after,
                )
            )
        finally:
            self._forget(run)

    async def _invoke(self, assignment: Assignment) -> AttemptResult:
        """Run one attempt with its executor (Started is emitted once it begins)."""
        task = assignment.task
        number = assignment.attempt.number
        extra = {**self._extra, "task_id": task.id, "attempt": number, "type": task.type}
        executor = self.executors.get(task.type)
        if executor is None:
            return unknown_type(task, self.registry, extra)
        parents = None
        if task.depends_on and self._read_parents is not None and getattr(executor, "wants_parents", False):
            try:
                parents = await self._read_parents(task.depends_on)
            except PayloadTooLarge as exc:
                log.warning("task failed: %s", exc, extra=extra)
                return AttemptResult(Outcome.FAILED, error=truncate_error(str(exc)), permanent=True)
            except TaskleaseError as exc:
                # etcd failed: give it back (its place kept, no retry spent); it runs again soon.
                log.warning("cannot read its parents' results (%s): handed back", exc, extra=extra)
                return AttemptResult(Outcome.HANDED_BACK, error=f"could not read its parents' results: {exc}")
        ctx = TaskContext(
            task.id,
            number,
            task.type,
            task.payload,
            task.timeout_s,
            self.worker_id,
            env=self.child_env,
            network=self.network,
            parents=parents,
        )
        now = self._clock.now()
        self._hooks.emit(
            Started(
                at=now,
                component="worker",
                source=self.worker_id,
                task=task,
                attempt=number,
                worker=ctx.worker,
            )
        )
        return await run_attempt(executor, ctx, extra)


def unknown_type(task: Task, registry: Registry, extra: dict[str, Any]) -> AttemptResult:
    """An attempt of a type this worker does not run: handed back, keeping its place in its queue.

    The scheduler's view of our node record was older than this process (a
    restart under another image); it gives the task to a worker whose node
    record lists the type (ours lists exactly ``registry.names``).
    """
    types = ", ".join(registry.names) or "none"
    err = UnknownTaskType(
        f"unknown task type {task.type!r}; this worker runs: {types}; handed back to its queue"
    )
    log.warning("%s", err, extra=extra)
    return AttemptResult(Outcome.HANDED_BACK, error=str(err))


async def run_attempt(executor: Executor, ctx: TaskContext, extra: dict[str, Any]) -> AttemptResult:
    """Run ``ctx``'s attempt under its timeout and tell how it ended.

    Raises:
        asyncio.CancelledError: Only when the worker cancelled it (revoked,
            lease lost, shutdown); a ``CancelledError`` raised by the task code
            itself is a failed attempt.
    """
    try:
        async with asyncio.timeout(ctx.timeout_s):
            result = await executor.run(ctx)
        codec.encode_json(result, "result")
    except TimeoutError:
        log.warning("task timed out after %g s", ctx.timeout_s, extra=extra)
        return AttemptResult(Outcome.TIMEOUT, error=f"timed out after {ctx.timeout_s:g} s")
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we cancelled it (revoked, lease lost, shutdown): Execution._execute handles it
        # Nobody cancelled this attempt: the task code raised CancelledError
        # itself (e.g. it awaited something that was cancelled). A failure,
        # retried per policy; otherwise it would sit running until its deadline.
        message = (
            "CancelledError raised by the task itself (the worker did not cancel it: "
            "it was not revoked and did not time out)"
        )
        log.warning("task failed: %s", message, extra=extra)
        return AttemptResult(Outcome.FAILED, error=message)
    except Retry as exc:
        log.info("task asked to be retried after %g s: %s", exc.after, exc, extra=extra)
        return AttemptResult(Outcome.FAILED, error=truncate_error(str(exc)), retry_after=exc.after)
    except PermanentError as exc:
        log.warning("task failed permanently: %s", exc, extra=extra)
        return AttemptResult(Outcome.FAILED, error=truncate_error(str(exc)), permanent=True)
    except (PayloadTooLarge, TaskleaseError) as exc:
        log.warning("task failed: %s", exc, extra=extra)
        return AttemptResult(
            Outcome.FAILED, error=truncate_error(str(exc)), permanent=isinstance(exc, PayloadTooLarge)
        )
    except Exception as exc:
        log.warning("task failed: %s: %s", type(exc).__name__, exc, extra=extra)
        return AttemptResult(Outcome.FAILED, error=truncate_error(f"{type(exc).__name__}: {exc}"))
    log.debug("task succeeded", extra=extra)
    return AttemptResult(Outcome.SUCCEEDED, result=result)
