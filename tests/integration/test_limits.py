"""Rate and concurrency limits against a real etcd, a real scheduler and real workers (in this process).

What each test checks is read from the records: each attempt's ``started_at``
(the leader's time of assignment) and ``finished_at`` (the worker's). The
process-level tests (2 worker processes, a measured rate, a leader failover)
are in tests/faults/test_limit_processes.py.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence

import pytest

from faults.procs import until
from tasklease.client import Client, TaskSpec
from tasklease.errors import InvalidOption, InvalidQueueName
from tasklease.limits import MAX_LIMITS
from tasklease.models import Task, TaskState
from tasklease.store import StoreConfig
from tasklease.sync import SyncClient

pytestmark = pytest.mark.timeout(180)

PAD = "p" * 1500  # a realistic kilobyte payload
GUARD_S = 90.0  # a hang guard only: nothing below asserts how long a wait took


def sleeps(n: int, seconds: float, queue: str = "default", task_type: str = "sleep") -> list[TaskSpec]:
    payload = {"seconds": seconds, "pad": PAD} if task_type == "sleep" else {"pad": PAD, "n": 0}
    return [TaskSpec(task_type, payload, queue=queue) for _ in range(n)]


async def finished(client: Client, ids: Sequence[str]) -> list[Task]:
    async def done() -> list[Task] | None:
        tasks = [await client.get(i) for i in ids]
        return tasks if all(t.state.terminal for t in tasks) else None

    tasks: list[Task] = await until(done, within_s=GUARD_S, what=f"{len(ids)} tasks finished", poll_s=0.2)
    assert all(t.state is TaskState.SUCCEEDED for t in tasks), [t.error for t in tasks if t.error]
    return tasks


def intervals(tasks: Sequence[Task]) -> list[tuple[float, float]]:
    """[started_at, finished_at] of every attempt."""
    out = []
    for t in tasks:
        for a in t.attempts:
            assert a.finished_at is not None
            out.append((a.started_at, a.finished_at))
    return out


def most_at_once(spans: Sequence[tuple[float, float]]) -> int:
    """The most intervals that overlap at one instant (a finish before a start at the same time)."""
    events = sorted([(s, 1) for s, _ in spans] + [(f, -1) for _, f in spans], key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _, delta in events:
        now += delta
        peak = max(peak, now)
    return peak


# the client's operations ---------------------------------------------------------------------------
async def test_limits_are_set_listed_replaced_and_removed(client: Client):
    # Given no limits
    assert await client.limits() == []
    # When limits of a type and a queue are set
    email = await client.set_limit("type", "email", rate="100/min", burst=10, concurrency=5)
    bulk = await client.set_limit("queue", "bulk", concurrency=2)
    # Then both are listed, types first, as set
    assert await client.limits() == [email, bulk]
    assert email.rate is not None and abs(email.rate - 100 / 60) < 1e-9 and email.rate_text == "100/min"
    assert bulk.rate is None and bulk.burst is None
    # When a limit is set again, it replaces the old one as a whole
    again = await client.set_limit("type", "email", rate="5000/h")
    assert await client.limits() == [again, bulk]
    assert again.concurrency is None and again.burst == 1
    # When one is removed
    assert await client.remove_limit("type", "email") is True
    assert await client.remove_limit("type", "email") is False
    assert await client.limits() == [bulk]


async def test_bad_limits_are_refused_and_nothing_is_written(client: Client):
    for kwargs in (
        {"rate": "100/fortnight"},
        {"rate": "0/s"},
        {},
        {"burst": 3, "concurrency": 1},
        {"concurrency": 0},
        {"rate": "1/s", "burst": 0},
    ):
        with pytest.raises(InvalidOption):
            await client.set_limit("type", "email", **kwargs)
    with pytest.raises(InvalidOption):
        await client.set_limit("node", "w1", concurrency=1)
    with pytest.raises(InvalidQueueName):
        await client.set_limit("queue", "no/slashes", concurrency=1)
    assert await client.limits() == []


async def test_a_limit_key_that_cannot_be_read_is_left_out_of_the_list(client: Client):
    await client.set_limit("queue", "bulk", concurrency=2)
    await client.store.put(client.keys.limit("type", "broken"), b"not json")
    assert [x.name for x in await client.limits()] == ["bulk"]


async def test_the_number_of_limits_is_bounded(client: Client, monkeypatch):
    monkeypatch.setattr("tasklease.limits.MAX_LIMITS", 3)
    for name in ("a", "b", "c"):
        await client.set_limit("queue", name, concurrency=1)
    with pytest.raises(InvalidOption, match="at most 3"):
        await client.set_limit("queue", "d", concurrency=1)
    await client.set_limit("queue", "a", concurrency=2)  # replacing one is fine
    assert MAX_LIMITS == 10_000


def test_the_sync_client_sets_lists_and_removes(store_config: StoreConfig, namespace: str):
    with SyncClient(store_config, namespace=namespace) as sync:
        limit = sync.set_limit("queue", "bulk", rate="10/s", concurrency=3)
        assert sync.limits() == [limit]
        assert limit.burst == 1
        assert sync.remove_limit("queue", "bulk") is True
        assert sync.limits() == []


def tl(bin_: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_, *args], env=env, capture_output=True, text=True, timeout=60)


def test_the_command_line_sets_lists_and_removes_limits(tasklease_bin, cli_env):
    out = tl(
        tasklease_bin,
        cli_env,
        "limit",
        "set",
        "--type",
        "email",
        "--rate",
        "100/min",
        "--burst",
        "10",
        "--concurrency",
        "5",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "type email: rate 100/min (burst 10), concurrency 5"
    out = tl(tasklease_bin, cli_env, "limit", "set", "--queue", "bulk", "--concurrency", "2", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["concurrency"] == 2
    listed = tl(tasklease_bin, cli_env, "limit", "list", "--json")
    assert [
        (x["kind"], x["name"], x["rate"], x["burst"], x["concurrency"]) for x in json.loads(listed.stdout)
    ] == [
        ("type", "email", "100/min", 10, 5),
        ("queue", "bulk", None, None, 2),
    ]
    table = tl(tasklease_bin, cli_env, "limit", "list").stdout.splitlines()
    assert table[0].split() == ["KIND", "NAME", "RATE", "BURST", "CONCURRENCY", "SET"]
    assert table[1].split()[:5] == ["type", "email", "100/min", "10", "5"]
    out = tl(tasklease_bin, cli_env, "limit", "remove", "--type", "email")
    assert out.returncode == 0 and out.stdout.strip() == "type email: limit removed"
    out = tl(tasklease_bin, cli_env, "limit", "remove", "--type", "email")
    assert out.returncode == 0 and out.stdout.strip() == "type email had no limit"
    # bad input: exit 2, one line, nothing written
    for args in (
        ("limit", "set", "--type", "email"),
        ("limit", "set", "--type", "email", "--rate", "5/week"),
        ("limit", "set", "--type", "email", "--queue", "bulk", "--concurrency", "1"),
        ("limit", "set", "--rate", "5/s"),
        ("limit", "set", "--queue", "a b", "--concurrency", "1"),
        ("limit", "set", "--type", "email", "--concurrency", "0"),
        ("limit", "remove", "--queue", "a/b"),
    ):
        out = tl(tasklease_bin, cli_env, *args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert out.stderr.startswith("tasklease: error:") and out.stderr.count("\n") == 1, out.stderr
    assert len(json.loads(tl(tasklease_bin, cli_env, "limit", "list", "--json").stdout)) == 1


# enforcement -----------------------------------------------------------------------------------------
async def test_a_concurrency_limit_of_a_type_is_never_exceeded_across_workers(client: Client, cluster):
    # Given 2 workers with 8 slots in all, and a type limited to 3 running at once
    await client.set_limit("type", "sleep", concurrency=3)
    await cluster.scheduler()
    await cluster.worker(concurrency=4)
    await cluster.worker(concurrency=4)
    # When 24 tasks of that type and 8 of another are queued
    limited = await client.submit_many(sleeps(24, 0.15))
    others = await client.submit_many(sleeps(8, 0.0, task_type="pad_echo"))
    tasks = await finished(client, [t.id for t in limited.tasks])
    await finished(client, [t.id for t in others.tasks])
    # Then never more than 3 of that type ran at once (by the attempts' own times), and 3 did
    assert most_at_once(intervals(tasks)) == 3
    # And they ran on both workers
    assert {a.worker for t in tasks for a in t.attempts} == {"w0", "w1"}


async def test_a_queue_limit_holds_every_type_of_its_queue_and_no_other_queue(client: Client, cluster):
    # Given a queue limited to 2 running at once and to 20 starts a second (burst 4)
    await client.set_limit("queue", "bulk", rate="20/s", burst=4, concurrency=2)
    await cluster.scheduler()
    await cluster.worker(queues=("bulk", "default"), concurrency=6)
    await cluster.worker(queues=("bulk", "default"), concurrency=6)
    # When tasks of two types go to that queue, and others to another queue
    bulk = await client.submit_many(sleeps(10, 0.1, "bulk") + sleeps(10, 0.0, "bulk", task_type="pad_echo"))
    free = await client.submit_many(sleeps(10, 0.3, "default"))
    bulk_tasks = await finished(client, [t.id for t in bulk.tasks])
    free_tasks = await finished(client, [t.id for t in free.tasks])
    # Then the queue's tasks, whatever their type, never ran more than 2 at once
    assert most_at_once(intervals(bulk_tasks)) <= 2
    # And the other queue ran past that limit
    assert most_at_once(intervals(free_tasks)) > 2
    # And the queue's starts kept to the rate: no window of 1 s holds more than burst + rate
    starts = sorted(s for s, _ in intervals(bulk_tasks))
    assert max(sum(1 for u in starts if s <= u <= s + 1.0) for s in starts) <= 4 + 20 + 1


async def test_a_rate_limit_on_one_type_does_not_hold_back_another_type_of_the_same_queue(
    client: Client, cluster
):
    # Given a type limited to one start an hour (a new bucket starts empty: none starts now)
    await client.set_limit("type", "sleep", rate="1/h")
    await cluster.scheduler(batch_size=10)
    await cluster.worker(concurrency=4)
    # When 40 urgent tasks of that type are queued ahead of 30 ordinary ones of another type
    held = await client.submit_many([TaskSpec("sleep", {"seconds": 0, "pad": PAD}, priority=3)] * 40)
    others = await client.submit_many(sleeps(30, 0.0, task_type="pad_echo"))
    # Then the other type's tasks all run
    await finished(client, [t.id for t in others.tasks])
    # And the limited ones are all still queued
    states = {(await client.get(t.id)).state for t in held.tasks}
    assert states == {TaskState.QUEUED}


async def test_raising_a_limit_applies_within_a_second_by_the_records(client: Client, cluster):
    # Given a type held back by a rate of one start an hour, with tasks waiting
    await client.set_limit("type", "sleep", rate="1/h")
    scheduler = await cluster.scheduler()
    await cluster.worker(concurrency=4)
    batch = await client.submit_many(sleeps(20, 0.0))
    await until(scheduler.leading.is_set, within_s=GUARD_S, what="a leader")
    await until(
        lambda: len(scheduler.view.queues.kvs) == 20 and scheduler.view.live_nodes(),
        within_s=GUARD_S,
        what="the leader sees the queued tasks and the worker",
    )
    # When the limit is raised
    changed_at = time.time()
    await client.set_limit("type", "sleep", rate="50/s", burst=20)
    tasks = await finished(client, [t.id for t in batch.tasks])
    # Then nothing started before the change, and the first start came within a second of it
    first = min(t.attempts[0].started_at for t in tasks)
    assert first >= changed_at
    assert first - changed_at <= 1.0, f"first start {first - changed_at:.3f} s after the change"
    print(f"[measure] first start after raising a limit: {first - changed_at:.3f} s")


async def test_lowering_a_concurrency_limit_applies_to_the_next_starts(client: Client, cluster):
    # Given tasks of a type running 4 at once, more waiting
    scheduler = await cluster.scheduler()
    await cluster.worker(concurrency=4)
    batch = await client.submit_many(sleeps(30, 0.2))
    await until(lambda: len(scheduler.view.running) >= 3, within_s=GUARD_S, what="tasks running")
    # When the type's concurrency is lowered to 1
    changed_at = time.time()
    await client.set_limit("type", "sleep", concurrency=1)
    tasks = await finished(client, [t.id for t in batch.tasks])
    # Then every task that started more than a second after the change started with no other running
    spans = intervals(tasks)
    late = [s for s, _ in spans if s > changed_at + 1.0]
    assert late
    for s in late:
        assert sum(1 for a, b in spans if a < s < b) == 0, s
