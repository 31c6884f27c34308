"""The leader's expiry of tasks not started in time (W2): :class:`Expirer`.

A task submitted with an expiry (``expires_s`` / ``expires_at``) gets the key
``expiring/{due_us}/{id}`` in its submit transaction (``transitions.enqueue``).
While this scheduler leads, the :class:`Expirer` sleeps until the earliest such
key is due (a heap over ``ClusterView.plain[keys.expiring]``, fed by
``Mirror.subscribe``: no polling, flat in the number of keys), then reads the
due tasks' records, in groups bounded by count and bytes, and for each:

- still waiting, pending or queued and never started: one fenced transaction
  cancels it with the reason (``expired: not started by {time}Z``) under its
  retention lease, deletes its index key (queue, delayed or deps key) and its
  expiring key, and writes its finished-index entry (``transitions.expire``);
- started (running, finished, or waiting for a retry after an attempt),
  vanished or unreadable: the expiring key alone is deleted
  (``transitions.drop_expiring``).

Both are guarded by the leadership fence, the record and the expiring key
being as read, and a queued task by its queue key: a task assigned meanwhile
is not discarded (the assigner's transaction deleted its queue key; the
record stays as queued, and the running entry the mirror holds tells it
started), and one expired is never assigned (the expiry deleted its queue
key; the assigner's compares fail). Several go in
one transaction (``recoverer.commit_parts``; on a failed compare each alone).
The assigner also passes over a queue head whose expiry has passed (it leaves
it for this loop).

May import: codec, errors, events, keys, leader, mirror, models, recoverer,
store, transitions. Logs as ``tasklease.scheduler``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tasklease import codec, transitions
from tasklease.errors import CorruptRecord, StoreError
from tasklease.events import Cancelled
from tasklease.leader import LeaderContext, LeaderLoop
from tasklease.mirror import DueHeap
from tasklease.models import Task
from tasklease.recoverer import (
    BACKSTOP_S,
    ERROR_BACKOFF_S,
    MIN_SLEEP_S,
    commit_parts,
    read_groups,
    record_kvs,
)
from tasklease.store import KV

log = logging.getLogger("tasklease.scheduler")

# Expiring keys taken per pass (the loop comes back at once while more are due).
EXPIRE_PASS = 1024


def expiring_record_bytes(kv: KV) -> int:
    """The record size an expiring key names (``n``, at submit), else a queued record's most.

    A hint for grouping reads: a finished record may have grown since (its
    result), but a group is also bounded by count (``recoverer.READ_MAX``), which
    keeps a read of the largest records within the channel's receive limit.
    """
    try:
        size = codec.decode_obj(kv.key, kv.value).get("n")
    except CorruptRecord:
        size = None
    if isinstance(size, int) and not isinstance(size, bool) and 0 < size <= codec.MAX_QUEUED_RECORD_BYTES:
        return size
    return codec.MAX_QUEUED_RECORD_BYTES


class Expirer(LeaderLoop):
    """Discards tasks not started by their expiry, recording why; drops expiring keys of the others.

    Args:
        ctx: What the leader's parts share (store, keys, election, mirror, hooks, retention).
    """

    name = "expiry"

    def __init__(self, ctx: LeaderContext) -> None:
        super().__init__(ctx)
        # The expiring keys by due time; rebuilt from the view at each leadership and
        # reload; fed by the watch (subscribe). Touched by this loop and the watch
        # callback (one event loop).
        self.heap: DueHeap | None = None
        # Set by the watch when an expiring key appears (it may be due sooner).
        self.changed = asyncio.Event()
        self.expired_total = 0  # tasks this scheduler expired (all leaderships)
        self.mirror.subscribe((self.keys.expiring,), self._on_change)

    def _ctx(self, **extra: Any) -> dict[str, Any]:
        return {"component": "scheduler", "scheduler": self.id, **extra}

    def reset(self) -> None:
        """Forget the heap of an earlier leadership (rebuilt when :meth:`run` starts)."""
        self.heap = None

    def reloaded(self) -> None:
        """The view was read again: rebuild the heap from it."""
        self._build()

    def _build(self) -> None:
        live = self.mirror.view.plain[self.keys.expiring]
        heap = DueHeap(live, lambda key: self.keys.parse_expiring(key).due_us)
        for key in live:
            heap.push(key)
        self.heap = heap
        self.changed.set()

    def _on_change(self, kv: KV, deleted: bool) -> None:
        if not deleted and self.heap is not None:
            self.heap.push(kv.key)
            self.changed.set()

    async def run(self) -> None:
        """Sleep until the earliest expiry, discard what is due, again. Runs until cancelled."""
        self._build()
        backoff = ERROR_BACKOFF_S[0]
        while True:
            try:
                more = await self.expire_due(self.clock.now())
                backoff = ERROR_BACKOFF_S[0]
                if more:
                    await asyncio.sleep(0)
                    continue
                assert self.heap is not None
                delay = self.heap.next_due() - self.clock.now()
            except StoreError as exc:
                log.warning("expiry paused: %s; retrying in %.1f s", exc, backoff, extra=self._ctx())
                delay = backoff
                backoff = min(backoff * 2, ERROR_BACKOFF_S[1])
            self.changed.clear()
            try:
                async with asyncio.timeout(max(MIN_SLEEP_S, min(delay, BACKSTOP_S))):
                    await self.changed.wait()
            except TimeoutError:
                pass

    async def expire_due(self, now: float) -> bool:
        """Expire (or drop the keys of) the tasks due at ``now``. Returns whether more may be due."""
        heap = self.heap
        if heap is None:
            return False
        due = heap.take(now, EXPIRE_PASS)
        if not due:
            return False
        done: set[str] = set()
        lost_race = 0
        try:
            for group in read_groups(due, expiring_record_bytes):
                ids = [self.keys.parse_expiring(kv.key).task_id for kv in group]
                records = await record_kvs(self.store, self.keys, ids)
                parts = [await self._part(ekv, rkv, now) for ekv, rkv in zip(group, records, strict=True)]
                outcome = await commit_parts(self.store, [txn for txn, _ in parts])
                for ekv, (_, new), ok in zip(group, parts, outcome.succeeded, strict=True):
                    if ok is False:
                        lost_race = max(lost_race, outcome.revision)
                        continue
                    done.add(ekv.key)
                    if ok and new is not None:
                        self._expired(new, now)
        finally:
            heap.give_back(kv for kv in due if kv.key not in done)
            # a discarded queue head may have held back the tasks behind it (assigner.plan_batch)
            self.mirror.wake.set()
        if lost_race:
            await self.mirror.wait_revision(lost_race)
        return len(due) >= EXPIRE_PASS

    async def _part(
        self, expiring_kv: KV, record_kv: KV | None, now: float
    ) -> tuple[transitions.Txn, Task | None]:
        """One expiring key's transaction, and the cancelled record it writes (None: a drop)."""
        fence = self.election.fence()
        task: Task | None = None
        if record_kv is not None:
            try:
                task = codec.decode_task(record_kv.key, record_kv.value)
            except CorruptRecord as exc:
                log.error("expiring task has a corrupt record (%s): dropping its expiring key", exc)
        entry = self.mirror.view.running.get(task.id) if task is not None else None
        if (
            task is None
            or record_kv is None
            or task.state not in transitions.EXPIRABLE
            or task.attempts
            or task.expires_at is None
            # assigned: an assignment leaves the record as queued, its running entry names it
            or (entry is not None and entry.record_revision == record_kv.mod_revision)
        ):
            # started, finished, vanished or unreadable: nothing to discard
            return transitions.drop_expiring(fence, expiring_kv), None
        lease = await self.retention.lease_for(task.retention_s)
        return transitions.expire(self.keys, fence, expiring_kv, record_kv, task, now, lease)

    def _expired(self, new: Task, now: float) -> None:
        self.expired_total += 1
        log.info("task expired: %s", new.error, extra=self._ctx(task_id=new.id))
        if self.hooks:
            self.hooks.emit(Cancelled(at=now, component="scheduler", source=self.id, task=new))
