"""Both KV transports (store_h2's HTTP/2 client, the default, and the gRPC library) give the same answers.

Every other test runs the default transport against etcd; this one runs the
store's KV surface (reads, paged scans, writes, transactions, and etcd's
refusals) through each and compares, so ``TASKLEASE_ETCD_TRANSPORT=grpc``
stays a working fallback.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from tasklease.errors import InvalidOption, StoreCompacted, StoreLeaseNotFound, StoreRequestTooLarge
from tasklease.store import Compare, Delete, Get, Put, Store, StoreConfig

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["h2", "grpc"])
async def any_store(request: pytest.FixtureRequest, store_config: StoreConfig) -> AsyncIterator[Store]:
    config = dataclasses.replace(store_config, transport=request.param, max_receive_bytes=1024 * 1024)
    async with Store(config) as store:
        yield store


async def test_reads_writes_and_transactions(any_store: Store, namespace: str) -> None:
    store = any_store
    p = f"/{namespace}/"
    payload = bytes(range(256)) * 18  # 4.5 KB, every byte value
    rev = await store.put(p + "a", payload)
    kv, read_rev = await store.get(p + "a")
    assert kv is not None and kv.value == payload and kv.mod_revision == rev and read_rev >= rev
    assert (await store.get(p + "missing"))[0] is None

    # a transaction that holds: writes two keys, reads one back
    ok = await store.txn(
        [Compare(p + "a", "mod", "=", rev), Compare(p + "b", "create", "=", 0)],
        [Put(p + "b", b"B"), Put(p + "c", b"C" * 10_000), Get(p + "a")],
    )
    assert ok.succeeded and ok.reads[0][0].value == payload
    # one that does not: the failure branch runs
    failed = await store.txn([Compare(p + "a", "mod", "=", rev - 1)], [Delete(p + "a")], [Get(p, p + "\xff")])
    assert not failed.succeeded
    assert [kv.key for kv in failed.reads[0]] == [p + "a", p + "b", p + "c"]

    page = await store.range(p, p + "\xff", limit=2)
    assert [kv.key for kv in page.kvs] == [p + "a", p + "b"] and page.more and page.count == 3
    keys = await store.range(p, p + "\xff", keys_only=True)
    assert all(kv.value == b"" for kv in keys.kvs) and len(keys.kvs) == 3
    assert (await store.range(p, p + "\xff", count_only=True)).count == 3
    old = await store.range(p, p + "\xff", revision=rev)
    assert [kv.key for kv in old.kvs] == [p + "a"]
    assert await store.delete(p + "b") == 1
    assert await store.delete(p, p + "\xff") == 2


async def test_a_scan_over_the_receive_limit_is_paged(any_store: Store, namespace: str) -> None:
    """Values of 200 KB: a page of all of them is over the 1 MiB receive limit, so it is read again smaller."""
    store = any_store
    p = f"/{namespace}/big/"
    for i in range(12):
        await store.put(f"{p}{i:02d}", bytes([i]) * 200_000)
    with pytest.raises(StoreRequestTooLarge):
        await store.range(p, p + "\xff")
    seen = []
    async for page in store.scan(p, p + "\xff", budget_bytes=4 * 1024 * 1024, first_page=12):
        seen += [(kv.key, kv.value[:1]) for kv in page.kvs]
    assert seen == [(f"{p}{i:02d}", bytes([i])) for i in range(12)]


async def test_etcds_refusals_are_the_same_errors(any_store: Store, namespace: str) -> None:
    store = any_store
    p = f"/{namespace}/"
    with pytest.raises(StoreLeaseNotFound):
        await store.txn([], [Put(p + "leased", b"x", lease=0x7E57_0000_0001)])
    with pytest.raises(StoreRequestTooLarge):
        await store.put(p + "huge", b"x" * (2 * 1024 * 1024))
    await store.put(p + "k", b"1")
    rev = await store.put(p + "k", b"2")
    await store._svc().kv.compact(rev)
    with pytest.raises(StoreCompacted):
        await store.range(p, p + "\xff", revision=rev - 1)
    assert (await store.get(p + "huge"))[0] is None  # nothing half-written


def test_an_unknown_transport_is_refused() -> None:
    with pytest.raises(InvalidOption, match="etcd transport must be one of h2, grpc"):
        StoreConfig(transport="http3")
    assert StoreConfig.from_env({"TASKLEASE_ETCD_TRANSPORT": "grpc"}).transport == "grpc"
    assert StoreConfig.from_env({}).transport == "h2"
