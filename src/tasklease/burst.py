"""Burst mode: a worker that runs until nothing is left for it, then drains and exits (as arq and RQ have).

A burst worker (``WorkerConfig(burst=True)``, ``tasklease worker --burst``) is
done when, at one etcd revision, it holds no assignment and none of its queues
holds a queued task it may run (its types and tags, as the scheduler decides:
``routing.eligible`` on the route in each queue key), and it runs nothing.
Tasks of types or tags it cannot run never keep it alive; pending retries
(waiting for their backoff under ``delayed/``) do not either: they are not
queued yet.

When it checks: whenever it becomes idle (its last run ended), and every
:data:`RECHECK_S` while it stays idle (tasks still queued for it, or a store
error). While it runs tasks it does not check at all: no busy polling.

Cost of a check: one count-only range of its assignments, then keys-only
reads of its queues at that revision (``Store.scan``: pages bounded by count
and bytes), stopping at the first task it may run. A queue key written by a
version without routes is read (its value is the record) to learn its route.

May import: codec, errors, keys, routing, store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from tasklease import codec
from tasklease.errors import CorruptRecord, StoreError
from tasklease.keys import Keyspace, prefix_end
from tasklease.routing import Route, eligible, parse_route
from tasklease.store import KVStore

log = logging.getLogger("tasklease.worker")

# While idle, look again this often (tasks still queued for this worker, or a store error).
RECHECK_S = 1.0


async def nothing_left(
    store: KVStore,
    keys: Keyspace,
    worker_id: str,
    queues: Sequence[str],
    types: Iterable[str],
    tags: Mapping[str, str],
) -> bool:
    """Whether, at one revision, ``worker_id`` holds no assignment and its queues nothing it may run.

    Raises:
        StoreError: etcd did not answer (the caller checks again later).
    """
    prefix = keys.worker_assignments(worker_id)
    held = await store.range(prefix, prefix_end(prefix), count_only=True)
    if held.count:
        return False
    runs = frozenset(types)
    routes: dict[str, bool] = {}  # route text -> whether we may run it (parsed once per check)
    for queue in queues:
        start = keys.queue(queue)
        async with contextlib.aclosing(
            store.scan(start, prefix_end(start), revision=held.revision, keys_only=True)
        ) as pages:
            async for page in pages:
                for kv in page.kvs:
                    if await _may_run(store, keys, kv.key, runs, tags, routes):
                        return False
    return True


async def _may_run(
    store: KVStore,
    keys: Keyspace,
    key: str,
    types: frozenset[str],
    tags: Mapping[str, str],
    routes: dict[str, bool],
) -> bool:
    try:
        _, text = keys.parse_queue_group(key)
    except (ValueError, TypeError):
        return False  # not a queue key of ours: the scheduler skips it too
    if text:
        known = routes.get(text)
        if known is None:
            try:
                known = eligible(types, tags, parse_route(text))
            except ValueError:
                known = False
            routes[text] = known
        return known
    # A key of a version without routes: its value is the queued record.
    kv, _ = await store.get(key)
    if kv is None:
        return False
    try:
        task = codec.decode_task(kv.key, kv.value)
    except CorruptRecord:
        return False
    return eligible(types, tags, Route(task.type, task.requires))


class Burst:
    """Ends a burst worker once nothing is left for it.

    Args:
        store: The etcd connection.
        keys: The namespace.
        worker_id: The worker's id.
        queues: The queues it serves.
        types: The task types it runs.
        tags: Its tags.
        idle: Whether the worker holds no run right now.
        ready: Whether the worker is registered under a live lease.
        finish: Drains and stops the worker.
        recheck_s: How often to look again while idle.
    """

    def __init__(
        self,
        store: KVStore,
        keys: Keyspace,
        worker_id: str,
        queues: Sequence[str],
        types: Iterable[str],
        tags: Mapping[str, str],
        *,
        idle: Callable[[], bool],
        ready: Callable[[], bool],
        finish: Callable[[], Awaitable[None]],
        recheck_s: float = RECHECK_S,
    ) -> None:
        self._check = functools.partial(
            nothing_left, store, keys, worker_id, tuple(queues), tuple(types), dict(tags)
        )
        self._idle = idle
        self._ready = ready
        self._finish = finish
        self._extra = {"component": "worker", "worker": worker_id}
        self._recheck_s = recheck_s
        # Set by wake() (the worker became idle), cleared by run() only.
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """The worker became idle: check now."""
        self._wake.set()

    async def run(self) -> None:
        """Check whenever woken (and every ``recheck_s`` while idle); once done, finish and return."""
        while True:
            self._wake.clear()  # before the check: a wake during it makes us look again
            if self._ready() and self._idle() and await self._done():
                log.info(
                    "burst: no task left that this worker may run; draining and exiting", extra=self._extra
                )
                await self._finish()
                return
            timeout = self._recheck_s if self._idle() else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _done(self) -> bool:
        try:
            done = await self._check()
        except (StoreError, OSError) as exc:
            log.warning(
                "burst: cannot tell whether tasks are left (%s); looking again", exc, extra=self._extra
            )
            return False
        return done and self._idle()  # an assignment that arrived during the read keeps us
