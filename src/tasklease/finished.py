"""Reads of the finished index and of records by id: listings and counts without scans.

The finished index (keys.py: ``terminal/{state}/{queue}/{inv}/{id}``, written
with every finish, transitions.py) answers, without reading a task record:

- which queues there are: the queue registry (``queues/{queue}``, keys.py),
  one small read (:func:`known_queue_names`);
- how many tasks of a state finished in a queue, in all or since a time: one
  ``count_only`` range (:func:`count_finished`);
- the finished tasks of a state, newest first, filtered by queue, type and
  time, a page at a time (:func:`list_finished`): per queue ranges of index
  entries (small values: type and the start of the error) in time windows that
  grow back from the page's start, merged newest first.

Why windows: etcd 3.5 walks every key of a range to count it even when it
returns only ``limit`` keys (etcd-io/etcd#11057), so a range's cost is the
number of keys between its ends, not the number returned. Every read here is
bounded by a time window or by one queue's entries.

:func:`read_records` then reads the records of one page by id, in
transactions of at most ``GETS_PER_TXN`` gets, split in half when a response
would be over the receive limit (records are up to 1 MiB).

May import: codec, errors, keys, models, store.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tasklease import codec
from tasklease.errors import CorruptRecord, InvalidOption, PayloadTooLarge, StoreRequestTooLarge
from tasklease.keys import INV_MAX, SEQ_DIGITS, Keyspace, check_name, inverted_us, prefix_end
from tasklease.models import TERMINAL_STATES, Task, TaskState
from tasklease.store import KV, Get, KVStore

log = logging.getLogger("tasklease.client")

GETS_PER_TXN = 32
# With a type filter, a listing examines at most this many index entries per queue and request;
# a page may then hold fewer tasks than its limit, and its cursor goes on from where it stopped.
TYPE_BUDGET = 2000
# The first time window a listing reads back from its start, and how much each next one grows.
PROBE_FIRST_S = 1.0
PROBE_GROWTH = 32
# Index entries read per range while filtering by type (values are about 100-300 bytes).
INDEX_PAGE = 500


@dataclass(frozen=True, slots=True)
class FinishedEntry:
    """One entry of the finished index.

    Attributes:
        state: ``succeeded``, ``failed`` or ``cancelled``.
        queue: The task's queue.
        finished_at: When it finished (epoch seconds).
        task_id: The task.
        type: The task's type.
        error: The start of its error (at most 200 characters), if any.
        position: Where it sorts (``{inv}/{id}``): a listing's cursor.
    """

    state: str
    queue: str
    finished_at: float
    task_id: str
    type: str
    error: str | None
    position: str


def check_finished_state(state: TaskState) -> str:
    """The state's name, if it is a finished state.

    Raises:
        InvalidOption: It is not.
    """
    if state not in TERMINAL_STATES:
        raise InvalidOption(f"{state.value!r} is not a finished state (succeeded, failed, cancelled)")
    return state.value


def _since_end(prefix: str, since: float | None) -> str:
    """The end of a queue's index range for entries that finished at ``since`` or later."""
    if since is None:
        return prefix_end(prefix)
    return f"{prefix}{inverted_us(since):0{SEQ_DIGITS}d}0"  # "0" sorts after "/": that instant included


async def count_finished(
    store: KVStore, keys: Keyspace, state: str, queue: str, *, since: float | None = None, revision: int = 0
) -> int:
    """How many tasks of ``state`` finished in ``queue`` (since ``since``): one ``count_only`` range."""
    prefix = keys.finished_queue(state, queue)
    page = await store.range(prefix, _since_end(prefix, since), count_only=True, revision=revision)
    return page.count


def _check_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    inv, sep, task_id = cursor.partition("/") if isinstance(cursor, str) else ("", "", "")
    if not (sep and len(inv) == SEQ_DIGITS and inv.isascii() and inv.isdigit() and task_id.isalnum()):
        raise InvalidOption(f"bad cursor {cursor!r}"[:120])
    return cursor


