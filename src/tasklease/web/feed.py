"""The live feed of ``GET /api/events``: one etcd watch per process, fanned out as server-sent events.

One watch covers ``[leader, task/~)`` (``leader``, ``node/``, ``paused/``,
``queue/``, ``retention/``, ``running/``, ``scheduler/``, ``settings/``,
``task/``). Each etcd revision that changed something the dashboard shows
becomes one message, encoded once; the same bytes go to every client::

    id: <revision>
    event: changes
    data: {"revision": R, "changes": [...]}

Change objects (:class:`Translator`): ``task`` (a task record written; the
fields of :func:`task_change`, read by :func:`task_change_of_record` without
building the task), ``task_gone`` (a record deleted: expired or
purged), ``worker`` (a node record written: :func:`worker_view`),
``worker_gone``, ``queue`` (paused or resumed) and ``leader``; a running-index
entry put sends a ``task`` change with the fields it has (state ``running``,
attempt, worker: :func:`running_change_of_entry`), since an assignment does not
rewrite the record. Other keys (``queue/``, ...) send nothing but advance the
revision. A node
put that changes only the heartbeat fields (``heartbeat_at``, ``cpu``,
``memory``) is sent only if its ``heartbeat_at`` is in another whole second
than the worker's previous record's: at most one heartbeat-only message per
worker per second. The rule reads two consecutive records and nothing else, so
a catch-up from any revision sends exactly the messages the live feed sent.

Resume. A client that sends ``Last-Event-ID: R`` gets every message after
``R``: from the ring buffer (the last 10,000 messages or 32 MiB) if it reaches
back to ``R``, else from a catch-up watch of its own from ``R + 1`` that ends
where the shared watch stood when the client came (then the client's live
queue takes over; it was subscribed first, so nothing falls in between, and
messages are filtered by revision, so nothing is sent twice). If ``R + 1`` is
compacted, the client gets ``event: resync`` (with ``data: {"revision": N}``
and ``id: N``) and then the live messages after ``N``: it reloads its data. A
client whose queue holds over 1,000 messages is disconnected: it reconnects
with its Last-Event-ID and loses nothing. ``: keepalive`` is sent after 15 s
without a message (one ticker for all clients checks every quarter of that, so
15 to 19 s).

Cost. The work per revision is done once, whatever the number of clients: a
task record is parsed as JSON and its change read from the dict (no
:class:`~tasklease.models.Task` is built), the message is encoded once, and the
messages of one watch response are queued for each client in one step. Each
client then costs one wake-up per watch response, not per message.

Imports: the base (keys, models, errors), the store and nodes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Sequence
from typing import Any

import orjson

from tasklease.errors import CorruptRecord, StoreCompacted, StoreError, WatchCompacted
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import SCHEMA_VERSION, Task, TaskState
from tasklease.nodes import NodeRecord, parse_node
from tasklease.store import Event, KVStore

log = logging.getLogger("tasklease.web")

RETRY = b"retry: 2000\n\n"
"""The first bytes of every stream: the browser reconnects 2 s after the stream ends."""
KEEPALIVE = b": keepalive\n\n"
"""An SSE comment, sent when a client got nothing for ``keepalive_s``."""
MAX_ERROR_CHARS = 500
BUFFER_MESSAGES = 10_000
BUFFER_BYTES = 32 * 1024 * 1024
CLIENT_QUEUE = 1_000
KEEPALIVE_S = 15.0
FLUSH_S = 0.25  # a client gets at most 4 writes a second (docs/api.md)


# change objects ---------------------------------------------------------------------------
def task_change(task: Task) -> dict[str, Any]:
    """The ``task`` change object of a task record (what the dashboard's lists need of it)."""
    attempts = task.attempts
    error = task.error
    return {
        "kind": "task",
        "id": task.id,
        "state": task.state.value,
        "queue": task.queue,
        "type": task.type,
        "priority": task.priority,
        "attempts": len(attempts) + task.dropped.attempts,
        "worker": attempts[-1].worker if attempts else None,
        "updated_at": task.updated_at,
        "error": error[:MAX_ERROR_CHARS] if error is not None else None,
        "rerun_of": getattr(task, "rerun_of", None),
    }


_STATES = frozenset(state.value for state in TaskState)


def running_change_of_entry(task_id: str, data: bytes) -> dict[str, Any] | None:
    """The ``task`` change of a task that started running, from its running-index entry.

    Since the record is not rewritten when a task is assigned, the entry says
    it: state ``running``, the attempt (``attempts``), the worker, the queue,
    the type and when it started (``updated_at``); the dashboard keeps the
    other fields it has. An entry of an older version (no ``rv``: that
    version wrote the record running, which sent its own change) sends nothing.
    """
    try:
        d = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if type(d) is not dict or "rv" not in d:
        return None
    worker, number, queue, task_type, started = (
        d.get("worker"),
        d.get("n"),
        d.get("q"),
        d.get("ty"),
        d.get("s"),
    )
    if not (
        type(worker) is str
        and type(number) is int
        and type(queue) is str
        and type(task_type) is str
        and type(started) in (int, float)
    ):
        return None
    return {
        "kind": "task",
        "id": task_id,
        "state": TaskState.RUNNING.value,
        "queue": queue,
        "type": task_type,
        "attempts": number,
        "worker": worker,
        "updated_at": started,
    }


def task_change_of_record(data: bytes) -> dict[str, Any] | None:
    """The ``task`` change object of a stored record, read without building a :class:`Task` (cheap).

    Only the fields of the change are read and checked; the record's other
    fields (its payload, result, retry policy...) are parsed as JSON but not
    looked at.

    Returns:
        The change; None for a record that is not a task record of our schema.
    """
    try:
        d = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if type(d) is not dict or d.get("v") != SCHEMA_VERSION:
        return None
    task_id, state, queue, task_type = d.get("id"), d.get("state"), d.get("queue"), d.get("type")
    priority, updated_at, attempts = d.get("priority"), d.get("updated_at"), d.get("attempts")
    if not (
        type(task_id) is str
        and state in _STATES
        and type(queue) is str
        and type(task_type) is str
        and type(priority) is int
        and type(updated_at) in (int, float)
        and type(attempts) is list
    ):
        return None
    last = attempts[-1] if attempts else None
    worker = last.get("worker") if type(last) is dict else None
    dropped = d.get("dropped")
    dropped_attempts = dropped.get("attempts") if type(dropped) is dict else 0
    error = d.get("error")
    rerun_of = d.get("rerun_of")
    return {
        "kind": "task",
        "id": task_id,
        "state": state,
        "queue": queue,
        "type": task_type,
        "priority": priority,
        "attempts": len(attempts) + (dropped_attempts if type(dropped_attempts) is int else 0),
        "worker": worker if type(worker) is str else None,
        "updated_at": updated_at,
        "error": error[:MAX_ERROR_CHARS] if type(error) is str else None,
        "rerun_of": rerun_of if type(rerun_of) is str else None,
    }


def worker_view(node: NodeRecord, now: float) -> dict[str, Any]:
    """A worker as ``GET /api/workers`` shows it, without its ``tasks``.

    Args:
        node: Its node record.
        now: The time to measure ``heartbeat_age_s`` from (epoch seconds).
    """
    heartbeat_at = node.heartbeat_at
    return {
        "id": node.id,
        "host": node.host,
        "pid": node.pid,
        "queues": list(node.queues),
        "capacity": node.capacity,
        "running": node.running,
        "assigned": node.assigned,
        "free": max(0, node.capacity - node.assigned),
        "cpu": node.cpu,
        "memory": node.memory,
        "tags": dict(node.tags),
        "types": list(node.types),
        "version": node.version,
        "started_at": node.started_at,
        "heartbeat_at": heartbeat_at,
        "heartbeat_age_s": None if heartbeat_at is None else round(max(0.0, now - heartbeat_at), 3),
        "draining": node.draining,
        "completed": node.completed,
    }


def _heartbeat_only(prev: NodeRecord, new: NodeRecord) -> bool:
    """Whether ``new`` differs from ``prev`` in the heartbeat fields only (time, cpu, memory)."""
    return (
        new.id == prev.id
        and new.capacity == prev.capacity
        and new.running == prev.running
        and new.assigned == prev.assigned
        and new.completed == prev.completed
        and new.draining == prev.draining
        and new.queues == prev.queues
        and new.host == prev.host
        and new.pid == prev.pid
        and new.weight == prev.weight
        and new.tags == prev.tags
        and new.types == prev.types
        and new.version == prev.version
        and new.started_at == prev.started_at
        and new.lease == prev.lease
        and new.lease_ttl == prev.lease_ttl
    )


def _second(at: float | None) -> float | None:
    return None if at is None else math.floor(at)


class Translator:
    """Turns a watch's events into change objects, one list per etcd revision (pure; no I/O).

    Args:
        keys: The namespace.
        nodes: The node records as of the revision before the first event
            (``(worker id, record)``), so the first put of each worker can be
            told a heartbeat or not.
        clock: Wall clock for ``heartbeat_age_s``.
    """

    def __init__(
        self,
        keys: Keyspace,
        nodes: Iterable[tuple[str, NodeRecord]] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.nodes: dict[str, NodeRecord] = dict(nodes)
        self.clock = clock
        self._tasks = keys.tasks
        self._running = keys.running
        self._nodes = keys.nodes
        self._pauses = keys.pauses
        self._leader = keys.leader

    def revisions(self, events: Sequence[Event]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """Group ``events`` (ascending revisions, as a watch gives them) by revision.

        Yields:
            ``(revision, changes)`` for every revision among the events, in
            order; ``changes`` is empty when nothing there concerns the dashboard.
        """
        revision = 0
        changes: list[dict[str, Any]] = []
        for event in events:
            r = event.kv.mod_revision
            if r != revision:
                if revision:
                    yield revision, changes
                revision, changes = r, []
            change = self.change(event)
            if change is not None:
                changes.append(change)
        if revision:
            yield revision, changes

    def change(self, event: Event) -> dict[str, Any] | None:
        """The change object of one event, or None if the dashboard does not show it."""
        key = event.kv.key
        put = event.type == "put"
        if key.startswith(self._tasks):
            if not put:
                return {"kind": "task_gone", "id": key[len(self._tasks) :]}
            change = task_change_of_record(event.kv.value)
            if change is None:
                log.debug("feed: skipping a corrupt task record at %s", key)
            return change
        if key.startswith(self._running):
            # A task assigned: its record is not rewritten, its running entry says it runs.
            return running_change_of_entry(key[len(self._running) :], event.kv.value) if put else None
        if key.startswith(self._nodes):
            return self._node_change(key, key[len(self._nodes) :], event)
        if key.startswith(self._pauses):
            return {"kind": "queue", "name": key[len(self._pauses) :], "paused": put}
        if key == self._leader:
            return {"kind": "leader", "id": event.kv.value.decode("utf-8", "replace") if put else None}
        return None

    def _node_change(self, key: str, worker_id: str, event: Event) -> dict[str, Any] | None:
        if event.type != "put":
            self.nodes.pop(worker_id, None)
            return {"kind": "worker_gone", "id": worker_id}
        try:
            node = parse_node(key, event.kv.value)
        except CorruptRecord as exc:
            log.debug("feed: skipping a corrupt node record: %s", exc)
            self.nodes.pop(worker_id, None)
            return None
        prev = self.nodes.get(worker_id)
        self.nodes[worker_id] = node
        if (
            prev is not None
            and _heartbeat_only(prev, node)
            and _second(node.heartbeat_at) == _second(prev.heartbeat_at)
        ):
            return None  # coalesced: this worker's heartbeat of this second was sent already
        return {"kind": "worker", **worker_view(node, self.clock())}


# SSE encoding -------------------------------------------------------------------------------
def encode_changes(revision: int, changes: list[dict[str, Any]]) -> bytes:
    """One ``changes`` message (SSE bytes, ending in a blank line)."""
    data = orjson.dumps({"revision": revision, "changes": changes})
    return b"id: %d\nevent: changes\ndata: %b\n\n" % (revision, data)


def encode_resync(revision: int) -> bytes:
    """A ``resync`` message: reload everything; live messages follow from after ``revision``."""
    return b'id: %d\nevent: resync\ndata: {"revision": %d}\n\n' % (revision, revision)


def parse_last_event_id(value: str | None) -> int | None:
    """A ``Last-Event-ID`` header (or ``last_event_id`` query) value as a revision; None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        return None
    return int(value)


# ring buffer --------------------------------------------------------------------------------
class RingBuffer:
    """The last messages, bounded by count and by bytes.

    It holds every message of the revisions ``(floor, newest]``: a client that
    has seen ``floor`` or later can resume from it.

    Args:
        max_messages: Most messages kept.
        max_bytes: Most bytes kept (a message over it is still kept, alone).
        floor: The revision it starts after.
    """

    def __init__(
        self, max_messages: int = BUFFER_MESSAGES, max_bytes: int = BUFFER_BYTES, floor: int = 0
    ) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.floor = floor
        self.nbytes = 0
        self._items: deque[tuple[int, bytes]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def reset(self, floor: int) -> None:
        """Forget every message: the buffer holds the revisions after ``floor`` from now on."""
        self._items.clear()
        self.nbytes = 0
        self.floor = floor

    def append(self, revision: int, data: bytes) -> None:
        """Keep one message (revisions ascending), dropping the oldest over either bound."""
        items = self._items
        items.append((revision, data))
        self.nbytes += len(data)
        while len(items) > self.max_messages or (self.nbytes > self.max_bytes and len(items) > 1):
            old, old_data = items.popleft()
            self.nbytes -= len(old_data)
            self.floor = old

    def after(self, revision: int) -> list[tuple[int, bytes]] | None:
        """The messages after ``revision``, oldest first; None if the buffer does not reach back to it."""
        if revision < self.floor:
            return None
        found: list[tuple[int, bytes]] = []
        for item in reversed(self._items):
            if item[0] <= revision:
                break
            found.append(item)
        found.reverse()
        return found


# the feed -------------------------------------------------------------------------------------
class _Subscriber:
    """One client's queue of messages, filled by the feed, emptied by its stream."""

    __slots__ = ("active", "closed", "items", "keepalive", "limit", "overflowed", "wake")

    def __init__(self, limit: int, now: float) -> None:
        self.items: deque[tuple[int, bytes]] = deque()
        self.limit = limit
        self.wake = asyncio.Event()  # set when items go from none to some, or a flag is raised
        self.overflowed = False
        self.closed = False
        self.keepalive = False  # raised by the feed's keepalive ticker
        self.active = now  # when its stream last sent something (loop time)

    def put(self, batch: list[tuple[int, bytes]]) -> None:
        if self.overflowed:
            return
        items = self.items
        was_empty = not items
        if len(items) + len(batch) > self.limit:
            self.overflowed = True  # too slow: its stream ends; it reconnects with its Last-Event-ID
            items.clear()
            self.wake.set()
            return
        items.extend(batch)
        if was_empty:
            self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class EventFeed:
    """The process's one watch of the dashboard's keys, streamed to any number of SSE clients.

    Args:
        store: The store (its watch and reads).
        keys: The namespace.
        keepalive_s: Send ``: keepalive`` after this long without a message.
        buffer_messages: Most messages the ring buffer keeps.
        buffer_bytes: Most bytes the ring buffer keeps.
        client_queue: Most messages queued for one client; over it, the client is disconnected.
        clock: Wall clock (``heartbeat_age_s``).
        flush_s: A client's stream writes at most once per this many seconds: the messages
            that come meanwhile go out together in one write (a busy cluster makes hundreds
            of revisions a second; each write to each client costs the server CPU).
    """

    def __init__(
        self,
        store: KVStore,
        keys: Keyspace,
        *,
        keepalive_s: float = KEEPALIVE_S,
        buffer_messages: int = BUFFER_MESSAGES,
        buffer_bytes: int = BUFFER_BYTES,
        client_queue: int = CLIENT_QUEUE,
        clock: Callable[[], float] = time.time,
        flush_s: float = FLUSH_S,
    ) -> None:
        self.store = store
        self.keys = keys
        self.keepalive_s = keepalive_s
        self.flush_s = flush_s
        self.client_queue = client_queue
        self.clock = clock
        self.buffer = RingBuffer(buffer_messages, buffer_bytes)
        self._range = (keys.leader, prefix_end(keys.tasks))
        self._translator = Translator(keys, clock=clock)
        self._revision = 0
        self._subscribers: set[_Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopped = False
        self._closing = asyncio.Event()  # set by stop(): catch-ups end at once

    @property
    def revision(self) -> int:
        """The last revision the feed has seen (of an event, or of its initial read)."""
        return self._revision

    @property
    def clients(self) -> int:
        """How many clients are streaming now."""
        return len(self._subscribers)

    async def start(self) -> None:
        """Read the workers, then watch from the revision after that read. Idempotent.

        Raises:
            StoreError: etcd could not be read.
        """
        if self._task is not None:
            return
        self._stopped = False
        self._closing.clear()
        nodes, revision = await self._read_nodes(0)
        self._translator = Translator(self.keys, nodes, self.clock)
        self._revision = revision
        self.buffer.reset(revision)
        self._task = asyncio.create_task(self._run(), name="web-feed")
        self._ticker = asyncio.create_task(self._keepalives(), name="web-feed-keepalive")

    async def stop(self) -> None:
        """Stop the watch and end every stream. Idempotent."""
        self._stopped = True
        self._closing.set()
        for task in (self._task, self._ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._ticker = None
        for sub in list(self._subscribers):
            sub.close()

    async def _read_nodes(self, revision: int) -> tuple[list[tuple[str, NodeRecord]], int]:
        """The node records as of ``revision`` (0: now), and the revision read."""
        result = await self.store.range(self.keys.nodes, prefix_end(self.keys.nodes), revision=revision)
        nodes = []
        for kv in result.kvs:
            try:
                nodes.append((self.keys.parse_node(kv.key), parse_node(kv.key, kv.value)))
            except (CorruptRecord, ValueError):
                continue
        return nodes, result.revision

    async def _run(self) -> None:
        """The shared watch: resumed after errors; re-read (resync) after a compaction."""
        backoff = 0.1
        resync = False
        while True:
            try:
                if resync:
                    await self._resync()
                    resync = False
                async for events in self.store.watch(*self._range, self._revision + 1):
                    self._apply(events)
                    backoff = 0.1
            except WatchCompacted as exc:
                log.warning("event feed: %s; clients resync", exc)
                resync = True
            except StoreError as exc:
                log.warning("event feed: watch failed (%s); again in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("event feed: unexpected error; watching again in %.1f s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _apply(self, events: Sequence[Event]) -> None:
        """Make the messages of one watch response and queue them for every client (once per response)."""
        batch: list[tuple[int, bytes]] = []
        try:
            for revision, changes in self._translator.revisions(events):
                if changes:
                    data = encode_changes(revision, changes)
                    self.buffer.append(revision, data)
                    batch.append((revision, data))
                self._revision = revision
        finally:
            if batch:
                for sub in self._subscribers:
                    sub.put(batch)

    async def _resync(self) -> None:
        nodes, revision = await self._read_nodes(0)
        self._translator = Translator(self.keys, nodes, self.clock)
        self._revision = revision
        self.buffer.reset(revision)
        batch = [(revision, encode_resync(revision))]
        for sub in self._subscribers:
            sub.put(batch)

    async def stream(self, last_event_id: int | None = None) -> AsyncGenerator[bytes, None]:
        """One client's stream: ``retry:``, then every message after ``last_event_id`` (or from now on).

        Args:
            last_event_id: The revision of the last message the client has
                (``Last-Event-ID``); None: only what happens from now on.

        Yields:
            SSE bytes: whole messages, or a keepalive comment.

        Raises:
            RuntimeError: The feed is not running.
        """
        if self._task is None or self._stopped:
            raise RuntimeError("the event feed is not running")
        loop = asyncio.get_running_loop()
        sub = _Subscriber(self.client_queue, loop.time())
        # Subscribed, and the buffer read, with no await in between: the queue
        # gets every message after `subscribed`, the buffer has those up to it.
        self._subscribers.add(sub)
        try:
            subscribed = self._revision
            last = subscribed
            first = [RETRY]
            catch_up = False
            if last_event_id is not None and last_event_id < subscribed:
                held = self.buffer.after(last_event_id)
                if held is None:
                    catch_up = True
                else:
                    first.extend(data for _, data in held)
            elif last_event_id is not None:
                last = last_event_id
            yield b"".join(first)
            if catch_up:
                assert last_event_id is not None
                try:
                    async with contextlib.aclosing(self._history(last_event_id, subscribed)) as history:
                        async for chunk in history:
                            if sub.overflowed or sub.closed:
                                return
                            sub.active = loop.time()
                            yield chunk
                except (WatchCompacted, StoreCompacted):
                    yield encode_resync(subscribed)
                except StoreError as exc:
                    log.warning("event feed: a client's catch-up failed (%s): it reconnects", exc)
                    return
            elif last > subscribed:
                try:
                    current = await self._current_revision()
                except StoreError as exc:
                    log.warning("event feed: cannot check a client's Last-Event-ID (%s): it reconnects", exc)
                    return
                if last > current:  # from another etcd (restored, or reset): the client starts over
                    last = subscribed
                    yield encode_resync(subscribed)
            async with contextlib.aclosing(self._live(sub, last)) as live:
                async for chunk in live:
                    yield chunk
        finally:
            self._subscribers.discard(sub)

    async def _live(self, sub: _Subscriber, last: int) -> AsyncGenerator[bytes, None]:
        """The messages the feed queues for ``sub`` after revision ``last``; keepalives while none come."""
        loop = asyncio.get_running_loop()
        while True:
            if not sub.items and not (sub.overflowed or sub.closed or sub.keepalive):
                sub.wake.clear()
                await sub.wake.wait()
            if sub.items and self.flush_s and not (sub.overflowed or sub.closed):
                pause = sub.active + self.flush_s - loop.time()
                if pause > 0:  # wrote less than flush_s ago: gather what comes meanwhile
                    await asyncio.sleep(pause)
            if sub.overflowed or sub.closed:
                if sub.overflowed:
                    log.info("event feed: a client fell %d messages behind: disconnected", sub.limit)
                return
            items, sub.items = sub.items, deque()
            if items and items[0][0] > last:
                out = [data for _, data in items]
            else:
                out = [data for revision, data in items if revision > last]
            if items:
                last = max(last, items[-1][0])
            if out or sub.keepalive:
                sub.keepalive = False
                sub.active = loop.time()
                yield (out[0] if len(out) == 1 else b"".join(out)) if out else KEEPALIVE

    async def _keepalives(self) -> None:
        """Raise the keepalive flag of every stream that has sent nothing for ``keepalive_s``."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.keepalive_s / 4)
            quiet_since = loop.time() - self.keepalive_s
            for sub in self._subscribers:
                if sub.active <= quiet_since and not sub.keepalive:
                    sub.keepalive = True
                    sub.wake.set()

    async def _current_revision(self) -> int:
        _, revision = await self.store.get(self.keys.leader)
        return revision

    async def _history(self, after: int, until: int) -> AsyncGenerator[bytes, None]:
        """:meth:`_catch_up`, with keepalives while it waits, and ended at once by :meth:`stop`.

        (It may wait: if no event is at ``until`` itself, it ends at the next one after it.)
        """
        catch_up = self._catch_up(after, until)
        closing = asyncio.ensure_future(self._closing.wait())
        step: asyncio.Future[bytes] | None = None
        try:
            while True:
                step = asyncio.ensure_future(anext(catch_up))
                while not step.done():
                    await asyncio.wait(
                        {step, closing}, timeout=self.keepalive_s, return_when=asyncio.FIRST_COMPLETED
                    )
                    if closing.done():
                        return
                    if not step.done():
                        yield KEEPALIVE
                try:
                    chunk = step.result()
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            closing.cancel()
            if step is not None and not step.done():
                step.cancel()
                await asyncio.gather(step, return_exceptions=True)
            await catch_up.aclose()

    async def _catch_up(self, after: int, until: int) -> AsyncGenerator[bytes, None]:
        """The messages of the revisions ``(after, until]``, from a watch of its own that ends at ``until``.

        Raises:
            StoreCompacted: The node records at ``after`` are compacted.
            WatchCompacted: ``after + 1`` is compacted.
        """
        nodes, _ = await self._read_nodes(after)
        translator = Translator(self.keys, nodes, self.clock)
        watch = self.store.watch(*self._range, after + 1)
        try:
            async for events in watch:
                out = []
                done = False
                for revision, changes in translator.revisions(events):
                    if revision > until:
                        done = True
                        break
                    if changes:
                        out.append(encode_changes(revision, changes))
                    if revision == until:
                        done = True
                        break
                if out:
                    yield b"".join(out)
                if done:
                    return
        finally:
            await watch.aclose()
