"""The client's reads: one task, lists of tasks (with paging), every task, stats, live workers.

Owns every read the client makes of task records, queue keys and node
records; it writes nothing. Results are typed: :class:`tasklease.models.Task`,
:class:`TaskPage`, :class:`tasklease.stats.Stats`,
:class:`tasklease.nodes.NodeRecord`. A dashboard or a script that only reads
can use an :class:`Inspector` on its own.

Sizes. Records are up to 1 MiB, so every read of many records goes through
:meth:`Store.scan`, whose pages are bounded by bytes as well as by count.

May import: codec, keys, models, nodes, stats, store, errors, ids, finished, overview. Nothing
imports it but the client's modules (client, submitter, editor, sync).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from tasklease import codec
from tasklease.clock import Clock
from tasklease.errors import CorruptRecord, InvalidOption, StoreUnavailable, TaskNotFound
from tasklease.finished import GETS_PER_TXN, list_finished, read_kvs, read_records
from tasklease.ids import parse_task_id
from tasklease.keys import Keyspace, check_name, prefix_end
from tasklease.models import Task, TaskState
from tasklease.nodes import NodeRecord, list_nodes
from tasklease.overview import Overview, read_overview
from tasklease.recovery import as_seen, view_with_entry
from tasklease.stats import Stats, check_window, stats_from_overview
from tasklease.store import FIRST_PAGE, KV, Get, KVStore

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
        """A task as readers see it, its record's key-value (for a guarded rewrite) and the read's revision.

        Raises:
            TaskNotFound: No such task.
            CorruptRecord: The stored record cannot be decoded.
        """
        task, kv, _, revision = await self.read_current(task_id)
        return task, kv, revision

    async def read_current(self, task_id: str) -> tuple[Task, KV, KV | None, int]:
        """A task as readers see it, its record, its running entry if it runs, and the read's revision.

        One transaction of two gets: the record, and the running-index entry
        that holds a running task's attempt (an assignment does not rewrite
        the record: ``recovery.running_view``).

        Raises:
            TaskNotFound: No such task.
            CorruptRecord: The stored record cannot be decoded.
        """
        task_id = parse_task_id(task_id)
        key = self.keys.task(task_id)
        result = await self.store.txn([], [Get(key), Get(self.keys.running_entry(task_id))])
        if not result.reads[0]:
            raise TaskNotFound(task_id)
        kv = result.reads[0][0]
        task = codec.decode_task(key, kv.value)
        running_kv = result.reads[1][0] if result.reads[1] else None
        if running_kv is not None and task.state is TaskState.QUEUED:
            view = view_with_entry(self.keys, kv, task, running_kv)
            if view is not None:
                return view, kv, running_kv, result.revision
        return task, kv, None, result.revision

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
        task_type: str | None = None,
    ) -> builtins.list[Task]:
        """List tasks: the first page of :meth:`list_page` (see there for the order)."""
        page = await self.list_page(state=state, queue=queue, limit=limit, task_type=task_type)
        return page.tasks

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
        """One page of tasks, read from the index of their state: no scan of the records.

        ==========================  ==============================================
        state                       order and what is read
        ==========================  ==============================================
        succeeded, failed,          newest first; the finished index
        cancelled                   (finished.py), then the page's records by id
        queued                      dequeue order (a queue's, or queue by queue
                                    by name); the queue keys (their values are
                                    the records)
        running                     by id; the running index, then the records
        pending                     soonest due first; the delayed keys, then
                                    the records
        waiting                     by queue, then id; the deps keys, then the
                                    records
        none                        by id (oldest first): every record is read
                                    until the page is full (a scan)
        ==========================  ==============================================

        Reads are bounded by bytes (:meth:`Store.scan`, :func:`finished.read_records`),
        so large records are fine. Records that cannot be decoded are skipped
        with an error log. Each page is read on its own (tasks may come and go
        between pages).

        Args:
            state: Only this state.
            queue: Only this queue.
            limit: At most this many per page (1..10000).
            cursor: The previous page's :attr:`TaskPage.cursor` (same filters).
            task_type: Only this type.
            since: Only tasks that finished at this time or later (finished states only).

        Raises:
            InvalidOption: A limit out of range, a bad queue name, a bad cursor,
                or ``since`` without a finished state.
        """
        if not 1 <= limit <= MAX_LIST:
            raise InvalidOption("limit must be in 1..10000")
        if queue is not None:
            check_name(queue)
        if cursor is not None and (not isinstance(cursor, str) or not cursor):
            raise InvalidOption(f"bad cursor {cursor!r}")
        if since is not None and (state is None or not state.terminal):
            raise InvalidOption("since filters finished tasks only: give a finished state")
        if state is not None and state.terminal:
            entries, next_cursor = await list_finished(
                self.store,
                self.keys,
                state,
                queue=queue,
                task_type=task_type,
                since=since,
                limit=limit,
                cursor=cursor,
            )
            return TaskPage(
                await read_records(self.store, self.keys, [e.task_id for e in entries]), next_cursor
            )

        def wanted(task: Task) -> bool:
            return (
                (state is None or task.state is state)
                and (queue is None or task.queue == queue)
                and (task_type is None or task.type == task_type)
            )

        if state is TaskState.QUEUED:
            # The queue keys' values leave the payload out: the records are read by id.
            prefix = self.keys.queue(queue) if queue is not None else self.keys.queues
            return await self._page(
                prefix, lambda key: self.keys.parse_queue_entry(key).task_id, wanted, limit, cursor
            )
        if state is TaskState.RUNNING:
            return await self._page(self.keys.running, self.keys.parse_running, wanted, limit, cursor)
        if state is TaskState.PENDING:
            return await self._page(
                self.keys.delayed, lambda key: self.keys.parse_delayed(key).task_id, wanted, limit, cursor
            )
        if state is TaskState.WAITING:
            prefix = self.keys.deps_queue(queue) if queue is not None else self.keys.deps
            return await self._page(prefix, lambda key: self.keys.parse_deps(key)[1], wanted, limit, cursor)
        return await self._page(self.keys.tasks, None, wanted, limit, cursor)

    async def _page(
        self,
        prefix: str,
        id_of: Callable[[str], str] | None,
        wanted: Callable[[Task], bool],
        limit: int,
        cursor: str | None,
    ) -> TaskPage:
        """Walk the keys under ``prefix`` from ``cursor`` until ``limit`` tasks are ``wanted``.

        With ``id_of`` the keys are an index: each key names a task (its
        record is read by id, a batch at a time); without, each value is the
        record itself (task records, queue keys).
        """
        found: builtins.list[Task] = []
        batch: builtins.list[tuple[str, str]] = []  # (index key, task id)
        read: builtins.list[tuple[str, KV, Task]] = []  # (key, record, task): records read in the walk

        async def add(items: builtins.list[tuple[str, KV, Task]]) -> str | None:
            """Add the wanted tasks, as readers see them (running ones too); the cursor if the page is full."""
            seen = await as_seen(self.store, self.keys, [(kv, t) for _, kv, t in items])
            for (key, _, _), task in zip(items, seen, strict=True):
                if wanted(task):
                    found.append(task)
                    if len(found) >= limit:
                        return key[len(prefix) :]
            return None

        async def flush() -> str | None:
            """Add the batch's wanted records; the cursor if the page is full."""
            kvs = await read_kvs(self.store, self.keys, [i for _, i in batch])
            items = []
            for key, task_id in batch:
                kv = kvs.get(task_id)
                if kv is not None and (task := self._decode_or_log(kv)) is not None:
                    items.append((key, kv, task))
            batch.clear()
            return await add(items)

        async with contextlib.aclosing(self._values(prefix, after=cursor)) as kvs:
            async for kv in kvs:
                if id_of is None:
                    task = self._decode_or_log(kv)
                    if task is not None:
                        read.append((kv.key, kv, task))
                    if len(read) >= GETS_PER_TXN:
                        next_cursor = await add(read)
                        read.clear()
                        if next_cursor is not None:
                            return TaskPage(found, next_cursor)
                    continue
                try:
                    batch.append((kv.key, id_of(kv.key)))
                except ValueError as exc:
                    log.error("skipping a malformed index key: %s", exc)
                    continue
                if len(batch) >= GETS_PER_TXN and (next_cursor := await flush()) is not None:
                    return TaskPage(found, next_cursor)
        if read and (next_cursor := await add(read)) is not None:
            return TaskPage(found, next_cursor)
        if batch and (next_cursor := await flush()) is not None:
            return TaskPage(found, next_cursor)
        return TaskPage(found, None)

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
        read: builtins.list[tuple[KV, Task]] = []
        async with contextlib.aclosing(self._values(self.keys.tasks)) as kvs:
            async for kv in kvs:
                task = self._decode_or_log(kv)
                if task is not None:
                    read.append((kv, task))
                if len(read) >= GETS_PER_TXN:
                    for seen in await as_seen(self.store, self.keys, read):
                        yield seen
                    read.clear()
        for seen in await as_seen(self.store, self.keys, read):
            yield seen

    async def overview(self, window_s: float = 60.0) -> Overview:
        """The cluster at a glance, counted from index keys at one revision (overview.py).

        Args:
            window_s: Throughput is counted over the last ``window_s`` seconds.
        """
        check_window(window_s)
        return await read_overview(self.store, self.keys, now=self.clock.now(), window_s=window_s)

    async def stats(self, window_s: float = 60.0) -> Stats:
        """Tasks per state and per queue, live workers, and recent throughput.

        Counted from the index keys (:meth:`overview`): no task record is read,
        so its cost grows with the number of queues and workers, not of tasks.

        Args:
            window_s: Throughput is measured over the last ``window_s`` seconds
                (a finite number > 0).
        """
        view = await self.overview(window_s)
        return await stats_from_overview(self.store, self.keys, view)

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
