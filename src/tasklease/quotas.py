"""Per-namespace quotas: most waiting tasks, most bytes of waiting records, longest retention.

A deployer sets them (``tasklease quota set``); every client enforces them at
``submit`` / ``submit_many`` and refuses what is over with
:class:`QuotaExceeded` (a :class:`~tasklease.errors.ValidationError`: nothing
is written, the CLI exits 2). Retries, recoveries and promotions made by
workers and schedulers are never refused: a quota limits admission only.

The record. ``/{ns}/settings/quota`` holds JSON (``{"v": 1, "max_queued": N,
"max_queued_bytes": B, "max_retention_s": S, "updated_at": T}``; a limit that
is ``null`` or absent is not enforced). No key, no quota. A record that cannot
be read makes every submit fail (``CorruptRecord``, naming the key) until it is
fixed with ``quota set`` or ``quota clear``: a limit meant to protect etcd
fails closed.

What a submit costs (:class:`QuotaGuard`, one per client):

* The record: one ``get`` at the client's first submit, then one watch stream
  on that key for the client's life. A change reaches running clients through
  the watch (typically within milliseconds); no submit reads it. While the
  watch is broken the last value read stays in force.
* Retention: nothing more (checked against the cached record).
* ``max_queued``: waiting tasks are counted with two ``count_only`` range
  requests (``queue/`` and ``delayed/``: queued and pending tasks); etcd walks
  its in-memory key index and returns a number, no keys or values. The count is
  cached for ``refresh_s`` (1 s): at most two such requests per second per
  submitting client, shared by all its concurrent submits.
* ``max_queued_bytes``: the encoded size of every waiting record (a queued
  task's record, counted once although etcd stores it twice, as its record and
  as its queue key; a pending task's record). Measured by a keys-only read of
  ``queue/`` and ``delayed/`` (about 100 bytes per waiting task; etcd reads
  each value from its backend but sends only keys), plus one read of each
  record this client has not measured before (transactions of 16 gets;
  a paged read of the whole queue prefix when more than 256 are new).
  Re-measured at most every ``max(refresh_s, N / 10,000)`` seconds for ``N``
  waiting tasks (so 10 s at 100,000). The client keeps one ``(revision, size)``
  pair per waiting key. Without a bytes limit none of this happens.

How strict. A check compares ``usage + this submit`` with the limit, where usage
is the last measurement (at its etcd revision) plus every task this client
submitted after that revision or is submitting now. So one client alone never
goes over a limit (its concurrent submits reserve their share before writing),
and several clients together overshoot by at most what the *others* submit
between a client's measurements: within 1 s for the count, within
``max(1 s, N / 10,000 s)`` for bytes. A running client also takes up to the
watch's delay to see a lowered limit. Tasks leaving the queues (assigned,
cancelled) free room at the next measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tasklease import codec
from tasklease.clock import Clock, SystemClock
from tasklease.errors import CorruptRecord, InvalidOption, StoreError, WatchCompacted
from tasklease.errors import QuotaExceeded as QuotaExceeded  # noqa: PLC0414 (moved to errors.py; re-exported here)
from tasklease.keys import Keyspace
from tasklease.models import DEFAULT_RETENTION_S, MAX_RETENTION_S, Task
from tasklease.quota_usage import Usage as Usage  # noqa: PLC0414 (moved to quota_usage.py; re-exported here)
from tasklease.quota_usage import UsageMeter, consume_outcome
from tasklease.store import KV, Compare, Delete, KVStore, Put
from tasklease.transitions import queue_key

log = logging.getLogger("tasklease.quotas")

QUOTA_VERSION = 1
# A waiting-task count is reused for this long (seconds).
REFRESH_S = 1.0


# units ----------------------------------------------------------------------------------
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_NUMBER_UNIT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*")


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"`` (a finite number >= 0).

    Raises:
        InvalidOption: Anything else (negative, NaN, infinity, another unit).
    """
    match = _NUMBER_UNIT.fullmatch(text.lower()) if isinstance(text, str) else None
    if match is None or match.group(2) not in ("", *_DURATION_UNITS):
        raise InvalidOption(f"bad duration {text!r}: use a number with s, m, h or d (e.g. 90s, 12h, 7d)")
    value = float(match.group(1)) * _DURATION_UNITS.get(match.group(2), 1)
    if not math.isfinite(value):
        raise InvalidOption(f"bad duration {text!r}: not a finite number")
    return value


