"""The leading scheduler's mirror of its watched range: pure bookkeeping, no I/O.

Owns what the leader knows without asking etcd (see scheduler.py for how the
range is read and watched):

- :class:`ClusterView`: the live workers (:class:`MirroredNode`), the tasks each
  holds (assignment keys), the running index with deadlines, the delayed
  retries; it holds the queued tasks in a :class:`QueueIndex` (queue keys
  grouped by queue and route, in dequeue order, values up to
  ``VALUE_BUDGET_BYTES`` in all);
- :class:`Mirror`: the current view (replaced when the leader reloads) and the
  asyncio signals a change raises for the assigner and the recoverer. It
  applies watch events; it never talks to etcd.

Only keys under :attr:`Keyspace.scheduler_prefixes` are mirrored: the range also
holds ``leader``, ``retention/`` and any later prefix sorting inside it, which
:meth:`ClusterView.apply` ignores. A malformed key under a mirrored prefix is
logged and ignored.

May import: balancers (NodeView), clock, errors, keys, nodes, recovery (the
running-index entry), routing, store (data types only). Logs as
``tasklease.scheduler``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sortedcontainers import SortedList

from tasklease.balancers import NodeView
from tasklease.clock import Clock, SystemClock
from tasklease.errors import CorruptRecord
from tasklease.keys import Keyspace
from tasklease.nodes import parse_node
from tasklease.recovery import RunningEntry, decode_running
from tasklease.routing import Route, eligible, parse_route
from tasklease.store import KV, Event

log = logging.getLogger("tasklease.scheduler")

# A worker whose record has not been put (heartbeat) for its lease TTL plus this
# is treated as dead, whatever its lease says (a lease can be kept alive by anyone
# with access to the lease API).
STALE_MARGIN_S = 2.0
# The mirror keeps queue keys' values (the records) up to this many bytes in all;
# the others are read ahead, a page at a time, when they come near a head.
VALUE_BUDGET_BYTES = 64 * 1024 * 1024

Group = tuple[str, str]
"""A (queue, route text) group of queue keys; route ``""`` for keys of older versions."""


def _malformed(exc: ValueError, deleted: bool) -> None:
    """Log a key of a mirrored prefix that its parser refused (the mirror ignores it)."""
    if not deleted:
        log.error("ignoring malformed key: %s", exc)


@dataclass(slots=True)
class MirroredNode:
    """A worker as the mirror holds it (from its node record).

    Attributes:
        view: What the balancer sees (its ``assigned`` is recounted before each batch).
        queues: The queues it serves.
        lease: Its lease (assignments are written under it).
        draining: It takes no new work.
        types: The task types it runs.
        tags: Its labels, matched against a task's required tags.
        ttl: Its lease TTL in seconds.
        seen: Monotonic time of its last record put, as this scheduler saw it
            (the recoverer refreshes it when etcd shows the worker alive).
        mod_revision: Of its node record, as the mirror holds it.
    """

    view: NodeView
    queues: frozenset[str]
    lease: int
    draining: bool
    types: frozenset[str] = frozenset()
    tags: dict[str, Any] = field(default_factory=dict)
    ttl: float = 10.0
    seen: float = 0.0
    mod_revision: int = 0

    def takes(self, queue: str, route: Route | None) -> bool:
        """Whether it serves ``queue`` and may run a task of ``route`` (None: not known yet)."""
        return queue in self.queues and (route is None or eligible(self.types, self.tags, route))


class QueueIndex:
    """The queued tasks the mirror holds: keys by (queue, route), values within a byte budget.

    Touched only by the leader's tasks (one event loop): the watch applies
    changes; the assigner reads heads and fills values it read ahead.
    """

    def __init__(self, keys: Keyspace) -> None:
        self.keys = keys
        # (queue, route) -> sorted queue keys (O(log n) insert and delete at any depth);
        # route "" for keys of older versions (their route is read from the record)
        self.groups: dict[Group, SortedList] = {}
        self._routes: dict[str, Route | None] = {"": None}
        self.kvs: dict[str, KV] = {}
        # queue keys whose value (the record) is not in memory (keys-only load, or deep in the queue)
        self.unloaded: set[str] = set()
        # bytes of the values held (bounded by VALUE_BUDGET_BYTES), and the size of a
        # typical one (for sizing read-ahead pages)
        self.value_bytes = 0
        self.typical_value = 4096
        # keys not to pick until a new version of them arrives (corrupt, failed, inconsistent)
        self.skipped: set[str] = set()
        # queues an operator paused (``paused/{queue}`` keys): nothing is picked from them
        self.paused: set[str] = set()

    def apply(self, kv: KV, deleted: bool, has_value: bool) -> None:
        """Apply one queue key's new state (``has_value`` False: read without its value)."""
        key = kv.key
        try:
            parsed = self.keys.parse_queue_entry(key)
            group = (parsed.queue, parsed.route or "")
            self.route(group[1])
        except (ValueError, TypeError) as exc:
            if not deleted:
                log.error("ignoring malformed queue key %s: %s", key, exc)
            return
        if deleted:
            keys_list = self.groups.get(group)
            if keys_list is not None:
                keys_list.discard(key)
                if not keys_list:
                    del self.groups[group]
            held = self.kvs.pop(key, None)
            if held is not None and key not in self.unloaded:
                self.value_bytes -= len(held.value)
            self.unloaded.discard(key)
            self.skipped.discard(key)
            return
        keys_list = self.groups.get(group)
        if keys_list is None:
            keys_list = self.groups[group] = SortedList()
        if key not in self.kvs:
            keys_list.add(key)
        self.skipped.discard(key)  # a new version is examined afresh
        held = self.kvs.get(key)
        if held is not None and key not in self.unloaded:
            self.value_bytes -= len(held.value)
        if has_value and self.value_bytes + len(kv.value) <= VALUE_BUDGET_BYTES:
            self.kvs[key] = kv
            self.value_bytes += len(kv.value)
            self.unloaded.discard(key)
            self.typical_value = (self.typical_value * 15 + len(kv.value)) // 16
        else:
            self.kvs[key] = KV(key, b"", kv.create_revision, kv.mod_revision, kv.version)
            self.unloaded.add(key)

    def load(self, kvs: list[KV]) -> None:
        """Add the queue keys of a take-over, read without values, in ascending key order.

        Same effect as :meth:`apply` for each, without its per-key costs: keys
        come sorted from etcd, so each (queue, route) group's keys are appended
        in order and each sorted list is built once (call it once with all of them).
        """
        groups: dict[Group, list[str]] = {}
        for kv in kvs:
            key = kv.key
            try:
                group = self.keys.parse_queue_group(key)
            except ValueError:
                self.apply(kv, deleted=False, has_value=False)  # logs the malformed key
                continue
            if group[1] not in self._routes:
                try:
                    self.route(group[1])
                    self.keys.parse_queue_entry(key)
                except (ValueError, TypeError):
                    self.apply(kv, deleted=False, has_value=False)
                    continue
            bucket = groups.get(group)
            if bucket is None:
                bucket = groups[group] = []
            bucket.append(key)
            self.kvs[key] = KV(key, b"", kv.create_revision, kv.mod_revision, kv.version)
        for group, keys in groups.items():
            self.unloaded.update(keys)
            keys_list = self.groups.get(group)
            if keys_list is None:
                self.groups[group] = SortedList(keys)
            else:
                keys_list.update(keys)

    def fill(self, kv: KV) -> bool:
        """Give an unloaded queue key its value, read from etcd. False if the mirror differs."""
        held = self.kvs.get(kv.key)
        if held is None or held.mod_revision != kv.mod_revision or kv.key not in self.unloaded:
            return False
        self.kvs[kv.key] = kv
        self.value_bytes += len(kv.value)
        self.unloaded.discard(kv.key)
        self.typical_value = (self.typical_value * 15 + len(kv.value)) // 16
        return True

    def route(self, text: str) -> Route | None:
        """The parsed route of a queue key's last part (cached; None for older keys)."""
        if text not in self._routes:
            self._routes[text] = parse_route(text)
        return self._routes[text]

    def heads(
        self,
        free: list[MirroredNode],
        limit: int,
        exclude: set[str],
        blocked: Callable[[str, Route | None], bool] | None = None,
    ) -> Iterator[KV]:
        """Queue keys some free worker may take, in dequeue order (priority, then FIFO) across queues.

        Keys are grouped by queue and route: a group no free worker may take is
        passed over whole, so tasks nobody can run cost nothing however many.
        A paused queue's groups are passed over the same way, and so are the
        groups ``blocked(queue, route)`` says are held back now (a rate or
        concurrency limit, limiter.py): a blocked group never fills a batch
        with heads that cannot go while others could.
        """

        def one(group: Group, keys_list: SortedList) -> Iterator[tuple[str, KV]]:
            taken = 0
            start = len(self.keys.queue(group[0]))
            for key in keys_list:
                if key in exclude or key in self.skipped:
                    continue
                # order across queues: the part after the queue name (band/seq/id/route)
                yield key[start:], self.kvs[key]
                taken += 1
                if taken >= limit:
                    return

        groups = [
            one(group, keys_list)
            for group, keys_list in self.groups.items()
            if group[0] not in self.paused
            and any(n.takes(group[0], self.route(group[1])) for n in free)
            and (blocked is None or not blocked(group[0], self.route(group[1])))
        ]
        for _, kv in heapq.merge(*groups, key=lambda item: item[0]):
            yield kv

    def unroutable(self, live: list[MirroredNode]) -> dict[Group, int]:
        """Groups with queued tasks that none of ``live`` may take, and their sizes."""
        return {
            group: len(keys_list)
            for group, keys_list in self.groups.items()
            if group[1] and not any(n.takes(group[0], self.route(group[1])) for n in live)
        }


