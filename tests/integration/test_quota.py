"""Per-namespace quotas (quotas.py) against a real etcd: limits enforced at submit, nothing written.

No test depends on timing: a client that must see other clients' tasks at
once measures at every submit (``refresh_s = 0``); one that must see a changed
quota record waits until its watch has delivered the change's revision
(``QuotaGuard.caught_up``).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest

from tasklease import codec
from tasklease.client import Client, TaskSpec
from tasklease.errors import CorruptRecord, InvalidOption, ValidationError
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import TaskState
from tasklease.quotas import (
    Quota,
    QuotaExceeded,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)
from tasklease.retry import RetryPolicy
from tasklease.store import Store, StoreConfig

HANG_GUARD_S = 60
DAY = 86400.0


class CountingStore(Store):
    """The real store, counting the requests a client makes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: dict[str, int] = {}
        self.count_only = 0

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    async def get(self, key: str) -> Any:
        self._count("get")
        return await super().get(key)

    async def range(self, prefix: str, end: str, **kwargs: Any) -> Any:
        self._count("range")
        self.count_only += bool(kwargs.get("count_only"))
        return await super().range(prefix, end, **kwargs)

    async def txn(self, *args: Any, **kwargs: Any) -> Any:
        self._count("txn")
        return await super().txn(*args, **kwargs)


@pytest.fixture
async def clients(
    store_config: StoreConfig, keyspace: Keyspace
) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """Make more clients of the test's namespace, each on its own connection; all closed at the end."""
    made: list[Client] = []

    async def make(*, refresh_s: float | None = None, store_class: type[Store] = Store) -> Client:
        store = store_class(store_config)
        await store.connect()
        client = Client(store, keyspace)
        client._owns_store = True
        if refresh_s is not None:
            client.quotas.refresh_s = refresh_s
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def task_keys(store: Store, keys: Keyspace) -> list[str]:
    result = await store.range(keys.tasks, prefix_end(keys.tasks), keys_only=True)
    return [kv.key for kv in result.kvs]


async def queue_keys(store: Store, keys: Keyspace) -> list[str]:
    result = await store.range(keys.queues, prefix_end(keys.queues), keys_only=True)
    return [kv.key for kv in result.kvs]


# the count ------------------------------------------------------------------------------
async def test_a_submit_over_max_queued_is_refused_and_writes_nothing(client, clients, store, keyspace):
    # Given a namespace that allows 3 waiting tasks
    await client.set_quota(Quota(max_queued=3))
    submitter = await clients()
    # When 3 tasks are submitted, then a fourth
    for i in range(3):
        await submitter.submit("noop", {"i": i})
    with pytest.raises(QuotaExceeded) as caught:
        await submitter.submit("noop", {"i": 3})
    # Then the fourth is refused with the limit and the usage, and nothing of it was written
    message = str(caught.value)
    assert f"quota of namespace '{keyspace.namespace}'" in message
    assert "at most 3 waiting tasks (queued + pending); 3 are waiting" in message
    assert "this submit adds 1" in message
    assert (caught.value.limit, caught.value.allowed, caught.value.usage) == ("max_queued", 3, 3)
    assert isinstance(caught.value, ValidationError)
    assert len(await task_keys(store, keyspace)) == 3


async def test_concurrent_submits_of_one_client_never_overshoot(client, clients, store, keyspace):
    # Given a limit of 5 waiting tasks and a client that counts once only
    await client.set_quota(Quota(max_queued=5))
    submitter = await clients(refresh_s=3600)
    # When 12 submits run concurrently (they share one count and group commits)
    async with asyncio.timeout(HANG_GUARD_S):
        results = await asyncio.gather(
            *(submitter.submit("noop", {"i": i}) for i in range(12)), return_exceptions=True
        )
    # Then exactly 5 are written: each reserved its place before writing
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert len(refused) == 7 and len(results) - len(refused) == 5, results
    assert len(await queue_keys(store, keyspace)) == 5


async def test_tasks_of_other_clients_count_and_leaving_the_queue_frees_room(
    client, clients, store, keyspace
):
    # Given a limit of 2, and a client that measures at every submit
    await client.set_quota(Quota(max_queued=2))
    checker = await clients(refresh_s=0)
    other = await clients()
    # When another client fills the namespace
    first = await other.submit("noop", 1)
    await other.submit("noop", 2)
    # Then this client is refused (it counted the others' tasks) ...
    with pytest.raises(QuotaExceeded, match="2 are waiting"):
        await checker.submit("noop", 3)
    # ... and once a task leaves its queue (cancelled), a submit fits again
    await other.cancel(first.id)
    await checker.submit("noop", 4)
    assert len(await queue_keys(store, keyspace)) == 2