def format_duration(seconds: float) -> str:
    """``604800`` -> ``"7d"``, ``5400`` -> ``"1.5h"``, ``90`` -> ``"90s"``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and (seconds * 10) % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def parse_size(text: str) -> int:
    """Bytes from ``"1048576"``, ``"512KiB"``, ``"64MiB"``, ``"1GiB"``, ``"500MB"`` (``K``, ``M``, ``G`` are binary).

    Raises:
        InvalidOption: Anything else.
    """
    match = _NUMBER_UNIT.fullmatch(text.lower()) if isinstance(text, str) else None
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise InvalidOption(f"bad size {text!r}: use bytes or a number with KiB, MiB, GiB (or KB, MB, GB)")
    value = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if not math.isfinite(value) or value >= 2**63:
        raise InvalidOption(f"bad size {text!r}: too large")
    return int(value)


def format_size(size: float) -> str:
    """``512`` -> ``"512 B"``, ``1536`` -> ``"1.5 KiB"``, ``67108864`` -> ``"64.0 MiB"``."""
    if size < 1024:
        return f"{size:g} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"


# the record -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Quota:
    """A namespace's limits; ``None`` is no limit.

    Attributes:
        max_queued: Most waiting tasks (queued + pending); 0 refuses every submit.
        max_queued_bytes: Most bytes of waiting task records (each counted once,
            as encoded).
        max_retention_s: Longest retention a submit may ask for (seconds).
        updated_at: When it was written (wall clock; informational).
    """

    max_queued: int | None = None
    max_queued_bytes: int | None = None
    max_retention_s: float | None = None
    updated_at: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_queued", "max_queued_bytes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InvalidOption(f"{name} must be an integer >= 0, got {value!r}")
        r = self.max_retention_s
        if r is not None and (
            isinstance(r, bool) or not isinstance(r, int | float) or not 1 <= r <= MAX_RETENTION_S
        ):
            raise InvalidOption(
                f"max_retention_s must be a number of seconds in 1..{MAX_RETENTION_S:g}, got {r!r}"
            )

    @property
    def limits_waiting(self) -> bool:
        """Whether a submit needs to know how many tasks (or bytes) wait."""
        return self.max_queued is not None or self.max_queued_bytes is not None

    def default_retention_s(self) -> float:
        """The retention of a submit that gives none: 7 days, or the maximum if lower."""
        if self.max_retention_s is None:
            return DEFAULT_RETENTION_S
        return min(DEFAULT_RETENTION_S, self.max_retention_s)

    @property
    def empty(self) -> bool:
        """Whether it limits nothing."""
        return not self.limits_waiting and self.max_retention_s is None

    def to_dict(self) -> dict[str, Any]:
        """The stored (and ``--json``) form."""
        return {
            "v": QUOTA_VERSION,
            "max_queued": self.max_queued,
            "max_queued_bytes": self.max_queued_bytes,
            "max_retention_s": self.max_retention_s,
            "updated_at": self.updated_at,
        }

    def encode(self) -> bytes:
        """The record's value."""
        return codec.encode_obj(self.to_dict())

    @classmethod
    def decode(cls, key: str, data: bytes) -> Quota:
        """Read a record.

        Raises:
            CorruptRecord: Not a quota record of a version this code reads.
        """
        d = codec.decode_obj(key, data)
        if d.get("v") != QUOTA_VERSION:
            raise CorruptRecord(key, f"unknown quota record version {d.get('v')!r}")
        try:
            return cls(
                max_queued=d.get("max_queued"),
                max_queued_bytes=d.get("max_queued_bytes"),
                max_retention_s=d.get("max_retention_s"),
                updated_at=d.get("updated_at"),
            )
        except InvalidOption as exc:
            raise CorruptRecord(key, str(exc)) from None