class DueHeap:
    """Keys with a due time, soonest first: what is due is popped, never sorted again.

    The delayed keys (``delayed/{due}/{id}``) and the expiring keys
    (``expiring/{due}/{id}``) carry their due time in the key. The keys that
    exist are ``live`` (the view's own map, which the watch keeps); this heap
    holds each of them once, pushed when it appears. A deleted key stays in the
    heap until it comes to the top (lazy deletion: ``live`` says it is gone),
    so a put and a delete cost O(log n) and O(1), and taking what is due costs
    O(k log n) for k due keys, whatever the number waiting: the cost of 100k
    delayed tasks is flat. When deleted keys outnumber the live ones the heap
    is rebuilt from ``live`` (once per as many deletions as there are keys).

    A key taken (:meth:`take`) leaves the heap: it is not offered again while
    its owner works on it. The owner gives back what it did not finish
    (:meth:`give_back`: a store error, a lost race); what it finished is
    deleted by the watch.

    Touched only by the leader's tasks (one event loop).

    Args:
        live: The keys that exist, key -> KV (the view's map: read, never written here).
        due_us: The due time of a key, in microseconds since the epoch (from the key).
    """

    def __init__(self, live: Mapping[str, KV], due_us: Callable[[str], int]) -> None:
        self.live = live
        self.due_us = due_us
        self._heap: list[tuple[int, str]] = []  # (due in microseconds, key)
        self._held: set[str] = set()  # the keys in _heap (each once)

    def __len__(self) -> int:
        """Entries in the heap, deleted keys not yet popped included."""
        return len(self._heap)

    def push(self, key: str) -> None:
        """Add a key that appeared (a key already held is not added twice)."""
        if key in self._held:
            return
        try:
            due = self.due_us(key)
        except ValueError:
            return  # not a key of this kind: the view logged it
        self._held.add(key)
        heapq.heappush(self._heap, (due, key))
        if len(self._heap) > 2 * len(self.live) + 1024:
            self._rebuild()

    def _rebuild(self) -> None:
        """Drop the entries of deleted keys (more of them than live ones)."""
        self._heap = [(due, key) for due, key in self._heap if key in self.live]
        heapq.heapify(self._heap)
        self._held = {key for _, key in self._heap}

    def _drop_gone(self) -> None:
        heap = self._heap
        while heap and heap[0][1] not in self.live:
            self._held.discard(heapq.heappop(heap)[1])

    def next_due(self) -> float:
        """When the earliest key may be taken, in epoch seconds (inf if none): see :meth:`take`."""
        self._drop_gone()
        return (self._heap[0][0] + 1) / 1_000_000 if self._heap else float("inf")

    def take(self, now: float, limit: int) -> list[KV]:
        """Pop up to ``limit`` keys due before ``now``, soonest first (their current KVs).

        A key's due time is its time rounded down to the microsecond, so a key
        is due only once ``now`` is past it by a whole microsecond: then the
        time it stands for has surely passed (a delayed task never runs early).
        """
        now_us = int(now * 1_000_000)
        heap = self._heap
        result: list[KV] = []
        while heap and len(result) < limit:
            self._drop_gone()
            if not heap or heap[0][0] >= now_us:
                break
            key = heapq.heappop(heap)[1]
            self._held.discard(key)
            result.append(self.live[key])
        return result

    def give_back(self, kvs: Iterable[KV]) -> None:
        """Offer again keys taken but not finished (those that still exist)."""
        for kv in kvs:
            if kv.key in self.live:
                self.push(kv.key)


