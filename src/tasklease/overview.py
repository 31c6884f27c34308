"""The cluster at a glance, counted from index keys only: :func:`read_overview` (``Client.overview``).

Nothing here reads a task record but the few latest failures. Every count is a
``count_only`` range or a read of small index values, all at one revision:

=====================  ==========================================================
queues                 the queue registry ``queues/`` (keys.py) and the paused
                       queues
queued, per priority   ``count_only`` of each band ``queue/{q}/{band}/``
waiting                ``count_only`` of ``deps/{q}/`` (tasks waiting for their
                       parents)
running                the running index ``running/`` (small values that name
                       the queue; at most the fleet's capacity)
pending                the delayed keys ``delayed/`` (small values that name the
                       queue)
finished               ``count_only`` of ``terminal/{state}/{q}/`` (the finished
                       index), in all and over the throughput window
paused                 ``paused/`` (controls.py)
workers                the node records ``node/``
=====================  ==========================================================

So the number of requests grows with the number of queues and live workers,
not with the number of tasks. Each count is etcd walking its in-memory key
index over that range (about 0.6 ms per 1,000 keys here): the finished totals
walk every finished entry once, which is the one part that grows with the
tasks kept (see docs/benchmarks.md).

May import: codec, controls, errors, finished, keys, models, nodes, store.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tasklease import codec
from tasklease.controls import paused
from tasklease.errors import CorruptRecord
from tasklease.finished import count_finished, known_queue_names, list_finished, read_records
from tasklease.keys import MAX_PRIORITY, Keyspace, prefix_end
from tasklease.models import TERMINAL_STATES, TaskState
from tasklease.nodes import NodeRecord, list_nodes
from tasklease.store import KVStore

log = logging.getLogger("tasklease.client")

FINISHED = tuple(s.value for s in TaskState if s in TERMINAL_STATES)
LATEST_FAILURES = 10


@dataclass(slots=True)
class QueueCounts:
    """One queue's tasks per state, its queued tasks per priority, and its pause.

    Attributes:
        name: The queue.
        depth: Queued tasks per priority (3 urgent .. 0 low).
        counts: Tasks per state (every state's name).
        paused_at: When it was paused (``None``: not paused).
        paused_reason: Why.
    """

    name: str
    depth: dict[int, int] = field(default_factory=lambda: dict.fromkeys(range(MAX_PRIORITY, -1, -1), 0))
    counts: Counter[str] = field(default_factory=Counter)
    paused_at: float | None = None
    paused_reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON form (the REST API's queue object)."""
        d: dict[str, Any] = {
            "name": self.name,
            "depth": {str(p): n for p, n in self.depth.items()},
        }
        d.update({s.value: self.counts.get(s.value, 0) for s in TaskState})
        d.update(
            paused=self.paused_at is not None,
            paused_at=self.paused_at,
            paused_reason=self.paused_reason,
        )
        return d


@dataclass(frozen=True, slots=True)
class Overview:
    """The cluster at one revision (see the module docstring for where each number comes from).

    Attributes:
        revision: The etcd revision every count was read at.
        at: When (epoch seconds, the reader's clock).
        states: Tasks per state.
        queues: Per queue, by name.
        nodes: The live workers' records.
        window_s: The throughput window.
        finished_in_window: Tasks finished in the window, per finished state.
        latest_failures: The newest failed tasks (summaries, newest first).
        leader: The leading scheduler's id, if one leads.
    """

    revision: int
    at: float
    states: dict[str, int]
    queues: list[QueueCounts]
    nodes: list[NodeRecord]
    window_s: float
    finished_in_window: dict[str, int]
    latest_failures: list[dict[str, Any]]
    leader: str | None

    def as_dict(self) -> dict[str, Any]:
        """JSON form (the REST API's ``/api/overview``)."""
        capacity = sum(n.capacity for n in self.nodes)
        running = sum(n.running for n in self.nodes)
        return {
            "revision": self.revision,
            "at": self.at,
            "states": dict(self.states),
            "queues": [q.as_dict() for q in self.queues],
            "workers": {
                "live": len(self.nodes),
                "capacity": capacity,
                "running": running,
                "free": sum(max(0, n.capacity - n.assigned) for n in self.nodes if not n.draining),
                "draining": sum(1 for n in self.nodes if n.draining),
            },
            "throughput": {
                "window_s": self.window_s,
                "finished": sum(self.finished_in_window.values()),
                "failed": self.finished_in_window.get("failed", 0),
            },
            "latest_failures": self.latest_failures,
            "leader": self.leader,
        }


async def _queued(
    store: KVStore, keys: Keyspace, revision: int, names: list[str], queues: dict[str, QueueCounts]
) -> None:
    """Queued tasks per queue and priority: one ``count_only`` range per band."""

    async def band(name: str, priority: int) -> None:
        prefix = keys.queue_band(name, priority)
        n = (await store.range(prefix, prefix_end(prefix), count_only=True, revision=revision)).count
        if n:
            q = queues.setdefault(name, QueueCounts(name))
            q.depth[priority] = n
            q.counts[TaskState.QUEUED.value] += n

    await asyncio.gather(*(band(n, p) for n in names for p in range(MAX_PRIORITY + 1)))


async def _waiting(
    store: KVStore, keys: Keyspace, revision: int, names: list[str], queues: dict[str, QueueCounts]
) -> None:
    """Tasks waiting for their parents per queue: one ``count_only`` range of ``deps/{q}/`` each."""

    async def count(name: str) -> None:
        prefix = keys.deps_queue(name)
        n = (await store.range(prefix, prefix_end(prefix), count_only=True, revision=revision)).count
        if n:
            queues.setdefault(name, QueueCounts(name)).counts[TaskState.WAITING.value] += n

    await asyncio.gather(*(count(n) for n in names))


async def _index_queue(store: KVStore, prefix: str, revision: int) -> Counter[str]:
    """Entries of ``running/`` or ``delayed/`` per queue (from their values; ``""`` when not named)."""
    per: Counter[str] = Counter()
    async for page in store.scan(prefix, prefix_end(prefix), revision=revision):
        for kv in page.kvs:
            try:
                d = codec.decode_obj(kv.key, kv.value)
            except CorruptRecord:
                d = {}  # an older delayed key holds the bare id
            q = d.get("q")
            per[q if isinstance(q, str) else ""] += 1
    return per


async def read_overview(
    store: KVStore,
    keys: Keyspace,
    *,
    now: float,
    window_s: float = 60.0,
    latest_failures: int = LATEST_FAILURES,
) -> Overview:
    """Count the cluster at one revision (see the module docstring)."""
    leader_kv, revision = await store.get(keys.leader)
    queues: dict[str, QueueCounts] = {}

    def queue(name: str) -> QueueCounts:
        return queues.setdefault(name, QueueCounts(name))

    pauses = await paused(store, keys)
    names = sorted(set(await known_queue_names(store, keys, revision)) | set(pauses))
    await _queued(store, keys, revision, names, queues)
    await _waiting(store, keys, revision, names, queues)
    for state, prefix in ((TaskState.RUNNING, keys.running), (TaskState.PENDING, keys.delayed)):
        for name, n in (await _index_queue(store, prefix, revision)).items():
            if name:
                queue(name).counts[state.value] += n
            else:
                queue("?").counts[state.value] += n  # written by an older version: queue unknown
    in_window: Counter[str] = Counter()

    async def finished(state: str, name: str) -> None:
        total, recent = await asyncio.gather(
            count_finished(store, keys, state, name, revision=revision),
            count_finished(store, keys, state, name, since=now - window_s, revision=revision),
        )
        if total:
            queue(name).counts[state] += total
        in_window[state] += recent

    await asyncio.gather(*(finished(s, n) for s in FINISHED for n in names))
    for name, p in pauses.items():
        queue(name).paused_at = p.at
        queue(name).paused_reason = p.reason
    entries, _ = await list_finished(store, keys, TaskState.FAILED, limit=latest_failures)
    failures = await read_records(store, keys, [e.task_id for e in entries])
    states = Counter[str]()
    for q in queues.values():
        states.update(q.counts)
    return Overview(
        revision=revision,
        at=now,
        states={s.value: states.get(s.value, 0) for s in TaskState},
        queues=sorted(queues.values(), key=lambda q: q.name),
        nodes=await list_nodes(store, keys),
        window_s=window_s,
        finished_in_window=dict(in_window),
        latest_failures=[codec.task_summary(t) for t in failures],
        leader=leader_kv.value.decode(errors="replace") if leader_kv is not None else None,
    )
