"""The client's changes to existing tasks: cancel and re-prioritise, by read-modify-write.

Each change reads the record, decides with :func:`tasklease.transitions.cancelled`
or :func:`tasklease.transitions.reprioritised`, and writes
:func:`tasklease.transitions.rewrite`'s transaction, guarded by the record's
mod revision; a lost race reads again. Once a change landed, its event goes to
the hooks (:class:`tasklease.events.Cancelled`,
:class:`tasklease.events.Reprioritised`).

May import: codec, transitions, events, inspector, retention, models, store,
errors, ids. Nothing imports it but client.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from tasklease import codec, transitions
from tasklease.clock import Clock
from tasklease.errors import ConflictError, StoreUnavailable
from tasklease.events import Cancelled, Hooks, Reprioritised, TaskEvent
from tasklease.ids import parse_task_id
from tasklease.inspector import Inspector, stored_revision
from tasklease.models import Outcome, Task, TaskState, check_priority
from tasklease.retention import RetentionLeases
from tasklease.store import KVStore

# How often a read-modify-write is retried when someone else won the race.
MAX_CONFLICT_RETRIES = 50


class Editor:
    """Cancels tasks and changes their priority.

    Args:
        store: The connection.
        inspector: Reads the records to change.
        clock: Time source.
        retention: The retention leases of finished records.
        hooks: Receive an event per change that landed.
    """

    def __init__(
        self,
        store: KVStore,
        inspector: Inspector,
        *,
        clock: Clock,
        retention: RetentionLeases,
        hooks: Hooks,
    ) -> None:
        self.store = store
        self.keys = inspector.keys
        self.inspector = inspector
        self.clock = clock
        self.retention = retention
        self.hooks = hooks
        self._rng = random.Random()  # jitter between retries; used only on the event loop

    async def cancel(self, task_id: str, reason: str = "cancelled by request") -> Task:
        """Cancel a task that has not finished.

        A queued task leaves its queue; a running task's assignment is deleted,
        which tells its worker to stop it (and fences off its result).

        Raises:
            TaskNotFound: No such task.
            InvalidTransition: It already finished.
            ConflictError: It kept changing under 50 attempts.
        """

        def change(task: Task) -> Task:
            return transitions.cancelled(task, reason, self.clock.now())

        def event(old: Task, new: Task) -> TaskEvent:
            running = old.current_attempt if old.state is TaskState.RUNNING else None
            return Cancelled(
                at=self.clock.now(),
                component="client",
                task=new,
                attempt=running.number if running else None,
                worker=running.worker if running else None,
                outcome=Outcome.CANCELLED if running else None,
            )

        return await self._modify(task_id, "cancel", change, event)

    async def set_priority(self, task_id: str, priority: int) -> Task:
        """Change the priority of a task that waits (queued or pending).

        A queued task's queue key moves to the new band in the same
        transaction; it keeps its place in time (its sequence). The same
        priority again changes nothing (and emits nothing).

        Raises:
            InvalidPriority: Priority outside 0..3.
            TaskNotFound: No such task.
            InvalidTransition: It is running or finished.
            ConflictError: It kept changing under 50 attempts.
        """
        check_priority(priority)

        def change(task: Task) -> Task | None:
            new_task = transitions.reprioritised(task, priority, self.clock.now())
            return None if task.priority == priority else new_task

        def event(old: Task, new: Task) -> TaskEvent:
            return Reprioritised(at=self.clock.now(), component="client", task=new)

        return await self._modify(task_id, "change the priority of", change, event)

    async def _modify(
        self,
        task_id: str,
        action: str,
        change: Callable[[Task], Task | None],
        event: Callable[[Task, Task], TaskEvent],
    ) -> Task:
        """Read-modify-write with a compare on the record's mod revision, retried on races.

        ``change(task)`` returns the new record, or ``None`` for no change; the
        transaction (record and index keys) is ``transitions.rewrite``'s.
        ``event(old, new)`` is emitted once the new record is stored.
        """
        task_id = parse_task_id(task_id)
        for _ in range(MAX_CONFLICT_RETRIES):
            task, kv, running_kv, _ = await self.inspector.read_current(task_id)
            new_task = change(task)
            if new_task is None:
                return task
            lease = await self.retention.lease_for(new_task.retention_s) if new_task.state.terminal else 0
            txn = transitions.rewrite(self.keys, kv, task, new_task, lease, running_kv=running_kv)
            try:
                result = await self.store.txn(txn.compares, txn.ops)
            except StoreUnavailable:
                data = codec.encode_task(new_task)
                if await stored_revision(self.store, self.keys, task_id, data) is None:
                    raise
            else:
                if not result.succeeded:
                    await asyncio.sleep(self._rng.uniform(0, 0.005))
                    continue
            self.hooks.emit(event(task, new_task))
            return new_task
        raise ConflictError(f"could not {action} task {task_id}: it kept changing")