class ClusterView:
    """The scheduler's mirror of the watched range. Pure bookkeeping, no I/O.

    Touched only by the scheduler's leader tasks (one event loop).
    """

    def __init__(self, keys: Keyspace, clock: Clock | None = None) -> None:
        self.keys = keys
        self.clock = clock or SystemClock()
        self.revision = 0  # the last revision applied (the watch raises it)
        self.nodes: dict[str, MirroredNode] = {}
        # worker -> task ids assigned to it; assignment key -> create revision
        self.assigned: dict[str, set[str]] = defaultdict(set)
        self.assignment_rev: dict[str, int] = {}
        self.queues = QueueIndex(keys)
        self.running: dict[str, RunningEntry] = {}
        # running entries per queue and per type (concurrency limits, limiter.py); kept by apply
        self.running_by_queue: dict[str, int] = defaultdict(int)
        self.running_by_type: dict[str, int] = defaultdict(int)
        # task id -> monotonic time this scheduler first saw its running entry (clock-skew guard)
        self.running_seen: dict[str, float] = {}
        self.delayed: dict[str, KV] = {}
        # the delayed keys by due time (the promoter takes the due ones from it)
        self.delayed_due = DueHeap(self.delayed, lambda key: keys.parse_delayed(key).due_us)
        self.changed_nodes = False  # set by apply, cleared by the watch once it woke the assigner
        # cron/, deps/, expiring/, limit/: key -> KV, read by the leader's parts
        # (schedules, dependencies, expiry, limits); see Mirror.subscribe
        self.plain: dict[str, dict[str, KV]] = {prefix: {} for prefix in keys.plain_prefixes}

    # the queued tasks, by their former names -----------------------------------------
    @property
    def queue_keys(self) -> dict[Group, SortedList]:
        """(queue, route) -> sorted queue keys (:attr:`QueueIndex.groups`)."""
        return self.queues.groups

    @property
    def queue_kv(self) -> dict[str, KV]:
        """Queue key -> its KV (value empty when unloaded)."""
        return self.queues.kvs

    @property
    def unloaded(self) -> set[str]:
        """Queue keys whose value is not held."""
        return self.queues.unloaded

    @property
    def value_bytes(self) -> int:
        """Bytes of the queue values held."""
        return self.queues.value_bytes

    @property
    def skipped(self) -> set[str]:
        """Queue keys not to pick until a new version of them arrives."""
        return self.queues.skipped

    def load_queue_keys(self, kvs: list[KV]) -> None:
        """Add the queue keys of a take-over, read without values (:meth:`QueueIndex.load`)."""
        self.queues.load(kvs)

    def fill(self, kv: KV) -> bool:
        """Give an unloaded queue key its value (:meth:`QueueIndex.fill`)."""
        return self.queues.fill(kv)

    def route(self, text: str) -> Route | None:
        """The parsed route of a queue key's last part (:meth:`QueueIndex.route`)."""
        return self.queues.route(text)

    # applying changes ---------------------------------------------------------------
    def apply(self, kv: KV, deleted: bool, *, has_value: bool = True) -> None:
        """Apply one key's new state (``has_value`` False: read without its value)."""
        key = kv.key
        k = self.keys
        if not key.startswith(k.scheduler_prefixes):
            return  # leader, retention/ or a later prefix inside the watched range: not mirrored
        if key.startswith(k.plain_prefixes):
            for prefix, kvs in self.plain.items():
                if key.startswith(prefix):
                    if deleted:
                        kvs.pop(key, None)
                    else:
                        kvs[key] = kv
                    return
        if key.startswith(k.assignments):
            try:
                worker, task_id = k.parse_assignment(key)
            except ValueError as exc:
                _malformed(exc, deleted)
                return
            if deleted:
                self.assigned[worker].discard(task_id)
                self.assignment_rev.pop(key, None)
            else:
                self.assigned[worker].add(task_id)
                self.assignment_rev[key] = kv.create_revision
        elif key.startswith(k.queues):
            self.queues.apply(kv, deleted, has_value)
        elif key.startswith(k.running):
            try:
                task_id = k.parse_running(key)
            except ValueError as exc:
                _malformed(exc, deleted)
                return
            if deleted:
                self._count_running(self.running.pop(task_id, None), -1)
                self.running_seen.pop(task_id, None)
            else:
                try:
                    entry = decode_running(k, kv)
                except CorruptRecord as exc:
                    log.error("skipping corrupt running entry: %s", exc)
                    return
                self._count_running(self.running.get(task_id), -1)
                self.running[task_id] = entry
                self._count_running(entry, 1)
                self.running_seen[task_id] = self.clock.monotonic()
        elif key.startswith(k.nodes):
            self.changed_nodes = True
            try:
                worker = k.parse_node(key)
            except ValueError as exc:
                _malformed(exc, deleted)
                return
            if deleted:
                self.nodes.pop(worker, None)
            else:
                self._apply_node(worker, kv)
        elif key.startswith(k.pauses):
            try:
                queue = k.parse_paused(key)
            except ValueError as exc:
                _malformed(exc, deleted)
                return
            if deleted:
                self.queues.paused.discard(queue)
            else:
                self.queues.paused.add(queue)
        elif key.startswith(k.delayed):
            try:
                k.parse_delayed(key)
            except ValueError as exc:
                _malformed(exc, deleted)
                return
            if deleted:
                self.delayed.pop(key, None)
            else:
                self.delayed[key] = kv
                self.delayed_due.push(key)

    def _count_running(self, entry: RunningEntry | None, delta: int) -> None:
        """Add ``delta`` to the running counts of ``entry``'s queue and type (None: nothing)."""
        if entry is None:
            return
        for counts, name in ((self.running_by_queue, entry.queue), (self.running_by_type, entry.type)):
            n = counts[name] + delta
            if n > 0:
                counts[name] = n
            else:
                counts.pop(name, None)

    def _apply_node(self, worker: str, kv: KV) -> None:
        try:
            rec = parse_node(kv.key, kv.value)
        except CorruptRecord as exc:
            log.error("ignoring worker %s: bad node record (%s)", worker, exc)
            self.nodes.pop(worker, None)
            return
        view = NodeView(
            id=worker,
            capacity=rec.capacity,
            cpu=float(rec.cpu),
            memory=float(rec.memory),
            weight=float(rec.weight),
        )
        self.nodes[worker] = MirroredNode(
            view,
            frozenset(rec.queues),
            kv.lease,
            rec.draining,
            frozenset(rec.types),
            dict(rec.tags),
            float(rec.lease_ttl),
            self.clock.monotonic(),
            kv.mod_revision,
        )

    # workers ----------------------------------------------------------------------------
    def stale(self, node: MirroredNode, mono: float) -> bool:
        """No heartbeat seen for its lease TTL plus a margin: dead, whatever its lease says."""
        return mono - node.seen > node.ttl + STALE_MARGIN_S

    def live_nodes(self) -> list[MirroredNode]:
        """Workers that take work (not draining, heartbeating)."""
        mono = self.clock.monotonic()
        return [n for n in self.nodes.values() if not n.draining and not self.stale(n, mono)]

    def free_nodes(self, inflight: dict[str, int]) -> list[MirroredNode]:
        """Live workers with a free slot, ``assigned`` counted (mirror + in flight)."""
        result = []
        for node in self.live_nodes():
            node.view.assigned = len(self.assigned.get(node.view.id, ())) + inflight.get(node.view.id, 0)
            if node.view.free > 0:
                result.append(node)
        return result

    def unroutable(self) -> dict[Group, int]:
        """Groups (queue, route) with queued tasks that no live worker may take, and their sizes."""
        return self.queues.unroutable(self.live_nodes())

    def next_stale(self) -> float:
        """Monotonic time when the next worker not yet stale would become so (inf if none)."""
        mono = self.clock.monotonic()
        return min(
            (t for n in self.nodes.values() if (t := n.seen + n.ttl + STALE_MARGIN_S) > mono),
            default=float("inf"),
        )

    # timers --------------------------------------------------------------------------------
    def next_due(self) -> float:
        """Time of the earliest delayed task not taken yet (inf if none)."""
        return self.delayed_due.next_due()

    def due(self, now: float, limit: int) -> list[KV]:
        """Take up to ``limit`` delayed keys due at ``now``, soonest first (:meth:`DueHeap.take`).

        The caller promotes them and gives back what it did not finish
        (``delayed_due.give_back``).
        """
        return self.delayed_due.take(now, limit)

    def overdue(self, now: float, grace: float) -> list[RunningEntry]:
        """Running entries past their deadline, on this scheduler's clock and by its own watch.

        See scheduler.py's docstring ("Clocks"): the wall-clock deadline must
        have passed, and this scheduler must have seen the entry for at least
        the attempt's timeout plus ``grace`` of monotonic time.
        """
        mono = self.clock.monotonic()
        result = []
        for e in self.running.values():
            if e.deadline + grace > now:
                continue
            seen = self.running_seen.get(e.task_id, mono)
            if mono - seen >= e.timeout + grace:
                result.append(e)
        return result

    def next_overdue(self, now: float, grace: float) -> float:
        """Wall-clock time when the next running entry may become overdue (inf if none)."""
        mono = self.clock.monotonic()
        soonest = float("inf")
        for e in self.running.values():
            seen = self.running_seen.get(e.task_id, mono)
            by_watch = now + (seen + e.timeout + grace - mono)
            soonest = min(soonest, max(e.deadline + grace, by_watch))
        return soonest

    def lost_entries(self) -> list[RunningEntry]:
        """Running entries whose assignment is gone (their worker's lease ended)."""
        return [
            e
            for e in self.running.values()
            if self.keys.assignment(e.worker, e.task_id) not in self.assignment_rev
        ]

    def stale_entries(self) -> list[RunningEntry]:
        """Running entries, assignment present, of workers that stopped heartbeating.

        Their lease may still be alive (kept alive by someone else): the
        scheduler does not trust it, only the worker's own heartbeats.
        """
        mono = self.clock.monotonic()
        stale = {w for w, n in self.nodes.items() if self.stale(n, mono)}
        if not stale:
            return []
        return [
            e
            for e in self.running.values()
            if e.worker in stale and self.keys.assignment(e.worker, e.task_id) in self.assignment_rev
        ]