async def test_pending_tasks_count_as_waiting(client, clients, cluster, store, keyspace):
    # Given a task waiting for its retry backoff (pending), from a real worker and scheduler
    await cluster.scheduler()
    await cluster.worker()
    task = await client.submit(
        "fail",
        {"message": "again later"},
        retry=RetryPolicy(max_retries=3, backoff_s=3600, backoff_max_s=3600),
    )
    async with asyncio.timeout(HANG_GUARD_S):
        await until_state(store, keyspace, task.id, TaskState.PENDING)
    assert await queue_keys(store, keyspace) == []
    # When the namespace allows one waiting task
    await client.set_quota(Quota(max_queued=1))
    checker = await clients(refresh_s=0)
    # Then a new submit is refused: the pending task fills the quota
    with pytest.raises(QuotaExceeded, match="1 are waiting"):
        await checker.submit("noop")


async def until_state(store: Store, keys: Keyspace, task_id: str, state: TaskState) -> None:
    """Return once the task's record is in ``state`` (read, then watched from that read: no polling)."""
    key = keys.task(task_id)
    kv, revision = await store.get(key)
    if kv is not None and codec.decode_task(key, kv.value).state is state:
        return
    async for events in store.watch(key, key + "\0", revision + 1):
        for ev in events:
            if ev.type == "put" and codec.decode_task(key, ev.kv.value).state is state:
                return


async def test_submit_many_is_admitted_or_refused_as_a_whole(client, clients, store, keyspace):
    await client.set_quota(Quota(max_queued=10))
    submitter = await clients(refresh_s=0)
    # A batch of 11 does not fit: nothing of it is written
    with pytest.raises(QuotaExceeded, match="this submit adds 11"):
        await submitter.submit_many(TaskSpec("noop", i) for i in range(11))
    assert await task_keys(store, keyspace) == []
    # A batch of 10 fits, then a batch of 1 does not
    assert len((await submitter.submit_many(TaskSpec("noop", i) for i in range(10))).tasks) == 10
    with pytest.raises(QuotaExceeded, match="10 are waiting"):
        await submitter.submit_many([TaskSpec("noop")])


async def test_max_queued_zero_refuses_every_submit(client, clients):
    await client.set_quota(Quota(max_queued=0))
    with pytest.raises(QuotaExceeded, match="at most 0 waiting tasks"):
        await (await clients()).submit("noop")


