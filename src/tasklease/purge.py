"""Delete finished tasks older than a given age: ``tasklease purge`` and ``Client.purge``.

Finished records expire by their retention lease (retention.py); purge frees
space sooner, e.g. when etcd is at its space quota (NOSPACE). It deletes task
records in state ``succeeded``, ``failed`` or ``cancelled`` (optionally only
some states, only one queue) that finished at least ``older_than_s`` ago (their
``updated_at``, the time of their last transition). Waiting and running tasks
are never touched. A finished task's queue, assignment, running and delayed
keys went with its last transition, so purge deletes ``task/{id}``, its
finished-index entry and, for a task whose idempotency key is released with
its record (no ``unique_until``), that key (``unique/{sha256}``: certainly
still its own while the record exists, transitions.finished_ops). A key held
for ``unique_for`` is left to its lease; a submit takes it over once the
record is gone (docs/idempotency.md).

Reads: the task records, in pages bounded by bytes (:meth:`Store.scan`); a
scan whose snapshot is compacted meanwhile resumes after the last key read.
Dry run by default: it counts what would go, and deletes nothing.

Deletes: in transactions of at most 64 records and 128 deletes (each record
with its finished-index entry, keys.py, and its idempotency key), each guarded
by the record's mod revision as read (``if mod(task/{id}) = seen ... then delete task/{id} ...``),
so a record that changed meanwhile is kept. When such a transaction fails, its
records are tried one per transaction, to keep exactly the changed ones.

While etcd is out of space. etcd 3.5 refuses *every* transaction (even one that
only deletes, even one that only reads) while its NOSPACE alarm is raised and
its database is over the quota; a plain delete request still passes. So when a
transaction is refused with NOSPACE, that group's records are deleted with
plain single-key deletes (8 in flight), without a compare. This is safe for
finished records: no tasklease write ever changes a terminal record (every
write to a task record is guarded by a compare, and nothing leaves a terminal
state), and while etcd refuses writes nobody can write anything; the next
group tries a transaction again. ``PurgeResult.plain_deletes`` counts them.
Plain deletes (no compare) release a record's idempotency key first, then the
record: while the record exists no submit can take its key over (a takeover
compares the holder's record absent), so the key deleted is still the
record's. (Unless the record expired just before, and a submit created a new
holder of the key in between: that needs etcd to accept a transaction, which
it refuses while in NOSPACE.)

Recovery from NOSPACE (docs/operations.md): ``tasklease purge --older-than T
--yes``, then ``etcdctl compact REV`` (REV: the revision purge prints),
``etcdctl defrag`` on every member, ``etcdctl alarm disarm``. Deleting frees
nothing in etcd's file by itself: compaction drops the old revisions and
defragmentation gives the pages back; the alarm stays until disarmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from tasklease import codec
from tasklease.clock import Clock, SystemClock
from tasklease.errors import CorruptRecord, InvalidOption, StoreCompacted, StoreNoSpace
from tasklease.keys import Keyspace, check_name, prefix_end
from tasklease.models import TERMINAL_STATES, TaskState
from tasklease.store import MAX_TXN_OPS, Compare, Delete, KVStore

log = logging.getLogger("tasklease.purge")

DELETES_PER_TXN = 64
PLAIN_DELETES_IN_FLIGHT = 8
# A scan whose snapshot was compacted resumes at most this many times in a row.
MAX_RESUMES = 20

NOSPACE_REMEDY = (
    "free space: `tasklease purge --older-than 7d --yes` (finished tasks), then "
    "`etcdctl compact REV` (the revision purge prints), `etcdctl defrag` and `etcdctl alarm disarm` "
    "(docs/operations.md)"
)


def explain_nospace(exc: StoreNoSpace, what: str) -> StoreNoSpace:
    """The same error, saying what was refused and exactly how to recover."""
    error = StoreNoSpace(
        f"etcd is out of space (NOSPACE: its database reached its quota): {what} refused, "
        f"nothing written; {NOSPACE_REMEDY}"
    )
    error.__cause__ = exc
    return error


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What a purge found and did.

    Attributes:
        dry_run: Nothing was deleted (counts are what would have been).
        older_than_s: The age asked for.
        states: The states purged.
        queue: The queue purged (``None``: all).
        matched: Finished records that matched.
        matched_bytes: Their size (encoded records).
        deleted: Records this purge deleted.
        deleted_bytes: Their size.
        kept: Matched records that changed or vanished before their delete (not deleted by it).
        transactions: Delete transactions that committed.
        plain_deletes: Deletes sent without a compare (etcd refused transactions: NOSPACE).
        corrupt: Records skipped because they cannot be decoded.
        revision: etcd's revision after the last delete (``etcdctl compact`` up to it).
        remaining: Task records left in the namespace.
    """

    dry_run: bool
    older_than_s: float
    states: tuple[str, ...]
    queue: str | None
    matched: int = 0
    matched_bytes: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    kept: int = 0
    transactions: int = 0
    plain_deletes: int = 0
    corrupt: int = 0
    revision: int = 0
    remaining: int = 0


