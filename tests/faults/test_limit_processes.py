"""Rate limits with real processes: `tasklease scheduler` and 2 `tasklease worker` processes, real etcd.

1. The measured rate over 30 s, with 2 workers, is within 10 % of the limit.
2. A leader SIGKILLed while a rate-limited backlog drains: the standby takes
   over and the starts, across the failover, stay within the limit (no window
   holds more than ``burst + rate * T``): the new leader starts its buckets
   empty (limiter.py, docs/limits.md).

Everything is measured from the records: each attempt's ``started_at`` is the
leading scheduler's time of assignment. Measured figures are printed as
``[measure]`` lines (see them with ``-s``); nothing asserts how long a wait took.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest

from faults.procs import Procs, process_env, until
from faults.test_scheduler_process import (
    START_S,
    delivery_problems,
    run_cli,
    start_schedulers,
    start_workers,
    wait_all,
    wait_leader,
)
from tasklease.client import Client, TaskSpec
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Task
from tasklease.store import Store

pytestmark = pytest.mark.timeout(300)

PAD = "p" * 1024  # a realistic kilobyte payload
RATE = 10.0  # starts per second: the limit under test
BURST = 5


@pytest.fixture
def procs(tasklease_bin: str, cli_env: dict[str, str], tmp_path: Path) -> Iterator[Procs]:
    group = Procs(tasklease_bin, process_env(cli_env), tmp_path)
    try:
        yield group
    finally:
        group.cleanup()


def starts(tasks: Sequence[Task]) -> list[float]:
    """Every attempt's start, sorted."""
    return sorted(a.started_at for t in tasks for a in t.attempts)


def most_in_window(times: Sequence[float], window_s: float) -> int:
    """The most starts in any closed window of ``window_s`` seconds (times sorted)."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window_s:
            j += 1
        best = max(best, i - j + 1)
    return best


async def queued_count(store: Store, keys: Keyspace, queue: str = "default") -> int:
    prefix = keys.queue(queue)
    return (await store.range(prefix, prefix_end(prefix), count_only=True)).count


async def set_limit(tasklease_bin: str, procs: Procs, *args: str) -> None:
    out = await run_cli(tasklease_bin, procs.env, "limit", "set", *args)
    assert out.returncode == 0, out.stderr


async def test_the_measured_rate_over_30_s_with_2_workers_is_within_10_percent_of_the_limit(
    procs: Procs, store: Store, keyspace: Keyspace, client: Client, tasklease_bin: str
) -> None:
    # Given a scheduler, 2 workers with 8 slots each, and a limit of 10 starts a second (CLI)
    await start_schedulers(procs, store, keyspace, ("s1",))
    await start_workers(procs, store, keyspace, ("w1", "w2"), concurrency=8)
    await set_limit(tasklease_bin, procs, "--type", "pad_echo", "--rate", "600/min", "--burst", str(BURST))
    # When a backlog of more than 30 s worth of tasks is queued at once
    n = int(RATE * 34)
    batch = await client.submit_many([TaskSpec("pad_echo", {"pad": PAD, "n": i}) for i in range(n)])
    finals = await wait_all(client, [t.id for t in batch.tasks], procs, within_s=120)
    assert not delivery_problems(finals)
    # Then the starts in the 30 s from the first one come at the limit, within 10 %
    times = starts(finals)
    first = times[0]
    assert times[-1] >= first + 30.0, "the backlog did not last the whole window"
    in_window = sum(1 for t in times if t < first + 30.0)
    rate = in_window / 30.0
    steady = [t for t in times if t > first]  # after the first batch (the bucket's burst)
    steady_rate = (len(steady) - 1) / (steady[-1] - steady[0])
    print(f"[measure] starts in 30 s: {in_window} = {rate:.3f}/s for a limit of {RATE:g}/s (burst {BURST})")
    print(
        f"[measure] steady rate after the first batch: {steady_rate:.4f}/s ({(steady_rate / RATE - 1) * 100:+.2f} %)"
    )
    assert abs(rate - RATE) <= 0.1 * RATE
    # And no window ever held more than the bucket allows
    for window_s in (1.0, 5.0):
        assert most_in_window(times, window_s) <= BURST + RATE * window_s + 1
    # And both workers ran them
    assert {t.attempts[-1].worker for t in finals} == {"w1", "w2"}


async def test_after_a_leader_sigkill_the_rate_stays_within_the_limit(
    procs: Procs, store: Store, keyspace: Keyspace, client: Client, tasklease_bin: str
) -> None:
    # Given 2 schedulers, 2 workers, a limit of 10 starts a second and a backlog of ~25 s
    leader, standbys = await start_schedulers(procs, store, keyspace, ("s1", "s2"))
    await start_workers(procs, store, keyspace, ("w1", "w2"), concurrency=8)
    await set_limit(tasklease_bin, procs, "--type", "pad_echo", "--rate", "10/s", "--burst", str(BURST))
    n = 250
    batch = await client.submit_many([TaskSpec("pad_echo", {"pad": PAD, "n": i}) for i in range(n)])
    # When the leader is SIGKILLed once about 60 tasks started
    await until(
        _started(store, keyspace, n, 60), within_s=START_S + 30, what="60 tasks started", log=procs.tails
    )
    killed_at = time.time()
    leader.signal(signal.SIGKILL)
    await wait_leader(store, keyspace, procs, {p.name for p in standbys}, START_S)
    finals = await wait_all(client, [t.id for t in batch.tasks], procs, within_s=150)
    assert not delivery_problems(finals)
    # Then the standby went on, and no window, across the failover or not, held more starts
    # than one leader may allow: burst + rate * T (+1 for the batch's own clock reading)
    times = starts(finals)
    after = [t for t in times if t > killed_at]
    assert len(after) >= 100, "the new leader started too few"
    for window_s in (1.0, 2.0, 5.0, 10.0):
        most = most_in_window(times, window_s)
        print(
            f"[measure] most starts in {window_s:g} s across a failover: {most} (limit {BURST + RATE * window_s:g})"
        )
        assert most <= BURST + RATE * window_s + 1, window_s
    gap = after[0] - killed_at
    print(f"[measure] first start after the SIGKILL: {gap:.3f} s")
    steady = (len(after) - 1) / (after[-1] - after[0])
    print(f"[measure] rate under the new leader: {steady:.3f}/s")
    assert steady <= RATE * 1.1


def _started(store: Store, keys: Keyspace, total: int, at_least: int) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return total - await queued_count(store, keys) >= at_least

    return probe