async def _queue_entries(
    store: KVStore,
    keys: Keyspace,
    state: str,
    queue: str,
    *,
    task_type: str | None,
    since: float | None,
    cursor: str | None,
    limit: int,
    now: float,
) -> tuple[list[FinishedEntry], str | None]:
    """The first ``limit`` matching entries of one queue after ``cursor``, newest first.

    Returns:
        The entries, and where the read stopped if it examined ``TYPE_BUDGET``
        entries (a type filter) before finding ``limit`` or reaching the end
        (``None`` otherwise): entries after that position were not examined.

    Read in time windows that grow from ``PROBE_FIRST_S`` by ``PROBE_GROWTH``
    (back from the cursor's time, or ``now``): etcd 3.5 walks every key of a
    range even to return a few, so a read that ended at the index's end would
    cost as much as the queue's whole history. At most ~7 reads for a sparse
    queue; a dense one is served from its first windows.
    """
    prefix = keys.finished_queue(state, queue)
    start = prefix + cursor + "\0" if cursor else prefix
    newest = INV_MAX - int(cursor.partition("/")[0]) if cursor else int(now * 1_000_000)
    found: list[FinishedEntry] = []
    window_us = PROBE_FIRST_S * 1_000_000
    examined = 0
    # the JSON of the wanted type, as encode_obj writes it (a type is plain text): skip others undecoded
    marker = b'"type":"' + task_type.encode() + b'"' if task_type is not None else b""
    while len(found) < limit:
        lower_us = newest - window_us
        if since is not None and lower_us <= since * 1_000_000:
            end, last = _since_end(prefix, since), True
        elif lower_us <= 0:
            end, last = prefix_end(prefix), True
        else:
            end, last = f"{prefix}{inverted_us(lower_us / 1_000_000):0{SEQ_DIGITS}d}0", False
        want = INDEX_PAGE if task_type else limit - len(found)
        page = await store.range(start, end, limit=want)
        for kv in page.kvs:
            start = kv.key + "\0"
            examined += 1
            if marker and marker not in kv.value:
                continue
            entry = _entry(keys, state, queue, prefix, kv)
            if entry is None or (task_type is not None and entry.type != task_type):
                continue
            found.append(entry)
            if len(found) >= limit:
                return found, None
        if page.more or not last:
            if task_type is not None and examined >= TYPE_BUDGET:
                return found, start[len(prefix) : -1]  # the last position examined
            if not page.more:
                window_us *= PROBE_GROWTH
            continue
        break
    return found, None


def _entry(keys: Keyspace, state: str, queue: str, prefix: str, kv: KV) -> FinishedEntry | None:
    try:
        parsed = keys.parse_finished(kv.key)
        value = codec.decode_obj(kv.key, kv.value)
    except (ValueError, CorruptRecord) as exc:
        log.error("skipping a bad finished-index entry: %s", exc)
        return None
    error = value.get("error")
    return FinishedEntry(
        state,
        queue,
        parsed.finished_at,
        parsed.task_id,
        str(value.get("type", "")),
        error if isinstance(error, str) else None,
        kv.key[len(prefix) :],
    )


async def known_queue_names(store: KVStore, keys: Keyspace, revision: int = 0) -> list[str]:
    """The queues of the queue registry (keys.py), by name: one small range, keys only."""
    names: list[str] = []
    async for page in store.scan(
        keys.known_queues, prefix_end(keys.known_queues), revision=revision, keys_only=True
    ):
        for kv in page.kvs:
            try:
                names.append(keys.parse_known_queue(kv.key))
            except ValueError:
                log.error("malformed queue registry key: %s", kv.key)
    return names


