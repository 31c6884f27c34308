"""Reads of the finished index and of records by id: listings and counts without scans.

The finished index (keys.py: ``terminal/{state}/{queue}/{inv}/{id}``, written
with every finish, transitions.py) answers, without reading a task record:

- which queues have finished tasks of a state: one ``keys_only`` read of one
  key per queue (:func:`finished_queues`, a skip scan);
- how many tasks of a state finished in a queue, in all or since a time: one
  ``count_only`` range (:func:`count_finished`);
- the finished tasks of a state, newest first, filtered by queue, type and
  time, a page at a time (:func:`list_finished`): per queue one range of index
  entries (small values: type and the start of the error), merged newest first.

:func:`read_records` then reads the records of one page by id, in
transactions of at most ``GETS_PER_TXN`` gets, split in half when a response
would be over the receive limit (records are up to 1 MiB).

May import: codec, errors, keys, models, store.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tasklease import codec
from tasklease.errors import CorruptRecord, InvalidOption, StoreRequestTooLarge
from tasklease.keys import SEQ_DIGITS, Keyspace, check_name, inverted_us, prefix_end
from tasklease.models import TERMINAL_STATES, Task, TaskState
from tasklease.store import Get, KVStore

log = logging.getLogger("tasklease.client")

GETS_PER_TXN = 32
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


async def finished_queues(store: KVStore, keys: Keyspace, state: str, revision: int = 0) -> list[str]:
    """The queues with finished tasks of ``state``: one ``keys_only`` read of one key per queue."""
    prefix = keys.finished_state(state)
    end = prefix_end(prefix)
    start = prefix
    queues: list[str] = []
    while True:
        page = await store.range(start, end, limit=1, keys_only=True, revision=revision)
        if not page.kvs:
            return queues
        try:
            queue = keys.parse_finished(page.kvs[0].key).queue
        except ValueError:
            queue = page.kvs[0].key[len(prefix) :].split("/", 1)[0]
            log.error("malformed finished-index key: %s", page.kvs[0].key)
        queues.append(queue)
        start = prefix_end(f"{prefix}{queue}/")


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
) -> list[FinishedEntry]:
    """The first ``limit`` matching entries of one queue after ``cursor``, newest first."""
    prefix = keys.finished_queue(state, queue)
    start = prefix + cursor + "\0" if cursor else prefix
    end = _since_end(prefix, since)
    found: list[FinishedEntry] = []
    while len(found) < limit:
        want = INDEX_PAGE if task_type else limit - len(found)
        page = await store.range(start, end, limit=want)
        for kv in page.kvs:
            start = kv.key + "\0"
            try:
                parsed = keys.parse_finished(kv.key)
                value = codec.decode_obj(kv.key, kv.value)
            except (ValueError, CorruptRecord) as exc:
                log.error("skipping a bad finished-index entry: %s", exc)
                continue
            entry_type = str(value.get("type", ""))
            if task_type is not None and entry_type != task_type:
                continue
            error = value.get("error")
            found.append(
                FinishedEntry(
                    state,
                    queue,
                    parsed.finished_at,
                    parsed.task_id,
                    entry_type,
                    error if isinstance(error, str) else None,
                    kv.key[len(prefix) :],
                )
            )
            if len(found) >= limit:
                break
        if not page.more:
            break
    return found


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

    Without ``queue``: the queues are found by :func:`finished_queues` and
    their entries merged newest first (1 + 2 reads per queue). With
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
    queues = [queue] if queue is not None else await finished_queues(store, keys, name)
    parts = await asyncio.gather(
        *(
            _queue_entries(store, keys, name, q, task_type=task_type, since=since, cursor=cursor, limit=limit)
            for q in queues
        )
    )
    merged = list(heapq.merge(*parts, key=lambda e: e.position))[:limit]
    next_cursor = merged[-1].position if len(merged) >= limit else None
    return merged, next_cursor


async def read_records(store: KVStore, keys: Keyspace, ids: Sequence[str]) -> list[Task]:
    """The records of ``ids``, in that order; those gone (expired, purged) or corrupt are left out.

    Transactions of at most ``GETS_PER_TXN`` gets, halved when the answer
    would be over the receive limit (down to a lone get).
    """
    found: dict[str, Task] = {}

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
        for kvs in result.reads:
            for kv in kvs:
                try:
                    task = codec.decode_task(kv.key, kv.value)
                except CorruptRecord as exc:
                    log.error("skipping corrupt task record: %s", exc)
                    continue
                found[task.id] = task

    for i in range(0, len(ids), GETS_PER_TXN):
        await read(ids[i : i + GETS_PER_TXN])
    return [found[i] for i in ids if i in found]
