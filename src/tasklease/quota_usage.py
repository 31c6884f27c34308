"""What waits in a namespace, measured for a client's quota checks (:mod:`tasklease.quotas`).

Owns :class:`Usage` (one measurement), :class:`UsageMeter` (measures, keeps
the last count and byte measurements with their ages, shares one measurement
between concurrent submits) and the measuring costs' knobs. The costs and how
strict the checks are: the :mod:`tasklease.quotas` docstring.

Imports: :mod:`tasklease.clock`, :mod:`tasklease.keys`, :mod:`tasklease.store`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from tasklease import codec
from tasklease.clock import Clock
from tasklease.keys import Keyspace, prefix_end
from tasklease.store import Get, KVStore

# The byte measurement reads about this many waiting keys per second at most.
BYTES_KEYS_PER_S = 10_000
# Records of unmeasured keys are read this many per transaction...
GETS_PER_TXN = 16
# ...unless more than this many are new: then the whole queue prefix is read in pages.
FULL_READ_OVER = 256


@dataclass(frozen=True, slots=True)
class Usage:
    """What waits in a namespace, as measured.

    Attributes:
        waiting: Queued + pending tasks.
        waiting_bytes: Bytes of their records (``None``: not measured).
        revision: The etcd revision of the measurement.
    """

    waiting: int
    waiting_bytes: int | None
    revision: int


@dataclass(slots=True)
class Measure:
    """One kept measurement: a count or a number of bytes, at an etcd revision."""

    value: int
    revision: int
    at: float  # monotonic


class UsageMeter:
    """Measures what waits in a namespace, and keeps the last measurements for one client.

    Args:
        store: The client's connection.
        keys: The namespace.
        clock: Time source (monotonic ages of measurements).
        refresh_s: How long a waiting-task count is reused.
        on_measured: Called after each kept measurement with the oldest
            revision the kept measurements hold (the guard then forgets the
            submits they count).
    """

    def __init__(
        self,
        store: KVStore,
        keys: Keyspace,
        *,
        clock: Clock,
        refresh_s: float,
        on_measured: Callable[[int], None],
    ) -> None:
        self.store = store
        self.keys = keys
        self.clock = clock
        self.refresh_s = refresh_s
        self.on_measured = on_measured
        # Written by the meter's refresh (and forget_bytes); QuotaGuard.admit reads them.
        self.waiting: Measure | None = None  # the count of waiting tasks
        self.waiting_bytes: Measure | None = None  # the bytes of their records
        self._sizes: dict[str, tuple[int, int]] = {}  # waiting key -> (mod revision, record size)
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshing_bytes = False
        self.measurements = 0  # how many times usage was measured (tests, metrics)

    def forget_bytes(self) -> None:
        """No bytes limit (any more): drop the byte measurement and the sizes it keeps."""
        self._sizes.clear()
        self.waiting_bytes = None

    def note_size(self, key: str, revision: int, size: int) -> None:
        """A waiting key this client wrote at ``revision``, with its record's size: no need to read it."""
        self._sizes[key] = (revision, size)

    def _needs(self, with_bytes: bool) -> str | None:
        now = self.clock.monotonic()
        if with_bytes:
            interval = max(self.refresh_s, len(self._sizes) / BYTES_KEYS_PER_S)
            if self.waiting_bytes is None or now - self.waiting_bytes.at >= interval:
                return "bytes"
        if self.waiting is None or now - self.waiting.at >= self.refresh_s:
            return "count"
        return None

    async def fresh(self, with_bytes: bool) -> None:
        """Measure usage if it is older than allowed; concurrent callers share one measurement.

        Args:
            with_bytes: Whether the bytes are needed too (a bytes limit is set).
        """
        while (need := self._needs(with_bytes)) is not None:
            task = self._refreshing
            if task is not None and not task.done():
                covers = self._refreshing_bytes or need == "count"
                await asyncio.shield(task)
                if covers:
                    return
                continue  # a count landed; bytes are still needed
            task = self._refreshing = asyncio.create_task(self._refresh(need == "bytes"))
            self._refreshing_bytes = need == "bytes"
            task.add_done_callback(consume_outcome)
            await asyncio.shield(task)
            return

    async def _refresh(self, with_bytes: bool) -> None:
        usage = await self.measure(with_bytes=with_bytes)
        now = self.clock.monotonic()
        self.waiting = Measure(usage.waiting, usage.revision, now)
        if usage.waiting_bytes is not None:
            self.waiting_bytes = Measure(usage.waiting_bytes, usage.revision, now)
        self.on_measured(min(m.revision for m in (self.waiting, self.waiting_bytes) if m is not None))

    async def close(self) -> None:
        """Stop a measurement in flight."""
        task = self._refreshing
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def measure(self, *, with_bytes: bool) -> Usage:
        """Measure what waits now (the costs are in the module docstring)."""
        self.measurements += 1
        if not with_bytes:
            queued = await self.store.range(self.keys.queues, prefix_end(self.keys.queues), count_only=True)
            pending = await self.store.range(
                self.keys.delayed, prefix_end(self.keys.delayed), count_only=True
            )
            return Usage(queued.count + pending.count, None, queued.revision)
        queued_index, revision = await self._index(self.keys.queues)
        new = [k for k, mod in queued_index.items() if self._sizes.get(k, (0, 0))[0] != mod]
        sizes: dict[str, tuple[int, int]] = {}
        if len(new) > FULL_READ_OVER:
            sizes, revision = await self._read_prefix(self.keys.queues)
        else:
            sizes = {k: self._sizes[k] for k in queued_index if k in self._sizes and k not in new}
            sizes.update(await self._read_sizes({k: k for k in new}))
        pending_index, _ = await self._index(self.keys.delayed)
        for key, mod in pending_index.items():
            known = self._sizes.get(key)
            if known is not None and known[0] == mod:
                sizes[key] = known
        unknown = {
            k: self.keys.task(self.keys.parse_delayed(k).task_id) for k in pending_index if k not in sizes
        }
        for key, (_, size) in (await self._read_sizes(unknown)).items():
            sizes[key] = (pending_index[key], size)
        self._sizes = sizes
        return Usage(len(queued_index) + len(pending_index), sum(s for _, s in sizes.values()), revision)

    async def _index(self, prefix: str) -> tuple[dict[str, int], int]:
        """Keys under ``prefix`` with their mod revisions (keys-only pages), and the read's revision."""
        index: dict[str, int] = {}
        revision = 0
        async with contextlib.aclosing(self.store.scan(prefix, prefix_end(prefix), keys_only=True)) as pages:
            async for page in pages:
                revision = page.revision
                index.update((kv.key, kv.mod_revision) for kv in page.kvs)
        if not revision:
            _, revision = await self.store.get(prefix)
        return index, revision

    async def _read_prefix(self, prefix: str) -> tuple[dict[str, tuple[int, int]], int]:
        sizes: dict[str, tuple[int, int]] = {}
        revision = 0
        async with contextlib.aclosing(self.store.scan(prefix, prefix_end(prefix))) as pages:
            async for page in pages:
                revision = page.revision
                # a queue key's value is the record without its payload, and the record's size
                sizes.update(
                    (kv.key, (kv.mod_revision, codec.index_record_bytes(kv.value))) for kv in page.kvs
                )
        if not revision:
            _, revision = await self.store.get(prefix)
        return sizes, revision

    async def _read_sizes(self, where: dict[str, str]) -> dict[str, tuple[int, int]]:
        """For each ``index key -> record key``, the record's (mod revision, size); gone keys left out."""
        found: dict[str, tuple[int, int]] = {}
        items = list(where.items())
        for start in range(0, len(items), GETS_PER_TXN):
            group = items[start : start + GETS_PER_TXN]
            result = await self.store.txn([], [Get(record) for _, record in group])
            for (index_key, _), kvs in zip(group, result.reads, strict=True):
                if kvs:
                    # a record, or a queue key (the record's size is in its value)
                    found[index_key] = (kvs[0].mod_revision, codec.index_record_bytes(kvs[0].value))
        return found


def consume_outcome(task: asyncio.Task[None]) -> None:
    """Retrieve a background task's error, so a task whose waiters were all cancelled logs nothing."""
    # A measurement whose waiters were all cancelled: its error is not "never retrieved".
    if not task.cancelled():
        task.exception()