@dataclass(frozen=True, slots=True)
class _Doomed:
    """A finished record to delete: its key and mod revision as read, its size, its other keys."""

    key: str
    mod_revision: int
    size: int
    index: str  # its finished-index entry
    unique: str | None = None  # its idempotency key, released with it

    @property
    def deletes(self) -> list[Delete]:
        """Its deletes, the idempotency key first (see the module docstring)."""
        return [Delete(k) for k in (self.unique, self.key, self.index) if k is not None]


@dataclass
class _Purge:
    store: KVStore
    keys: Keyspace
    dry_run: bool
    # PurgeResult's counters (matched, matched_bytes, deleted, ...), filled as the purge goes
    count: Counter[str] = field(default_factory=Counter)
    group: list[_Doomed] = field(default_factory=list)

    async def add(self, doomed: _Doomed) -> None:
        self.count["matched"] += 1
        self.count["matched_bytes"] += doomed.size
        if self.dry_run:
            return
        if sum(len(d.deletes) for d in self.group) + len(doomed.deletes) > MAX_TXN_OPS:
            await self.flush()
        self.group.append(doomed)
        if len(self.group) >= DELETES_PER_TXN:
            await self.flush()

    async def flush(self) -> None:
        group, self.group = self.group, []
        if not group:
            return
        try:
            result = await self.store.txn(
                [Compare(d.key, "mod", "=", d.mod_revision) for d in group],
                [op for d in group for op in d.deletes],
            )
        except StoreNoSpace:
            await self._plain(group)
            return
        if result.succeeded:
            self._gone(group)
            self.count["transactions"] += 1
            return
        # Something in the group changed (or expired): one by one, keep exactly those.
        for item in group:
            try:
                one = await self.store.txn([Compare(item.key, "mod", "=", item.mod_revision)], item.deletes)
            except StoreNoSpace:
                await self._plain([item])
                continue
            if one.succeeded:
                self._gone([item])
                self.count["transactions"] += 1
            else:
                self.count["kept"] += 1

    def _gone(self, items: Iterable[_Doomed]) -> None:
        for item in items:
            self.count["deleted"] += 1
            self.count["deleted_bytes"] += item.size

    async def _plain(self, group: list[_Doomed]) -> None:
        if not self.count["plain_deletes"]:
            log.warning(
                "etcd refuses transactions (NOSPACE): deleting finished records with plain deletes "
                "(a finished record never changes)"
            )
        limit = asyncio.Semaphore(PLAIN_DELETES_IN_FLIGHT)

        async def one(item: _Doomed) -> None:
            async with limit:
                if item.unique is not None:
                    await self.store.delete(item.unique)
                n = await self.store.delete(item.key)
                await self.store.delete(item.index)
            self.count["plain_deletes"] += 1
            if n:
                self._gone([item])
            else:
                self.count["kept"] += 1  # expired meanwhile

        await asyncio.gather(*(one(item) for item in group))