async def read_quota(store: KVStore, keys: Keyspace) -> tuple[Quota | None, KV | None]:
    """The namespace's quota (``None``: none set) and its key as read (for a compare).

    Raises:
        CorruptRecord: The record cannot be read.
    """
    kv, _ = await store.get(keys.quota)
    if kv is None:
        return None, None
    return Quota.decode(kv.key, kv.value), kv


async def write_quota(
    store: KVStore, keys: Keyspace, quota: Quota | None, *, expect: KV | None = None
) -> int:
    """Write (or, with ``None`` or an empty quota, delete) the record; return the revision.

    With ``expect`` (the key as read by :func:`read_quota`, or ``None`` for
    "absent"), only if nobody changed it meanwhile.

    Raises:
        ConflictError: It changed since ``expect`` was read.
    """
    from tasklease.errors import ConflictError

    key = keys.quota
    op: Put | Delete = Delete(key) if quota is None or quota.empty else Put(key, quota.encode())
    compare = Compare.unchanged(expect) if expect is not None else Compare.absent(key)
    result = await store.txn([compare], [op])
    if not result.succeeded:
        raise ConflictError(f"the quota of namespace {keys.namespace!r} changed meanwhile; try again")
    return result.revision


async def change_quota(
    store: KVStore, keys: Keyspace, changes: dict[str, Any], *, now: float
) -> tuple[Quota | None, int]:
    """Change some limits and keep the others (``quota set``); a value of ``None`` removes a limit.

    A record that cannot be read is replaced. With no limit left the record is deleted.

    Returns:
        The quota now in force (``None``: none) and the revision of the change.

    Raises:
        InvalidOption: A bad value or an unknown limit.
        ConflictError: Someone changed the record at the same time.
    """
    unknown = set(changes) - {"max_queued", "max_queued_bytes", "max_retention_s"}
    if unknown:
        raise InvalidOption(f"unknown quota limit(s): {', '.join(sorted(unknown))}")
    kv, _ = await store.get(keys.quota)
    current = Quota()
    if kv is not None:
        try:
            current = Quota.decode(kv.key, kv.value)
        except CorruptRecord as exc:
            log.warning("replacing a quota record that cannot be read: %s", exc)
    quota = Quota(
        max_queued=changes.get("max_queued", current.max_queued),
        max_queued_bytes=changes.get("max_queued_bytes", current.max_queued_bytes),
        max_retention_s=changes.get("max_retention_s", current.max_retention_s),
        updated_at=now,
    )
    revision = await write_quota(store, keys, quota, expect=kv)
    return (None if quota.empty else quota), revision


# admission ------------------------------------------------------------------------------
@dataclass(slots=True)
class _Submit:
    """A task this client is submitting (revision None) or submitted (at revision)."""

    size: int
    key: str  # its queue key
    revision: int | None = None


