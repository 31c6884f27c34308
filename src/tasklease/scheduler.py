"""The scheduler: elected leader, one watch, batch assignment, recovery.

While it leads, the scheduler mirrors every key it needs with ONE watch over
the range ``[/{ns}/assign/, /{ns}/running/~)``, which holds (in key order)
assignments, delayed retries, the leader key, node records, queues, retention
leases and the running index, but not task records. It reads that range once
(at one revision R, page by page) and watches from R + 1, so nothing falls
between read and watch, and every change reaches it in revision order.

The take-over read is keys first: assignment and queue keys are read without
their values (both carry whole task records); values are read only for the
queue heads about to be assigned. The mirror keeps queue keys' values up to
``VALUE_BUDGET_BYTES`` in all: memory stays bounded however deep the queues
are; values it does not hold are read ahead, a page of up to ~4 MiB from the
first head that needs one, so a deep backlog costs one extra read per page of
tasks, never a read per batch or of the whole queue.

From the mirror it knows, without asking etcd:

- the live workers (node keys), their queues, capacity and load;
- how many tasks each worker holds (assignment keys), so it never exceeds a
  worker's free capacity (B6);
- the head of every queue (queue keys, in dequeue order);
- the running attempts (running index) and their deadlines;
- the delayed retries and when each is due.

A batch of up to ``batch_size`` tasks (and at most ``MAX_TXN_BYTES`` of
request) is ONE transaction when the heads' values are in the mirror (a queue
key's value is the record): queue keys deleted with compares on their
revisions, records moved to running, assignments written under the workers'
leases, running-index entries written, all guarded by the leadership fence.
A batch that fails a compare is retried once the watch has caught up; nothing
is ever half-assigned.

Errors. One bad task never stops the others: a record that cannot be decoded
is skipped (logged once), one that cannot be written in any transaction is
failed with the reason recorded, and a store error backs off and retries
without ending leadership (only losing the election does).

Clocks. Deadlines in the running index are wall-clock times written by the
leader that assigned the attempt. An attempt is ended as overdue only once its
deadline plus ``deadline_grace_s`` has passed on this scheduler's clock AND
this scheduler has itself watched it for its timeout plus the grace (monotonic
time): a leader whose clock runs ahead never ends a healthy attempt early; one
that took over may end a really overdue attempt up to one timeout late.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sortedcontainers import SortedList

from tasklease import codec, transitions
from tasklease.balancers import Balancer, NodeView, make_balancer
from tasklease.clock import Clock, SystemClock
from tasklease.election import DuplicateCandidate, Election
from tasklease.errors import (
    CorruptRecord,
    InvalidOption,
    PayloadTooLarge,
    StoreError,
    StoreRequestTooLarge,
    TaskleaseError,
    WatchCompacted,
)
from tasklease.ids import IdGenerator, default_process_id
from tasklease.keys import Keyspace, check_name, prefix_end
from tasklease.models import Outcome, Task, TaskState
from tasklease.nodes import parse_node
from tasklease.recovery import RunningEntry, decode_running, still_running
from tasklease.retention import RetentionLeases
from tasklease.routing import Route, eligible, parse_route
from tasklease.store import (
    KV,
    MAX_TXN_BYTES,
    Compare,
    Event,
    Get,
    KVStore,
    Op,
    next_page_limit,
    txn_size,
)
from tasklease.transitions import Pick

log = logging.getLogger("tasklease.scheduler")

BACKSTOP_S = 5.0
# A worker whose record has not been put (heartbeat) for its lease TTL plus this
# is treated as dead, whatever its lease says (a lease can be kept alive by anyone
# with access to the lease API).
STALE_MARGIN_S = 2.0
# The mirror keeps queue keys' values (the records) up to this many bytes in all;
# the others are read ahead, a page at a time, when they come near a head.
VALUE_BUDGET_BYTES = 64 * 1024 * 1024
# One read-ahead page of values: about this many bytes (and at most 1,000 keys).
READ_AHEAD_BYTES = 4 * 1024 * 1024
# Records read per transaction by recovery and promotion (each at most 1.3 MB:
# the response stays far below the channel's receive limit).
READ_GROUP = 16
# Backoff of the assignment and timer loops after a store error.
ERROR_BACKOFF_S = (0.2, 2.0)


def default_scheduler_id() -> str:
    """``sched-{host}-{pid}-{16 hex}``: unique across hosts, restarts and containers."""
    return default_process_id("sched")


def _malformed(exc: ValueError, deleted: bool) -> None:
    """Log a key of a mirrored prefix that its parser refused (the mirror ignores it)."""
    if not deleted:
        log.error("ignoring malformed key: %s", exc)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """How a scheduler behaves.

    Attributes:
        scheduler_id: Its id (stored in the leader key while it leads).
        balancer: round_robin, random, least_load or weighted.
        batch_size: Most tasks assigned per transaction.
        lease_ttl_s: Leadership lease TTL: how long a crashed leader blocks a take-over.
        deadline_grace_s: How long after a running task's deadline the scheduler
            ends the attempt itself if the worker has not reported.
        unroutable_after_s: Fail queued tasks that no live worker may run (no
            worker runs their type, or none has their required tags) once that
            has lasted this long; None (the default) waits for such a worker forever.
    """

    scheduler_id: str = field(default_factory=default_scheduler_id)
    balancer: str = "least_load"
    batch_size: int = 10
    lease_ttl_s: int = 10
    deadline_grace_s: float = 5.0
    unroutable_after_s: float | None = None

    def __post_init__(self) -> None:
        check_name(self.scheduler_id, "scheduler")
        make_balancer(self.balancer)
        if not 1 <= self.batch_size <= 30:
            # 4 ops per task in one transaction (and 2 reads on failure); etcd allows 128.
            raise InvalidOption("batch size must be in 1..30")
        if self.lease_ttl_s < 2:
            raise InvalidOption("lease TTL must be >= 2 s")
        if not (math.isfinite(self.deadline_grace_s) and self.deadline_grace_s >= 0):
            raise InvalidOption(f"deadline grace must be a finite number >= 0, got {self.deadline_grace_s}")
        after = self.unroutable_after_s
        if after is not None and not (math.isfinite(after) and after > 0):
            raise InvalidOption(f"unroutable-after must be a finite number > 0, got {after}")


@dataclass(slots=True)
class _Node:
    view: NodeView
    queues: frozenset[str]
    lease: int
    draining: bool
    types: frozenset[str] = frozenset()
    tags: dict[str, Any] = field(default_factory=dict)
    ttl: float = 10.0
    seen: float = 0.0  # monotonic time of its last record put, as this scheduler saw it
    mod_revision: int = 0  # of its node record, as the mirror holds it

    def takes(self, queue: str, route: Route | None) -> bool:
        """Whether it serves ``queue`` and may run a task of ``route`` (None: not known yet)."""
        return queue in self.queues and (route is None or eligible(self.types, self.tags, route))


class ClusterView:
    """The scheduler's mirror of the watched range. Pure bookkeeping, no I/O.

    Touched only by the scheduler's leader task.
    """

    def __init__(self, keys: Keyspace, clock: Clock | None = None) -> None:
        self.keys = keys
        self.clock = clock or SystemClock()
        self.revision = 0
        self.nodes: dict[str, _Node] = {}
        # worker -> task ids assigned to it; assignment key -> create revision
        self.assigned: dict[str, set[str]] = defaultdict(set)
        self.assignment_rev: dict[str, int] = {}
        # (queue, route) -> sorted queue keys (O(log n) insert and delete at any depth);
        # route "" for keys of older versions (their route is read from the record)
        self.queue_keys: dict[tuple[str, str], SortedList] = {}
        self._routes: dict[str, Route | None] = {"": None}
        self.queue_kv: dict[str, KV] = {}
        # queue keys whose value (the record) is not in memory (keys-only load, or deep in the queue)
        self.unloaded: set[str] = set()
        # bytes of the queue values held (bounded by VALUE_BUDGET_BYTES), and the size of a
        # typical one (for sizing read-ahead pages)
        self.value_bytes = 0
        self.typical_value = 4096
        self.running: dict[str, RunningEntry] = {}
        # task id -> monotonic time this scheduler first saw its running entry (clock-skew guard)
        self.running_seen: dict[str, float] = {}
        self.delayed: dict[str, KV] = {}
        self._delayed_heap: list[tuple[int, str]] = []  # (due in microseconds, delayed key)
        self.skipped: set[str] = set()
        self.changed_nodes = False

    # applying changes ---------------------------------------------------------------
    def apply(self, kv: KV, deleted: bool, *, has_value: bool = True) -> None:
        """Apply one key's new state (``has_value`` False: read without its value)."""
        key = kv.key
        k = self.keys
        if not key.startswith(k.scheduler_prefixes):
            return  # leader, retention/ or a later prefix inside the watched range: not mirrored
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
            try:
                parsed = k.parse_queue_entry(key)
                group = (parsed.queue, parsed.route or "")
                self.route(group[1])
            except (ValueError, TypeError) as exc:
                if not deleted:
                    log.error("ignoring malformed queue key %s: %s", key, exc)
                return
            if deleted:
                keys_list = self.queue_keys.get(group)
                if keys_list is not None:
                    keys_list.discard(key)
                    if not keys_list:
                        del self.queue_keys[group]
                held = self.queue_kv.pop(key, None)
                if held is not None and key not in self.unloaded:
                    self.value_bytes -= len(held.value)
                self.unloaded.discard(key)
                self.skipped.discard(key)
            else:
                keys_list = self.queue_keys.get(group)
                if keys_list is None:
                    keys_list = self.queue_keys[group] = SortedList()
                if key not in self.queue_kv:
                    keys_list.add(key)
                self.skipped.discard(key)  # a new version is examined afresh
                held = self.queue_kv.get(key)
                if held is not None and key not in self.unloaded:
                    self.value_bytes -= len(held.value)
                if has_value and self.value_bytes + len(kv.value) <= VALUE_BUDGET_BYTES:
                    self.queue_kv[key] = kv
                    self.value_bytes += len(kv.value)
                    self.unloaded.discard(key)
                    self.typical_value = (self.typical_value * 15 + len(kv.value)) // 16
                else:
                    self.queue_kv[key] = KV(key, b"", kv.create_revision, kv.mod_revision, kv.version)
                    self.unloaded.add(key)
        elif key.startswith(k.running):
            try:
                task_id = k.parse_running(key)
            except ValueError as exc:
                _malformed(exc, deleted)
                return
            if deleted:
                self.running.pop(task_id, None)
                self.running_seen.pop(task_id, None)
            else:
                try:
                    self.running[task_id] = decode_running(k, kv)
                    self.running_seen[task_id] = self.clock.monotonic()
                except CorruptRecord as exc:
                    log.error("skipping corrupt running entry: %s", exc)
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
        elif key.startswith(k.delayed):
            try:
                due_us = k.parse_delayed(key).due_us
            except ValueError as exc:
                _malformed(exc, deleted)
                return
            if deleted:
                self.delayed.pop(key, None)
            else:
                self.delayed[key] = kv
                heapq.heappush(self._delayed_heap, (due_us, key))

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
        self.nodes[worker] = _Node(
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

    def load_queue_keys(self, kvs: list[KV]) -> None:
        """Add the queue keys of a take-over, read without values, in ascending key order.

        Same effect as :meth:`apply` for each, without its per-key costs: keys
        come sorted from etcd, so each (queue, route) group's keys are appended
        in order and each sorted list is built once (call it once with all of them).
        """
        groups: dict[tuple[str, str], list[str]] = {}
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
            self.queue_kv[key] = KV(key, b"", kv.create_revision, kv.mod_revision, kv.version)
        for group, keys in groups.items():
            self.unloaded.update(keys)
            keys_list = self.queue_keys.get(group)
            if keys_list is None:
                self.queue_keys[group] = SortedList(keys)
            else:
                keys_list.update(keys)

    def fill(self, kv: KV) -> bool:
        """Give an unloaded queue key its value, read from etcd. False if the mirror differs."""
        held = self.queue_kv.get(kv.key)
        if held is None or held.mod_revision != kv.mod_revision or kv.key not in self.unloaded:
            return False
        self.queue_kv[kv.key] = kv
        self.value_bytes += len(kv.value)
        self.unloaded.discard(kv.key)
        self.typical_value = (self.typical_value * 15 + len(kv.value)) // 16
        return True

    # queries -------------------------------------------------------------------------
    def route(self, text: str) -> Route | None:
        """The parsed route of a queue key's last part (cached; None for older keys)."""
        if text not in self._routes:
            self._routes[text] = parse_route(text)
        return self._routes[text]

    def stale(self, node: _Node, mono: float) -> bool:
        """No heartbeat seen for its lease TTL plus a margin: dead, whatever its lease says."""
        return mono - node.seen > node.ttl + STALE_MARGIN_S

    def live_nodes(self) -> list[_Node]:
        """Workers that take work (not draining, heartbeating)."""
        mono = self.clock.monotonic()
        return [n for n in self.nodes.values() if not n.draining and not self.stale(n, mono)]

    def free_nodes(self, inflight: dict[str, int]) -> list[_Node]:
        """Live workers with a free slot, ``assigned`` counted (mirror + in flight)."""
        result = []
        for node in self.live_nodes():
            node.view.assigned = len(self.assigned.get(node.view.id, ())) + inflight.get(node.view.id, 0)
            if node.view.free > 0:
                result.append(node)
        return result

    def heads(self, free: list[_Node], limit: int, exclude: set[str]) -> Iterator[KV]:
        """Queue keys some free worker may take, in dequeue order (priority, then FIFO) across queues.

        Keys are grouped by queue and route: a group no free worker may take is
        passed over whole, so tasks nobody can run cost nothing however many.
        """

        def one(group: tuple[str, str], keys_list: SortedList) -> Iterator[tuple[str, KV]]:
            taken = 0
            start = len(self.keys.queue(group[0]))
            for key in keys_list:
                if key in exclude or key in self.skipped:
                    continue
                # order across queues: the part after the queue name (band/seq/id/route)
                yield key[start:], self.queue_kv[key]
                taken += 1
                if taken >= limit:
                    return

        groups = [
            one(group, keys_list)
            for group, keys_list in self.queue_keys.items()
            if any(n.takes(group[0], self.route(group[1])) for n in free)
        ]
        for _, kv in heapq.merge(*groups, key=lambda item: item[0]):
            yield kv

    def unroutable(self) -> dict[tuple[str, str], int]:
        """Groups (queue, route) with queued tasks that no live worker may take, and their sizes."""
        live = self.live_nodes()
        return {
            group: len(keys_list)
            for group, keys_list in self.queue_keys.items()
            if group[1] and not any(n.takes(group[0], self.route(group[1])) for n in live)
        }

    def next_due(self) -> float:
        """Time of the earliest delayed task (inf if none)."""
        while self._delayed_heap and self._delayed_heap[0][1] not in self.delayed:
            heapq.heappop(self._delayed_heap)
        if not self._delayed_heap:
            return float("inf")
        return self._delayed_heap[0][0] / 1_000_000

    def due(self, now: float) -> list[KV]:
        """Delayed keys due at ``now``, soonest first."""
        if self.next_due() > now:
            return []
        now_us = int(now * 1_000_000)
        result = []
        for key in sorted(self.delayed):
            if self.keys.parse_delayed(key).due_us > now_us:
                break
            result.append(self.delayed[key])
        return result

    def overdue(self, now: float, grace: float) -> list[RunningEntry]:
        """Running entries past their deadline, on this scheduler's clock and by its own watch.

        See the module docstring ("Clocks"): the wall-clock deadline must have
        passed, and this scheduler must have seen the entry for at least the
        attempt's timeout plus ``grace`` of monotonic time.
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

    def next_stale(self) -> float:
        """Monotonic time when the next worker not yet stale would become so (inf if none)."""
        mono = self.clock.monotonic()
        return min(
            (t for n in self.nodes.values() if (t := n.seen + n.ttl + STALE_MARGIN_S) > mono),
            default=float("inf"),
        )


class Scheduler:
    """Campaigns for leadership and, while it leads, assigns and repairs.

    Args:
        store: The etcd connection.
        keys: The namespace.
        config: Its settings.
        clock: Time source.
    """

    def __init__(
        self,
        store: KVStore,
        keys: Keyspace,
        config: SchedulerConfig | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.config = config or SchedulerConfig()
        self.clock = clock or SystemClock()
        self.id = self.config.scheduler_id
        self.balancer: Balancer = make_balancer(self.config.balancer)
        self.election = Election(store, keys, self.id, ttl_s=self.config.lease_ttl_s, clock=self.clock)
        self._ids = IdGenerator(self.clock)
        self._rng = random.Random()
        self.retention = RetentionLeases(store, keys, self.clock)
        # Touched only by the leader task.
        self.view = ClusterView(keys, self.clock)
        self._wake = asyncio.Event()
        # Replaced on every applied watch response; waiters hold the old one.
        self._progress = asyncio.Event()
        self._timers_changed = asyncio.Event()
        self._inflight: list[tuple[int, dict[str, int], set[str]]] = []
        # (queue, route) -> monotonic time since when no live worker may take its tasks
        self._unroutable_since: dict[tuple[str, str], float] = {}
        # worker -> (node record mod revision, monotonic time) of the first read that found
        # it unchanged although the mirror saw no heartbeat for its TTL (see _confirm_stale)
        self._silent: dict[str, tuple[int, float]] = {}
        self._main: asyncio.Task[None] | None = None
        self._stopping = False
        self.leading = asyncio.Event()
        # Set when the scheduler gave up for good (``fatal`` says why): another live
        # process registered with the same id.
        self.stopped = asyncio.Event()
        self.fatal: DuplicateCandidate | None = None
        self.assigned_total = 0

    def _ctx(self, **extra: Any) -> dict[str, Any]:
        return {"component": "scheduler", "scheduler": self.id, **extra}

    async def start(self) -> None:
        """Start campaigning (returns at once)."""
        self._main = asyncio.create_task(self._run(), name=f"scheduler-{self.id}")

    async def stop(self) -> None:
        """Resign at once (a standby takes over) and stop. Idempotent."""
        self._stopping = True
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
            self._main = None
        await self.election.resign()
        self.leading.clear()

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        try:
            await self._campaign_forever()
        except DuplicateCandidate as exc:
            # Another live process has our id: campaigning on would fight over the
            # registration forever. Stop; the CLI exits 2 with this message.
            log.error("%s; this scheduler stops", exc, extra=self._ctx())
            self.fatal = exc
        finally:
            self.stopped.set()

    async def _campaign_forever(self) -> None:
        backoff = 0.2
        while not self._stopping:
            try:
                await self.election.campaign()
                backoff = 0.2
                self.leading.set()
                try:
                    await self._lead()
                finally:
                    self.leading.clear()
                log.warning("leadership lost", extra=self._ctx())
            except (StoreError, OSError) as exc:
                log.warning(
                    "scheduler cannot reach etcd: %s; retrying in %.1f s", exc, backoff, extra=self._ctx()
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except DuplicateCandidate:
                raise
            except Exception:
                # A bug must not leave the cluster without a scheduler: resign so a
                # standby can lead, then campaign again.
                log.exception("scheduler error; resigning and starting over", extra=self._ctx())
                await self.election.resign()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _lead(self) -> None:
        self.view = ClusterView(self.keys, self.clock)
        self._inflight = []
        self._unroutable_since = {}
        self._silent = {}
        started = self.clock.monotonic()
        revision = await self._load()
        log.info(
            "leading: %d workers, %d queued, %d running, %d delayed (loaded in %.2f s)",
            len(self.view.nodes),
            len(self.view.queue_kv),
            len(self.view.running),
            len(self.view.delayed),
            self.clock.monotonic() - started,
            extra=self._ctx(token=self.election.token),
        )
        self._wake.set()
        tasks = [
            asyncio.create_task(self._watch(revision + 1), name="sched-watch"),
            asyncio.create_task(self._assign_loop(), name="sched-assign"),
            asyncio.create_task(self._timer_loop(), name="sched-timers"),
            asyncio.create_task(self.election.lost(), name="sched-lost"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            if not t.cancelled() and (exc := t.exception()) is not None:
                raise exc

    @property
    def _range(self) -> tuple[str, str]:
        return self.keys.scheduler_range

    async def _load(self) -> int:
        """Read the watched range at one revision, keys first (see the module docstring).

        Assignment and queue keys are read without values (they carry whole
        records); delayed, leader, node and running keys with theirs (small),
        every read paged by bytes and count.

        Returns:
            The revision of the read.
        """
        start, end = self._range
        k = self.keys
        head = await self.store.range(start, end, count_only=True)
        revision = head.revision
        parts = [
            (k.assignments, prefix_end(k.assignments), True),
            (prefix_end(k.assignments), k.queues, False),  # delayed/, leader, node/
            (k.queues, prefix_end(k.queues), True),
            (prefix_end(k.queues), end, False),  # retention/, running/
        ]
        queued: list[KV] = []
        for lo, hi, keys_only in parts:
            async for page in self.store.scan(lo, hi, revision=revision, keys_only=keys_only):
                if lo == k.queues:
                    queued.extend(page.kvs)  # added in bulk below
                    continue
                for kv in page.kvs:
                    self.view.apply(kv, deleted=False, has_value=not keys_only)
        self.view.load_queue_keys(queued)
        self.view.revision = revision
        return revision

    async def _watch(self, revision: int) -> None:
        start, end = self._range
        while True:
            try:
                async for events in self.store.watch(start, end, revision):
                    self._apply(events)
                    revision = self.view.revision + 1
                return
            except WatchCompacted as exc:  # compacted, or a catch-up too large to receive
                log.warning("watch must start over (%s): reloading", exc, extra=self._ctx())
                self.view = ClusterView(self.keys, self.clock)
                self._inflight = []
                revision = await self._load() + 1
                self._wake.set()

    def _apply(self, events: list[Event]) -> None:
        wake = False
        for ev in events:
            deleted = ev.type == "delete"
            self.view.apply(ev.kv, deleted)
            self.view.revision = max(self.view.revision, ev.kv.mod_revision)
            key = ev.kv.key
            if (not deleted and key.startswith(self.keys.queues)) or (
                deleted and key.startswith(self.keys.assignments)
            ):
                wake = True
            if not deleted and key.startswith((self.keys.running, self.keys.delayed)):
                self._timers_changed.set()
        if self.view.changed_nodes:
            self.view.changed_nodes = False
            wake = True
        self._inflight = [f for f in self._inflight if f[0] > self.view.revision]
        if wake:  # an assignment deleted (maybe with its lease), a task queued, a node changed
            self._wake.set()
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    async def _wait_revision(self, revision: int, timeout_s: float = 5.0) -> None:
        """Wait until the mirror has seen ``revision`` (after a failed compare)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.view.revision < revision:
                    await self._progress.wait()

    def _wake_later(self, delay_s: float) -> None:
        asyncio.get_running_loop().call_later(delay_s, self._wake.set)

    # assignment ----------------------------------------------------------------------
    async def _assign_loop(self) -> None:
        backoff = ERROR_BACKOFF_S[0]
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._recover_lost()
                while await self._assign_batch():
                    pass
                self._check_routes()
                backoff = ERROR_BACKOFF_S[0]
            except StoreError as exc:
                # Never ends leadership (only the election does): back off and try again;
                # the compares keep a retry from assigning anything twice.
                log.warning("assignment paused: %s; retrying in %.1f s", exc, backoff, extra=self._ctx())
                self._wake_later(backoff)
                backoff = min(backoff * 2, ERROR_BACKOFF_S[1])

    def _inflight_counts(self) -> tuple[dict[str, int], set[str]]:
        counts: dict[str, int] = defaultdict(int)
        claimed: set[str] = set()
        for _, per_worker, keys in self._inflight:
            for worker, n in per_worker.items():
                counts[worker] += n
            claimed |= keys
        return counts, claimed

    async def _load_values(self, kvs: list[KV]) -> bool:
        """Read ahead the values of queue heads the mirror holds keys-only. False if the mirror lags.

        One range read per queue, from its first head that needs a value, of
        about ``READ_AHEAD_BYTES`` (the following keys come with it, so a deep
        queue costs one read per page of tasks, not one per batch).
        """
        first: dict[str, str] = {}
        for kv in kvs:
            queue = self.keys.parse_queue_entry(kv.key).queue
            first[queue] = min(first.get(queue, kv.key), kv.key)
        limit = next_page_limit(self.view.typical_value, READ_AHEAD_BYTES)
        revision = 0
        for queue, key in first.items():
            page = await self.store.range(key, prefix_end(self.keys.queue(queue)), limit=limit)
            revision = max(revision, page.revision)
            for read in page.kvs:
                if read.key in self.view.unloaded:
                    self.view.fill(read)
        wanted = {kv.key for kv in kvs}
        if wanted & self.view.unloaded:
            # changed or gone since the mirror saw them: the watch will tell
            await self._wait_revision(revision)
            return False
        return True

    async def _assign_batch(self) -> bool:
        """Assign up to one batch in one transaction. Returns whether to try again at once."""
        inflight, claimed = self._inflight_counts()
        free = self.view.free_nodes(inflight)
        if not free:
            return False
        heads = list(
            itertools.islice(self.view.heads(free, self.config.batch_size, claimed), self.config.batch_size)
        )
        unloaded = [kv for kv in heads if kv.key in self.view.unloaded]
        if unloaded:
            await self._load_values(unloaded)
            return True  # pick again from the mirror, now with values
        now = self.clock.now()
        picks: list[Pick] = []
        compares: list[Compare] = [self.election.fence()]
        ops: list[Op] = []
        size = txn_size(compares)
        per_worker: dict[str, int] = defaultdict(int)
        eligible_by_group: dict[tuple[str, Route], list[_Node]] = {}
        for qkv in heads:
            entry = self.keys.parse_queue_entry(qkv.key)
            task_id = entry.task_id
            # The queue key's value is the record, written with it: same bytes, same
            # mod revision (queue.place_ops). No read needed.
            record_kv = KV(self.keys.task(task_id), qkv.value, qkv.create_revision, qkv.mod_revision, 0)
            route = self.view.route(entry.route or "")
            if route is None:  # a key of an older version: the route is in the record
                try:
                    task = codec.decode_task(record_kv.key, record_kv.value)
                except CorruptRecord as exc:
                    log.error("skipping queued task: %s", exc, extra=self._ctx(task_id=task_id))
                    self.view.skipped.add(qkv.key)
                    continue
                route = Route(task.type, task.requires)
            group = (entry.queue, route)
            takers = eligible_by_group.get(group)
            if takers is None:  # once per (queue, route) per batch, not per task
                takers = eligible_by_group[group] = [n for n in free if n.takes(entry.queue, route)]
            candidates = [n for n in takers if n.view.free > 0]
            if not candidates:
                continue
            view = self.balancer.choose([n.view for n in candidates])
            node = next(n for n in candidates if n.view is view)
            pick = Pick(qkv, record_kv, node.view.id, node.lease)
            try:
                part, _ = transitions.assign(self.keys, pick, now)
            except PayloadTooLarge as exc:
                await self._fail_unassignable(qkv, record_kv, f"cannot be assigned: {exc}")
                continue
            except TaskleaseError as exc:
                log.error("skipping queued task: %s", exc, extra=self._ctx(task_id=task_id))
                self.view.skipped.add(qkv.key)
                continue
            pick_size = txn_size(part.compares) + txn_size(part.ops)
            if picks and size + pick_size > MAX_TXN_BYTES:
                break  # the next batch takes it (alone if it must)
            node.view.assigned += 1
            picks.append(pick)
            compares.extend(part.compares)
            ops.extend(part.ops)
            size += pick_size
            per_worker[node.view.id] += 1
            if len(picks) >= self.config.batch_size:
                break
        if not picks:
            return False
        # On failure, read what changed: the leader key, each record and queue key.
        failure: list[Op] = [Get(self.keys.leader)]
        for p in picks:
            failure += [Get(p.record_kv.key), Get(p.queue_kv.key)]
        try:
            result = await self.store.txn(compares, ops, failure, timeout_s=2.0)
        except StoreRequestTooLarge as exc:
            if len(picks) > 1:
                raise  # cannot happen (txn_size is an upper bound): back off, log it
            await self._fail_unassignable(picks[0].queue_kv, picks[0].record_kv, f"cannot be assigned: {exc}")
            return True
        except StoreError as exc:
            # Maybe committed (the watch will tell), or a worker's lease just ended (its
            # node key goes next). Either way the compares keep a second attempt from
            # assigning anything twice; the loop backs off.
            log.warning("assignment transaction failed: %s", exc, extra=self._ctx())
            raise
        if not result.succeeded:
            self._explain_failure(picks, result.reads)
            log.debug("assignment rejected by a compare at revision %d", result.revision, extra=self._ctx())
            await self._wait_revision(result.revision)
            return True
        self.assigned_total += len(picks)
        if result.revision > self.view.revision:
            self._inflight.append((result.revision, dict(per_worker), {p.queue_kv.key for p in picks}))
        log.debug("assigned %d tasks", len(picks), extra=self._ctx())
        return True

    async def _fail_unassignable(self, queue_kv: KV, record_kv: KV, reason: str) -> None:
        """Fail a queued task that no transaction can carry, recording why (never a loop)."""
        task_id = self.keys.parse_queue_entry(queue_kv.key).task_id
        extra = self._ctx(task_id=task_id)
        try:
            task = codec.decode_task(record_kv.key, record_kv.value)
        except CorruptRecord as exc:
            log.error("skipping queued task: %s", exc, extra=extra)
            self.view.skipped.add(queue_kv.key)
            return
        now = self.clock.now()
        lease = await self.retention.lease_for(task.retention_s)
        txn = transitions.fail_waiting(self.election.fence(), queue_kv, record_kv, task, reason, now, lease)
        result = await self.store.txn(txn.compares, txn.ops)
        # Not picked again while the watch catches up (it deletes the key, or a new
        # version of it clears the mark).
        self.view.skipped.add(queue_kv.key)
        if result.succeeded:
            log.error("task failed: %s", reason, extra=extra)

    def _explain_failure(self, picks: list[Pick], reads: list[list[KV]]) -> None:
        """Skip picks whose record changed while their queue key did not (an inconsistency).

        A queue key that changed or vanished is an ordinary race (a cancel, a
        priority change, another scheduler): the watch will catch up.
        """
        leader = reads[0][0] if reads and reads[0] else None
        if leader is None or leader.create_revision != self.election.token:
            return  # deposed: election.lost() ends the leadership
        for i, pick in enumerate(picks):
            record = reads[1 + 2 * i]
            queue_kv = reads[2 + 2 * i]
            queue_same = bool(queue_kv) and queue_kv[0].mod_revision == pick.queue_kv.mod_revision
            record_same = bool(record) and record[0].mod_revision == pick.queue_kv.mod_revision
            if queue_same and not record_same:
                log.error(
                    "skipping queued task: its record changed without its queue key",
                    extra=self._ctx(task_id=self.keys.parse_queue_entry(pick.queue_kv.key).task_id),
                )
                self.view.skipped.add(pick.queue_kv.key)

    # recovery ------------------------------------------------------------------------
    async def _timer_loop(self) -> None:
        """Deadlines (F3) and retry backoffs (E3): sleep until the next one is due."""
        backoff = ERROR_BACKOFF_S[0]
        while True:
            now = self.clock.now()
            try:
                await self._end_overdue(now)
                await self._promote_due(now)
                await self._fail_unroutable()
                backoff = ERROR_BACKOFF_S[0]
                mono = self.clock.monotonic()
                delay = min(
                    min(self.view.next_overdue(now, self.config.deadline_grace_s), self.view.next_due())
                    - self.clock.now(),
                    self.view.next_stale() - mono,
                    self._next_unroutable() - mono,
                )
            except StoreError as exc:
                log.warning("timers paused: %s; retrying in %.1f s", exc, backoff, extra=self._ctx())
                delay = backoff
                backoff = min(backoff * 2, ERROR_BACKOFF_S[1])
            # Sleep until the earliest deadline or backoff; a new running or
            # delayed key (which may be due sooner) wakes us early.
            self._timers_changed.clear()
            try:
                async with asyncio.timeout(max(0.01, min(delay, BACKSTOP_S))):
                    await self._timers_changed.wait()
            except TimeoutError:
                # Backstop: re-examine the mirror when nothing happened for a while
                # (no etcd request: the assignment loop works from the mirror).
                self._wake.set()

    # routes no live worker can take ---------------------------------------------------
    def _check_routes(self) -> None:
        """Log once per (queue, route) when its tasks start and stop waiting for an eligible worker."""
        mono = self.clock.monotonic()
        current = self.view.unroutable()
        for group, count in current.items():
            if group in self._unroutable_since:
                continue
            self._unroutable_since[group] = mono
            route = self.view.route(group[1])
            live = self.view.live_nodes()
            types = sorted(set().union(*(n.types for n in live if group[0] in n.queues)))
            log.warning(
                "%d queued task(s) of %s in queue %s wait: no live worker may run them "
                "(workers serving the queue run: %s)%s",
                count,
                route.describe() if route else "?",
                group[0],
                ", ".join(types[:20]) or "none",
                f"; they fail after {self.config.unroutable_after_s:g} s"
                if self.config.unroutable_after_s
                else "",
                extra=self._ctx(queue=group[0]),
            )
        for group in [g for g in self._unroutable_since if g not in current]:
            del self._unroutable_since[group]
            if group in self.view.queue_keys:
                route = self.view.route(group[1])
                log.info(
                    "tasks of %s in queue %s have an eligible worker again",
                    route.describe() if route else "?",
                    group[0],
                    extra=self._ctx(queue=group[0]),
                )

    def _next_unroutable(self) -> float:
        """Monotonic time when the next unroutable group is due to fail (inf if never)."""
        after = self.config.unroutable_after_s
        if after is None or not self._unroutable_since:
            return float("inf")
        return min(self._unroutable_since.values()) + after

    async def _fail_unroutable(self) -> None:
        """Fail the tasks of groups that have had no eligible worker for ``unroutable_after_s``."""
        after = self.config.unroutable_after_s
        if after is None:
            return
        self._check_routes()
        mono = self.clock.monotonic()
        for group, since in list(self._unroutable_since.items()):
            if mono - since < after:
                continue
            keys_list = self.view.queue_keys.get(group)
            if not keys_list:
                continue
            route = self.view.route(group[1])
            reason = (
                f"no live worker may run {route.describe() if route else 'it'} in queue {group[0]} "
                f"for {mono - since:.0f} s (--unroutable-after {after:g})"
            )
            # bounded per pass: the timer comes back at once while some are left
            batch = [k for k in itertools.islice(keys_list, READ_GROUP * 4) if k not in self.view.skipped]
            for start in range(0, len(batch), READ_GROUP):
                chunk = batch[start : start + READ_GROUP]
                result = await self.store.txn([], [Get(k) for k in chunk])
                for read in result.reads:
                    if read:
                        qkv = read[0]
                        record_kv = KV(
                            self.keys.task(self.keys.parse_queue_entry(qkv.key).task_id),
                            qkv.value,
                            qkv.create_revision,
                            qkv.mod_revision,
                            0,
                        )
                        await self._fail_unassignable(qkv, record_kv, reason)
            if batch:
                self._timers_changed.set()

    async def _records(self, task_ids: list[str]) -> list[KV | None]:
        result = await self.store.txn([], [Get(self.keys.task(t)) for t in task_ids])
        return [kvs[0] if kvs else None for kvs in result.reads]

    async def _recover_lost(self) -> None:
        lost = self.view.lost_entries()
        stale = self.view.stale_entries()
        if stale:
            confirmed = {w for w in {e.worker for e in stale} if await self._confirm_stale(w)}
            lost += [e for e in stale if e.worker in confirmed]
        for start in range(0, len(lost), READ_GROUP):
            await self._repair(lost[start : start + READ_GROUP], Outcome.LOST)

    async def _confirm_stale(self, worker: str) -> bool:
        """Whether a worker the mirror has not seen heartbeat is really silent.

        The mirror's clock is this process's: after a pause of this process or a
        lagging watch every worker looks silent. So before ending anything, read
        the node record: if it changed since the mirror's copy, the mirror lags
        (not stale). It is stale only if it stays unchanged for another lease TTL
        plus the margin, measured from a read that etcd answered.
        """
        node = self.view.nodes.get(worker)
        if node is None:
            return False
        kv, _ = await self.store.get(self.keys.node(worker))
        mono = self.clock.monotonic()
        if kv is None or kv.mod_revision != node.mod_revision:
            self._silent.pop(worker, None)
            node.seen = mono  # alive (or gone: its lease ended, the watch will say so)
            return False
        since = self._silent.setdefault(worker, (kv.mod_revision, mono))
        if since[0] != kv.mod_revision:
            self._silent[worker] = (kv.mod_revision, mono)
            return False
        if mono - since[1] < node.ttl + STALE_MARGIN_S:
            self._wake_later(node.ttl + STALE_MARGIN_S - (mono - since[1]) + 0.05)
            return False
        return True

    async def _end_overdue(self, now: float) -> None:
        overdue = self.view.overdue(now, self.config.deadline_grace_s)
        for start in range(0, len(overdue), READ_GROUP):
            await self._repair(overdue[start : start + READ_GROUP], Outcome.TIMEOUT)

    async def _repair(self, entries: list[RunningEntry], outcome: Outcome) -> None:
        records = await self._records([e.task_id for e in entries])
        for entry, record_kv in zip(entries, records, strict=True):
            extra = self._ctx(task_id=entry.task_id, attempt=entry.attempt, worker=entry.worker)
            try:
                await self._repair_one(entry, record_kv, outcome, extra)
            except StoreRequestTooLarge as exc:
                # A record no transaction can carry (planted or from an older version):
                # leave it, but never let it stop the others.
                log.error("cannot repair: %s", exc, extra=extra)

    async def _repair_one(
        self, entry: RunningEntry, record_kv: KV | None, outcome: Outcome, extra: dict[str, Any]
    ) -> None:
        task = None
        if record_kv is None:
            log.error("running task has no record (deleted by hand?): dropping its index entry", extra=extra)
        else:
            try:
                task = codec.decode_task(record_kv.key, record_kv.value)
            except CorruptRecord as exc:
                log.error("cannot repair (%s): dropping its index entry", exc, extra=extra)
        if task is None or record_kv is None or not still_running(task, entry):
            # A stale or unrepairable index entry: drop it (and its assignment,
            # which tells a worker still running it to stop), so that it is not
            # examined again and again.
            drop = transitions.drop_running_entry(
                self.keys,
                self.election.fence(),
                entry.task_id,
                entry.worker,
                entry.mod_revision,
                with_assignment=task is None,
            )
            await self.store.txn(drop.compares, drop.ops)
            return
        assign_key = self.keys.assignment(entry.worker, entry.task_id)
        if outcome is Outcome.LOST and assign_key in self.view.assignment_rev:
            # its worker stopped heartbeating although its lease lives on: end the
            # attempt and delete the assignment (tells the worker, if it lives, to stop)
            node = self.view.nodes.get(entry.worker)
            silent = self.clock.monotonic() - node.seen if node else 0.0
            error = (
                f"worker {entry.worker} stopped heartbeating ({silent:.0f} s without one) during the attempt"
            )
            assign_rev = self.view.assignment_rev[assign_key]
        elif outcome is Outcome.LOST:
            error = f"worker {entry.worker} vanished (lease ended) during the attempt"
            assign_rev = 0
        else:
            error = f"no report from worker {entry.worker} within the timeout of {task.timeout_s:g} s"
            assign_rev = self.view.assignment_rev.get(assign_key, 0)
        now = self.clock.now()
        new = transitions.end_attempt(task, outcome, error, now, self._rng, self._ids.sequence())
        lease = await self.retention.lease_for(new.retention_s) if new.state.terminal else 0
        txn = transitions.repair(
            self.keys,
            self.election.fence(),
            entry.mod_revision,
            entry.worker,
            record_kv,
            task,
            new,
            assignment_create_revision=assign_rev,
            lease=lease,
        )
        result = await self.store.txn(txn.compares, txn.ops)
        if result.succeeded:
            log.warning("attempt %s: task %s", outcome.value, new.state.value, extra=extra)

    async def _promote_due(self, now: float) -> None:
        due = self.view.due(now)
        for start in range(0, len(due), READ_GROUP):
            chunk = due[start : start + READ_GROUP]
            ids = [self.keys.parse_delayed(kv.key).task_id for kv in chunk]
            records = await self._records(ids)
            for delayed_kv, record_kv in zip(chunk, records, strict=True):
                try:
                    await self._promote_one(delayed_kv, record_kv, now)
                except StoreRequestTooLarge as exc:
                    log.error(
                        "cannot promote: %s",
                        exc,
                        extra=self._ctx(task_id=self.keys.parse_delayed(delayed_kv.key).task_id),
                    )

    async def _promote_one(self, delayed_kv: KV, record_kv: KV | None, now: float) -> None:
        task: Task | None = None
        if record_kv is not None:
            try:
                task = codec.decode_task(record_kv.key, record_kv.value)
            except CorruptRecord as exc:
                log.error("delayed task has a corrupt record (%s): dropping its delayed key", exc)
        if (
            task is None
            or record_kv is None
            or task.state is not TaskState.PENDING
            or task.not_before is None
        ):
            # Nothing to promote (the record is gone, corrupt, or no longer waiting):
            # delete the key, or the timer would read it again and again.
            drop = transitions.drop_delayed(self.election.fence(), delayed_kv)
            await self.store.txn(drop.compares, drop.ops)
            return
        try:
            txn = transitions.promote(
                self.keys, self.election.fence(), delayed_kv, record_kv, task, now, self._ids.sequence()
            )
        except PayloadTooLarge as exc:
            lease = await self.retention.lease_for(task.retention_s)
            txn = transitions.fail_waiting(
                self.election.fence(),
                delayed_kv,
                record_kv,
                task,
                f"cannot be queued again: {exc}",
                now,
                lease,
            )
        await self.store.txn(txn.compares, txn.ops)
