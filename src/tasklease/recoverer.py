"""The leader's repairs: lost and overdue attempts, due retries, tasks that cannot go on.

Owns, while this scheduler leads:

- :class:`Recoverer`: the timer loop (sleeps until the next deadline, due
  retry, stale worker or unroutable group); ends lost attempts (assignment gone,
  or a worker that stopped heartbeating, confirmed by a read: see
  :meth:`Recoverer.confirm_stale`) and overdue ones;
- :class:`Promoter`: queues again the pending tasks whose backoff has passed;
- :class:`Failer`: fails the queued tasks that cannot go on, recording why:
  one that no transaction can carry (unassignable: called by the assigner too)
  and, with ``unroutable_after_s``, those no live worker may run; it logs
  when a (queue, route) group starts and stops waiting for an eligible worker.

Each repair is one fenced transaction built in transitions.py; what a repair
reads (the running index) is in recovery.py. Events (events.py): ``Lost`` or
``TimedOut`` per repaired attempt, ``Promoted`` per promoted task, ``Failed``
per task failed here, ``RecoveryRan`` per pass that repaired something.

May import: codec, election, errors, events, ids, keys, mirror, models,
recovery, retention, store, transitions. Logs as ``tasklease.scheduler``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tasklease import codec, transitions
from tasklease.errors import CorruptRecord, PayloadTooLarge, StoreError, StoreRequestTooLarge
from tasklease.events import Failed, Hooks, LoggingHook, Promoted, RecoveryRan, attempt_ended
from tasklease.keys import Keyspace
from tasklease.leader import LeaderContext, LeaderPart
from tasklease.mirror import STALE_MARGIN_S, Group
from tasklease.models import Outcome, Task, TaskState
from tasklease.recovery import RunningEntry, running_view
from tasklease.store import KV, Get, KVStore

log = logging.getLogger("tasklease.scheduler")

# Records read per transaction by recovery and promotion (each at most 1.3 MB:
# the response stays far below the channel's receive limit).
READ_GROUP = 16
# Records read per transaction by promotion and expiry: at most READ_MAX, and about
# READ_BYTES by the sizes their index keys name (delayed keys carry it: ``n``).
READ_MAX = 64
READ_BYTES = 4 * 1024 * 1024
# Delayed keys taken per pass of the timer loop (it comes back at once while more are due).
PROMOTE_PASS = 1024
# Groups of a promotion pass in flight at once (each: one read, then its transactions).
GROUPS_IN_FLIGHT = 3
# Records a promotion group reads: two full transactions of promotions (42 each: 3 ops a task).
PROMOTE_READ = 84
# Deadline of the leader's fenced writes (safe to send again).
WRITE_TIMEOUT_S = 2.0
# Backoff of the assignment and timer loops after a store error.
ERROR_BACKOFF_S = (0.2, 2.0)
# Longest sleep of the timer loop: then it re-examines the mirror (and wakes the assigner).
BACKSTOP_S = 5.0
# Shortest sleep of the timer loops: a due time that just passed is taken within it (a
# delayed task's lateness), and a loop with nothing it can finish does not spin.
MIN_SLEEP_S = 0.002


async def record_kvs(store: KVStore, keys: Keyspace, task_ids: list[str]) -> list[KV | None]:
    """The records of ``task_ids`` (None for a missing one), in one read transaction."""
    result = await store.txn([], [Get(keys.task(t)) for t in task_ids])
    return [kvs[0] if kvs else None for kvs in result.reads]


def _ran(hooks: Hooks, now: Callable[[], float], source: str, kind: str, count: int) -> None:
    """Emit ``RecoveryRan`` for a pass that repaired ``count`` tasks (none if 0)."""
    if count and hooks:
        hooks.emit(RecoveryRan(at=now(), component="scheduler", source=source, kind=kind, count=count))


class Failer(LeaderPart):
    """Fails queued tasks that cannot go on (unassignable, unroutable), saying why.

    Args:
        ctx: What the leader's parts share (store, keys, election, mirror, hooks, retention, ids).
        unroutable_after_s: Fail unroutable tasks after this long (None: never).
    """

    def __init__(self, ctx: LeaderContext, *, unroutable_after_s: float | None) -> None:
        super().__init__(ctx)
        self.unroutable_after_s = unroutable_after_s
        # (queue, route) -> monotonic time since when no live worker may take its tasks;
        # touched by the assigner's and the timer's passes (one event loop), reset per leadership
        self.unroutable_since: dict[Group, float] = {}

    def reset(self) -> None:
        """Forget what an earlier leadership saw."""
        self.unroutable_since = {}

    def _ctx(self, **extra: Any) -> dict[str, Any]:
        return {"component": "scheduler", "scheduler": self.id, **extra}

    async def fail_unassignable(self, queue_kv: KV, record_kv: KV | None, reason: str) -> None:
        """Fail a queued task that no transaction can carry, recording why (never a loop).

        ``record_kv``: its record, or None to read it (a queue key's value
        leaves the payload out, and the failed record keeps it).
        """
        task_id = self.keys.parse_queue_entry(queue_kv.key).task_id
        try:
            if record_kv is None or codec.decode_task(record_kv.key, record_kv.value).payload_omitted:
                record_kv, _ = await self.store.get(self.keys.task(task_id))
            if record_kv is None:
                raise CorruptRecord(self.keys.task(task_id), "a queue key without its record")
            task = codec.decode_task(record_kv.key, record_kv.value)
        except CorruptRecord as exc:
            log.error("skipping queued task: %s", exc, extra=self._ctx(task_id=task_id))
            self.mirror.view.skipped.add(queue_kv.key)
            return
        now = self.mirror.clock.now()
        lease = await self.retention.lease_for(task.retention_s)
        txn, failed = transitions.fail_waiting(
            self.keys, self.election.fence(), queue_kv, record_kv, task, reason, now, lease
        )
        result = await self.store.txn(txn.compares, txn.ops)
        # Not picked again while the watch catches up (it deletes the key, or a new
        # version of it clears the mark).
        self.mirror.view.skipped.add(queue_kv.key)
        if result.succeeded:
            self.emit_failed(failed, now)

    def emit_failed(self, failed: Task, now: float) -> None:
        """Emit ``Failed`` for the failed record written (LoggingHook: "task failed: ...")."""
        if self.hooks:
            self.hooks.emit(Failed(at=now, component="scheduler", source=self.id, task=failed))

    def check_routes(self) -> None:
        """Log once per (queue, route) when its tasks start and stop waiting for an eligible worker."""
        view = self.mirror.view
        mono = view.clock.monotonic()
        current = view.unroutable()
        for group, count in current.items():
            if group in self.unroutable_since:
                continue
            self.unroutable_since[group] = mono
            route = view.route(group[1])
            live = view.live_nodes()
            types = sorted(set().union(*(n.types for n in live if group[0] in n.queues)))
            log.warning(
                "%d queued task(s) of %s in queue %s wait: no live worker may run them "
                "(workers serving the queue run: %s)%s",
                count,
                route.describe() if route else "?",
                group[0],
                ", ".join(types[:20]) or "none",
                f"; they fail after {self.unroutable_after_s:g} s" if self.unroutable_after_s else "",
                extra=self._ctx(queue=group[0]),
            )
        for group in [g for g in self.unroutable_since if g not in current]:
            del self.unroutable_since[group]
            if group in view.queue_keys:
                route = view.route(group[1])
                log.info(
                    "tasks of %s in queue %s have an eligible worker again",
                    route.describe() if route else "?",
                    group[0],
                    extra=self._ctx(queue=group[0]),
                )

    def next_unroutable(self) -> float:
        """Monotonic time when the next unroutable group is due to fail (inf if never)."""
        after = self.unroutable_after_s
        if after is None or not self.unroutable_since:
            return float("inf")
        return min(self.unroutable_since.values()) + after

    async def fail_unroutable(self) -> None:
        """Fail the tasks of groups that have had no eligible worker for ``unroutable_after_s``."""
        after = self.unroutable_after_s
        if after is None:
            return
        self.check_routes()
        view = self.mirror.view
        mono = view.clock.monotonic()
        for group, since in list(self.unroutable_since.items()):
            if mono - since < after:
                continue
            keys_list = view.queue_keys.get(group)
            if not keys_list:
                continue
            route = view.route(group[1])
            reason = (
                f"no live worker may run {route.describe() if route else 'it'} in queue {group[0]} "
                f"for {mono - since:.0f} s (--unroutable-after {after:g})"
            )
            # bounded per pass: the timer comes back at once while some are left
            batch = [k for k in itertools.islice(keys_list, READ_GROUP * 4) if k not in view.skipped]
            for start in range(0, len(batch), READ_GROUP):
                chunk = batch[start : start + READ_GROUP]
                result = await self.store.txn([], [Get(k) for k in chunk])
                for read in result.reads:
                    if read:
                        await self.fail_unassignable(read[0], None, reason)
            if batch:
                self.mirror.timers_changed.set()


class Recoverer(LeaderPart):
    """Ends lost and overdue attempts; its timer loop also runs promotions and unroutable failures.

    Args:
        ctx: What the leader's parts share (store, keys, election, mirror, hooks, retention, ids).
        failer: Fails what cannot go on (its unroutable pass runs in the timer loop).
        promoter: Promotes due retries (in the timer loop).
        deadline_grace_s: How long past its deadline an attempt is ended.
        rng: Randomness of retry backoffs.
    """

    def __init__(
        self,
        ctx: LeaderContext,
        *,
        failer: Failer,
        promoter: Promoter,
        deadline_grace_s: float,
        rng: random.Random,
    ) -> None:
        super().__init__(ctx)
        self.failer = failer
        self.promoter = promoter
        self.grace_s = deadline_grace_s
        self._rng = rng
        # worker -> (node record mod revision, monotonic time) of the first read that found
        # it unchanged although the mirror saw no heartbeat for its TTL (see confirm_stale);
        # touched by the assigner's passes only, reset per leadership
        self._silent: dict[str, tuple[int, float]] = {}

    def reset(self) -> None:
        """Forget what an earlier leadership saw."""
        self._silent = {}

    def _ctx(self, **extra: Any) -> dict[str, Any]:
        return {"component": "scheduler", "scheduler": self.id, **extra}

    async def run(self) -> None:
        """Deadlines (F3), due delayed tasks and retries (W2, E3): sleep until the next one. Runs until cancelled."""
        backoff = ERROR_BACKOFF_S[0]
        while True:
            now = self.clock.now()
            try:
                await self.end_overdue(now)
                more_due = await self.promoter.promote_due(now)
                await self.failer.fail_unroutable()
                if more_due:  # a full pass: take the next one at once (the others ran)
                    await asyncio.sleep(0)
                    continue
                backoff = ERROR_BACKOFF_S[0]
                view = self.mirror.view
                mono = self.clock.monotonic()
                delay = min(
                    min(view.next_overdue(now, self.grace_s), view.next_due()) - self.clock.now(),
                    view.next_stale() - mono,
                    self.failer.next_unroutable() - mono,
                )
            except StoreError as exc:
                log.warning("timers paused: %s; retrying in %.1f s", exc, backoff, extra=self._ctx())
                delay = backoff
                backoff = min(backoff * 2, ERROR_BACKOFF_S[1])
            # Sleep until the earliest deadline or backoff; a new running or
            # delayed key (which may be due sooner) wakes us early.
            self.mirror.timers_changed.clear()
            try:
                async with asyncio.timeout(max(MIN_SLEEP_S, min(delay, BACKSTOP_S))):
                    await self.mirror.timers_changed.wait()
            except TimeoutError:
                # Backstop: re-examine the mirror when nothing happened for a while
                # (no etcd request: the assignment loop works from the mirror).
                self.mirror.wake.set()

    # lost attempts ---------------------------------------------------------------------------
    async def recover_lost(self) -> None:
        """End the attempts whose assignment is gone, or whose worker is confirmed silent."""
        lost = self.mirror.view.lost_entries()
        stale = self.mirror.view.stale_entries()
        if stale:
            confirmed = {w for w in {e.worker for e in stale} if await self.confirm_stale(w)}
            lost += [e for e in stale if e.worker in confirmed]
        repaired = 0
        for start in range(0, len(lost), READ_GROUP):
            repaired += await self._repair(lost[start : start + READ_GROUP], Outcome.LOST)
        _ran(self.hooks, self.clock.now, self.id, "lost", repaired)

    async def confirm_stale(self, worker: str) -> bool:
        """Whether a worker the mirror has not seen heartbeat is really silent.

        The mirror's clock is this process's: after a pause of this process or a
        lagging watch every worker looks silent. So before ending anything, read
        the node record: if it changed since the mirror's copy, the mirror lags
        (not stale). It is stale only if it stays unchanged for another lease TTL
        plus the margin, measured from a read that etcd answered.
        """
        node = self.mirror.view.nodes.get(worker)
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
            self.mirror.wake_later(node.ttl + STALE_MARGIN_S - (mono - since[1]) + 0.05)
            return False
        return True

    # overdue attempts ------------------------------------------------------------------------
    async def end_overdue(self, now: float) -> None:
        """End the attempts past their deadline plus the grace (see the mirror's ``overdue``)."""
        overdue = self.mirror.view.overdue(now, self.grace_s)
        repaired = 0
        for start in range(0, len(overdue), READ_GROUP):
            repaired += await self._repair(overdue[start : start + READ_GROUP], Outcome.TIMEOUT)
        _ran(self.hooks, self.clock.now, self.id, "overdue", repaired)

    async def _repair(self, entries: list[RunningEntry], outcome: Outcome) -> int:
        """End each entry's attempt with ``outcome``; returns how many were ended."""
        records = await record_kvs(self.store, self.keys, [e.task_id for e in entries])
        repaired = 0
        for entry, record_kv in zip(entries, records, strict=True):
            extra = self._ctx(task_id=entry.task_id, attempt=entry.attempt, worker=entry.worker)
            try:
                repaired += await self._repair_one(entry, record_kv, outcome, extra)
            except StoreRequestTooLarge as exc:
                # A record no transaction can carry (planted or from an older version):
                # leave it, but never let it stop the others.
                log.error("cannot repair: %s", exc, extra=extra)
        return repaired

    async def _repair_one(
        self, entry: RunningEntry, record_kv: KV | None, outcome: Outcome, extra: dict[str, Any]
    ) -> bool:
        task = None
        if record_kv is None:
            log.error("running task has no record (deleted by hand?): dropping its index entry", extra=extra)
        else:
            try:
                task = codec.decode_task(record_kv.key, record_kv.value)
            except CorruptRecord as exc:
                log.error("cannot repair (%s): dropping its index entry", exc, extra=extra)
        # The attempt as readers see it: the record as queued plus the entry's attempt.
        view = running_view(record_kv, task, entry) if task is not None and record_kv is not None else None
        if task is None or record_kv is None or view is None:
            # A stale or unrepairable index entry: drop it (and its assignment,
            # which tells a worker still running it to stop), so that it is not
            # examined again and again.
            drop = transitions.drop_running_entry(
                self.keys,
                self.election.fence(),
                entry.task_id,
                entry.worker,
                entry.mod_revision,
                # its attempt's assignment too (the compare on the entry makes it that
                # attempt's): a worker still running it stops, and its slot is free
                with_assignment=True,
            )
            await self.store.txn(drop.compares, drop.ops)
            return False
        task = view
        mirror = self.mirror.view
        assign_key = self.keys.assignment(entry.worker, entry.task_id)
        if outcome is Outcome.LOST and assign_key in mirror.assignment_rev:
            # its worker stopped heartbeating although its lease lives on: end the
            # attempt and delete the assignment (tells the worker, if it lives, to stop)
            node = mirror.nodes.get(entry.worker)
            silent = self.clock.monotonic() - node.seen if node else 0.0
            error = (
                f"worker {entry.worker} stopped heartbeating ({silent:.0f} s without one) during the attempt"
            )
            assign_rev = mirror.assignment_rev[assign_key]
        elif outcome is Outcome.LOST:
            error = f"worker {entry.worker} vanished (lease ended) during the attempt"
            assign_rev = 0
        else:
            error = f"no report from worker {entry.worker} within the timeout of {task.timeout_s:g} s"
            assign_rev = mirror.assignment_rev.get(assign_key, 0)
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
        if not result.succeeded:
            return False
        if self.hooks:  # LoggingHook: "attempt {outcome}: task {state}"
            event = attempt_ended(outcome, new)
            self.hooks.emit(
                event(
                    at=now,
                    component="scheduler",
                    source=self.id,
                    task=new,
                    attempt=entry.attempt,
                    worker=entry.worker,
                    outcome=outcome,
                )
            )
        return True


class Promoter(LeaderPart):
    """Queues the pending tasks whose time has come: delayed submits (W2) and retry backoffs (E3).

    Each pass of the timer loop takes the due delayed keys from the mirror's
    heap (at most :data:`PROMOTE_PASS`; the loop comes back at once while more
    are due), reads their records in groups bounded by count and bytes, and
    writes the promotions several per transaction (``transitions.pack``; on a
    failed compare, each alone). What it could not finish (a store error, a
    lost race) is given back to the heap and tried again once the watch has
    caught up.

    Args:
        ctx: What the leader's parts share (store, keys, election, mirror, hooks, retention, ids).
        failer: Emits ``Failed`` for a task too large to queue again.
    """

    def __init__(self, ctx: LeaderContext, *, failer: Failer) -> None:
        super().__init__(ctx)
        self.failer = failer

    def _ctx(self, **extra: Any) -> dict[str, Any]:
        return {"component": "scheduler", "scheduler": self.id, **extra}

    async def promote_due(self, now: float) -> bool:
        """Queue the pending tasks due at ``now`` and those falling due meanwhile.

        A pass takes the due keys a group at a time (at most
        :data:`PROMOTE_READ`: one read, then its transactions) and runs up to
        :data:`GROUPS_IN_FLIGHT` groups side by side, so that reads, writes and
        the work between them overlap; whenever a group's slot frees, it takes
        what is due by then, so a task falling due while others are written
        waits for a slot, not for the whole pass. Each task's new sequence is
        drawn when it is taken, in due order: tasks due earlier are queued
        ahead, whichever group lands first.

        Returns:
            Whether more may be due (the pass took :data:`PROMOTE_PASS` keys).
        """
        view = self.mirror.view
        tally = _Tally(events=_wants_promoted(self.hooks))
        slots = asyncio.Semaphore(GROUPS_IN_FLIGHT)
        groups: list[asyncio.Task[None]] = []
        taken: list[KV] = []

        async def group_pass(group: list[KV], seqs: list[int]) -> None:
            try:
                ids = [self.keys.parse_delayed(kv.key).task_id for kv in group]
                records = await record_kvs(self.store, self.keys, ids)
                parts = [
                    await self._part(delayed_kv, record_kv, now, seq)
                    for delayed_kv, record_kv, seq in zip(group, records, seqs, strict=True)
                ]
                await self._commit(parts, now, tally)
            finally:
                slots.release()

        try:
            while len(taken) < PROMOTE_PASS:
                await slots.acquire()
                now = max(now, self.clock.now())
                due = view.due(now, min(PROMOTE_READ, PROMOTE_PASS - len(taken)))
                if not due:
                    slots.release()
                    busy = [g for g in groups if not g.done()]
                    if not busy:
                        break
                    # more may fall due while the last groups are written: take them then
                    wait_s = max(MIN_SLEEP_S, view.next_due() - self.clock.now())
                    await asyncio.wait(busy, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                    continue
                due, *rest = read_groups(due, delayed_record_bytes, PROMOTE_READ)  # bounded by bytes too
                view.delayed_due.give_back(kv for group in rest for kv in group)
                taken += due
                seqs = [self._ids.sequence() for _ in due]
                groups.append(asyncio.create_task(group_pass(due, seqs)))
            errors = [e for e in await asyncio.gather(*groups, return_exceptions=True) if e is not None]
            if errors:
                raise errors[0]
        except BaseException:
            for group_task in groups:
                group_task.cancel()
            await asyncio.gather(*groups, return_exceptions=True)
            raise
        finally:
            view.delayed_due.give_back(kv for kv in taken if kv.key not in tally.done)
        if tally.lost_race:
            await self.mirror.wait_revision(tally.lost_race)
        _ran(self.hooks, self.clock.now, self.id, "promoted", tally.promoted)
        return len(taken) >= PROMOTE_PASS

    async def _commit(self, parts: list[_Promotion], now: float, tally: _Tally) -> None:
        """Write one group's promotions (several per transaction) and account for each."""
        outcome = await commit_parts(self.store, [p.txn for p in parts])
        for part, ok in zip(parts, outcome.succeeded, strict=True):
            if ok is False:
                tally.lost_race = max(tally.lost_race, outcome.revision)
                continue
            tally.done.add(part.delayed_kv.key)  # written, or refused for its size (logged; never retried)
            if not ok or part.written is None:
                continue
            if part.queued:
                tally.promoted += 1
                if tally.events and (task := part.task()) is not None:
                    self.hooks.emit(Promoted(at=now, component="scheduler", source=self.id, task=task))
            elif (task := part.task()) is not None:
                self.failer.emit_failed(task, now)

    async def _part(self, delayed_kv: KV, record_kv: KV | None, now: float, seq: int) -> _Promotion:
        """One delayed key's transaction (a promotion, a failure or a drop)."""
        fence = self.election.fence()
        if record_kv is not None:
            fast = transitions.promote_record(self.keys, fence, delayed_kv, record_kv, now, seq)
            if fast is not None:
                return _Promotion(delayed_kv, fast[0], fast[1], queued=True)
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
            return _Promotion(delayed_kv, transitions.drop_delayed(fence, delayed_kv))
        try:
            txn, queued = transitions.promote(self.keys, fence, delayed_kv, record_kv, task, now, seq)
        except PayloadTooLarge as exc:
            lease = await self.retention.lease_for(task.retention_s)
            txn, failed = transitions.fail_waiting(
                self.keys, fence, delayed_kv, record_kv, task, f"cannot be queued again: {exc}", now, lease
            )
            return _Promotion(delayed_kv, txn, failed)
        return _Promotion(delayed_kv, txn, queued, queued=True)


def _wants_promoted(hooks: Hooks) -> bool:
    """Whether some hook would see a ``Promoted`` event (each costs decoding the record written).

    Not when the only hook is the logging hook and its line for ``Promoted``
    is below the scheduler logger's level (the default): it would drop the
    event. Any other hook (metrics, tracing, a user's) gets every event.
    """
    if not hooks:
        return False
    if any(not isinstance(h, LoggingHook) for h in hooks.hooks):
        return True
    level, _ = LoggingHook.LINES[("scheduler", Promoted)]
    return log.isEnabledFor(level)


@dataclass(slots=True)
class _Tally:
    """What one promotion pass did (its commits run side by side; one event loop)."""

    events: bool  # emit Promoted per task (_wants_promoted)
    done: set[str] = field(default_factory=set)  # delayed keys settled
    promoted: int = 0
    lost_race: int = 0  # the highest revision at which a compare failed (0: none)


@dataclass(frozen=True, slots=True)
class _Promotion:
    """One delayed key's transaction and the record it writes (None: the key is only dropped)."""

    delayed_kv: KV
    txn: transitions.Txn
    written: Task | dict[str, Any] | None = None  # a dict from the fast path (decoded for events only)
    queued: bool = False

    def task(self) -> Task | None:
        """The record written, as a Task (for an event)."""
        if isinstance(self.written, dict):
            try:
                return codec.task_from_dict(self.written)
            except (KeyError, TypeError, ValueError):
                return None
        return self.written


def delayed_record_bytes(kv: KV) -> int:
    """The record size a delayed key names (``n``); the most a pending record may be if it names none."""
    try:
        size = codec.decode_obj(kv.key, kv.value).get("n")
    except CorruptRecord:
        size = None  # an older delayed key holds the bare id
    if isinstance(size, int) and not isinstance(size, bool) and 0 < size <= codec.MAX_QUEUED_RECORD_BYTES:
        return size
    return codec.MAX_QUEUED_RECORD_BYTES


def read_groups(kvs: list[KV], size_of: Callable[[KV], int], most: int = READ_MAX) -> list[list[KV]]:
    """Cut ``kvs`` into groups whose records are read by one transaction each.

    At most ``most`` records (:data:`READ_MAX`, or a little more where that
    fills whole write transactions) and about :data:`READ_BYTES` (by
    ``size_of``, the record size each index key names) per group; a group
    always has at least one.
    """
    groups: list[list[KV]] = []
    current: list[KV] = []
    size = 0
    for kv in kvs:
        n = size_of(kv) + 256
        if current and (len(current) >= most or size + n > READ_BYTES):
            groups.append(current)
            current, size = [], 0
        current.append(kv)
        size += n
    if current:
        groups.append(current)
    return groups


@dataclass(frozen=True, slots=True)
class Committed:
    """What :func:`commit_parts` did.

    Attributes:
        succeeded: Per part: True written, False a compare failed, None refused
            for its size (it fits no transaction; logged).
        revision: The highest revision etcd answered with (to wait for the watch after a lost race).
    """

    succeeded: list[bool | None]
    revision: int


async def commit_parts(store: KVStore, parts: list[transitions.Txn]) -> Committed:
    """Write independent one-task transactions, several per etcd transaction (``transitions.pack``).

    A group whose compares all hold is written at once; one where some
    compare fails (a race with a client or a worker) is sent again part by
    part, so each part gets its own answer. Each is fenced by the leadership,
    so sending one again is safe.

    Raises:
        StoreError: etcd failed (parts not answered yet are unknown: the caller retries them).
    """
    succeeded: list[bool | None] = [False] * len(parts)
    revision = 0
    for txn, indexes in transitions.pack(parts):
        if len(indexes) > 1:
            result = await store.txn(txn.compares, txn.ops, timeout_s=WRITE_TIMEOUT_S)
            revision = max(revision, result.revision)
            if result.succeeded:
                for i in indexes:
                    succeeded[i] = True
                continue
        for i in indexes:
            part = parts[i]
            try:
                result = await store.txn(part.compares, part.ops, timeout_s=WRITE_TIMEOUT_S)
            except StoreRequestTooLarge as exc:
                log.error("cannot write a repair of the leader: %s", exc)
                succeeded[i] = None
                continue
            revision = max(revision, result.revision)
            succeeded[i] = result.succeeded
    return Committed(succeeded, revision)