class QuotaGuard:
    """Caches a namespace's quota for one client, and admits its submits.

    Usage is measured by its :class:`~tasklease.quota_usage.UsageMeter`
    (``meter``); the guard adds this client's submits that a measurement does
    not hold yet.

    Args:
        store: The client's connection.
        keys: The namespace.
        clock: Time source (monotonic ages of measurements).
        refresh_s: How long a waiting-task count is reused.
    """

    def __init__(
        self, store: KVStore, keys: Keyspace, *, clock: Clock | None = None, refresh_s: float = REFRESH_S
    ) -> None:
        self.store = store
        self.keys = keys
        self.clock = clock or SystemClock()
        self.meter = UsageMeter(store, keys, clock=self.clock, refresh_s=refresh_s, on_measured=self._forget)
        self._quota: Quota | None = None
        self._error: CorruptRecord | None = None
        self._loaded = False
        self._seen = 0  # revision of the quota record as last read or watched
        self._bumped: asyncio.Event | None = None  # set (and replaced) when the record changes
        self._loading: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._submits: dict[str, _Submit] = {}  # admitted tasks, by id: admit/landed/abandon and _forget

    @property
    def refresh_s(self) -> float:
        """How long a waiting-task count is reused (tests set it)."""
        return self.meter.refresh_s

    @refresh_s.setter
    def refresh_s(self, value: float) -> None:
        self.meter.refresh_s = value

    @property
    def measurements(self) -> int:
        """How many times usage was measured (tests, metrics)."""
        return self.meter.measurements

    # the record ----------------------------------------------------------------------------
    async def current(self) -> Quota | None:
        """The quota in force. The first call reads it and starts the watch.

        Raises:
            CorruptRecord: The record cannot be read (fix it with ``quota set`` or ``clear``).
            StoreError: The first read failed.
        """
        if not self._loaded:
            # One shared read: its waiters all wake together, so the first burst of
            # concurrent submits still goes out as one group transaction.
            if self._loading is None or self._loading.done():
                self._loading = asyncio.create_task(self._load(), name="tasklease-quota-read")
                self._loading.add_done_callback(consume_outcome)
            await asyncio.shield(self._loading)
        if self._error is not None:
            raise self._error
        return self._quota

    async def _load(self) -> None:
        kv, revision = await self.store.get(self.keys.quota)
        self._apply(kv, revision)
        self._loaded = True
        self._watcher = asyncio.create_task(self._follow(revision + 1), name="tasklease-quota-watch")

    def _apply(self, kv: KV | None, revision: int) -> None:
        """Take the record as read or watched at ``revision`` (``None``: no record)."""
        if kv is None:
            self._set(None, None, revision)
            return
        try:
            self._set(Quota.decode(kv.key, kv.value), None, revision)
        except CorruptRecord as exc:
            error = CorruptRecord(
                kv.key,
                f"{exc}; every submit is refused until `tasklease quota set` or `quota clear` fixes it",
            )
            log.error("%s", error)
            self._set(None, error, revision)

    def _set(self, quota: Quota | None, error: CorruptRecord | None, revision: int) -> None:
        if revision < self._seen:
            return
        self._quota, self._error, self._seen = quota, error, revision
        if quota is None or quota.max_queued_bytes is None:
            self.meter.forget_bytes()
        if self._bumped is not None:
            self._bumped.set()
            self._bumped = None

    async def _follow(self, start: int) -> None:
        """Keep the cached record current: watch its key; re-read after a compaction or a failure."""
        key = self.keys.quota
        revision = start
        backoff = 0.2
        while True:
            try:
                async for events in self.store.watch(key, key + "\0", revision):
                    for ev in events:
                        self._apply(ev.kv if ev.type == "put" else None, ev.kv.mod_revision)
                    revision = events[-1].kv.mod_revision + 1
                    backoff = 0.2
            except WatchCompacted:
                pass
            except StoreError as exc:
                log.warning(
                    "quota watch of namespace %s failed (%s); the last quota read stays in force, "
                    "reading it again in %.1f s",
                    self.keys.namespace,
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            try:
                kv, read_at = await self.store.get(key)
            except StoreError:
                continue
            self._apply(kv, read_at)
            revision = read_at + 1

    async def caught_up(self, revision: int) -> Quota | None:
        """Wait until the cached record is at least as new as ``revision`` (e.g. a ``quota set``'s)."""
        if not self._loaded:
            # (an older record that cannot be read must not stop the wait for the newer one)
            with contextlib.suppress(CorruptRecord):
                await self.current()
        while self._seen < revision:
            if self._bumped is None:
                self._bumped = asyncio.Event()
            await self._bumped.wait()
        return await self.current()

    def note(self, quota: Quota | None, revision: int) -> None:
        """Take a record this client has just written at ``revision`` (its watch delivers it too)."""
        if self._loaded:
            self._set(None if quota is None or quota.empty else quota, None, revision)

    async def close(self) -> None:
        """Stop the watch and any measurement in flight."""
        for task in (self._loading, self._watcher):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await self.meter.close()
        self._watcher = None

    # admission -----------------------------------------------------------------------------
    async def admit(self, items: Sequence[tuple[Task, bytes]]) -> None:
        """Check new tasks (with their encoded records) against the quota; reserve their share.

        Every admitted task must later be passed to :meth:`landed` (written, at
        a revision) or :meth:`abandon` (not written).

        Raises:
            QuotaExceeded: Over a limit (nothing reserved).
        """
        quota = await self.current()
        if quota is None or not items:
            return
        ns = self.keys.namespace
        if quota.max_retention_s is not None:
            longest = max(t.retention_s for t, _ in items)
            if longest > quota.max_retention_s:
                raise QuotaExceeded(
                    f"quota of namespace {ns!r}: retention {format_duration(longest)} is over the "
                    f"maximum of {format_duration(quota.max_retention_s)}; submit with a shorter retention",
                    limit="max_retention_s",
                    allowed=quota.max_retention_s,
                    usage=longest,
                    adding=0,
                )
        if not quota.limits_waiting:
            return
        await self.meter.fresh(quota.max_queued_bytes is not None)
        waiting, waiting_bytes = self._usage()
        adding, adding_bytes = len(items), sum(len(d) for _, d in items)
        counted = self.meter.waiting
        assert counted is not None
        if quota.max_queued is not None and waiting + adding > quota.max_queued:
            age = self.clock.monotonic() - counted.at
            raise QuotaExceeded(
                f"quota of namespace {ns!r}: at most {quota.max_queued} waiting tasks (queued + pending); "
                f"{waiting} are waiting (counted {age:.1f} s ago) and this submit adds {adding}",
                limit="max_queued",
                allowed=quota.max_queued,
                usage=waiting,
                adding=adding,
            )
        if quota.max_queued_bytes is not None and waiting_bytes + adding_bytes > quota.max_queued_bytes:
            measured = self.meter.waiting_bytes
            assert measured is not None
            age = self.clock.monotonic() - measured.at
            raise QuotaExceeded(
                f"quota of namespace {ns!r}: at most {format_size(quota.max_queued_bytes)} of waiting task "
                f"records; {format_size(waiting_bytes)} are waiting (measured {age:.1f} s ago) and this "
                f"submit adds {format_size(adding_bytes)}",
                limit="max_queued_bytes",
                allowed=quota.max_queued_bytes,
                usage=waiting_bytes,
                adding=adding_bytes,
            )
        for task, data in items:
            self._submits[task.id] = _Submit(len(data), queue_key(self.keys, task))

    def landed(self, task_id: str, revision: int) -> None:
        """An admitted task was written by the transaction at ``revision``."""
        submit = self._submits.get(task_id)
        if submit is not None:
            submit.revision = revision
            if self._quota is not None and self._quota.max_queued_bytes is not None:
                # Its queue key was written by that transaction: no need to read its size.
                self.meter.note_size(submit.key, revision, submit.size)

    def abandon(self, task_ids: Sequence[str]) -> None:
        """Admitted tasks that were not written (or are settled): drop those not landed."""
        for task_id in task_ids:
            submit = self._submits.get(task_id)
            if submit is not None and submit.revision is None:
                del self._submits[task_id]

    def _usage(self) -> tuple[int, int]:
        """Waiting tasks and bytes: the measurements plus this client's submits they do not hold."""
        counted, measured = self.meter.waiting, self.meter.waiting_bytes
        assert counted is not None
        count_rev = counted.revision
        bytes_rev = measured.revision if measured is not None else 0
        waiting = counted.value
        waiting_bytes = measured.value if measured is not None else 0
        for submit in self._submits.values():
            if submit.revision is None or submit.revision > count_rev:
                waiting += 1
            if submit.revision is None or submit.revision > bytes_rev:
                waiting_bytes += submit.size
        return waiting, waiting_bytes

    def _forget(self, revision: int) -> None:
        """Drop the submits landed at or before ``revision``: every kept measurement holds them."""
        self._submits = {
            k: s for k, s in self._submits.items() if s.revision is None or s.revision > revision
        }

    async def measure(self, *, with_bytes: bool) -> Usage:
        """Measure what waits now (:meth:`UsageMeter.measure`; the costs are in the module docstring)."""
        return await self.meter.measure(with_bytes=with_bytes)