class Mirror:
    """The leader's current :class:`ClusterView` and the signals its changes raise (no I/O).

    The scheduler's watch task replaces :attr:`view` (on take-over and on a
    reload) and applies watch responses with :meth:`apply_events`; the
    assigner and the recoverer read :attr:`view` and wait on the signals. All
    on one event loop, so no locking.

    Args:
        keys: The namespace.
        clock: Time source (monotonic times of node heartbeats and running entries).
    """

    def __init__(self, keys: Keyspace, clock: Clock) -> None:
        self.keys = keys
        self.clock = clock
        self.view = ClusterView(keys, clock)  # replaced by reset() only
        self.generation = 0  # raised by every reset(): a part that keeps state reads the view again
        # Set when there may be something to assign (a task queued, an assignment
        # deleted, a node changed); waited on and cleared by the assigner.
        self.wake = asyncio.Event()
        # Set when a deadline or due time may come sooner (a running or delayed key
        # put); waited on and cleared by the recoverer.
        self.timers_changed = asyncio.Event()
        # Replaced on every applied watch response; waiters hold the old one.
        self._progress = asyncio.Event()
        # (prefixes, callback) of the leader's parts: called with every watched
        # change under one of the prefixes, after the view applied it (subscribe)
        self._subscribers: list[tuple[tuple[str, ...], Callable[[KV, bool], None]]] = []

    def subscribe(self, prefixes: tuple[str, ...], callback: Callable[[KV, bool], None]) -> None:
        """Call ``callback(kv, deleted)`` for every watched change of a key under ``prefixes``.

        The seam for the leader's parts (dependencies, schedules, expiry,
        limits): each learns of its keys from the one watch, in revision
        order, after the view applied the change. Not called for the keys a
        (re)load reads: a part reads the view itself when it starts and after
        :meth:`reset` (``ClusterView.plain`` and the other maps). A callback
        must be quick and must not raise: it runs inside the watch loop.
        """
        self._subscribers.append((prefixes, callback))

    def reset(self) -> ClusterView:
        """Start from an empty view (before a (re)load); returns it. Raises :attr:`generation`."""
        self.view = ClusterView(self.keys, self.clock)
        self.generation += 1
        return self.view

    def apply_events(self, events: list[Event]) -> None:
        """Apply one watch response, in revision order, and raise the signals it calls for."""
        view = self.view
        keys = self.keys
        wake = False
        for ev in events:
            deleted = ev.type == "delete"
            view.apply(ev.kv, deleted)
            view.revision = max(view.revision, ev.kv.mod_revision)
            key = ev.kv.key
            if (not deleted and key.startswith(keys.queues)) or (
                deleted and key.startswith((keys.assignments, keys.pauses))
            ):
                wake = True
            if not deleted and key.startswith((keys.running, keys.delayed)):
                self.timers_changed.set()
            for prefixes, callback in self._subscribers:
                if key.startswith(prefixes):
                    callback(ev.kv, deleted)
        if view.changed_nodes:
            view.changed_nodes = False
            wake = True
        if (
            wake
        ):  # an assignment deleted (maybe with its lease), a task queued, a node changed, a queue resumed
            self.wake.set()
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    async def wait_revision(self, revision: int, timeout_s: float = 5.0) -> None:
        """Wait until the view has seen ``revision`` (after a failed compare), at most ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.view.revision < revision:
                    await self._progress.wait()

    def wake_later(self, delay_s: float) -> None:
        """Set :attr:`wake` after ``delay_s`` (a backoff, or a worker to look at again)."""
        asyncio.get_running_loop().call_later(delay_s, self.wake.set)
