"""One watch per client for every ``wait()``: the result hub.

A client that waits for many tasks at once (a web app, a benchmark, a
pipeline) must not open a watch stream per task. The hub opens one watch on
the task prefix, lazily, and hands each change of a task somebody waits for
to its waiters; changes of other tasks are dropped after a dictionary lookup
on the key (their values are never decoded).

No change can be missed: a waiter registers *before* it reads the task, and
the hub's watch started before that read. Every change after the read's
revision is therefore delivered after the registration.

Tasks this client submits while the hub runs need no read at all: the client
calls :meth:`ResultHub.expect` with the submit's revision, and the hub keeps
their terminal records (a bounded number) until someone waits for them. That
is safe only if the hub has not yet delivered anything past the submit's
revision (otherwise a change may have gone by unnoticed): ``expect`` checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, defaultdict

from tasklease import codec
from tasklease.errors import CorruptRecord, StoreError, TaskNotFound, WatchCompacted
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Task, TaskState
from tasklease.store import KVStore

log = logging.getLogger("tasklease.client")

# Own tasks remembered for a later wait(); beyond this the oldest are read instead.
MAX_KEPT = 100_000
TERMINAL_MARKERS = tuple(f'"state":"{s.value}"'.encode() for s in TaskState if s.terminal)


class ResultHub:
    """Dispatches terminal task records from one shared watch to waiting futures.

    Args:
        store: The connection.
        keys: The namespace.
    """

    def __init__(self, store: KVStore, keys: Keyspace) -> None:
        self.store = store
        self.keys = keys
        # task id -> futures waiting for it. Touched only on the event loop.
        self._waiters: dict[str, set[asyncio.Future[Task]]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._started: asyncio.Future[None] | None = None
        # Highest revision delivered by the watch (0 until it runs).
        self.revision = 0
        # Own submitted tasks nobody waits for yet, and their terminal records.
        self._expected: OrderedDict[str, None] = OrderedDict()
        self._finished: OrderedDict[str, Task] = OrderedDict()

    @property
    def running(self) -> bool:
        """Whether the shared watch has been started."""
        return self._started is not None

    async def _ensure_started(self) -> None:
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(), name="tasklease-result-hub")
        await asyncio.shield(self._started)

    async def _run(self) -> None:
        assert self._started is not None
        prefix = self.keys.tasks
        backoff = 0.1
        while True:
            try:
                _, revision = await self.store.get(prefix)
                self.revision = revision
                if not self._started.done():
                    self._started.set_result(None)
                else:
                    self._expected.clear()  # after a gap they may have been missed: read them
                    await self._recheck_all()  # after a gap: what finished meanwhile?
                async for events in self.store.watch(prefix, prefix_end(prefix), revision + 1):
                    backoff = 0.1
                    for ev in events:
                        task_id = self.keys.task_id_of(ev.kv.key)
                        futures = self._waiters.get(task_id)
                        if not futures:
                            if task_id in self._expected and ev.type == "put":
                                self._keep_if_finished(ev.kv.key, ev.kv.value)
                            continue
                        if ev.type == "delete":
                            self._fail(task_id, TaskNotFound(task_id))
                            continue
                        try:
                            task = codec.decode_task(ev.kv.key, ev.kv.value)
                        except CorruptRecord as exc:
                            self._fail(task_id, exc)
                            continue
                        if task.state.terminal:
                            self._resolve(task)
                    self.revision = max(self.revision, events[-1].kv.mod_revision)
            except WatchCompacted:
                continue
            except StoreError as exc:
                if not self._started.done():
                    self._started.set_exception(exc)
                    self._started = None
                    return
                log.warning("result watch failed (%s); watching again", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _recheck_all(self) -> None:
        for task_id in list(self._waiters):
            with contextlib.suppress(StoreError):
                kv, _ = await self.store.get(self.keys.task(task_id))
                if kv is None:
                    self._fail(task_id, TaskNotFound(task_id))
                else:
                    task = codec.decode_task(kv.key, kv.value)
                    if task.state.terminal:
                        self._resolve(task)

    def _keep_if_finished(self, key: str, value: bytes) -> None:
        # A terminal record always holds its state marker; most events are not
        # terminal, and skipping their decode is most of this watch's cost.
        if not any(marker in value for marker in TERMINAL_MARKERS):
            return
        try:
            task = codec.decode_task(key, value)
        except CorruptRecord:
            self._expected.pop(self.keys.task_id_of(key), None)  # the read path will report it
            return
        if task.state.terminal:
            self._expected.pop(task.id, None)
            self._finished[task.id] = task
            while len(self._finished) > MAX_KEPT:
                self._finished.popitem(last=False)

    def expect_soon(self, task_id: str) -> None:
        """Note a task this client is about to write, before its transaction is sent.

        Every change of it comes after the transaction, so after this watch
        started: its end is kept, and wait() needs no read, however soon the
        watch delivers the submit's own revision (with many submits in flight
        it often does before the submit returns). :meth:`forget` it if the
        write fails.
        """
        if self._task is None or self._started is None or not self._started.done():
            return
        self._expect(task_id)

    def expect(self, task_id: str, revision: int) -> None:
        """Note a task this client submitted at ``revision``, so wait() needs no read."""
        if self._task is None or self._started is None or not self._started.done():
            return
        if task_id in self._expected:
            return  # told before its write (expect_soon): nothing of it can have gone by
        if self.revision >= revision:
            return  # the watch may be past it already: wait() will read
        self._expect(task_id)

    def _expect(self, task_id: str) -> None:
        self._expected[task_id] = None
        while len(self._expected) > MAX_KEPT:
            self._expected.popitem(last=False)

    def forget(self, task_id: str) -> None:
        """A task noted by :meth:`expect_soon` was not written."""
        self._expected.pop(task_id, None)

    def _resolve(self, task: Task) -> None:
        for fut in self._waiters.pop(task.id, ()):
            if not fut.done():
                fut.set_result(task)

    def _fail(self, task_id: str, exc: Exception) -> None:
        for fut in self._waiters.pop(task_id, ()):
            if not fut.done():
                fut.set_exception(exc)

    async def wait(self, task_id: str) -> Task:
        """Wait until the task's record is terminal."""
        await self._ensure_started()
        finished = self._finished.pop(task_id, None)
        if finished is not None:
            return finished
        fut: asyncio.Future[Task] = asyncio.get_running_loop().create_future()
        self._waiters[task_id].add(fut)  # before the read: see the module docstring
        try:
            if self._expected.pop(task_id, "absent") is None:
                return await fut  # submitted here while the watch ran: nothing to read
            kv, _ = await self.store.get(self.keys.task(task_id))
            if kv is None:
                raise TaskNotFound(task_id)
            task = codec.decode_task(kv.key, kv.value)
            if task.state.terminal:
                return task
            return await fut
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._waiters[task_id]

    async def close(self) -> None:
        """Stop the watch. Idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StoreError):
                await self._task
            self._task = None
        self._started = None
