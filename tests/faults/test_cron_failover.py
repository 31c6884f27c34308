"""A cron schedule fired exactly once per tick while leading schedulers are SIGKILLed (issue 13, W3).

Three `tasklease scheduler` processes (lease TTL 2 s) and a schedule firing
every second with catch-up ``all``. For at least 60 s the test SIGKILLs the
leader at random moments (half of them a few milliseconds after a tick, when
the leader is firing it), each time starting a new scheduler process so that
two stand by. Then it lets the last leader catch up and reads every task
record: every tick of the window was fired exactly once (no duplicate tick,
no tick missing), and the schedule's own counts agree.

Measured (printed as ``[measure]``, never asserted): kills, leaderships, the
worst lateness of a tick (a failover's ticks are fired late, by catch-up).
"""

from __future__ import annotations

import asyncio
import math
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from faults.procs import Proc, Procs, process_env, until
from tasklease.client import Client, TaskSpec
from tasklease.keys import Keyspace
from tasklease.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TTL = 2
START_S = 60.0  # a process start on a loaded 2-core machine
WINDOW_S = 62.0  # at least 60 s of kills
SCHEDULERS = 3
NAME = "heartbeat"


@pytest.fixture
def procs(tasklease_bin: str, cli_env: dict[str, str], tmp_path: Path) -> Iterator[Procs]:
    group = Procs(tasklease_bin, process_env(cli_env), tmp_path)
    try:
        yield group
    finally:
        group.cleanup()


async def leader_name(store: Store, keys: Keyspace) -> str | None:
    kv, _ = await store.get(keys.leader)
    return kv.value.decode() if kv is not None else None


async def live_leader(store: Store, keys: Keyspace, procs: Procs) -> Proc:
    """The process the leader key names, once it is one of ours and alive, and leads (logged)."""

    async def probe() -> Proc | None:
        name = await leader_name(store, keys)
        if name is None or name not in procs.by_name:
            return None
        proc = procs[name]
        return proc if proc.alive and "leading:" in proc.log_text() else None

    return await until(probe, within_s=START_S, what="a live leader", log=procs.tails)


async def test_every_tick_fires_exactly_once_while_leaders_are_sigkilled(
    procs: Procs, store: Store, keyspace: Keyspace, client: Client
):
    rng = random.Random(13)
    # Given three schedulers and a schedule firing every second (catch-up all: no tick may be missed)
    started = [procs.scheduler(f"s{i}", lease_ttl=TTL) for i in range(SCHEDULERS)]
    next_id = SCHEDULERS
    await live_leader(store, keyspace, procs)
    added = await client.add_schedule(
        NAME, "* * * * * *", TaskSpec("noop", {"blob": "b" * 1024}, queue="cron"), catch_up="all"
    )
    # When, for more than 60 s, the leader is SIGKILLed at random and a new scheduler started each time
    kills = 0
    window_end = time.time() + WINDOW_S
    while time.time() < window_end:
        leader = await live_leader(store, keyspace, procs)
        if rng.random() < 0.5:
            # a few milliseconds after a tick: while the leader fires it
            now = time.time()
            await asyncio.sleep(math.ceil(now) - now + rng.uniform(0.0, 0.03))
        else:
            await asyncio.sleep(rng.uniform(0.3, 4.0))
        leader.signal(signal.SIGKILL)
        kills += 1
        await leader.wait_exit(10)
        procs.scheduler(f"s{next_id}", lease_ttl=TTL)
        next_id += 1
    # Then, once a leader has caught up with the window, every tick fired exactly once
    end = time.time()
    await live_leader(store, keyspace, procs)

    async def caught_up() -> bool:
        s = await client.get_schedule(NAME)
        return s.last_tick is not None and s.last_tick >= end

    await until(caught_up, within_s=START_S, what="the last leader to catch up", log=procs.tails)
    schedule = await client.get_schedule(NAME)
    tasks = [t async for t in client.scan() if t.schedule == NAME]
    per_tick = Counter(t.tick for t in tasks)
    duplicates = {tick: n for tick, n in per_tick.items() if n > 1}
    assert not duplicates, procs.why(f"ticks fired more than once: {sorted(duplicates.items())[:10]}")
    last = schedule.last_tick or 0.0
    expected = schedule.expr.ticks(added.since, last, 100_000)
    fired = sorted(tick for tick in per_tick if tick is not None and tick <= last)
    missing = sorted(set(expected) - set(fired))
    assert not missing, procs.why(f"{len(missing)} ticks never fired, first {missing[:10]}")
    assert fired == expected
    assert last - added.since >= WINDOW_S
    assert (schedule.fired, schedule.skipped) == (len([t for t in tasks if (t.tick or 0) <= last]), 0)
    assert all(t.created_at >= (t.tick or 0) for t in tasks)  # never before its time
    leaderships = sum(p.log_text().count("leading:") for p in procs.all)
    assert kills >= 5 and leaderships >= kills + 1
    assert len(started) == SCHEDULERS
    print(f"[measure] kills: {kills}, leaderships: {leaderships}, ticks fired: {len(fired)}")
    print(f"[measure] worst lateness of a tick: {max(t.created_at - (t.tick or 0) for t in tasks):.3f} s")
