"""What :meth:`tasklease.Client.stats` returns: tasks per state and queue, workers, throughput.

:class:`Stats` is typed; :meth:`Stats.as_dict` is its JSON form (``tasklease
stats --json``), and ``stats["states"]`` still reads that form's parts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasklease.errors import InvalidOption
from tasklease.fleet import Waiting, waiting_without_worker
from tasklease.keys import Keyspace
from tasklease.models import TaskState
from tasklease.overview import Overview
from tasklease.store import KVStore


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """The live workers (node records present).

    Attributes:
        live: How many.
        capacity: Their slots in all (the sum of their concurrency).
        running: Tasks they execute now, as their last heartbeats said.
    """

    live: int
    capacity: int
    running: int


@dataclass(frozen=True, slots=True)
class Throughput:
    """Tasks finished recently.

    Attributes:
        window_s: Over the last this many seconds.
        finished: How many finished (succeeded, failed or cancelled) in it.
        per_s: ``finished / window_s``, rounded to 2 decimals.
    """

    window_s: float
    finished: int
    per_s: float


@dataclass(frozen=True, slots=True)
class Stats:
    """Tasks per state and per queue, live workers, and recent throughput.

    Attributes:
        states: Tasks per state (every state, by its name, in lifecycle order).
        queues: Per queue (sorted by name), tasks per state as in ``states``.
        total: Every task (the sum of ``states``).
        workers: The live workers.
        throughput: Tasks finished recently.
        waiting_without_worker: Queued tasks no live worker may run (no worker
            has their type or the tags they require).
    """

    states: Mapping[str, int]
    queues: Mapping[str, Mapping[str, int]]
    total: int
    workers: WorkerStats
    throughput: Throughput
    waiting_without_worker: tuple[Waiting, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON form (``tasklease stats --json``)."""
        return {
            "states": dict(self.states),
            "queues": {q: dict(c) for q, c in self.queues.items()},
            "total": self.total,
            "workers": {
                "live": self.workers.live,
                "capacity": self.workers.capacity,
                "running": self.workers.running,
            },
            "throughput": {
                "window_s": self.throughput.window_s,
                "finished": self.throughput.finished,
                "per_s": self.throughput.per_s,
            },
            "waiting_without_worker": [w.as_dict() for w in self.waiting_without_worker],
        }

    def __getitem__(self, key: str) -> Any:
        """A part of :meth:`as_dict` (``stats["states"]["queued"]``), as when stats were a dict."""
        return self.as_dict()[key]


def check_window(window_s: float) -> None:
    """Refuse a throughput window that is not a finite number of seconds > 0.

    Raises:
        InvalidOption: It is not.
    """
    if isinstance(window_s, bool) or not isinstance(window_s, int | float) or not 0 < window_s < math.inf:
        raise InvalidOption(f"stats window must be a finite number of seconds > 0, got {window_s!r}")


async def stats_from_overview(store: KVStore, keys: Keyspace, view: Overview) -> Stats:
    """:class:`Stats` from an :class:`~tasklease.overview.Overview` (counted from index keys), and what waits without a worker.

    Args:
        store: The store (the queue keys are read, keys only, for what waits without a worker).
        keys: The namespace.
        view: The counts.
    """
    recent = sum(view.finished_in_window.values())
    window_s = view.window_s
    return Stats(
        states=dict(view.states),
        queues={q.name: {s.value: q.counts.get(s.value, 0) for s in TaskState} for q in view.queues},
        total=sum(view.states.values()),
        workers=WorkerStats(
            live=len(view.nodes),
            capacity=sum(n.capacity for n in view.nodes),
            running=sum(n.running for n in view.nodes),
        ),
        throughput=Throughput(window_s=window_s, finished=recent, per_s=round(recent / window_s, 2)),
        waiting_without_worker=tuple(await waiting_without_worker(store, keys)),
    )
