"""Group commit: writes that arrive while one is in flight go out together in the next one.

Used by the client's submits and the worker's outcomes. Alone, an item is
written at once (latency of one transaction); under load, one transaction
carries many (throughput), cut by count and by bytes so that every group fits
one etcd transaction. Each caller waits for its own item's answer.

The writer receives a group and settles each item's future (a result or an
exception). Whatever it leaves unsettled gets the exception the writer raised,
or :class:`GroupLeftUnsettled` if it raised none; a group never strands a
caller. If the flusher itself is cancelled (the owner shuts down), every
waiting caller is cancelled too.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupLeftUnsettled(RuntimeError):
    """A group writer returned without answering some of its items (a bug in the writer)."""


@dataclass(slots=True)
class Pending(Generic[T, R]):
    """One item waiting in a group, and the future its caller awaits."""

    item: T
    future: asyncio.Future[R] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def settle(self, result: R) -> None:
        """Answer with ``result`` (ignored if already answered)."""
        if not self.future.done():
            self.future.set_result(result)

    def fail(self, exc: BaseException) -> None:
        """Answer with ``exc`` (ignored if already answered)."""
        if not self.future.done():
            self.future.set_exception(exc)


def first_group_len(
    costs: Sequence[int],
    max_items: int,
    max_bytes: int,
    weights: Sequence[int] | None = None,
    max_weight: int = 0,
) -> int:
    """How many of the items (by their ``costs``, in order) the next group takes: at least 1.

    The first item always goes (alone if it must: its own transaction says
    whether it fits); the next ones while the group stays within ``max_items``
    and ``max_bytes``, and, given ``weights`` (each item's operations in the
    transaction), within ``max_weight``.
    """
    size = 0
    weight = 0
    for count, cost in enumerate(costs[:max_items]):
        size += cost
        weight += weights[count] if weights is not None else 0
        if count and (size > max_bytes or (weights is not None and weight > max_weight)):
            return count
    return max(1, min(len(costs), max_items))


class GroupCommit(Generic[T, R]):
    """Collects items and writes them in groups, one group in flight at a time.

    Args:
        write: Writes one group and settles each item (see the module docstring).
        cost: An item's share of a transaction, in bytes.
        max_items: At most this many items per group.
        max_bytes: At most this many bytes per group (the first item goes alone if larger).
        name: The flusher task's name.
        weight: An item's operations in the transaction (None: only counted).
        max_weight: At most this many operations per group, with ``weight``.
    """

    def __init__(
        self,
        write: Callable[[list[Pending[T, R]]], Awaitable[None]],
        *,
        cost: Callable[[T], int],
        max_items: int,
        max_bytes: int,
        name: str,
        weight: Callable[[T], int] | None = None,
        max_weight: int = 0,
    ) -> None:
        self._write = write
        self._cost = cost
        self._weight = weight
        self.max_weight = max_weight
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._name = name
        self._queue: deque[Pending[T, R]] = deque()  # appended by submit(), taken by _flush()
        self._flusher: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Items not yet taken into a group."""
        return len(self._queue)

    async def submit(self, item: T) -> R:
        """Queue ``item`` for the next group and wait for its answer."""
        pending: Pending[T, R] = Pending(item)
        self._queue.append(pending)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=self._name)
        return await pending.future

    async def drain(self) -> None:
        """Wait until every queued item was written (errors stay with their callers)."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    def _next_group(self) -> list[Pending[T, R]]:
        head = _head(self._queue, self.max_items)
        costs = [self._cost(p.item) for p in head]
        weights = None if self._weight is None else [self._weight(p.item) for p in head]
        take = first_group_len(costs, self.max_items, self.max_bytes, weights, self.max_weight)
        return [self._queue.popleft() for _ in range(take)]

    async def _flush(self) -> None:
        group: list[Pending[T, R]] = []
        try:
            while self._queue:
                group = self._next_group()
                try:
                    await self._write(group)
                except Exception as exc:
                    for pending in group:
                        pending.fail(exc)
                else:
                    for pending in group:
                        pending.fail(GroupLeftUnsettled(f"{self._name}: the writer left an item unanswered"))
                group = []
        except BaseException:
            # Cancelled (or worse): nobody may wait forever for this flusher.
            stranded = [*group, *self._queue]
            self._queue.clear()
            for pending in stranded:
                pending.future.cancel()
            raise


def _head(queue: deque[Pending[T, R]], count: int) -> list[Pending[T, R]]:
    out: list[Pending[T, R]] = []
    for pending in queue:
        if len(out) >= count:
            break
        out.append(pending)
    return out
