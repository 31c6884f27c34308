"""Store errors reach every submit that waits for them (no hang), against a real etcd.

The faults come from :class:`FaultyStore`: the real store refusing chosen
transactions before sending them, as etcd refuses a request (auth, permission,
overload, size, NOSPACE). ``asyncio.timeout`` in these tests only guards
against a hang; nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from faultstore import FaultyStore
from tasklease.client import Client, TaskSpec
from tasklease.errors import (
    BatchIncomplete,
    StoreAuthError,
    StoreError,
    StoreNoSpace,
    StoreRequestTooLarge,
    StoreUnavailable,
)
from tasklease.keys import Keyspace, prefix_end
from tasklease.store import Store, StoreConfig

HANG_GUARD_S = 60

STORE_ERRORS: list[tuple[str, Callable[[], StoreError]]] = [
    ("auth", lambda: StoreAuthError("etcd refused txn: etcdserver: invalid auth token")),
    ("permission", lambda: StoreAuthError("etcd refused txn: etcdserver: permission denied")),
    ("overloaded", lambda: StoreUnavailable("etcd is overloaded (txn: etcdserver: too many requests)")),
    ("too-large", lambda: StoreRequestTooLarge("etcd txn too large: etcdserver: request is too large")),
    ("nospace", lambda: StoreNoSpace("etcd is out of space (txn refused: mvcc: database space exceeded)")),
    ("other", lambda: StoreError("etcd txn failed: FAILED_PRECONDITION something else")),
]


@pytest.fixture
async def faulty(store_config: StoreConfig) -> AsyncIterator[FaultyStore]:
    async with FaultyStore(store_config) as s:
        yield s


@pytest.fixture
async def faulty_client(faulty: FaultyStore, keyspace: Keyspace) -> AsyncIterator[Client]:
    client = Client(faulty, keyspace)
    yield client
    await client.close()


async def task_keys(store: Store, keys: Keyspace) -> list[str]:
    result = await store.range(keys.tasks, prefix_end(keys.tasks), keys_only=True)
    return [kv.key for kv in result.kvs]


@pytest.mark.parametrize(("name", "error"), STORE_ERRORS, ids=[n for n, _ in STORE_ERRORS])
async def test_every_concurrent_submit_receives_a_lasting_store_error(
    faulty: FaultyStore, faulty_client: Client, store: Store, keyspace: Keyspace, name, error
):
    # Given etcd refusing every transaction with this error
    fault = faulty.fail("txn", error, times=10_000)
    # When several submits run concurrently (a group commit)
    async with asyncio.timeout(HANG_GUARD_S):
        results = await asyncio.gather(
            *(faulty_client.submit("noop", {"i": i}) for i in range(5)), return_exceptions=True
        )
    # Then each of them receives the error (none hangs, none succeeds) ...
    expected = type(error())
    assert [type(r) for r in results] == [expected] * 5, results
    assert await task_keys(store, keyspace) == []
    # ... and once etcd accepts writes again, the client submits as usual
    fault.times = fault.fired
    async with asyncio.timeout(HANG_GUARD_S):
        again = await asyncio.gather(*(faulty_client.submit("noop", {"i": i}) for i in range(3)))
    assert len(await task_keys(store, keyspace)) == len(again) == 3


@pytest.mark.parametrize("error", [StoreAuthError, StoreNoSpace])
async def test_a_refused_group_fails_every_submit_of_the_group(
    faulty: FaultyStore, faulty_client: Client, store: Store, keyspace: Keyspace, error
):
    # Given etcd refusing the next transaction only (the group's)
    faulty.fail("txn", lambda: error("refused"), times=1)
    async with asyncio.timeout(HANG_GUARD_S):
        results = await asyncio.gather(
            *(faulty_client.submit("noop", {"i": i}) for i in range(6)), return_exceptions=True
        )
    # Then every submit of the group receives the refusal, and nothing was written
    assert all(isinstance(r, error) for r in results), results
    assert await task_keys(store, keyspace) == []


async def test_a_group_too_large_for_etcd_is_sent_again_one_by_one(
    faulty: FaultyStore, faulty_client: Client, store: Store, keyspace: Keyspace
):
    # Given etcd refusing the group's transaction as too large (nothing was written)
    faulty.fail("txn", lambda: StoreRequestTooLarge("request is too large"), times=1)
    async with asyncio.timeout(HANG_GUARD_S):
        tasks = await asyncio.gather(*(faulty_client.submit("noop", {"i": i}) for i in range(6)))
    # Then each task went alone and every submit succeeded
    assert sorted(await task_keys(store, keyspace)) == sorted(keyspace.task(t.id) for t in tasks)


async def test_a_refused_later_part_of_a_batch_says_what_was_written(
    faulty: FaultyStore, faulty_client: Client, store: Store, keyspace: Keyspace
):
    # Given a batch of 100 (two transactions) and etcd out of space at the second
    seen = {"txns": 0}

    def second_txn(*_args: object) -> bool:
        seen["txns"] += 1
        return seen["txns"] == 2

    faulty.fail("txn", lambda: StoreNoSpace("database space exceeded"), when=second_txn)
    with pytest.raises(BatchIncomplete) as info:
        await faulty_client.submit_many(TaskSpec("noop", {"i": i}) for i in range(100))
    # Then the error lists the 64 tasks of the first transaction, which are stored
    assert isinstance(info.value.__cause__, StoreNoSpace)
    written = info.value.written
    assert len(written) == 64
    assert sorted(await task_keys(store, keyspace)) == sorted(keyspace.task(t.id) for t in written)
