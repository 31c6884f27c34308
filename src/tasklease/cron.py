"""The leader's cron loop (:class:`CronFirer`): fires each tick of each schedule exactly once.

While this scheduler leads, :class:`CronFirer` keeps the schedules of the
mirror (``view.plain[keys.crons]``, kept current by the one watch through
``Mirror.subscribe``) with the next tick of each in a heap, and sleeps until
the soonest (or a change). A tick is fired by ONE transaction:

::

    if   create(leader) = token                  (the fence)
     and mod(cron/{name}) = the revision read    (nobody fired or changed it since)
     and create(task/{id}) = 0                   (per task: transitions.enqueue)
    then put cron/{name} = schedule with last_tick = tick, last_task = id, fired + 1
         put task/{id} = record (queued; schedule = name, tick = tick)
         put queue/{q}/{band}/{seq}/{id}/{route} = record

Exactly once. Ticks of a schedule are dealt with in order, each only after the
schedule's ``last_tick`` (its cursor). A transaction writes the new
``last_tick`` and the tick's task together, on the condition that the cron key
is the version whose cursor it started from: two leaders (a deposed one that
has not noticed, and its successor) cannot both succeed from one version, and
whoever reads the version written sees the tick as done. A leader that dies
before its transaction committed has fired nothing; after, it has recorded the
tick with its task. Either way its successor starts from what etcd holds. An
answer lost in transit (``StoreUnavailable``) is not retried blindly: the
loop re-reads the key from its mirror (the watch brings the write if it
landed; a resend from the old version would fail its compare anyway).

Catch-up (:func:`plan_ticks`, pure). The ticks due at a pass are those after
the cursor up to now. ``all``: each fires, oldest first, in transactions of
up to ``MAX_TICKS_PER_TXN`` (and ``MAX_TXN_BYTES``), pass after pass;
``one``: the newest fires, the older ones are recorded as skipped; ``none``:
the newest fires if it is at most ``ON_TIME_S`` late, and every older one is
skipped. Overlap ``skip``: a tick whose previous task has not finished (its
record is read) is recorded as skipped, in the same transaction shape
without the task. Paused schedules do not fire; their ticks wait for the
resume, and catch-up decides.

Several schedules due together share a transaction (128 compares and 128 ops,
``MAX_TXN_BYTES``); after a failed compare the next pass sends them one by one.

Lateness (when a tick was fired, minus the tick) is logged at debug level per
tick, and kept as :attr:`CronFirer.late_max_s`.

May import: codec, errors, events, keys, leader, models, routing, schedules,
spec, store, transitions. Logs as ``tasklease.scheduler``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from tasklease import codec, schedules, transitions
from tasklease.errors import CorruptRecord, PayloadTooLarge, StoreError, StoreRequestTooLarge
from tasklease.events import Submitted
from tasklease.leader import LeaderContext, LeaderLoop
from tasklease.models import DEFAULT_RETENTION_S, Task, TaskState
from tasklease.routing import check_requires
from tasklease.schedules import CronExpr, Schedule
from tasklease.store import KV, MAX_TXN_BYTES, MAX_TXN_OPS, Compare, Op, Put

log = logging.getLogger("tasklease.scheduler")

ON_TIME_S = 60.0
"""Catch-up ``none``: the newest due tick still fires if it is at most this late."""
CATCH_UP_BATCH = 1000
"""Most missed ticks counted (``none``, ``one``) or fired (``all``) per schedule per pass."""
MAX_TICKS_PER_TXN = 30
"""Most ticks of one schedule per transaction: each tick's task is at most 4 ops (record, queue
key, expiring key with ``--expires``; a schedule's task has no idempotency key), plus the
cron key's put and the queue registry puts: 30 * 4 + 1 + a few within etcd's 128."""
BACKSTOP_S = 60.0
"""Longest sleep: then the loop looks at the schedules again (a wall clock that jumped)."""
ERROR_BACKOFF_S = (0.2, 2.0)
_OVERHEAD_BYTES = 8192


# the decision: pure ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TickPlan:
    """What one pass does with a schedule's due ticks.

    Attributes:
        fire: The ticks to fire now, oldest first.
        skipped: How many ticks it records as skipped (a floor after
            ``CATCH_UP_BATCH``).
        last: The schedule's new ``last_tick``.
    """

    fire: tuple[float, ...]
    skipped: int
    last: float


def plan_ticks(
    expr: CronExpr,
    cursor: float,
    now: float,
    *,
    catch_up: str,
    overlap: str = "allow",
    previous_running: bool = False,
    on_time_s: float = ON_TIME_S,
    fire_limit: int = CATCH_UP_BATCH,
    count_limit: int = CATCH_UP_BATCH,
) -> TickPlan | None:
    """Decide about the ticks of one schedule due at ``now`` (after ``cursor``); None if none is due.

    Args:
        expr: The schedule's expression.
        cursor: Ticks at or before it are dealt with (``Schedule.cursor``).
        now: The leader's time.
        catch_up: ``none``, ``one`` or ``all`` (module docstring).
        overlap: ``allow`` or ``skip``.
        previous_running: The last task fired has not finished (overlap ``skip``).
        on_time_s: ``none``: how late the newest due tick may be and still fire.
        fire_limit: ``all``: most ticks fired by this plan (the rest is the next pass's).
        count_limit: Most older ticks counted as skipped.
    """
    first = expr.ticks(cursor, now, 1)
    if not first:
        return None
    if catch_up == "all" and overlap != "skip":
        ticks = expr.ticks(cursor, now, max(1, fire_limit))
        return TickPlan(tuple(ticks), 0, ticks[-1])
    newest = expr.latest(now)
    if newest is None or newest < first[0]:  # cannot happen for a sane calendar; be safe
        newest = first[0]
    older = len(expr.ticks(cursor, newest - 0.5, count_limit))  # ticks are whole seconds
    fire: float | None
    if catch_up == "all":
        fire = first[0]  # overlap skip: the oldest fires; those after it would overlap it
    elif catch_up == "one" or now - newest <= on_time_s:
        fire = newest
    else:
        fire = None
    if fire is not None and overlap == "skip" and previous_running:
        fire = None
    fired = () if fire is None else (fire,)
    return TickPlan(fired, older + 1 - len(fired), newest)


def tick_task(spec: Any, name: str, tick: float, *, now: float, task_id: str, seq: int) -> Task:
    """The record a tick of schedule ``name`` submits (queued now; ``expires_s`` counts from the tick)."""
    return Task(
        id=task_id,
        type=spec.type,
        payload=spec.payload,
        queue=spec.queue,
        priority=spec.priority,
        timeout_s=float(spec.timeout_s),
        retry=spec.retry,
        state=TaskState.QUEUED,
        seq=seq,
        created_at=now,
        updated_at=now,
        retention_s=float(spec.retention_s if spec.retention_s is not None else DEFAULT_RETENTION_S),
        requires=check_requires(spec.requires),
        expires_at=None if spec.expires_s is None else tick + spec.expires_s,
        schedule=name,
        tick=tick,
    )


# the loop ---------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Unit:
    """One schedule's part of a transaction: its cron key's compare and put, its tasks."""

    key: str
    new: Schedule
    value: bytes
    tasks: list[Task]
    compares: list[Compare]
    ops: list[Op]
    skipped: int = 0
    late_s: float = 0.0
    queues: set[str] = field(default_factory=set)

    def size(self) -> int:
        return transitions.Txn(self.compares, self.ops).size()


class CronFirer(LeaderLoop):
    """Fires the cron schedules' ticks while this scheduler leads (module docstring).

    Args:
        ctx: What the leader's parts share.
        on_time_s: Catch-up ``none``: how late the newest tick may be and still fire.
    """

    name = "cron"

    def __init__(self, ctx: LeaderContext, *, on_time_s: float = ON_TIME_S) -> None:
        super().__init__(ctx)
        self.on_time_s = on_time_s
        # All touched on the leader's event loop only (the watch's callback and run()).
        self._kvs: dict[str, KV] = {}  # cron key -> the newest version known (view or own write)
        self._schedules: dict[str, Schedule] = {}  # cron key -> decoded schedule
        self._due: dict[str, float] = {}  # cron key -> its next tick (absent: paused or never)
        self._heap: list[tuple[float, str]] = []  # (next tick, key); stale entries skipped
        self._dirty: set[str] = set()  # keys the watch changed since the last look
        self._broken: set[str] = set()  # keys whose ticks cannot be written: until they change
        self._reload = True  # read every schedule of the view again
        self._changed = asyncio.Event()
        self._registered: set[str] = set()  # queues whose registry key this leadership wrote
        self._solo = False  # the next pass sends one schedule per transaction
        # Counters over all leaderships (read by tests, logs).
        self.fired_total = 0
        self.skipped_total = 0
        self.late_max_s = 0.0
        ctx.mirror.subscribe((ctx.keys.crons,), self._on_change)

    def _ctx(self, **extra: Any) -> dict[str, Any]:
        return {"component": "scheduler", "scheduler": self.id, **extra}

    def _on_change(self, kv: KV, deleted: bool) -> None:
        self._dirty.add(kv.key)
        self._changed.set()

    def reset(self) -> None:
        """Forget what an earlier leadership saw."""
        self._kvs.clear()
        self._schedules.clear()
        self._due.clear()
        self._heap.clear()
        self._dirty.clear()
        self._broken.clear()
        self._registered.clear()
        self._reload = True
        self._solo = False

    def reloaded(self) -> None:
        """The view was read again: look at every schedule again."""
        self._reload = True
        self._changed.set()

    # what the view holds ----------------------------------------------------------------------
    def _refresh(self) -> None:
        """Take the changed schedules (or all of them) from the view."""
        held = self.mirror.view.plain[self.keys.crons]
        if self._reload:
            self._reload = False
            self._dirty.clear()
            for key in list(self._kvs):
                if key not in held:
                    self._forget(key)
            for key, kv in held.items():
                self._take(key, kv)
            return
        dirty, self._dirty = self._dirty, set()
        for key in dirty:
            found = held.get(key)
            if found is None:
                self._forget(key)
            else:
                self._take(key, found)

    def _forget(self, key: str) -> None:
        self._kvs.pop(key, None)
        self._schedules.pop(key, None)
        self._due.pop(key, None)
        self._broken.discard(key)

    def _take(self, key: str, kv: KV) -> None:
        """Use ``kv`` unless a newer version is known (our own write, before the watch brings it)."""
        known = self._kvs.get(key)
        if known is not None and known.mod_revision >= kv.mod_revision and key in self._schedules:
            if key not in self._due:
                self._plan_next(key, self._schedules[key])
            return
        self._kvs[key] = kv
        self._broken.discard(key)
        try:
            schedule = schedules.decode(self.keys, kv)
        except (CorruptRecord, ValueError) as exc:
            log.error("ignoring schedule: %s", exc, extra=self._ctx())
            self._schedules.pop(key, None)
            self._due.pop(key, None)
            return
        self._schedules[key] = schedule
        self._plan_next(key, schedule)

    def _plan_next(self, key: str, schedule: Schedule) -> None:
        due = None if key in self._broken else schedule.next_at()
        if due is None:
            self._due.pop(key, None)
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, key))

    def _next_due(self) -> float:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else float("inf")

    def _due_keys(self, now: float) -> list[str]:
        keys: list[str] = []
        while self._next_due() <= now:
            _, key = heapq.heappop(self._heap)
            self._due.pop(key, None)
            keys.append(key)
        return keys

    # the loop ----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Fire due ticks until cancelled (the leadership ended)."""
        backoff = ERROR_BACKOFF_S[0]
        while True:
            self._changed.clear()
            self._refresh()
            now = self.clock.now()
            due = self._due_keys(now)
            if not due:
                timeout = min(self._next_due() - now, BACKSTOP_S)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, timeout) + 0.001):
                        await self._changed.wait()
                continue
            try:
                await self._fire(due, now)
                backoff = ERROR_BACKOFF_S[0]
            except StoreError as exc:
                log.warning(
                    "cron: etcd failed (%s); looking again in %.1f s", exc, backoff, extra=self._ctx()
                )
                self._dirty.update(due)
                self._reload = True  # a write whose answer was lost may have landed: the view tells
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, ERROR_BACKOFF_S[1])
            await asyncio.sleep(0)  # a long catch-up never holds the loop

    async def _fire(self, due: list[str], now: float) -> None:
        units: list[_Unit] = []
        for key in due:
            schedule = self._schedules.get(key)
            kv = self._kvs.get(key)
            if schedule is None or kv is None:
                continue
            unit = await self._unit(key, kv, schedule, now)
            await asyncio.sleep(0)  # counting a long outage's ticks costs CPU: one schedule at a time
            if unit is None:
                self._plan_next(key, schedule)  # nothing due after all (or broken: left out)
                continue
            units.append(unit)
        for group in self._pack(units):
            await self._send(group)

    async def _previous_running(self, schedule: Schedule) -> bool:
        """Whether the last task fired by ``schedule`` has not finished (1 read)."""
        if schedule.last_task is None:
            return False
        kv, _ = await self.store.get(self.keys.task(schedule.last_task))
        if kv is None:
            return False  # gone: finished and expired (or purged)
        try:
            return not codec.decode_task(kv.key, kv.value).state.terminal
        except CorruptRecord:
            return False

    async def _unit(self, key: str, kv: KV, schedule: Schedule, now: float) -> _Unit | None:
        """The transaction part of ``schedule``'s due ticks (None: nothing to do after all)."""
        per_task = 2 * (len(kv.value) + 2048) + 512
        fire_limit = max(
            1, min(MAX_TICKS_PER_TXN, (MAX_TXN_BYTES - len(kv.value) - _OVERHEAD_BYTES) // per_task)
        )
        args: dict[str, Any] = {
            "catch_up": schedule.catch_up,
            "overlap": schedule.overlap,
            "on_time_s": self.on_time_s,
            "fire_limit": fire_limit,
        }
        plan = plan_ticks(schedule.expr, schedule.cursor, now, **args)
        if plan is None:
            return None
        if plan.fire and schedule.overlap == "skip" and await self._previous_running(schedule):
            plan = plan_ticks(schedule.expr, schedule.cursor, now, previous_running=True, **args)
            if plan is None:
                return None
        while True:
            unit = self._build(key, kv, schedule, plan, now)
            if unit is None or unit.size() <= MAX_TXN_BYTES - _OVERHEAD_BYTES or len(plan.fire) <= 1:
                return unit
            # fewer ticks this time (large records): the rest is the next pass's
            fire = plan.fire[: len(plan.fire) // 2]
            plan = TickPlan(fire, 0, fire[-1])

    def _build(self, key: str, kv: KV, schedule: Schedule, plan: TickPlan, now: float) -> _Unit | None:
        tasks: list[Task] = []
        compares: list[Compare] = [Compare.unchanged(kv)]
        task_ops: list[Op] = []
        for tick in plan.fire:
            task = tick_task(
                schedule.task,
                schedule.name,
                tick,
                now=now,
                task_id=self._ids.task_id(),
                seq=self._ids.sequence(),
            )
            try:
                data = codec.encode_for_write(task)
            except PayloadTooLarge as exc:
                log.error(
                    "schedule %s cannot fire until it changes: %s", schedule.name, exc, extra=self._ctx()
                )
                self._broken.add(key)
                return None
            txn = transitions.enqueue(self.keys, task, data)
            compares += txn.compares
            task_ops += txn.ops
            tasks.append(task)
        new = replace(
            schedule,
            last_tick=plan.last,
            last_task=tasks[-1].id if tasks else schedule.last_task,
            fired=schedule.fired + len(tasks),
            skipped=schedule.skipped + plan.skipped,
        )
        value = schedules.encode(new)
        late = max((now - t for t in plan.fire), default=0.0)
        ops: list[Op] = [Put(key, value), *task_ops]
        return _Unit(key, new, value, tasks, compares, ops, plan.skipped, late, {t.queue for t in tasks})

    def _pack(self, units: list[_Unit]) -> list[list[_Unit]]:
        """Units in transactions: within 128 compares, 128 ops and ``MAX_TXN_BYTES`` (one each when solo)."""
        groups: list[list[_Unit]] = []
        current: list[_Unit] = []
        compares = ops = size = 0
        limit_ops = MAX_TXN_OPS - 8  # room for the fence and the queue registry puts
        for unit in units:
            c, o, s = len(unit.compares), len(unit.ops) + len(unit.queues), unit.size()
            if current and (
                self._solo
                or compares + c > limit_ops
                or ops + o > limit_ops
                or size + s > MAX_TXN_BYTES - _OVERHEAD_BYTES
            ):
                groups.append(current)
                current, compares, ops, size = [], 0, 0, 0
            current.append(unit)
            compares, ops, size = compares + c, ops + o, size + s
        if current:
            groups.append(current)
        self._solo = False
        return groups

    async def _send(self, group: list[_Unit]) -> None:
        compares: list[Compare] = [self.election.fence()]
        ops: list[Op] = []
        queues: set[str] = set()
        for unit in group:
            compares += unit.compares
            ops += unit.ops
            queues |= unit.queues
        new_queues = sorted(queues - self._registered)
        if len(ops) + len(new_queues) <= MAX_TXN_OPS:
            ops += [Put(self.keys.known_queue(q), b"") for q in new_queues]
        else:
            new_queues = []
        try:
            result = await self.store.txn(compares, ops)
        except StoreRequestTooLarge as exc:
            # Never sent: a schedule whose records outgrew a transaction. Skip it until it changes.
            names = ", ".join(u.new.name for u in group)
            log.error("cron: transaction of %s refused before sending (%s)", names, exc, extra=self._ctx())
            if len(group) > 1:
                self._solo = True
            else:
                self._broken.add(group[0].key)
            self._reload = True
            return
        if not result.succeeded:
            # Someone changed a schedule (or we no longer lead): look again once the view has caught up.
            await self.mirror.wait_revision(result.revision)
            self._dirty.update(u.key for u in group)
            self._reload = True
            self._solo = len(group) > 1
            if len(group) == 1:
                await asyncio.sleep(ERROR_BACKOFF_S[0])  # not a spin if the fence failed
            return
        self._registered.update(new_queues)
        for unit in group:
            old = self._kvs.get(unit.key)
            kv = KV(
                unit.key,
                unit.value,
                old.create_revision if old else result.revision,
                result.revision,
                (old.version + 1) if old else 1,
            )
            self._kvs[unit.key] = kv
            self._schedules[unit.key] = unit.new
            self._plan_next(unit.key, unit.new)
            self._after(unit)

    def _after(self, unit: _Unit) -> None:
        """Account for a unit that landed: counters, events, logs."""
        new = unit.new
        skipped = unit.skipped
        self.fired_total += len(unit.tasks)
        self.skipped_total += skipped
        self.late_max_s = max(self.late_max_s, unit.late_s)
        now = self.clock.now()
        for task in unit.tasks:
            log.debug(
                "schedule %s fired tick %.0f as task %s (%.3f s late)",
                new.name,
                task.tick,
                task.id,
                task.created_at - (task.tick or 0.0),
                extra=self._ctx(task_id=task.id),
            )
            if self.hooks:
                self.hooks.emit(Submitted(at=now, component="scheduler", source=self.id, task=task))
        if skipped:
            log.info(
                "schedule %s: %d tick(s) skipped (catch-up %s, overlap %s), up to %.0f",
                new.name,
                skipped,
                new.catch_up,
                new.overlap,
                new.last_tick or 0.0,
                extra=self._ctx(),
            )