async def list_finished(
    store: KVStore,
    keys: Keyspace,
    state: TaskState,
    *,
    queue: str | None = None,
    task_type: str | None = None,
    since: float | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> tuple[list[FinishedEntry], str | None]:
    """One page of finished tasks of ``state``, newest first, from the index only.

    Without ``queue``: the queues are the queue registry's
    (:func:`known_queue_names`) and their entries are merged newest first. With
    ``task_type``, index entries of other types are read and skipped (values
    only, never a record).

    Returns:
        The entries and the cursor of the next page (``None``: no more).

    Raises:
        InvalidOption: Not a finished state, a bad queue name or cursor.
    """
    name = check_finished_state(state)
    cursor = _check_cursor(cursor)
    if queue is not None:
        check_name(queue)
    queues = [queue] if queue is not None else await known_queue_names(store, keys)
    now = time.time()
    parts = await asyncio.gather(
        *(
            _queue_entries(
                store, keys, name, q, task_type=task_type, since=since, cursor=cursor, limit=limit, now=now
            )
            for q in queues
        )
    )
    # A queue whose type-filtered read stopped at its budget was examined only down to its stop:
    # the page holds what every queue was examined for, and goes on from there.
    stops = [stop for _, stop in parts if stop is not None]
    bound = min(stops) if stops else None
    merged = [e for e in heapq.merge(*(found for found, _ in parts), key=lambda e: e.position)]
    if bound is not None:
        merged = [e for e in merged if e.position <= bound]
    merged = merged[:limit]
    if len(merged) >= limit:
        return merged, merged[-1].position
    return merged, bound


async def read_kvs(store: KVStore, keys: Keyspace, ids: Sequence[str]) -> dict[str, KV | None]:
    """The records of ``ids`` as stored (``None``: no such record), by id.

    Transactions of at most ``GETS_PER_TXN`` gets, halved when the answer
    would be over the receive limit (down to a lone get). Used where a
    missing record means something (a task's parents: workflows.py,
    release.py) and where the caller needs a record's revision for a compare.
    """
    found: dict[str, KV | None] = {}

    async def read(chunk: Sequence[str]) -> None:
        try:
            result = await store.txn([], [Get(keys.task(i)) for i in chunk])
        except StoreRequestTooLarge:
            if len(chunk) == 1:
                raise
            half = len(chunk) // 2
            await read(chunk[:half])
            await read(chunk[half:])
            return
        for task_id, kvs in zip(chunk, result.reads, strict=True):
            found[task_id] = kvs[0] if kvs else None

    unique = list(dict.fromkeys(ids))
    for i in range(0, len(unique), GETS_PER_TXN):
        await read(unique[i : i + GETS_PER_TXN])
    return found


MAX_PARENT_RESULTS_BYTES = 64 * 1024 * 1024
"""The most bytes of (JSON) results a task receives from its parents in all."""


async def parent_results(store: KVStore, keys: Keyspace, parents: Sequence[str]) -> dict[str, Any]:
    """The results of ``parents``, by id in their order: ``None`` for one that did not succeed or is gone.

    Read a group of ``GETS_PER_TXN`` records at a time (only the results are
    kept), at most ``MAX_PARENT_RESULTS_BYTES`` of results in all.

    Raises:
        PayloadTooLarge: The results are over that limit.
        StoreError: etcd failed.
    """
    results: dict[str, Any] = {}
    total = 0
    for start in range(0, len(parents), GETS_PER_TXN):
        group = parents[start : start + GETS_PER_TXN]
        kvs = await read_kvs(store, keys, group)
        for parent in group:
            kv = kvs.get(parent)
            result = None
            if kv is not None:
                try:
                    task = codec.decode_task(kv.key, kv.value)
                except CorruptRecord as exc:
                    log.error("a parent's record cannot be read (its result is None): %s", exc)
                else:
                    if task.state is TaskState.SUCCEEDED:
                        result = task.result
                        total += len(codec.encode_json(result, "result", MAX_PARENT_RESULTS_BYTES))
            if total > MAX_PARENT_RESULTS_BYTES:
                raise PayloadTooLarge("the parents' results", total, MAX_PARENT_RESULTS_BYTES)
            results[parent] = result
    return results


async def read_records(store: KVStore, keys: Keyspace, ids: Sequence[str]) -> list[Task]:
    """The records of ``ids``, in that order; those gone (expired, purged) or corrupt are left out.

    Read by :func:`read_kvs` (transactions of at most ``GETS_PER_TXN`` gets,
    halved when the answer would be over the receive limit).
    """
    kvs = await read_kvs(store, keys, ids)
    tasks: list[Task] = []
    for task_id in ids:
        if (kv := kvs.get(task_id)) is None:
            continue
        try:
            tasks.append(codec.decode_task(kv.key, kv.value))
        except CorruptRecord as exc:
            log.error("skipping corrupt task record: %s", exc)
    return tasks
