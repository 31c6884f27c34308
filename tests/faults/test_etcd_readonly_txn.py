"""etcd 3.5.0-3.5.4 panic when a read-only transaction's request is cancelled while it reads.

etcd-io/etcd#14110 (fixed in 3.5.5): the server passes the request's context into the
apply of a read-only transaction and panics ("unexpected error during txn: context
canceled") when it is cancelled, e.g. a client that timed out or died mid-request (the
chaos soak killed etcd 3.5.1 this way once workers read their assigned records with a
transaction of gets). The store sends a read-only transaction to such a version as
concurrent range reads pinned to one revision (``Store._read_apart``); these tests run a
real etcd of the embedded version (3.5.1).
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from faultstore import CountingObserver
from tasklease.etcd_server import EtcdServer
from tasklease.store import Get, Put, Store, StoreConfig, reads_apart_for


@pytest.fixture
def etcd(tmp_path):
    server = EtcdServer(data_dir=tmp_path / "etcd" / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_affected_versions():
    # 3.5.0-3.5.4 (the bug), and 3.4 (not verified either way: the safe way)
    assert [reads_apart_for(v) for v in ("3.5.0", "3.5.1", "3.5.4", "3.5.2-rc.0", "3.4.23")] == [True] * 5
    assert [reads_apart_for(v) for v in ("3.5.5", "3.5.17", "3.6.0", "3.10.1")] == [False] * 4


@pytest.mark.timeout(120)
async def test_read_only_transactions_cancelled_mid_read_leave_etcd_up(etcd):
    # Given 64 keys of 500 KB each (a read of all of them takes a while)
    counting = CountingObserver()
    async with Store(StoreConfig.from_text(etcd.endpoint), observer=counting) as store:
        keys = [f"/big/{i:03d}" for i in range(64)]
        for start in range(0, 64, 2):
            await store.txn([], [Put(k, bytes([65 + start % 26]) * 500_000) for k in keys[start : start + 2]])

        # When read-only transactions of all of them are cancelled mid-flight, again and again
        for delay in [0.0005, 0.001, 0.002, 0.004, 0.008] * 4:
            read = asyncio.create_task(store.txn([], [Get(k) for k in keys]))
            await asyncio.sleep(delay)
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await read

        # Then etcd is still up, and a whole read returns every key as of one revision
        assert etcd.running
        before = counting.requests["range"]
        result = await store.txn([], [Get(k) for k in keys] + [Get("/big/none")])
        assert result.succeeded and len(result.reads) == 65
        assert [len(r) for r in result.reads] == [1] * 64 + [0]
        assert result.reads[5][0].value == bytes([65 + 4]) * 500_000
        assert all(r[0].mod_revision <= result.revision for r in result.reads[:64])
        # (sent as ranges: etcd 3.5.1 is affected)
        assert counting.requests["range"] - before >= 65
        assert counting.requests["txn"] == 32  # only the puts
