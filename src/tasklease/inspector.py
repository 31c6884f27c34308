"""The client's reads: one task, lists of tasks (with paging), every task, stats, live workers.

Owns every read the client makes of task records, queue keys and node
records; it writes nothing. Results are typed: :class:`tasklease.models.Task`,
:class:`TaskPage`, :class:`tasklease.stats.Stats`,
:class:`tasklease.nodes.NodeRecord`. A dashboard or a script that only reads
can use an :class:`Inspector` on its own.

Sizes. Records are up to 1 MiB, so every read of many records goes through
:meth:`Store.scan`, whose pages are bounded by bytes as well as by count.

May import: codec, keys, models, nodes, stats, store, errors, ids. Nothing
imports it but the client's modules (client, submitter, editor, sync).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from tasklease import codec
from tasklease.clock import Clock
from tasklease.errors import CorruptRecord, InvalidOption, StoreUnavailable, TaskNotFound
from tasklease.ids import parse_task_id
from tasklease.keys import Keyspace, check_name, prefix_end
from tasklease.models import Task, TaskState
from tasklease.nodes import NodeRecord, list_nodes
from tasklease.stats import Stats, check_window, collect_stats
from tasklease.store import FIRST_PAGE, KV, KVStore

log = logging.getLogger("tasklease.client")

MAX_LIST = 10_000


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of a task listing.

    Attributes:
        tasks: The tasks of this page, in the listing's order.
        cursor: Pass it as ``cursor`` to read the next page; ``None`` when the
            listing is complete (a page that fills its limit exactly may be
            followed by an empty one). It is opaque: where the page stopped.
    """

    tasks: list[Task]
    cursor: str | None


class Inspector:
    """Reads tasks and workers; writes nothing.

    Args:
        store: The connection.
        keys: The namespace.
        clock: Time source (the end of the stats' throughput window).
    """

    def __init__(self, store: KVStore, keys: Keyspace, *, clock: Clock) -> None:
        self.store = store
        self.keys = keys
        self.clock = clock

    async def read(self, task_id: str) -> tuple[Task, KV, int]:
        """A task's record, its key-value (for a guarded rewrite) and the read's revision.

        Raises:
            TaskNotFound: No such task.
            CorruptRecord: The stored record cannot be decoded.
        """
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
        task, _, _ = await self.read(task_id)
        return task

    async def list(
        self,
        *,
        state: TaskState | None = None,
        queue: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Task]:
        """List tasks, oldest first; queued tasks of one queue in dequeue order.

        The first page of :meth:`list_page` (see there).
        """
        page = await self.list_page(state=state, queue=queue, limit=limit)
        return page.tasks

    async def list_page(
        self,
        *,
        state: TaskState | None = None,
        queue: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> TaskPage:
        """One page of tasks, oldest first; queued tasks of one queue in dequeue order.

        ``state=queued`` with a ``queue`` reads that queue's keys (at most
        ``limit`` keys per page); any other filter scans task records in pages
        until ``limit`` match. Reads are bounded by bytes (:meth:`Store.scan`),
        so large records are fine. Records that cannot be decoded are skipped
        with an error log. Each page is one snapshot; pages are not one
        snapshot together (tasks may come and go between them).

        Args:
            state: Only this state.
            queue: Only this queue.
            limit: At most this many per page (1..10000).
            cursor: The previous page's :attr:`TaskPage.cursor` (same filters).

        Raises:
            InvalidOption: A limit out of range, a bad queue name, or a cursor
                that is not a non-empty string.
        """
        if not 1 <= limit <= MAX_LIST:
            raise InvalidOption("limit must be in 1..10000")
        if queue is not None:
            check_name(queue)
        if cursor is not None and (not isinstance(cursor, str) or not cursor):
            raise InvalidOption(f"bad cursor {cursor!r}")
        if state is TaskState.QUEUED and queue is not None:
            return await self._queue_page(queue, limit, cursor)
        prefix = self.keys.tasks
        found: builtins.list[Task] = []
        async with contextlib.aclosing(self._values(prefix, after=cursor)) as kvs:
            async for kv in kvs:
                task = self._decode_or_log(kv)
                if task is None:
                    continue
                if state is not None and task.state is not state:
                    continue
                if queue is not None and task.queue != queue:
                    continue
                found.append(task)
                if len(found) >= limit:
                    return TaskPage(found, kv.key[len(prefix) :])
        return TaskPage(found, None)

    async def _queue_page(self, queue: str, limit: int, cursor: str | None) -> TaskPage:
        # A queue key's value is the queued record itself (queue.place_ops).
        prefix = self.keys.queue(queue)
        tasks: builtins.list[Task] = []
        count = 0
        last = ""
        async with contextlib.aclosing(self._values(prefix, limit, after=cursor)) as kvs:
            async for kv in kvs:
                count += 1
                last = kv.key
                task = self._decode_or_log(kv)
                if task is not None and task.state is TaskState.QUEUED:
                    tasks.append(task)
        return TaskPage(tasks, last[len(prefix) :] if count >= limit else None)

    async def _values(
        self, prefix: str, limit: int = 0, *, after: str | None = None
    ) -> AsyncGenerator[KV, None]:
        """The keys under ``prefix`` (after ``prefix + after``) with their values, in pages bounded by bytes.

        One snapshot (:meth:`Store.scan`); with ``limit``, at most that many
        keys are read (the first page no larger than ``limit``).
        """
        first = min(limit, FIRST_PAGE) if limit else FIRST_PAGE
        start = prefix if after is None else prefix + after + "\0"
        count = 0
        # Close the scan when stopping early.
        async with contextlib.aclosing(
            self.store.scan(start, prefix_end(prefix), first_page=first)
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

    async def nodes(self) -> builtins.list[NodeRecord]:
        """The live workers (those whose node record exists), by id.

        One paged read of ``node/``; a record that cannot be parsed is skipped
        with an error log.
        """
        return await list_nodes(self.store, self.keys)


async def stored_revision(store: KVStore, keys: Keyspace, task_id: str, data: bytes) -> int | None:
    """The revision that stored exactly ``data`` as the task's record, if it is there.

    Used after a write whose answer was lost: ``None`` also when the read fails.
    """
    try:
        kv, _ = await store.get(keys.task(task_id))
    except StoreUnavailable:
        return None
    return kv.mod_revision if kv is not None and kv.value == data else None