def check_states(states: Iterable[TaskState | str] | None) -> tuple[TaskState, ...]:
    """The finished states to purge (all three by default).

    Raises:
        InvalidState: An unknown name.
        InvalidOption: A state that is not finished.
    """
    if states is None:
        return tuple(s for s in TaskState if s in TERMINAL_STATES)
    parsed = tuple(dict.fromkeys(s if isinstance(s, TaskState) else TaskState.parse(s) for s in states))
    if not parsed:
        raise InvalidOption("no state given to purge")
    for state in parsed:
        if state not in TERMINAL_STATES:
            raise InvalidOption(
                f"purge deletes finished tasks only: state {state.value!r} is not one of "
                "succeeded, failed, cancelled"
            )
    return parsed


async def purge(
    store: KVStore,
    keys: Keyspace,
    *,
    older_than_s: float,
    states: Iterable[TaskState | str] | None = None,
    queue: str | None = None,
    dry_run: bool = True,
    clock: Clock | None = None,
) -> PurgeResult:
    """Delete (or, in a dry run, count) finished tasks that finished ``older_than_s`` ago or more.

    Args:
        store: The connection.
        keys: The namespace.
        older_than_s: Minimum age in seconds since the task finished (>= 0, finite).
        states: Finished states to purge (default: succeeded, failed, cancelled).
        queue: Only this queue.
        dry_run: Count only (the default).
        clock: Time source.

    Raises:
        InvalidOption: A bad age, state or queue.
        StoreError: etcd failed (a purge can be run again: it deletes what is left).
    """
    if (
        isinstance(older_than_s, bool)
        or not isinstance(older_than_s, int | float)
        or not 0 <= older_than_s < float("inf")
    ):
        raise InvalidOption(f"purge age must be a finite number of seconds >= 0, got {older_than_s!r}")
    wanted = check_states(states)
    if queue is not None:
        check_name(queue)
    cutoff = (clock or SystemClock()).now() - older_than_s
    run = _Purge(store, keys, dry_run)
    prefix, end = keys.tasks, prefix_end(keys.tasks)
    start, resumes = prefix, 0
    while True:
        try:
            async with contextlib.aclosing(store.scan(start, end)) as pages:
                async for page in pages:
                    for kv in page.kvs:
                        start = kv.key + "\0"
                        try:
                            task = codec.decode_task(kv.key, kv.value)
                        except CorruptRecord as exc:
                            run.count["corrupt"] += 1
                            log.error("purge: skipping a record that cannot be decoded: %s", exc)
                            continue
                        if (
                            task.state in wanted
                            and (queue is None or task.queue == queue)
                            and task.updated_at <= cutoff
                        ):
                            index = keys.finished_entry(
                                task.state.value, task.queue, task.updated_at, task.id
                            )
                            unique = None
                            if task.idempotency_key is not None and task.unique_until is None:
                                unique = keys.unique(task.idempotency_key)
                            await run.add(_Doomed(kv.key, kv.mod_revision, len(kv.value), index, unique))
                    resumes = 0
            break
        except StoreCompacted:
            # The scan's snapshot was compacted (e.g. `etcdctl compact` during a purge): go on after
            # the last key read, at a new snapshot.
            if resumes >= MAX_RESUMES:
                raise
            resumes += 1
            log.info("purge: the read's revision was compacted; resuming after %s", start)
    await run.flush()
    left = await store.range(prefix, end, count_only=True)
    return PurgeResult(
        dry_run=dry_run,
        older_than_s=float(older_than_s),
        states=tuple(s.value for s in wanted),
        queue=queue,
        **run.count,
        revision=left.revision,
        remaining=left.count,
    )
