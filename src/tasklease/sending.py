"""Fire and confirm: a submit that returns at once, with a future resolved once the task is durable.

:meth:`tasklease.Client.send` is for producers that do not need to wait for
each task to be stored before making the next (an importer, a fan-out): the
task is validated, given its id and its place in its queue (its sequence) at
once, in call order, and handed to the submitter's group commit; ``send``
returns a :class:`SubmitFuture`, and ``await future`` returns the task as
stored, or raises what :meth:`tasklease.Client.submit` would have raised. The
submits of a loop of sends go out together, up to 64 per transaction
(groupcommit.py), so such a producer writes at the rate of concurrent submits
while keeping its order (FIFO within a priority, as sequential submits).

Nothing is durable until its future says so. :meth:`Sender.flush` waits for
every send so far and returns the futures that failed; ``Client.close`` flushes
first, and logs (error) each failure no one has looked at, so a producer that
sends and closes never loses a task silently.

Backpressure: at most ``max_in_flight`` sends are pending per client (default
1,024); the next ``send`` waits until one of them is settled. That, and the
namespace's quota record at a client's first submit, is all ``send`` ever
waits for.

May import: errors, models, submitter. Nothing imports it but client.py and sync.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Generator
from typing import Any

from tasklease.errors import InvalidOption
from tasklease.models import Task
from tasklease.submitter import Submitter, TaskSpec

log = logging.getLogger("tasklease.client")

# Sends pending per client before the next send waits (backpressure).
DEFAULT_MAX_IN_FLIGHT = 1024


class SubmitFuture:
    """A task on its way to etcd: ``await`` it for the task as stored.

    ``id`` is the task's id, known at once. ``await future`` returns the
    :class:`tasklease.Task` once its transaction landed (or the task holding
    its idempotency key), or raises the submit's error; nothing was written then.
    """

    __slots__ = ("_looked", "_task", "id")

    def __init__(self, task_id: str, task: asyncio.Task[Task]) -> None:
        self.id = task_id
        self._task = task
        self._looked = False

    def __await__(self) -> Generator[Any, None, Task]:
        self._looked = True
        return self._task.__await__()

    def done(self) -> bool:
        """Whether the submit is settled (stored or failed)."""
        return self._task.done()

    def result(self) -> Task:
        """The stored task (raises the submit's error; ``asyncio.InvalidStateError`` if not settled)."""
        self._looked = True
        return self._task.result()

    def exception(self) -> BaseException | None:
        """The submit's error, or None once stored (``asyncio.InvalidStateError`` if not settled)."""
        self._looked = True
        return self._task.exception()

    def add_done_callback(self, fn: Callable[[SubmitFuture], object]) -> None:
        """Call ``fn(self)`` on the client's event loop once the submit is settled."""
        self._task.add_done_callback(lambda _: fn(self))

    def __repr__(self) -> str:
        if not self._task.done():
            state = "pending"
        elif self._task.cancelled():
            state = "cancelled"
        else:
            state = "failed" if self._task.exception() is not None else "stored"
        return f"<SubmitFuture {self.id} {state}>"


class Sender:
    """The fire-and-confirm submits of one client (``Client.send``, ``flush``).

    Args:
        submitter: The client's submitter (its group commit writes the tasks).
        max_in_flight: Pending sends before the next one waits.
    """

    def __init__(self, submitter: Submitter, *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        if max_in_flight < 1:
            raise InvalidOption(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.submitter = submitter
        self.max_in_flight = max_in_flight
        self._pending: set[SubmitFuture] = set()
        self._failed: list[SubmitFuture] = []
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Sends not settled yet."""
        return len(self._pending)

    async def send(self, spec: TaskSpec) -> SubmitFuture:
        """Start the submit of ``spec``; return its future once it is on its way (see the module).

        Raises:
            InvalidOption: The client is closing.
            (And the errors of a bad spec: they are raised when the spec is made.)
        """
        while len(self._pending) >= self.max_in_flight:
            self._room.clear()
            await self._room.wait()
        if self._closed:
            raise InvalidOption("the client is closed: send refused")
        # Id and sequence now, in call order: the group commit keeps that order, and a
        # later send never overtakes an earlier one in its queue.
        task = self.submitter.new_task(spec, await self.submitter.default_retention())
        write = asyncio.create_task(self._write(task), name=f"tasklease-send-{task.id}")
        future = SubmitFuture(task.id, write)
        self._pending.add(future)
        write.add_done_callback(lambda _: self._settled(future))
        return future

    async def _write(self, task: Task) -> Task:
        return (await self.submitter.submit_task(task)).task

    def _settled(self, future: SubmitFuture) -> None:
        self._pending.discard(future)
        if not future._task.cancelled() and future._task.exception() is not None:
            self._failed.append(future)
        if len(self._pending) < self.max_in_flight:
            self._room.set()

    async def flush(self) -> list[SubmitFuture]:
        """Wait until every send so far is settled; return those that failed since the last flush."""
        await self._settle_all()
        failed, self._failed = self._failed, []
        for future in failed:
            future._looked = True
        return failed

    async def close(self) -> None:
        """Refuse new sends, wait for those pending, and log each failure no one looked at (error)."""
        self._closed = True
        self._room.set()
        await self._settle_all()
        failed, self._failed = self._failed, []
        for future in failed:
            if not future._looked:
                exc = future._task.exception()
                log.error("send: task %s was not stored: %s: %s", future.id, type(exc).__name__, exc)

    async def _settle_all(self) -> None:
        while self._pending:
            await asyncio.wait([f._task for f in list(self._pending)])
