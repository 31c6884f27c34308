"""The outcome recorder: writes a worker's attempt outcomes, fenced, grouped, never silently lost.

Owns the outcome write: the next record (``transitions.next_record`` on this
worker's clock and sequence), its fit (``transitions.fit_record``), one fenced
transaction per attempt (``transitions.record_outcome``) and the group commit
(``groupcommit.GroupCommit``): outcomes ready while a write is in flight go out
together in the next transaction, within :data:`RESULT_BATCH` and
:data:`RESULT_BATCH_BYTES`. Once an outcome's transaction succeeded it emits
the attempt's end (``events.attempt_ended``); an outcome fenced off (the
assignment was revoked: cancelled or reassigned) is :class:`~tasklease.events.Rejected`.

May import: codec, errors, events, groupcommit, ids, keys, models, queue (the
assignment), retention, store, transitions. Not session (it is told whether the
lease lives), not execution or membership.

Sizes. A record is checked before it is sent: a retry (queued again) must fit
``codec.MAX_QUEUED_RECORD_BYTES``, any
other record the limit of its state. One that does not, and any outcome whose
transaction etcd refuses for its size (``StoreRequestTooLarge``), is recorded
as a bounded FAILED record saying why (``transitions.fit_record``,
``transitions.bounded_failure``): never a transaction resent unchanged, never a
dropped outcome.

Out of space. While etcd refuses writes for lack of space (its NOSPACE alarm,
``StoreNoSpace``), a finished outcome is kept and its write retried with a
backoff (up to ``NOSPACE_RETRY_MAX_S``) for as long as the lease lives: one
warning per outcome names NOSPACE and the remedy. It is never dropped (it
would otherwise be recorded later as a timeout, and the work done again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from tasklease import codec, transitions
from tasklease.clock import Clock
from tasklease.errors import (
    CorruptRecord,
    StoreError,
    StoreLeaseNotFound,
    StoreNoSpace,
    StoreRequestTooLarge,
    StoreUnavailable,
)
from tasklease.events import AttemptEnded, Hooks, Rejected, attempt_ended
from tasklease.groupcommit import GroupCommit, Pending
from tasklease.ids import IdGenerator
from tasklease.keys import Keyspace
from tasklease.models import JSON, Outcome, Task
from tasklease.queue import Assignment
from tasklease.retention import RetentionLeases
from tasklease.store import MAX_TXN_BYTES, MAX_TXN_OPS, Compare, KVStore, Op

log = logging.getLogger("tasklease.worker")

# Outcomes per transaction: 2 compares and up to 5 operations each (transitions.outcome_ops;
# a finish that releases an idempotency key writes 5), and at most 128 operations (etcd's limit).
RESULT_BATCH = 30
# And at most this many bytes (etcd refuses a request over 1.5 MiB; store.MAX_TXN_BYTES).
RESULT_BATCH_BYTES = MAX_TXN_BYTES
# Deadline of our fenced writes: short, since resending them is safe, and a write
# lost in an etcd leader change should be resent within about a second or two.
FENCED_TXN_TIMEOUT_S = 2.0
# While etcd is out of space (NOSPACE) a finished outcome is kept and its write
# retried, backing off to this interval, until etcd accepts writes or the lease ends.
NOSPACE_RETRY_MAX_S = 2.0
NOSPACE_REMEDY = (
    "compact and defragment etcd, disarm the NOSPACE alarm (etcdctl alarm disarm) "
    "and purge old tasks (docs/operations.md)"
)


@dataclass(frozen=True, slots=True)
class _Ready:
    """An outcome waiting to be written, with its share of a transaction (computed once)."""

    assignment: Assignment
    outcome: Outcome
    new: Task
    size: int


class OutcomeRecorder:
    """Writes attempt outcomes for one worker.

    Args:
        store: The etcd connection.
        keys: The namespace.
        worker_id: The worker's id (events and log lines).
        clock: Time source (records, events).
        hooks: Receive the attempts' ends and rejections.
        lease_alive: Whether the worker's lease lives (no write is tried once it is lost).
    """

    def __init__(
        self,
        store: KVStore,
        keys: Keyspace,
        worker_id: str,
        *,
        clock: Clock,
        hooks: Hooks,
        lease_alive: Callable[[], bool],
    ) -> None:
        self.store = store
        self.keys = keys
        self.worker_id = worker_id
        self._clock = clock
        self._hooks = hooks
        self._lease_alive = lease_alive
        self._extra = {"component": "worker", "worker": worker_id}
        self._ids = IdGenerator(clock)
        self._rng = random.Random()
        self.retention = RetentionLeases(store, keys, clock)
        # Outcomes waiting to be written; only the group commit's flusher takes them.
        self._commit: GroupCommit[_Ready, None] = GroupCommit(
            self._write_group,
            cost=lambda ready: ready.size,
            max_items=RESULT_BATCH,
            max_bytes=RESULT_BATCH_BYTES,
            name=f"results-{worker_id}",
            weight=lambda ready: transitions.outcome_ops(ready.new),
            max_weight=MAX_TXN_OPS,
        )
        self.completed = 0  # outcomes written; incremented by the writes only

    def next_record(
        self,
        assignment: Assignment,
        outcome: Outcome,
        result: JSON,
        error: str | None,
        permanent: bool,
        retry_after: float | None = None,
    ) -> Task:
        """The record after this attempt (transitions.next_record, on this worker's clock and sequence)."""
        return transitions.next_record(
            assignment.task,
            outcome,
            now=self._clock.now(),
            rng=self._rng,
            new_seq=self._ids.sequence(),
            result=result,
            error=error,
            permanent=permanent,
            retry_after=retry_after,
        )

    async def record(
        self,
        assignment: Assignment,
        outcome: Outcome,
        result: JSON,
        error: str | None,
        permanent: bool,
        retry_after: float | None = None,
    ) -> None:
        """Write the attempt's outcome in one fenced transaction, grouped with others.

        Outcomes that are ready while a write is in flight go out together in
        the next transaction (group commit): under load one transaction records
        many attempts; alone, an outcome is written at once. Returns once it
        was written, fenced off or given up (never raises for a store error).
        """
        new = transitions.fit_record(
            self.next_record(assignment, outcome, result, error, permanent, retry_after), self._clock.now()
        )
        await self._commit.submit(_Ready(assignment, outcome, new, transitions.outcome_bytes(new)))

    async def drain(self) -> None:
        """Wait until every outcome handed in was written (or given up)."""
        await self._commit.drain()

    # events ----------------------------------------------------------------------------------
    def _ended(self, ready: _Ready, new: Task) -> None:
        """The outcome's transaction succeeded: emit how the attempt ended."""
        self._emit(attempt_ended(ready.outcome, new), ready, new)

    def _rejected(self, ready: _Ready, new: Task) -> None:
        """The outcome was fenced off (the assignment was revoked): nothing was written."""
        self._emit(Rejected, ready, new)

    def _emit(self, kind: type[AttemptEnded], ready: _Ready, new: Task) -> None:
        self._hooks.emit(
            kind(
                at=self._clock.now(),
                component="worker",
                source=self.worker_id,
                task=new,
                attempt=ready.assignment.attempt.number,
                worker=self.worker_id,
                outcome=ready.outcome,
            )
        )

    # writes ------------------------------------------------------------------------------------
    async def _write_group(self, group: list[Pending[_Ready, None]]) -> None:
        """Write one group (GroupCommit's writer); every item is answered, errors are logged."""
        try:
            if len(group) == 1:
                await self._write_one(group[0].item)
            else:
                await self._write_batch(group)
        except Exception:
            log.exception("recording outcomes failed", extra=self._extra)
        finally:
            for pending in group:
                pending.settle(None)

    async def _write_batch(self, group: list[Pending[_Ready, None]]) -> None:
        compares: list[Compare] = []
        ops: list[Op] = []
        failure: list[Op] = []
        sent = True
        try:
            for pending in group:
                ready = pending.item
                new = ready.new
                lease = await self.retention.lease_for(new.retention_s) if new.state.terminal else 0
                part = transitions.record_outcome(
                    self.keys,
                    ready.assignment.worker,
                    ready.assignment.token,
                    new,
                    lease,
                    record_revision=ready.assignment.record_revision or None,
                )
                compares += part.compares
                ops += part.ops
                failure += part.failure
            res = await self.store.txn(compares, ops, failure, timeout_s=FENCED_TXN_TIMEOUT_S)
        except (StoreRequestTooLarge, StoreNoSpace):
            res, sent = None, False  # refused (too large, or etcd out of space): nothing landed
        except StoreError:
            res = None
        if res is not None and res.succeeded:
            self.completed += len(group)
            for pending in group:
                self._ended(pending.item, pending.item.new)
                pending.settle(None)
            return
        # Someone's compare failed (or no answer, or too large): record them one
        # by one, which tells the fenced ones from the rest and retries while
        # etcd is away.
        for i, pending in enumerate(group):
            ready = pending.item
            if res is not None:
                read = res.reads[i]
                if not read or read[0].create_revision != ready.assignment.token:
                    self._rejected(ready, ready.new)
                    pending.settle(None)
                    continue
            await self._write_one(ready, maybe_landed=res is None and sent)
            pending.settle(None)

    async def _write_one(self, ready: _Ready, *, maybe_landed: bool = False) -> None:
        """Write one outcome; retried while etcd is away or out of space, and our lease lives.

        Out of space (NOSPACE: etcd refuses every write until an operator frees
        room) the outcome is kept and retried with a backoff up to
        ``NOSPACE_RETRY_MAX_S``, never dropped: one warning per outcome names
        NOSPACE and the remedy, and one line says when it was recorded after all.
        """
        assignment, new = ready.assignment, ready.new
        extra = {**self._extra, "task_id": new.id, "attempt": assignment.attempt.number}
        delay = 0.1
        lease = 0
        sent = maybe_landed
        bounded = False
        out_of_space = False
        while True:
            if not self._lease_alive():
                log.warning("lease lost: outcome dropped", extra=extra)
                return
            try:
                if new.state.terminal and not lease:
                    lease = await self.retention.lease_for(new.retention_s)
                txn = transitions.record_outcome(
                    self.keys,
                    assignment.worker,
                    assignment.token,
                    new,
                    lease,
                    record_revision=assignment.record_revision or None,
                )
                res = await self.store.txn(txn.compares, txn.ops, txn.failure, timeout_s=FENCED_TXN_TIMEOUT_S)
            except StoreUnavailable as exc:
                sent = True
                log.warning("could not record outcome (%s); retrying", exc, extra=extra)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except StoreNoSpace as exc:
                # Refused, nothing written. Keep the outcome until etcd has room again.
                if not out_of_space:
                    out_of_space = True
                    log.warning(
                        "etcd is out of space (NOSPACE): the outcome is kept and its write retried "
                        "until etcd accepts writes again (while this worker's lease lives); "
                        "remedy: %s [%s]",
                        NOSPACE_REMEDY,
                        exc,
                        extra=extra,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, NOSPACE_RETRY_MAX_S)
                continue
            except StoreRequestTooLarge as exc:
                # Refused for its size (nothing was sent): never resend it
                # unchanged. Record a bounded failure instead, once.
                if bounded:
                    log.error(
                        "could not record even a bounded failure: %s; outcome dropped", exc, extra=extra
                    )
                    return
                log.error("outcome too large to write (%s); recording the task as failed", exc, extra=extra)
                new = transitions.bounded_failure(
                    new, f"not retried: the task record grew too large to write ({exc})", self._clock.now()
                )
                bounded = True
                lease = 0
                continue
            except StoreError as exc:
                if lease and isinstance(exc, StoreLeaseNotFound):
                    self.retention.forget(lease)
                    lease = 0
                    continue
                log.error("could not record outcome: %s", exc, extra=extra)
                return
            if res.succeeded:
                self.completed += 1
                if out_of_space:
                    log.info(
                        "outcome recorded once etcd had room again: task %s", new.state.value, extra=extra
                    )
                self._ended(ready, new)
                return
            if sent and await self._landed(new):
                self._ended(ready, new)  # an earlier send, whose answer was lost, committed
                return
            self._rejected(ready, new)
            return

    async def _landed(self, new: Task) -> bool:
        """After a lost answer: did our earlier transaction commit?"""
        with contextlib.suppress(StoreError, CorruptRecord):
            kv, _ = await self.store.get(self.keys.task(new.id))
            if kv is not None:
                return codec.decode_task(kv.key, kv.value) == new
        return False
