"""The assigner: moves queue heads to free workers, one fenced transaction per batch.

Owns, while this scheduler leads: the assignment loop (woken by the mirror),
the read-ahead of heads' values the mirror does not hold, and the batches in
flight (committed, not yet seen by the watch: counted against the workers'
free slots). The decision is :func:`plan_batch`, a pure function (no etcd, no
clock): which heads go to which workers and the one transaction that does it.
:class:`Assigner` sends the plan and handles its failures.

Events (events.py): ``Assigned`` per task once the batch's transaction has
succeeded (``task`` is the running record, ``queued_at`` the queued record's
``updated_at``), then one ``BatchAssigned`` with the batch's size.

Limits (limiter.py): the assigner owns a :class:`~tasklease.limiter.Limiter`;
each batch gathers heads past the groups a rate or concurrency limit holds back
and lets :func:`plan_batch` ``admit`` each pick (which takes its tokens); a
batch whose transaction fails gives them back.

May import: balancers (protocol), codec, election, errors, events, keys, limiter,
mirror, models, recoverer, routing, store, transitions. Logs as ``tasklease.scheduler``.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tasklease import codec, transitions
from tasklease.balancers import Balancer
from tasklease.errors import (
    CorruptRecord,
    StoreError,
    StoreRequestTooLarge,
    TaskleaseError,
)
from tasklease.events import Assigned, BatchAssigned
from tasklease.keys import Keyspace, prefix_end
from tasklease.leader import LeaderContext, LeaderPart
from tasklease.limiter import Limiter
from tasklease.mirror import MirroredNode, QueueIndex
from tasklease.models import Task
from tasklease.recoverer import ERROR_BACKOFF_S, Failer, Recoverer
from tasklease.routing import Route
from tasklease.store import KV, MAX_TXN_BYTES, Compare, Get, Op, TxnResult, next_page_limit, txn_size
from tasklease.transitions import Pick, Txn

log = logging.getLogger("tasklease.scheduler")

# One read-ahead page of values: about this many bytes (and at most 1,000 keys).
READ_AHEAD_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class BatchPlan:
    """What one batch does, as decided by :func:`plan_batch`.

    Attributes:
        picks: The tasks assigned, each with its worker, in dequeue order.
        running: The running record of each pick (same order).
        queued_at: When each pick entered its queue this time (the queued
            record's ``updated_at``; same order).
        txn: ONE transaction for all picks: the fence first, then each pick's
            compares and writes; its failure branch reads the leader key and
            each pick's record and queue key (empty if there are no picks).
        per_worker: How many tasks each worker gets.
        skipped: Heads not to pick again until they change: ``(queue kv, task
            id, why)`` (a record that cannot be decoded or assigned).
    """

    picks: list[Pick] = field(default_factory=list)
    running: list[Task] = field(default_factory=list)
    queued_at: list[float] = field(default_factory=list)
    txn: Txn = field(default_factory=Txn)
    per_worker: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[KV, str, TaskleaseError]] = field(default_factory=list)


def plan_batch(
    heads: Iterable[KV],
    free: Sequence[MirroredNode],
    *,
    keys: Keyspace,
    route: Callable[[str], Route | None],
    balancer: Balancer,
    fence: Compare,
    now: float,
    batch_size: int,
    max_txn_bytes: int = MAX_TXN_BYTES,
    admit: Callable[[str, str], bool] | None = None,
) -> BatchPlan:
    """Decide one batch: which of ``heads`` go to which of ``free``, in one transaction.

    Pure: no etcd, no clock. Each head (a queue key whose value is the task
    record, in dequeue order) goes to an eligible worker (it serves the queue,
    runs the type, has the required tags) with a free slot, chosen by
    ``balancer`` among them. The batch stops at ``batch_size`` tasks or before
    its transaction would exceed ``max_txn_bytes`` (a task that does not fit
    with its companions is left for the next batch; the first one always goes,
    alone if it must). A head no free worker may take is passed over.

    ``free`` nodes' ``view.assigned`` (counted by ``ClusterView.free_nodes``)
    is raised for each pick: that is what the balancer and the next batch see.

    ``admit(queue, type)`` is asked last, for each task that would be picked
    (it fits the transaction): False passes the task over (a rate or
    concurrency limit holds it back); True counts it and takes its tokens
    (:meth:`tasklease.limiter.Gate.admit`), so it is never asked about a task
    that is then left out.

    Args:
        heads: Queue heads with their values, in dequeue order.
        free: Live workers with a free slot.
        keys: The namespace.
        route: Parses a queue key's route part (``ClusterView.route``: cached).
        balancer: Chooses a worker among the eligible ones.
        fence: The leadership compare (first in the transaction).
        now: The assignment time (attempts' start, deadlines).
        batch_size: Most tasks.
        max_txn_bytes: Most request bytes (``store.txn_size``).
        admit: The limits' gate (None: no limits).

    Returns:
        The plan (its ``picks`` may be empty).
    """
    plan = BatchPlan()
    picks, running, skipped = plan.picks, plan.running, plan.skipped
    compares: list[Compare] = [fence]
    ops: list[Op] = []
    size = txn_size(compares)
    per_worker: dict[str, int] = defaultdict(int)
    eligible_by_group: dict[tuple[str, Route], list[MirroredNode]] = {}
    for qkv in heads:
        entry = keys.parse_queue_entry(qkv.key)
        task_id = entry.task_id
        # The queue key's value is the record without its payload, written with it:
        # same mod revision (transitions.place_ops). No read needed: the assignment
        # does not write the record.
        record_kv = KV(keys.task(task_id), qkv.value, qkv.create_revision, qkv.mod_revision, 0)
        task_route = route(entry.route or "")
        queued: Task | None = None  # decoded once a worker may take it (or to learn its route)
        if task_route is None:  # a key of an older version: the route is in the record
            try:
                queued = codec.decode_task(record_kv.key, record_kv.value)
            except CorruptRecord as exc:
                skipped.append((qkv, task_id, exc))
                continue
            task_route = Route(queued.type, queued.requires)
        group = (entry.queue, task_route)
        takers = eligible_by_group.get(group)
        if takers is None:  # once per (queue, route) per batch, not per task
            takers = eligible_by_group[group] = [n for n in free if n.takes(entry.queue, task_route)]
        candidates = [n for n in takers if n.view.free > 0]
        if not candidates:
            continue
        view = balancer.choose([n.view for n in candidates])
        node = next(n for n in candidates if n.view is view)
        pick = Pick(qkv, record_kv, node.view.id, node.lease)
        try:
            if queued is None:
                queued = codec.decode_task(record_kv.key, record_kv.value)
            part, record = transitions.assign_task(keys, pick, queued, now)
        except TaskleaseError as exc:
            skipped.append((qkv, task_id, exc))
            continue
        if queued.expires_at is not None and queued.expires_at <= now and not queued.attempts:
            continue  # not started by its expiry: the Expirer discards it (expiry.py)
        pick_size = txn_size(part.compares) + txn_size(part.ops)
        if picks and size + pick_size > max_txn_bytes:
            break  # the next batch takes it (alone if it must)
        if admit is not None and not admit(entry.queue, queued.type):
            continue  # held back by a limit; the gate's blocked() skips its group next batch
        node.view.assigned += 1
        picks.append(pick)
        running.append(record)
        plan.queued_at.append(queued.updated_at)
        compares.extend(part.compares)
        ops.extend(part.ops)
        size += pick_size
        per_worker[node.view.id] += 1
        if len(picks) >= batch_size:
            break
    if picks:
        # On failure, read what changed: the leader key, each record and queue key.
        failure: list[Op] = [Get(keys.leader)]
        for p in picks:
            failure += [Get(p.record_kv.key), Get(p.queue_kv.key)]
        plan.txn = Txn(compares, ops, failure)
        plan.per_worker = dict(per_worker)
    return plan


class Assigner(LeaderPart):
    """Assigns queued tasks in batches while this scheduler leads.

    Args:
        ctx: What the leader's parts share (store, keys, election, mirror, hooks, ...).
        balancer: Chooses among eligible workers.
        batch_size: Most tasks per transaction.
        recoverer: Its lost-attempt pass runs first on every wake-up.
        failer: Fails what no transaction can carry; logs unroutable groups.
    """

    def __init__(
        self,
        ctx: LeaderContext,
        *,
        balancer: Balancer,
        batch_size: int,
        recoverer: Recoverer,
        failer: Failer,
    ) -> None:
        super().__init__(ctx)
        self.balancer = balancer
        self.batch_size = batch_size
        self.recoverer = recoverer
        self.failer = failer
        self.limiter = Limiter(ctx)  # rate and concurrency limits: this loop's gate
        # (commit revision, tasks per worker, queue keys) of batches the watch has not
        # delivered yet; touched by the assignment loop, reset by the scheduler on a (re)load
        self._inflight: list[tuple[int, dict[str, int], set[str]]] = []
        self.assigned_total = 0  # tasks assigned by this scheduler (all leaderships)

    def reset(self) -> None:
        """Forget the batches in flight (the mirror starts over)."""
        self._inflight = []
        self.limiter.reset()

    def _ctx(self, **extra: Any) -> dict[str, Any]:
        return {"component": "scheduler", "scheduler": self.id, **extra}

    async def run(self) -> None:
        """Assign whenever the mirror wakes this loop. Runs until cancelled."""
        backoff = ERROR_BACKOFF_S[0]
        wake = self.mirror.wake
        while True:
            await wake.wait()
            wake.clear()
            try:
                await self.recoverer.recover_lost()
                while await self.assign_batch():
                    pass
                self.limiter.schedule_wake()  # a group held back by a rate: look again at its next token
                self.failer.check_routes()
                backoff = ERROR_BACKOFF_S[0]
            except StoreError as exc:
                # Never ends leadership (only the election does): back off and try again;
                # the compares keep a retry from assigning anything twice.
                log.warning("assignment paused: %s; retrying in %.1f s", exc, backoff, extra=self._ctx())
                self.mirror.wake_later(backoff)
                backoff = min(backoff * 2, ERROR_BACKOFF_S[1])

    def _inflight_counts(self, revision: int) -> tuple[dict[str, int], set[str]]:
        """Tasks per worker and queue keys of the batches committed after ``revision`` (the mirror's)."""
        self._inflight = [f for f in self._inflight if f[0] > revision]
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
        limit = next_page_limit(self.mirror.view.queues.typical_value, READ_AHEAD_BYTES)
        revision = 0
        for queue, key in first.items():
            page = await self.store.range(key, prefix_end(self.keys.queue(queue)), limit=limit)
            revision = max(revision, page.revision)
            queues = self.mirror.view.queues
            for read in page.kvs:
                if read.key in queues.unloaded:
                    queues.fill(read)
        wanted = {kv.key for kv in kvs}
        if wanted & self.mirror.view.queues.unloaded:
            # changed or gone since the mirror saw them: the watch will tell
            await self.mirror.wait_revision(revision)
            return False
        return True

    async def assign_batch(self) -> bool:
        """Assign up to one batch in one transaction. Returns whether to try again at once."""
        view = self.mirror.view
        queues = view.queues
        inflight, claimed = self._inflight_counts(view.revision)
        free = view.free_nodes(inflight)
        if not free:
            return False
        gate = self.limiter.gate()
        blocked = gate.blocked if gate.active else None
        heads = list(itertools.islice(queues.heads(free, self.batch_size, claimed, blocked), self.batch_size))
        unloaded = [kv for kv in heads if kv.key in queues.unloaded]
        if unloaded:
            await self._load_values(unloaded)
            return True  # pick again from the mirror, now with values
        now = self.clock.now()
        plan = plan_batch(
            heads,
            free,
            keys=self.keys,
            route=queues.route,
            balancer=self.balancer,
            fence=self.election.fence(),
            now=now,
            batch_size=self.batch_size,
            admit=gate.admit if gate.active else None,
        )
        result: TxnResult | None = None
        try:
            result = await self._send(plan, queues)
        except StoreRequestTooLarge:
            gate.rollback()  # refused before it was applied
            raise
        except StoreError:
            gate.uncertain()  # maybe committed: the tokens stay spent
            raise
        except BaseException:
            gate.rollback()
            raise
        if result is None or not result.succeeded:
            gate.rollback()  # nothing sent, the task failed instead, or a compare failed
        if result is None:
            return bool(plan.picks)
        picks = plan.picks
        if not result.succeeded:
            self._explain_failure(picks, result.reads)
            log.debug("assignment rejected by a compare at revision %d", result.revision, extra=self._ctx())
            await self.mirror.wait_revision(result.revision)
            return True
        gate.commit(result.revision)
        self.assigned_total += len(picks)
        if result.revision > self.mirror.view.revision:
            self._inflight.append((result.revision, plan.per_worker, {p.queue_kv.key for p in picks}))
        log.debug("assigned %d tasks", len(picks), extra=self._ctx())
        hooks = self.hooks
        if hooks:  # one event per task (LoggingHook: a debug line, skipped when debug is off)
            source = self.id
            for pick, record, queued_at in zip(picks, plan.running, plan.queued_at, strict=True):
                hooks.emit(
                    Assigned(
                        at=now,
                        component="scheduler",
                        source=source,
                        task=record,
                        attempt=record.attempts[-1].number,
                        worker=pick.worker,
                        queued_at=queued_at,
                    )
                )
            hooks.emit(BatchAssigned(at=now, component="scheduler", source=source, size=len(picks)))
        return True

    async def _send(self, plan: BatchPlan, queues: QueueIndex) -> TxnResult | None:
        """Deal with the plan's passed-over heads, then send its transaction.

        Returns:
            The transaction's result; None if there was nothing to send (no
            picks), or its one pick was failed as too large for any transaction.

        Raises:
            StoreError: etcd failed (the transaction may have committed).
        """
        for qkv, task_id, exc in plan.skipped:
            log.error("skipping queued task: %s", exc, extra=self._ctx(task_id=task_id))
            queues.skipped.add(qkv.key)
        picks = plan.picks
        if not picks:
            return None
        txn = plan.txn
        try:
            return await self.store.txn(txn.compares, txn.ops, txn.failure, timeout_s=2.0)
        except StoreRequestTooLarge as exc:
            if len(picks) > 1:
                raise  # cannot happen (txn_size is an upper bound): back off, log it
            first = picks[0]
            await self.failer.fail_unassignable(first.queue_kv, first.record_kv, f"cannot be assigned: {exc}")
            return None
        except StoreError as exc:
            # Maybe committed (the watch will tell), or a worker's lease just ended (its
            # node key goes next). Either way the compares keep a second attempt from
            # assigning anything twice; the loop backs off.
            log.warning("assignment transaction failed: %s", exc, extra=self._ctx())
            raise

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
                self.mirror.view.skipped.add(pick.queue_kv.key)
