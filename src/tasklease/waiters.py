"""One watch per client for every ``wait()``: the result hub.

A client that waits for many tasks at once (a web app, a benchmark, a
pipeline) must not open a watch stream per task. The hub opens one watch on
the task prefix, lazily, and hands each change of a task somebody waits for
to its waiters; changes of other tasks are dropped after a dictionary lookup
on the key (their values are never decoded).

No change can be missed: a waiter registers *before* it reads the task, and
the hub's watch started before that read. Every change after the read's
revision is therefore delivered after the registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

from tasklease import codec
from tasklease.errors import CorruptRecord, StoreError, TaskNotFound, WatchCompacted
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Task
from tasklease.store import Store

log = logging.getLogger("tasklease.client")


class ResultHub:
    """Dispatches terminal task records from one shared watch to waiting futures.

    Args:
        store: The connection.
        keys: The namespace.
    """

    def __init__(self, store: Store, keys: Keyspace) -> None:
        self.store = store
        self.keys = keys
        # task id -> futures waiting for it. Touched only on the event loop.
        self._waiters: dict[str, set[asyncio.Future[Task]]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._started: asyncio.Future[None] | None = None

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
                if not self._started.done():
                    self._started.set_result(None)
                else:
                    await self._recheck_all()  # after a gap: what finished meanwhile?
                async for events in self.store.watch(prefix, prefix_end(prefix), revision + 1):
                    backoff = 0.1
                    for ev in events:
                        task_id = ev.kv.key[len(prefix) :]
                        futures = self._waiters.get(task_id)
                        if not futures:
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
        fut: asyncio.Future[Task] = asyncio.get_running_loop().create_future()
        self._waiters[task_id].add(fut)  # before the read: see the module docstring
        try:
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
