"""How the client waits for a task's end: alone on its key, or through the shared result hub.

A lone wait (e.g. ``tasklease wait ID``) reads the task and watches its one
key from that read's revision + 1. As soon as a client waits for several tasks
at once, all its waits go through :class:`tasklease.waiters.ResultHub`, one
watch on the task prefix. Neither polls.

May import: codec, inspector, keys, models, store, waiters, errors, ids.
Nothing imports it but client.py.
"""

from __future__ import annotations

import asyncio
import math

from tasklease import codec
from tasklease.errors import InvalidOption, TaskNotFound, WaitTimeout, WatchCompacted
from tasklease.ids import parse_task_id
from tasklease.inspector import Inspector
from tasklease.models import Task
from tasklease.store import KVStore
from tasklease.waiters import ResultHub


class Waiter:
    """Waits for tasks to reach a terminal state, by watch.

    Args:
        store: The connection.
        inspector: Reads a task before watching it.
        hub: The client's shared result watch.
    """

    def __init__(self, store: KVStore, inspector: Inspector, hub: ResultHub) -> None:
        self.store = store
        self.keys = inspector.keys
        self.inspector = inspector
        self.hub = hub
        # Lone waits in flight on their own key watch; touched only by wait(), on the loop.
        self._waiting = 0

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
            InvalidOption: ``timeout_s`` is not None nor a finite number > 0.
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
        # A lone wait watches its one key; as soon as a client waits for
        # several tasks at once, all its waits share one watch.
        if self.hub.running or self._waiting > 0:
            return await self.hub.wait(task_id)
        self._waiting += 1
        try:
            return await self._wait_one(task_id)
        finally:
            self._waiting -= 1

    async def _wait_one(self, task_id: str) -> Task:
        key = self.keys.task(task_id)
        while True:
            task, _, revision = await self.inspector.read(task_id)
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
