"""Typed stats (Client.stats): from the overview's counts, read as before through as_dict (no etcd)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson
import pytest

from tasklease.errors import InvalidOption
from tasklease.keys import Keyspace
from tasklease.models import Task, TaskState
from tasklease.nodes import parse_node
from tasklease.overview import Overview, QueueCounts
from tasklease.routing import Route
from tasklease.stats import Stats, Throughput, WorkerStats, check_window, stats_from_overview
from tasklease.store import KV, RangeResult

K = Keyspace("ns")
NOW = 1_700_000_000.0


class Pages:
    """The two reads stats makes of etcd: node records, and queue keys (keys only)."""

    def __init__(self, kvs: list[KV]) -> None:
        self.kvs = sorted(kvs, key=lambda kv: kv.key)

    async def scan(self, start: str, end: str, **_: Any) -> AsyncGenerator[RangeResult, None]:
        yield RangeResult([kv for kv in self.kvs if start <= kv.key < end], 1, False, 0)


def overview(kvs: list[KV], *records: Task, window_s: float = 60) -> Overview:
    """What read_overview would count for these records (queued, running, finished per queue)."""
    queues: dict[str, QueueCounts] = {}
    recent: dict[str, int] = {}
    for t in records:
        q = queues.setdefault(t.queue, QueueCounts(t.queue))
        q.counts[t.state.value] += 1
        if t.state.terminal and t.updated_at >= NOW - window_s:
            recent[t.state.value] = recent.get(t.state.value, 0) + 1
    states = {s.value: sum(q.counts.get(s.value, 0) for q in queues.values()) for s in TaskState}
    nodes = [parse_node(kv.key, kv.value) for kv in kvs if kv.key.startswith(K.nodes)]
    return Overview(
        1, NOW, states, sorted(queues.values(), key=lambda q: q.name), nodes, window_s, recent, [], None
    )


def node(worker: str, capacity: int, running: int, types: list[str]) -> KV:
    record = {"id": worker, "queues": ["default"], "capacity": capacity, "running": running, "types": types}
    return KV(K.node(worker), orjson.dumps(record), 1, 1, 1)


def task(n: int, state: TaskState, queue: str = "default", updated_at: float = NOW) -> Task:
    task_id = f"01HZZZZZZZZZZZZZZZZZZZZZ{n:02d}"
    return Task(id=task_id, type="noop", payload=None, queue=queue, state=state, updated_at=updated_at)


async def test_counts_and_the_json_form():
    store = Pages(
        [
            node("w1", 4, 1, ["noop"]),
            node("w2", 2, 2, ["noop"]),
            KV(K.queue_entry("default", 1, 10**15, "01HZZZZZZZZZZZZZZZZZZZZZ99", "resize"), b"", 1, 1, 1),
        ]
    )
    records = (
        task(1, TaskState.QUEUED),
        task(2, TaskState.SUCCEEDED),
        task(3, TaskState.FAILED, updated_at=NOW - 120),
        task(4, TaskState.RUNNING, queue="b"),
    )
    stats = await stats_from_overview(store, K, overview(store.kvs, *records))  # type: ignore[arg-type]

    assert stats.total == 4
    assert stats.states[TaskState.QUEUED] == 1 and stats.states["pending"] == 0
    assert list(stats.queues) == ["b", "default"]
    assert stats.workers == WorkerStats(live=2, capacity=6, running=3)
    assert stats.throughput == Throughput(window_s=60, finished=1, per_s=round(1 / 60, 2))
    assert [(w.queue, w.route, w.queued) for w in stats.waiting_without_worker] == [
        ("default", Route("resize"), 1)
    ]
    assert stats.as_dict() == {
        "states": {
            s.value: {"queued": 1, "succeeded": 1, "failed": 1, "running": 1}.get(s, 0) for s in TaskState
        },
        "queues": {
            "b": {s.value: int(s is TaskState.RUNNING) for s in TaskState},
            "default": {s.value: int(s in ("queued", "succeeded", "failed")) for s in TaskState},
        },
        "total": 4,
        "workers": {"live": 2, "capacity": 6, "running": 3},
        "throughput": {"window_s": 60, "finished": 1, "per_s": 0.02},
        "waiting_without_worker": [{"queue": "default", "type": "resize", "requires": {}, "queued": 1}],
    }
    assert list(stats.as_dict()["states"]) == [s.value for s in TaskState]
    # read like the dict it used to be
    assert stats["states"]["succeeded"] == 1
    assert stats["workers"]["capacity"] == 6
    with pytest.raises(KeyError):
        stats["nope"]


async def test_empty():
    stats = await stats_from_overview(Pages([]), K, overview([], window_s=1.5))  # type: ignore[arg-type]
    assert stats == Stats(
        states={s.value: 0 for s in TaskState},
        queues={},
        total=0,
        workers=WorkerStats(0, 0, 0),
        throughput=Throughput(1.5, 0, 0.0),
        waiting_without_worker=(),
    )


@pytest.mark.parametrize("window_s", [0, -1, float("nan"), float("inf"), True, "60"])
def test_a_bad_window_is_refused(window_s):
    with pytest.raises(InvalidOption, match="stats window must be a finite number of seconds > 0"):
        check_window(window_s)
