"""Idempotent submit (W4): one task per idempotency key, race-free, against a real etcd.

Covers concurrent submits of one key (one client's group commit, several
clients, several processes), racing batches with overlapping keys, a key twice
in one batch or group, the release of a key (record expiry, ``unique_for``,
purge, a holder whose record is gone) and a key kept across retries.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter

import pytest

from faultstore import FaultyStore
from tasklease import codec
from tasklease.client import Client, TaskSpec
from tasklease.errors import InvalidOption, QuotaExceeded, StoreNoSpace, StoreUnavailable, TaskNotFound
from tasklease.events import default_hooks
from tasklease.keys import prefix_end
from tasklease.models import TaskState
from tasklease.quotas import Quota
from tasklease.retry import RetryPolicy
from tasklease.store import Store, StoreObserver
from tasklease.tracing import TracingHook

pytestmark = pytest.mark.timeout(120)

PAD = "x" * 2048  # kilobyte payloads, as real submits carry


def payload(i: int) -> dict[str, object]:
    return {"i": i, "pad": PAD}


async def count(store, prefix: str) -> int:
    return (await store.range(prefix, prefix_end(prefix), count_only=True)).count


async def holder_of(store, keyspace, key: str) -> tuple[str | None, int]:
    """The task id a held idempotency key names, and the key's lease (None, 0: not held)."""
    kv, _ = await store.get(keyspace.unique(key))
    if kv is None:
        return None, 0
    return codec.decode_obj(kv.key, kv.value)["id"], kv.lease


