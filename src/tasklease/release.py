"""The leader releases waiting tasks when their parents finish (W1): :class:`Releaser`.

A task with parents (``depends_on``) waits in state ``waiting`` with its deps
key ``deps/{queue}/{id}`` (keys.py), whose value names its parents and its
``on_parent_failure`` policy. The leader mirrors every deps key
(``ClusterView.plain``) and keeps, from them, which waiting children each
parent has. It learns that a parent may have ended from the one watch
(``Mirror.subscribe``): every way a task ends deletes one of its index keys
(its queue key, delayed key, running-index entry or deps key), so a deletion
of an index key of a task that some waiting child names is the trigger. A new
deps key (a child just submitted) is one too: its parents are checked at once,
which closes the window in which a parent finished between the client's read
of its parents and the child's write.

On a trigger it reads the parent's record (transactions of at most 32 gets).
A finished parent's end (succeeded, failed, cancelled, or its record gone) is
final, so it is kept for as long as some waiting child names that parent: a
fan-in of n parents costs n record reads in all, not n per parent. Each child
whose parents are then all known is decided by ``transitions.verdict``:

- released: every parent succeeded (or every one ended, with policy ``run``):
  queued at the back of its band (a new sequence), or pending if its own delay
  is still ahead;
- cascaded: a parent failed, was cancelled or no longer exists (policy
  ``cancel``): cancelled with a reason naming that parent, under its
  retention lease. Its deps key's deletion is a trigger in its turn, so its own
  children follow, generation after generation.

Each is one ``transitions.release`` part (leader fence + deps key unchanged +
record unchanged); up to 128 operations and ``MAX_TXN_BYTES`` of parts go in
one transaction. If a batched transaction fails a compare, its parts are sent
one by one; a part that still fails is tried again once the watch has caught
up (a cancel or a re-prioritisation came in between).

Round trips per release: 1 transaction of gets (the parent's record, with the
child's record when that parent was the last one it waited for) + 1 write
transaction, each shared by up to 32 reads / ~40 releases. A parent that is
running in the leader's mirror, or itself waiting, is not read: its end will
delete its index key, which is a trigger.

Failover. Nothing is kept outside etcd: a new leader (and a leader whose
watch had to start over, :meth:`Releaser.reloaded`) checks every waiting child
once, reading the records of their parents in bounded group reads. A leader
killed between a parent's finish and its child's release therefore loses
nothing: its successor releases the child.

May import: codec, errors, events, finished (group reads), leader, models,
store, transitions. Logs as ``tasklease.scheduler``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import Any

from tasklease import codec, transitions
from tasklease.errors import (
    CorruptRecord,
    PayloadTooLarge,
    StoreError,
    StoreLeaseNotFound,
    StoreRequestTooLarge,
)
from tasklease.events import Cancelled, Failed
from tasklease.finished import read_kvs
from tasklease.leader import LeaderContext, LeaderLoop
from tasklease.models import Task, TaskState, transition
from tasklease.store import KV, MAX_TXN_BYTES, MAX_TXN_OPS, Compare, Delete
from tasklease.transitions import ParentEnd, Txn

log = logging.getLogger("tasklease.scheduler")

# Parents read per pass, and children decided per pass (their records are held
# in memory during the pass: at most this many, each at most ~680 KiB).
PARENTS_PER_PASS = 256
CHILDREN_PER_PASS = 128
# A child whose release kept failing its compares this often is left until its next trigger.
MAX_TRIES = 10
# Longest wait for the watch to show what made a release fail its compares.
RETRY_WAIT_S = 0.5
ERROR_BACKOFF_S = (0.2, 2.0)


@dataclass(frozen=True, slots=True)
class Waiting:
    """A waiting child as its deps key says.

    Attributes:
        key: Its deps key.
        parents: Its parents, in its order.
        policy: Its ``on_parent_failure``.
    """

    key: str
    parents: tuple[str, ...]
    policy: str


@dataclass(frozen=True, slots=True)
class Decided:
    """A child whose parents decided its fate: released, or cancelled with a reason."""

    child: str
    verdict: transitions.Verdict


class Releaser(LeaderLoop):
    """Releases (or cascades) waiting tasks when their parents finish (see the module docstring).

    Args:
        ctx: What the leader's parts share.
    """

    name = "releaser"

    def __init__(self, ctx: LeaderContext) -> None:
        super().__init__(ctx)
        # Everything below is touched on the leader's event loop only (the watch's
        # callback and run()), and rebuilt from the view per leadership and reload.
        self._waiting: dict[str, Waiting] = {}  # child id -> its deps key, parents, policy
        self._children: dict[str, set[str]] = {}  # parent id -> its waiting children
        self._ends: dict[str, ParentEnd] = {}  # parents known to have ended (final), while named
        self._unread: set[str] = set()  # parents that may have ended: read their records
        self._due: set[str] = set()  # children to decide (an end of one of their parents is known)
        self._tries: dict[str, int] = {}  # child -> releases that failed their compares in a row
        # children this leader is moving (released or cancelled): their deps key's deletion needs no read
        self._moved: set[str] = set()
        self._active = False  # True while run() holds a view built from the mirror
        self._leases: set[int] = set()  # retention leases written under this pass (forgotten if gone)
        self._wake = asyncio.Event()
        self.released_total = 0
        self.cancelled_total = 0
        k = self.keys
        self.mirror.subscribe((k.deps, k.queues, k.delayed, k.running), self._changed)

    def _ctx(self, **extra: Any) -> dict[str, Any]:
        return {"component": "scheduler", "scheduler": self.id, **extra}

    # the index of waiting children ---------------------------------------------------------
    def reset(self) -> None:
        """Forget what an earlier leadership saw (it is rebuilt from the view in :meth:`run`)."""
        self._active = False
        self._waiting.clear()
        self._children.clear()
        self._ends.clear()
        self._unread.clear()
        self._due.clear()
        self._tries.clear()
        self._moved.clear()

    def reloaded(self) -> None:
        """The view was read again: rebuild from it, and check every waiting child again."""
        self._rebuild()

    def _rebuild(self) -> None:
        self.reset()
        for kv in list(self.mirror.view.plain[self.keys.deps].values()):
            self._add(kv)
        self._active = True
        self._wake.set()

    def _changed(self, kv: KV, deleted: bool) -> None:
        """The watch's callback (``Mirror.subscribe``): quick, never raises."""
        if not self._active:
            return
        key = kv.key
        k = self.keys
        if key.startswith(k.deps):
            if deleted:
                try:
                    child = k.parse_deps(key)[1]
                except ValueError:
                    return
                self._forget(child)
                if child in self._moved:
                    self._moved.discard(child)  # we moved it: released (not ended), or its end is known
                else:
                    self._touch(child)  # released or ended by another: its own children may be concerned
            else:
                self._add(kv)
            return
        if not deleted or not self._children:
            return
        try:
            if key.startswith(k.running):
                task_id = k.parse_running(key)
            elif key.startswith(k.delayed):
                task_id = k.parse_delayed(key).task_id
            else:
                task_id = k.parse_queue_entry(key).task_id
        except ValueError:
            return
        self._touch(task_id)

    def _add(self, kv: KV) -> None:
        """A deps key was put (or loaded): index its child and check its parents."""
        try:
            child = self.keys.parse_deps(kv.key)[1]
            parents, policy = transitions.parse_deps_value(kv.key, kv.value)
        except (ValueError, CorruptRecord) as exc:
            log.error("ignoring a malformed deps key: %s", exc, extra=self._ctx())
            return
        old = self._waiting.get(child)
        if old is not None and old.parents == parents and old.policy == policy:
            return
        if old is not None:
            self._forget(child)
        self._waiting[child] = Waiting(kv.key, parents, policy)
        for parent in parents:
            self._children.setdefault(parent, set()).add(child)
            if parent not in self._ends:
                self._unread.add(parent)
        self._due.add(child)
        self._wake.set()

    def _forget(self, child: str) -> None:
        entry = self._waiting.pop(child, None)
        self._due.discard(child)
        self._tries.pop(child, None)
        if entry is None:
            return
        for parent in entry.parents:
            children = self._children.get(parent)
            if children is None:
                continue
            children.discard(child)
            if not children:
                del self._children[parent]
                self._ends.pop(parent, None)
                self._unread.discard(parent)

    def _touch(self, task_id: str) -> None:
        """An index key of ``task_id`` was deleted: if it is a parent, it may have ended."""
        if task_id in self._children and task_id not in self._ends:
            self._unread.add(task_id)
            self._wake.set()

    @property
    def waiting(self) -> int:
        """Waiting children the leader knows of."""
        return len(self._waiting)

    # the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Check every waiting child once, then act on each trigger, until cancelled."""
        self._rebuild()
        backoff = ERROR_BACKOFF_S[0]
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.work()
                backoff = ERROR_BACKOFF_S[0]
            except StoreError as exc:
                if isinstance(exc, StoreLeaseNotFound):
                    # A retention lease that expired or was revoked: take a new one next time.
                    for lease in self._leases:
                        self.retention.forget(lease)
                log.warning("releases paused: %s; retrying in %.1f s", exc, backoff, extra=self._ctx())
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, ERROR_BACKOFF_S[1])
                self._wake.set()

    async def work(self) -> None:
        """One pass: read the parents that may have ended, decide and write their children.

        Bounded: at most ``PARENTS_PER_PASS`` parents and ``CHILDREN_PER_PASS``
        children per pass; it wakes itself again while some are left.
        """
        view = self.mirror.view
        self._leases.clear()
        parents: list[str] = []
        for parent in list(self._unread):
            if len(parents) >= PARENTS_PER_PASS:
                break
            self._unread.discard(parent)
            if parent not in self._children or parent in self._ends:
                continue
            if parent in view.running or parent in self._waiting:
                continue  # not ended: its end deletes its running entry or deps key (a trigger)
            parents.append(parent)
        reading = set(parents)
        # The children these reads may decide: read their records in the same transactions.
        preread: list[str] = []
        for parent in parents:
            for child in self._children.get(parent, ()):
                entry = self._waiting[child]
                if len(preread) < CHILDREN_PER_PASS and all(
                    p in self._ends or p in reading for p in entry.parents
                ):
                    preread.append(child)
        try:
            kvs = (
                await read_kvs(self.store, self.keys, [*parents, *dict.fromkeys(preread)]) if parents else {}
            )
        except BaseException:
            self._unread.update(parents)  # read again next pass (or by the next leader)
            raise
        for parent in parents:
            self._note(parent, kvs.get(parent))
        # Those whose records were read with their parents first.
        ready = [c for c in dict.fromkeys(preread) if c in self._due]
        rest = (c for c in self._due if c not in kvs)
        due = list(itertools.islice(itertools.chain(ready, rest), CHILDREN_PER_PASS))
        self._due.difference_update(due)
        decided: list[Decided] = []
        for child in due:
            waiting = self._waiting.get(child)
            if waiting is None:
                continue
            verdict = transitions.verdict(waiting.parents, waiting.policy, self._ends)
            if verdict.action != "wait":
                decided.append(Decided(child, verdict))
        try:
            missing = [d.child for d in decided if d.child not in kvs]
            if missing:
                kvs.update(await read_kvs(self.store, self.keys, missing))
            await self._write(decided, kvs)
        except BaseException:
            # A store error part-way: decide them again next pass (a child that was moved
            # meanwhile fails its compares then, or is gone from the index).
            self._due.update(c for c in due if c in self._waiting)
            raise
        if self._unread or self._due:
            self._wake.set()

    def _note(self, parent: str, kv: KV | None) -> None:
        """A parent's record was read: if it ended, its children are due."""
        task: Task | None = None
        if kv is not None:
            try:
                task = codec.decode_task(kv.key, kv.value)
            except CorruptRecord as exc:
                # Neither ended nor not: its children wait (logged), until its record is rewritten.
                log.error("cannot read a parent's record (%s): its children wait", exc, extra=self._ctx())
                return
        end = transitions.parent_end(parent, task)
        if end is None or parent not in self._children:
            return  # not ended (a later deletion of its index key brings it back here), or no child left
        self._ends[parent] = end
        self._due.update(self._children.get(parent, ()))

    # writes ------------------------------------------------------------------------------
    async def _write(self, decided: list[Decided], kvs: dict[str, KV | None]) -> None:
        """Write the decided children's moves, batched per transaction (one by one on a failed compare)."""
        batch: list[tuple[Decided, Txn, Task | None]] = []
        size = ops = compares = 0
        for item in decided:
            part = await self._part(item, kvs.get(item.child))
            if part is None:
                continue
            txn, new = part
            part_compares = len(txn.compares) - 1  # the fence is shared
            if batch and (
                ops + len(txn.ops) > MAX_TXN_OPS
                or compares + part_compares > MAX_TXN_OPS - 1
                or size + txn.size() > MAX_TXN_BYTES
            ):
                await self._send(batch)
                batch, size, ops, compares = [], 0, 0, 0
            batch.append((item, txn, new))
            size += txn.size()
            ops += len(txn.ops)
            compares += part_compares
        if batch:
            await self._send(batch)

    async def _part(self, item: Decided, record_kv: KV | None) -> tuple[Txn, Task | None] | None:
        """The transaction part that moves one decided child, and its new record.

        None: nothing to write now. A new record None: the part only drops a
        deps key that has no waiting task behind it.
        """
        entry = self._waiting.get(item.child)
        deps_kv = self.mirror.view.plain[self.keys.deps].get(entry.key) if entry else None
        if entry is None or deps_kv is None:
            return None  # released or cancelled meanwhile (the watch said so)
        extra = self._ctx(task_id=item.child)
        task: Task | None = None
        if record_kv is not None:
            try:
                task = codec.decode_task(record_kv.key, record_kv.value)
            except CorruptRecord as exc:
                log.error("cannot release a waiting task (%s): it stays waiting", exc, extra=extra)
                return None
        fence = self.election.fence()
        if task is None or record_kv is None or task.state is not TaskState.WAITING:
            # A deps key without a waiting record (deleted by hand, or left over): drop it.
            log.warning("dropping a deps key without a waiting task: %s", entry.key, extra=extra)
            return Txn([fence, Compare.unchanged(deps_kv)], [Delete(deps_kv.key)]), None
        now = self.clock.now()
        lease = 0
        if item.verdict.action == "release":
            new = transitions.released(task, now, self._ids.sequence())
        else:
            new = transitions.cancelled(task, item.verdict.reason, now)
            lease = await self.retention.lease_for(new.retention_s)
            self._leases.add(lease)
        try:
            txn = transitions.release(self.keys, fence, deps_kv, record_kv, task, new, lease)
        except PayloadTooLarge as exc:
            new = transition(task, TaskState.FAILED, now=now, error=f"cannot be queued: {exc}")
            lease = await self.retention.lease_for(new.retention_s)
            self._leases.add(lease)
            txn = transitions.release(self.keys, fence, deps_kv, record_kv, task, new, lease)
        return txn, new

    async def _send(self, batch: list[tuple[Decided, Txn, Task | None]]) -> None:
        """Write ``batch`` in one transaction; one by one if it fails a compare.

        Each child is marked moved before it is sent: the deletion of its deps
        key, which the watch may bring before the answer, then needs no read
        (it was released, or its end is known: :meth:`_done`). A child that was
        not moved after all is unmarked, and looked at again if its deps key
        went meanwhile (someone else moved it: it may have ended).
        """
        unsettled = {item.child for item, _, new in batch if new is not None}
        self._moved.update(unsettled)
        try:
            await self._send_all(batch, unsettled)
        finally:
            for child in unsettled:
                self._moved.discard(child)
                if child not in self._waiting:
                    self._touch(child)

    async def _send_all(self, batch: list[tuple[Decided, Txn, Task | None]], unsettled: set[str]) -> None:
        fence = batch[0][1].compares[0]
        combined = Txn([fence])
        for _, txn, _ in batch:
            combined.compares.extend(txn.compares[1:])
            combined.ops.extend(txn.ops)
        if len(batch) > 1:
            result = await self.store.txn(combined.compares, combined.ops)
            if result.succeeded:
                for item, _, new in batch:
                    unsettled.discard(item.child)
                    self._done(item, new)
                return
        # Alone, or the batch failed a compare: one by one tells which.
        for item, txn, new in batch:
            try:
                result = await self.store.txn(txn.compares, txn.ops)
            except StoreRequestTooLarge as exc:
                log.error("cannot release a waiting task: %s", exc, extra=self._ctx(task_id=item.child))
                continue
            if result.succeeded:
                unsettled.discard(item.child)
                self._done(item, new)
                continue
            tries = self._tries.get(item.child, 0) + 1
            self._tries[item.child] = tries
            if tries >= MAX_TRIES:
                log.error(
                    "release of a waiting task failed its compares %d times: left until its next trigger",
                    tries,
                    extra=self._ctx(task_id=item.child),
                )
                continue
            # A cancel or a priority change came in between (or we were deposed): decide again
            # with what the watch shows once it has caught up (a priority change rewrites
            # only the record, outside the watched range: then after a short wait).
            await self.mirror.wait_revision(result.revision, timeout_s=RETRY_WAIT_S)
            if item.child in self._waiting:
                self._due.add(item.child)

    def _done(self, item: Decided, new: Task | None) -> None:
        self._tries.pop(item.child, None)
        if new is None:
            return
        now = self.clock.now()
        extra = self._ctx(task_id=new.id)
        if new.state.terminal and new.id in self._children:
            # Its end is known without a read: its own children are due now (the cascade).
            self._ends[new.id] = transitions.ParentEnd(new.id, new.state, new.error)
            self._due.update(self._children[new.id])
            self._wake.set()
        if new.id not in self._waiting:
            self._moved.discard(new.id)  # its deps key's deletion came already (else it unmarks it)
        if new.state in (TaskState.QUEUED, TaskState.PENDING):
            self.released_total += 1
            log.debug("released: its parents finished (%s)", new.state.value, extra=extra)
        elif new.state is TaskState.CANCELLED:
            self.cancelled_total += 1
            log.info("cancelled: %s", new.error, extra=extra)
            if self.hooks:
                self.hooks.emit(Cancelled(at=now, component="scheduler", source=self.id, task=new))
        elif self.hooks:
            self.hooks.emit(Failed(at=now, component="scheduler", source=self.id, task=new))