# bytes ----------------------------------------------------------------------------------
async def test_max_queued_bytes_counts_the_records_of_every_client(client, clients, store, keyspace):
    # Given records of about 20 KB, and a limit that holds two of them
    payload = {"pad": "x" * 20_000}
    other = await clients()
    first = await other.submit("noop", payload)
    size = len((await store.get(keyspace.task(first.id)))[0].value)
    await client.set_quota(Quota(max_queued_bytes=2 * size + size // 2))
    checker = await clients(refresh_s=0)
    # When this client submits one (the other client's record is measured too)
    await checker.submit("noop", payload)
    # Then a third is refused, naming the bytes waiting and the bytes it adds
    with pytest.raises(QuotaExceeded) as caught:
        await checker.submit("noop", payload)
    assert caught.value.limit == "max_queued_bytes"
    stored = [len(kv.value) for kv in (await store.range(keyspace.tasks, prefix_end(keyspace.tasks))).kvs]
    assert len(stored) == 2 and caught.value.usage == sum(stored)  # exact, at the measurement
    assert abs(caught.value.adding - size) < 64  # the new record (timestamps vary in length)
    assert f"{format_size(caught.value.usage)} are waiting" in str(caught.value)
    assert len(await task_keys(store, keyspace)) == 2
    # And small records still fit in the room left
    await checker.submit("noop", {"pad": "x" * 100})


async def test_the_byte_measurement_reads_only_records_it_has_not_measured(client, clients, store, keyspace):
    # Given a bytes limit and 40 waiting tasks of another client
    await client.set_quota(Quota(max_queued_bytes=100_000_000))
    other = await clients()
    await other.submit_many(TaskSpec("noop", {"i": i}) for i in range(40))
    checker = await clients(refresh_s=0, store_class=CountingStore)
    counting = checker.store
    assert isinstance(counting, CountingStore)
    # When this client submits twice (measuring each time)
    await checker.submit("noop")
    reads_first = counting.calls.get("txn", 0) - 1  # minus the submit's own transaction
    await checker.submit("noop")
    reads_second = counting.calls.get("txn", 0) - 2 - reads_first
    # Then the first measurement read the 40 records (3 transactions of 16 gets), the second none:
    # its own task's size was known, the others' were cached by mod revision
    assert reads_first == 3
    assert reads_second == 0
    assert checker.quotas.measurements == 2


# retention ------------------------------------------------------------------------------
async def test_retention_over_the_maximum_is_refused(client, clients, store, keyspace):
    await client.set_quota(Quota(max_retention_s=DAY))
    submitter = await clients()
    with pytest.raises(QuotaExceeded, match="retention 2d is over the maximum of 1d"):
        await submitter.submit("noop", retention_s=2 * DAY)
    with pytest.raises(QuotaExceeded, match="retention 8d is over"):
        await submitter.submit_many(
            [TaskSpec("noop", retention_s=3600), TaskSpec("noop", retention_s=8 * DAY)]
        )
    assert await task_keys(store, keyspace) == []
    await submitter.submit("noop", retention_s=DAY)
    # A submit that gives no retention gets the maximum instead of the 7-day default
    defaulted = await submitter.submit("noop")
    batch = await submitter.submit_many([TaskSpec("noop"), TaskSpec("noop", retention_s=60)])
    assert [defaulted.retention_s, *(t.retention_s for t in batch.tasks)] == [DAY, DAY, 60]
    assert (await submitter.get(defaulted.id)).retention_s == DAY
    assert len(await task_keys(store, keyspace)) == 4


# the record and its cost ----------------------------------------------------------------
async def test_no_etcd_request_per_submit_for_the_quota(client, clients):
    # Given limits on retention and count, and a client that counts at most once an hour
    await client.set_quota(Quota(max_queued=1000, max_retention_s=30 * DAY))
    submitter = await clients(refresh_s=3600, store_class=CountingStore)
    counting = submitter.store
    assert isinstance(counting, CountingStore)
    # When it submits 20 tasks one after the other
    for i in range(20):
        await submitter.submit("noop", i)
    # Then the quota cost 1 read of the record and 1 count (2 count-only ranges) in all
    assert counting.calls.get("get", 0) == 1
    assert counting.calls.get("range", 0) == counting.count_only == 2
    assert counting.calls.get("txn", 0) == 20


async def test_no_quota_costs_one_read_per_client(clients):
    submitter = await clients(store_class=CountingStore)
    counting = submitter.store
    assert isinstance(counting, CountingStore)
    for i in range(5):
        await submitter.submit("noop", i)
    assert counting.calls == {"get": 1, "txn": 5}


async def test_a_running_client_follows_quota_changes_through_its_watch(client, clients):
    # Given a client that has already submitted (read the quota: none) ...
    submitter = await clients()
    await submitter.submit("noop")
    # When an admin forbids new tasks
    revision = await client.set_quota(Quota(max_queued=0))
    await submitter.quotas.caught_up(revision)
    # Then its next submit is refused, without reading the record again ...
    with pytest.raises(QuotaExceeded):
        await submitter.submit("noop")
    # ... and once the quota is removed, it submits again
    revision = await client.set_quota(None)
    assert await submitter.quotas.caught_up(revision) is None
    await submitter.submit("noop")


async def test_a_corrupt_quota_record_refuses_submits_until_fixed(client, clients, store, keyspace):
    await store.put(keyspace.quota, b"{not json")
    submitter = await clients()
    with pytest.raises(CorruptRecord, match=f"{keyspace.quota}.*quota set"):
        await submitter.submit("noop")
    revision = await client.set_quota(Quota(max_queued=5))
    fixed = await submitter.quotas.caught_up(revision)
    assert fixed is not None and fixed.max_queued == 5
    await submitter.submit("noop")


def test_quota_values_are_checked():
    for bad in [{"max_queued": -1}, {"max_queued": 1.5}, {"max_queued_bytes": True}, {"max_retention_s": 0}]:
        with pytest.raises(InvalidOption):
            Quota(**cast(dict[str, Any], bad))
    with pytest.raises(InvalidOption):
        Quota(max_retention_s=float("nan"))
    assert Quota().empty and not Quota(max_queued=0).empty


def test_durations_and_sizes():
    assert [parse_duration(t) for t in ("0s", "90", "90s", "30m", "12h", "7d", "1.5h")] == [
        0,
        90,
        90,
        1800,
        43200,
        604800,
        5400,
    ]
    for bad in ("", "7x", "-1d", "nan", "inf", "1e999d", "d"):
        with pytest.raises(InvalidOption):
            parse_duration(bad)
    assert [parse_size(t) for t in ("100", "512KiB", "64MiB", "1GiB", "1MB", "2k")] == [
        100,
        512 * 1024,
        64 * 1024**2,
        1024**3,
        1_000_000,
        2048,
    ]
    for bad in ("", "1TB", "-5", "nan", "x"):
        with pytest.raises(InvalidOption):
            parse_size(bad)
    assert [format_duration(s) for s in (604800, 5400, 90, 45, 0)] == ["7d", "1.5h", "1.5m", "45s", "0s"]
    assert [format_size(n) for n in (512, 1536, 64 * 1024**2)] == ["512 B", "1.5 KiB", "64.0 MiB"]


def test_the_quota_key_is_outside_the_schedulers_range_and_the_task_records():
    keys = Keyspace("prod")
    assert keys.quota == "/prod/settings/quota"
    assert not keys.assignments <= keys.quota < prefix_end(keys.running)
    assert not keys.tasks <= keys.quota < prefix_end(keys.tasks)


# command line ---------------------------------------------------------------------------
def tl(bin_: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_, *args], env=env, capture_output=True, text=True, timeout=60)


def test_quota_commands_and_a_refused_submit(tasklease_bin, cli_env, namespace):
    # Given limits set from the command line
    out = tl(tasklease_bin, cli_env, "quota", "set", "--max-queued", "1", "--max-retention", "1d")
    assert out.returncode == 0, out.stderr
    assert "max queued:        1 tasks (waiting now: 0)" in out.stdout
    assert "max retention:     1d" in out.stdout
    # When two tasks are submitted (without --retention: the maximum, 1 day, instead of 7)
    first = tl(tasklease_bin, cli_env, "submit", "noop", "--json")
    assert first.returncode == 0, first.stderr
    status = tl(tasklease_bin, cli_env, "status", json.loads(first.stdout)["id"], "--json")
    assert json.loads(status.stdout)["retention_s"] == DAY
    refused = tl(tasklease_bin, cli_env, "submit", "noop")
    # Then the second is refused: exit 2, one line naming the limit and the usage
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert refused.stderr.startswith(f"tasklease: error: quota of namespace '{namespace}': at most 1 waiting")
    assert "1 are waiting" in refused.stderr
    # A retention over the maximum is refused the same way
    long = tl(tasklease_bin, cli_env, "submit", "noop", "--retention", str(2 * DAY))
    assert long.returncode == 2 and "retention 2d is over the maximum of 1d" in long.stderr
    # `set` changes only what it is given; `none` removes one limit
    out = tl(
        tasklease_bin,
        cli_env,
        "quota",
        "set",
        "--max-queued",
        "none",
        "--max-queued-bytes",
        "64MiB",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["quota"]["max_queued"] is None
    assert shown["quota"]["max_queued_bytes"] == 64 * 1024**2
    assert shown["quota"]["max_retention_s"] == DAY
    assert shown["usage"]["waiting"] == 1 and shown["usage"]["waiting_bytes"] > 0
    assert tl(tasklease_bin, cli_env, "submit", "noop").returncode == 0
    # `clear` removes everything
    assert tl(tasklease_bin, cli_env, "quota", "clear").returncode == 0
    out = tl(tasklease_bin, cli_env, "quota", "show")
    assert out.stdout.strip() == f"namespace {namespace}: no quota; 2 tasks waiting"
    assert tl(tasklease_bin, cli_env, "submit", "noop", "--retention", str(30 * DAY)).returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["quota", "set"], "quota set needs"),
        (["quota", "set", "--max-queued", "-1"], "must be >= 0"),
        (["quota", "set", "--max-queued", "nan"], "not an integer"),
        (["quota", "set", "--max-queued-bytes", "lots"], "bad size"),
        (["quota", "set", "--max-retention", "inf"], "bad duration"),
        (["quota", "set", "--max-retention", "400d"], "max_retention_s must be"),
        (["quota"], "required"),
    ],
)
def test_bad_quota_options_exit_2(tasklease_bin, cli_env, args, message):
    out = tl(tasklease_bin, cli_env, *args)
    assert out.returncode == 2, out
    assert message in out.stderr and out.stderr.count("\n") == 1