async def released_within(store, keyspace, key: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (await holder_of(store, keyspace, key))[0] is not None:
        assert time.monotonic() < deadline, f"idempotency key {key!r} still held after {seconds} s"
        await asyncio.sleep(0.1)


class TxnCounter(StoreObserver):
    """Counts a store's transactions (etcd requests, not time)."""

    def __init__(self) -> None:
        self.txns = 0

    def request(self, operation: str, seconds: float, error_kind: str | None) -> None:
        if operation == "txn":
            self.txns += 1

    def watch_restarted(self) -> None:
        pass


# one key, one task -----------------------------------------------------------------------------
async def test_a_second_submit_with_the_key_returns_the_first_task(client, store, keyspace):
    # Given a task submitted with an idempotency key
    first = await client.submit_unique(TaskSpec("noop", payload(1), idempotency_key="order-42"))

    # When the same key is submitted again, with another payload, and by plain submit too
    again = await client.submit_unique(TaskSpec("noop", payload(2), idempotency_key="order-42"))
    plain = await client.submit("noop", payload(3), idempotency_key="order-42")

    # Then one task exists, the first; only the first submit created it
    assert first.created and not again.created
    assert again.task.id == plain.id == first.task.id
    assert again.task.payload == payload(1)
    assert await count(store, keyspace.tasks) == 1
    # and the key names it, without a lease while it is unfinished
    assert await holder_of(store, keyspace, "order-42") == (first.task.id, 0)
    stored = await client.get(first.task.id)
    assert stored.idempotency_key == "order-42" and stored.unique_until is None


async def test_submit_unique_needs_a_key(client):
    with pytest.raises(InvalidOption, match="idempotency_key"):
        await client.submit_unique(TaskSpec("noop"))


async def test_fifty_concurrent_submits_on_one_client_give_one_task(client, store, keyspace):
    # When 50 submits with one key run at once on one client (grouped in one transaction)
    results = await asyncio.gather(
        *(client.submit_unique(TaskSpec("noop", payload(i), idempotency_key="k")) for i in range(50))
    )

    # Then every caller has the same task, exactly one of them created it, and etcd holds one
    assert len({r.task.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert await count(store, keyspace.tasks) == 1
    assert (await holder_of(store, keyspace, "k"))[0] == results[0].task.id


async def test_fifty_concurrent_submits_from_several_clients_give_one_task(store_config, store, keyspace):
    # Given 5 clients, each on its own connection
    stores = [Store(store_config) for _ in range(5)]
    for s in stores:
        await s.connect()
    clients = [Client(s, keyspace) for s in stores]
    try:
        # When each submits the same key 10 times at once (50 in all)
        results = await asyncio.gather(
            *(
                c.submit_unique(TaskSpec("noop", payload(i), idempotency_key="shared"))
                for i in range(10)
                for c in clients
            )
        )
    finally:
        for c in clients:
            await c.close()
        for s in stores:
            await s.close()

    # Then there is one task; every caller got its id; one created it
    assert len({r.task.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert await count(store, keyspace.tasks) == 1


PROCESS_SUBMITS = """
import asyncio, json, sys
from tasklease.client import Client, TaskSpec
from tasklease.keys import Keyspace
from tasklease.store import Store, StoreConfig

async def main():
    endpoint, namespace, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    async with Store(StoreConfig.from_text(endpoint)) as store:
        client = Client(store, Keyspace(namespace))
        try:
            results = await asyncio.gather(*(
                client.submit_unique(TaskSpec("noop", {"i": i, "pad": "x" * 2048}, idempotency_key=key))
                for i in range(n)
            ))
        finally:
            await client.close()
    print(json.dumps([[r.task.id, r.created] for r in results]))

asyncio.run(main())
"""


async def test_fifty_concurrent_submits_from_five_processes_give_one_task(
    etcd_endpoint, namespace, store, keyspace
):
    # When 5 processes each submit the same key 10 times at once
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PROCESS_SUBMITS,
            etcd_endpoint,
            namespace,
            "from-processes",
            "10",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(5)
    ]
    outputs = []
    for proc in procs:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        outputs.extend(json.loads(out))

    # Then all 50 callers got one id, exactly one created it, and etcd holds one task
    assert len(outputs) == 50
    assert len({task_id for task_id, _ in outputs}) == 1
    assert sum(created for _, created in outputs) == 1
    assert await count(store, keyspace.tasks) == 1


# groups ------------------------------------------------------------------------------------------
async def test_a_group_with_keys_twice_and_keys_held_writes_each_key_once(store_config, store, keyspace):
    # Given a key already held by an existing task
    counter = TxnCounter()
    async with Store(store_config, observer=counter) as own:
        client = Client(own, keyspace)
        try:
            held = await client.submit_unique(TaskSpec("noop", payload(0), idempotency_key="held"))
            before = counter.txns

            # When one group holds that key, a new key twice, another new key, and a task without a key
            keys = ["held", "a", "b", "a", None, "held"]
            results = await asyncio.gather(
                *(
                    client.submitter.submit(TaskSpec("noop", payload(i), idempotency_key=k))
                    for i, k in enumerate(keys)
                )
            )
            spent = counter.txns - before
        finally:
            await client.close()

    # Then the held key answers with its task; "a" is one task, given to both its submits
    by_key = dict(zip(keys, results, strict=True))
    assert results[0].task.id == results[5].task.id == held.task.id
    assert not results[0].created and not results[5].created
    assert results[1].task.id == results[3].task.id
    assert [r.created for r in results[1:5]] == [True, True, False, True]
    assert await count(store, keyspace.tasks) == 4  # held, a, b, and the one without a key
    assert (await holder_of(store, keyspace, "b"))[0] == by_key["b"].task.id
    # and it took the failed group transaction (whose failure branch read the keys), one
    # transaction of gets for the holder's record, and one for the rest: no transaction per submit
    assert spent <= 3


# batches -----------------------------------------------------------------------------------------
async def test_a_batch_with_a_key_twice_creates_one_task_for_it(client, store, keyspace):
    # When a batch gives one key twice (and other tasks around it)
    specs = [
        TaskSpec("noop", payload(0), idempotency_key="dup"),
        TaskSpec("noop", payload(1)),
        TaskSpec("noop", payload(2), idempotency_key="dup"),
        TaskSpec("noop", payload(3), idempotency_key="other"),
    ]
    result = await client.submit_many(specs)

    # Then the key is one task (the first spec's), which the later spec gets
    assert result.tasks[0].id == result.tasks[2].id
    assert result.tasks[0].payload == payload(0)
    assert result.created == [True, True, False, True]
    assert [t.id for t in result.existing] == [result.tasks[0].id]
    assert result.transactions == 1
    assert await count(store, keyspace.tasks) == 3


async def test_a_batch_returns_the_tasks_holding_its_keys(client, store, keyspace):
    # Given 30 keys already held
    old = await client.submit_many(
        [TaskSpec("noop", payload(i), idempotency_key=f"k{i}") for i in range(0, 60, 2)]
    )
    assert all(old.created)

    # When a batch of 100 (two transactions' worth) gives those keys among 70 new ones
    result = await client.submit_many(
        [TaskSpec("noop", payload(i), idempotency_key=f"k{i}") for i in range(100)]
    )

    # Then the held keys give the existing tasks, the others new ones, and nothing doubled
    held = {t.idempotency_key: t.id for t in old.tasks}
    for i, (task, created) in enumerate(zip(result.tasks, result.created, strict=True)):
        assert task.idempotency_key == f"k{i}"
        assert created is (f"k{i}" not in held)
        if not created:
            assert task.id == held[f"k{i}"]
    assert await count(store, keyspace.tasks) == 100
    assert await count(store, keyspace.uniques) == 100


async def test_two_racing_batches_with_overlapping_keys_make_one_task_per_key(store_config, store, keyspace):
    # Given two clients on their own connections, and two batches of 300 sharing 200 keys
    # (in different orders, so their transactions collide on different keys)
    rng = random.Random(7)
    keys_a = [f"key-{i}" for i in range(300)]
    keys_b = [f"key-{i}" for i in range(100, 400)]
    rng.shuffle(keys_a)
    rng.shuffle(keys_b)
    stores = [Store(store_config), Store(store_config)]
    for s in stores:
        await s.connect()
    clients = [Client(s, keyspace) for s in stores]
    try:
        # When both submit at once
        results = await asyncio.gather(
            clients[0].submit_many(
                [TaskSpec("noop", payload(i), idempotency_key=k) for i, k in enumerate(keys_a)]
            ),
            clients[1].submit_many(
                [TaskSpec("noop", payload(i), idempotency_key=k) for i, k in enumerate(keys_b)]
            ),
        )
    finally:
        for c in clients:
            await c.close()
        for s in stores:
            await s.close()

    # Then each key is exactly one task, both batches name the same task for it,
    # and exactly one of the two created it
    ids: dict[str, set[str]] = {}
    created: Counter[str] = Counter()
    for result, keys in zip(results, (keys_a, keys_b), strict=True):
        for key, task, new in zip(keys, result.tasks, result.created, strict=True):
            assert task.idempotency_key == key
            ids.setdefault(key, set()).add(task.id)
            created[key] += new
    assert len(ids) == 400
    assert all(len(v) == 1 for v in ids.values())
    assert set(created.values()) == {1}
    assert await count(store, keyspace.tasks) == 400
    assert await count(store, keyspace.uniques) == 400
    for key in ("key-0", "key-150", "key-399"):
        assert (await holder_of(store, keyspace, key))[0] == next(iter(ids[key]))


# release -----------------------------------------------------------------------------------------
async def test_the_key_is_released_when_the_record_expires(client, cluster, store, keyspace):
    # Given a task with a key and a short retention, run to its end
    await cluster.scheduler()
    await cluster.worker()
    first = await client.submit("noop", payload(1), idempotency_key="short", retention_s=2)
    finished = await client.wait(first.id, timeout_s=30)
    assert finished.state is TaskState.SUCCEEDED

    # Then its key went under the record's retention lease, and a submit still gets it
    record, _ = await store.get(keyspace.task(first.id))
    assert record is not None and record.lease != 0
    assert await holder_of(store, keyspace, "short") == (first.id, record.lease)
    assert (await client.submit("noop", payload(2), idempotency_key="short")).id == first.id

    # When the record expires, the key goes with it (same lease)
    await released_within(store, keyspace, "short", 30)
    with pytest.raises(TaskNotFound):
        await client.get(first.id)

    # Then the key makes a new task
    again = await client.submit_unique(TaskSpec("noop", payload(3), idempotency_key="short"))
    assert again.created and again.task.id != first.id


async def test_the_key_is_released_after_unique_for(client, store, keyspace):
    # Given an unfinished task (no worker) whose key is held for 1 s
    first = await client.submit_unique(TaskSpec("noop", payload(1), idempotency_key="brief", unique_for_s=1))
    _, lease = await holder_of(store, keyspace, "brief")
    assert lease != 0
    assert first.task.unique_until == pytest.approx(first.task.created_at + 1)
    # (a shared lease: published for its duration and time bucket, like the retention leases)
    published = await store.range(f"{keyspace.root}retention/1/", prefix_end(f"{keyspace.root}retention/1/"))
    assert lease in {int(kv.value) for kv in published.kvs}

    # When the lease runs out (1 s + up to 2 buckets of 1 s)
    await released_within(store, keyspace, "brief", 30)

    # Then the key makes a new task, though the first still waits in its queue
    again = await client.submit_unique(TaskSpec("noop", payload(2), idempotency_key="brief"))
    assert again.created and again.task.id != first.task.id
    assert (await client.get(first.task.id)).state is TaskState.QUEUED


async def test_unique_for_keys_share_leases(client, store, keyspace):
    # When 20 tasks are submitted with keys held for an hour
    results = await asyncio.gather(
        *(
            client.submit_unique(TaskSpec("noop", idempotency_key=f"h{i}", unique_for_s=3600))
            for i in range(20)
        )
    )
    assert all(r.created for r in results)

    # Then their keys share one or two leases (one per 36 s bucket), not one each
    leases = {(await holder_of(store, keyspace, f"h{i}"))[1] for i in range(20)}
    assert 0 not in leases and len(leases) <= 2


async def test_a_key_held_by_a_task_whose_record_is_gone_is_taken_over(client, cluster, store, keyspace):
    # Given a key held for a minute by a task whose record expires sooner (retention 1 s)
    await cluster.scheduler()
    await cluster.worker()
    first = await client.submit(
        "noop", payload(1), idempotency_key="outlived", unique_for_s=60, retention_s=1
    )
    assert (await client.wait(first.id, timeout_s=30)).state is TaskState.SUCCEEDED
    _, lease = await holder_of(store, keyspace, "outlived")
    record, _ = await store.get(keyspace.task(first.id))
    assert record is not None and lease not in (0, record.lease)  # its finish left the key alone
    deadline = time.monotonic() + 30
    while (await store.get(keyspace.task(first.id)))[0] is not None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert (await holder_of(store, keyspace, "outlived"))[0] == first.id  # still there, holder gone

    # When the key is submitted again
    again = await client.submit_unique(TaskSpec("noop", payload(2), idempotency_key="outlived"))

    # Then the stale key is taken over: a new task holds it
    assert again.created and again.task.id != first.id
    assert (await holder_of(store, keyspace, "outlived"))[0] == again.task.id


async def test_the_key_survives_retries_and_goes_with_the_finished_record(client, cluster, store, keyspace):
    # Given a task that fails twice and is retried (requeued) each time, then fails for good
    await cluster.scheduler()
    await cluster.worker()
    spec = TaskSpec(
        "fail", {"message": "again"}, retry=RetryPolicy(max_retries=2, backoff_s=0), idempotency_key="flaky"
    )
    first = await client.submit_unique(spec)
    finished = await client.wait(first.task.id, timeout_s=30)
    assert finished.state is TaskState.FAILED and len(finished.attempts) == 3

    # Then the key still names it, now under the finished record's lease
    record, _ = await store.get(keyspace.task(first.task.id))
    assert record is not None
    assert await holder_of(store, keyspace, "flaky") == (first.task.id, record.lease)
    # and a submit with the key gets the failed task
    again = await client.submit_unique(spec)
    assert not again.created and again.task.state is TaskState.FAILED


async def test_a_cancelled_task_keeps_its_key_until_its_record_expires(client, store, keyspace):
    # Given a queued task with a key, cancelled
    first = await client.submit("noop", payload(1), idempotency_key="cancelled", retention_s=3600)
    await client.cancel(first.id)

    # Then the key names it under the cancelled record's retention lease
    record, _ = await store.get(keyspace.task(first.id))
    assert record is not None and record.lease != 0
    assert await holder_of(store, keyspace, "cancelled") == (first.id, record.lease)
    assert (await client.submit("noop", idempotency_key="cancelled")).id == first.id


async def test_purge_releases_the_keys_of_the_records_it_deletes(client, store, keyspace):
    # Given finished tasks with keys (cancelled), and one unfinished
    done = [await client.submit("noop", payload(i), idempotency_key=f"p{i}") for i in range(3)]
    for task in done:
        await client.cancel(task.id)
    waiting = await client.submit("noop", payload(9), idempotency_key="waiting")

    # When they are purged
    result = await client.purge(0, dry_run=False)

    # Then their keys are gone with them; the unfinished task keeps its key
    assert result.deleted == 3
    for i in range(3):
        assert (await holder_of(store, keyspace, f"p{i}"))[0] is None
    assert (await holder_of(store, keyspace, "waiting"))[0] == waiting.id
    again = await client.submit_unique(TaskSpec("noop", idempotency_key="p0"))
    assert again.created and again.task.id != done[0].id


# command line ------------------------------------------------------------------------------------
def test_cli_submit_with_a_key_from_eight_processes_at_once(tasklease_bin, cli_env, etcd_endpoint):
    # When 8 `tasklease submit --key` processes run at once
    procs = [
        subprocess.Popen(
            [
                tasklease_bin,
                "submit",
                "noop",
                "--payload",
                json.dumps(payload(i)),
                "--key",
                "cli-key",
                "--json",
            ],
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err  # a held key is not an error
        outs.append((json.loads(out), err))

    # Then all print one id; one created it; the others say so on stderr
    assert len({o["id"] for o, _ in outs}) == 1
    assert sum(o["created"] for o, _ in outs) == 1
    for o, err in outs:
        assert ("already submitted" in err) is (not o["created"])
        if not o["created"]:
            assert o["id"] in err


def test_cli_submit_key_text_output_and_unique_for(tasklease_bin, cli_env):
    def tl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tasklease_bin, *args], env=cli_env, capture_output=True, text=True, timeout=30)

    # Given a task submitted with a key held for an hour
    first = tl("submit", "noop", "--key", "report:2026-12-01", "--unique-for", "1h")
    assert first.returncode == 0, first.stderr
    task_id = first.stdout.strip()
    record = json.loads(tl("status", task_id, "--json").stdout)
    assert record["idempotency_key"] == "report:2026-12-01"
    assert record["unique_until"] == pytest.approx(record["created_at"] + 3600)

    # When it is submitted again
    again = tl("submit", "noop", "--key", "report:2026-12-01")

    # Then the same id is printed (stdout), "already submitted" said on stderr, exit 0
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == task_id
    assert "already submitted" in again.stderr and task_id in again.stderr

    # and bad uses are refused before anything is written (exit 2)
    assert tl("submit", "noop", "--unique-for", "1h").returncode == 2  # needs --key
    assert tl("submit", "noop", "--key", "").returncode == 2
    assert tl("submit", "noop", "--key", "k", "--unique-for", "soon").returncode == 2


# lost answers and refusals -------------------------------------------------------------------
class LostAnswers(Store):
    """The real store, except that the next ``lose`` transactions commit and then lose their answer."""

    lose = 0

    async def txn(self, compares, success, failure=(), **kwargs):
        result = await super().txn(compares, success, failure, **kwargs)
        if self.lose and success:
            self.lose -= 1
            raise StoreUnavailable("the answer was lost (the transaction committed)")
        return result


async def test_a_group_whose_answer_was_lost_still_reports_its_tasks_as_created(
    store_config, store, keyspace
):
    async with LostAnswers(store_config) as lossy:
        client = Client(lossy, keyspace)
        try:
            # Given the group transaction of 5 keyed submits commits but its answer is lost
            lossy.lose = 1
            results = await asyncio.gather(
                *(
                    client.submit_unique(TaskSpec("noop", payload(i), idempotency_key=f"lost-{i}"))
                    for i in range(5)
                )
            )
        finally:
            await client.close()

    # Then each submit, sent again alone, finds its key naming its own task: created, once each
    assert all(r.created for r in results)
    assert await count(store, keyspace.tasks) == 5
    for i, r in enumerate(results):
        assert (await holder_of(store, keyspace, f"lost-{i}"))[0] == r.task.id


async def test_a_batch_whose_answer_was_lost_reports_its_tasks_as_created(store_config, store, keyspace):
    async with LostAnswers(store_config) as lossy:
        client = Client(lossy, keyspace)
        try:
            lossy.lose = 1
            result = await client.submit_many(
                [TaskSpec("noop", payload(i), idempotency_key=f"b{i}") for i in range(10)]
            )
        finally:
            await client.close()
    assert all(result.created) and result.transactions == 1
    assert await count(store, keyspace.tasks) == 10


async def test_a_refused_group_with_a_key_twice_fails_every_submit(store_config, keyspace):
    async with FaultyStore(store_config) as faulty:
        client = Client(faulty, keyspace)
        try:
            # Given etcd refuses writes (out of space)
            faulty.fail("txn", lambda: StoreNoSpace("etcdserver: mvcc: database space exceeded"), times=10)
            # When a group holds one key twice and another key
            results = await asyncio.gather(
                *(client.submit_unique(TaskSpec("noop", idempotency_key=k)) for k in ("a", "a", "b")),
                return_exceptions=True,
            )
        finally:
            await client.close()
    # Then every submit gets the refusal (nothing was written)
    assert all(isinstance(r, StoreNoSpace) for r in results), results


async def test_a_unique_for_lease_gone_from_etcd_is_replaced(client, store, keyspace):
    # Given a key held for an hour, under the shared lease of its bucket, which etcd then loses
    first = await client.submit_unique(TaskSpec("noop", idempotency_key="lease-1", unique_for_s=3600))
    _, lease = await holder_of(store, keyspace, "lease-1")
    await store.revoke(lease)  # its keys go too: the key, and the bucket's published lease id

    # When another key is submitted with the same unique_for (the client still caches that lease)
    second = await client.submit_unique(TaskSpec("noop", idempotency_key="lease-2", unique_for_s=3600))

    # Then the submit gets a new lease and succeeds
    holder, new_lease = await holder_of(store, keyspace, "lease-2")
    assert second.created and holder == second.task.id
    assert new_lease not in (0, lease)
    assert first.created and (await holder_of(store, keyspace, "lease-1"))[0] is None


async def test_a_traced_submit_whose_key_was_held_ends_its_span(store, keyspace, provider, exporter):
    # Given a client whose submits are traced
    hook = TracingHook(provider)
    client = Client(store, keyspace, hooks=[*default_hooks(), hook])
    try:
        # When one key is submitted twice, alone and in a batch
        first = await client.submit_unique(TaskSpec("noop", idempotency_key="traced"))
        again = await client.submit_unique(TaskSpec("noop", idempotency_key="traced"))
        batch = await client.submit_many([TaskSpec("noop", idempotency_key="traced")])
    finally:
        await client.close()

    # Then every submit span ended: the first as stored, the others saying why nothing was
    spans = [s for s in exporter.get_finished_spans() if s.name == "submit noop"]
    assert first.created and not again.created and batch.created == [False]
    assert len(spans) == 3
    assert spans[0].status.is_ok
    for span in spans[1:]:
        messages = [str(e.attributes.get("exception.message", "")) for e in span.events if e.attributes]
        assert any(f"idempotency key is held by task {first.task.id}" in m for m in messages)
    assert not hook._submits  # none left open


async def test_a_held_key_is_answered_even_when_the_quota_is_full(client):
    # Given a namespace allowed one waiting task, which a keyed submit took
    await client.set_quota(Quota(max_queued=1))
    first = await client.submit("noop", payload(1), idempotency_key="quota-1")

    # When the same key is submitted again (alone, and in a batch), the quota refuses nothing:
    # such a submit writes nothing, it gets the existing task
    again = await client.submit_unique(TaskSpec("noop", payload(2), idempotency_key="quota-1"))
    batch = await client.submit_many([TaskSpec("noop", idempotency_key="quota-1")] * 3)
    assert not again.created and again.task.id == first.id
    assert batch.created == [False, False, False] and {t.id for t in batch.tasks} == {first.id}
    assert batch.transactions == 0

    # Then a new key is still refused, alone or beside a held one
    with pytest.raises(QuotaExceeded):
        await client.submit("noop", idempotency_key="quota-2")
    with pytest.raises(QuotaExceeded):
        await client.submit_many(
            [TaskSpec("noop", idempotency_key="quota-1"), TaskSpec("noop", idempotency_key="quota-2")]
        )
