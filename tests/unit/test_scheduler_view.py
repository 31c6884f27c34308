"""The scheduler's mirror (ClusterView): pure bookkeeping, no etcd."""

from __future__ import annotations

from tasklease.keys import Keyspace
from tasklease.scheduler import ClusterView
from tasklease.store import KV

K = Keyspace("ns")


def queue_kvs() -> list[KV]:
    kvs = []
    for i in range(3000):
        route = ("noop", "add&zone=eu", "")[i % 3]
        key = K.queue_entry(("a", "b")[i % 2], i % 4, 10**15 + i, f"01ARZ3NDEKTSV4RRFFQ69{i:05d}", route)
        kvs.append(KV(key, b"", 5 + i, 5 + i, 1))
    kvs.append(KV(f"{K.queues}a/x/not-a-seq/id/r", b"", 1, 1, 1))  # malformed: ignored
    return sorted(kvs, key=lambda kv: kv.key)


def test_bulk_load_of_queue_keys_equals_applying_them_one_by_one():
    kvs = queue_kvs()
    one_by_one, bulk = ClusterView(K), ClusterView(K)
    for kv in kvs:
        one_by_one.apply(kv, deleted=False, has_value=False)
    bulk.load_queue_keys(kvs)
    assert {g: list(v) for g, v in bulk.queue_keys.items()} == {
        g: list(v) for g, v in one_by_one.queue_keys.items()
    }
    assert bulk.queue_kv == one_by_one.queue_kv
    assert bulk.unloaded == one_by_one.unloaded == set(bulk.queue_kv)
    assert len(bulk.queue_kv) == 3000
    # groups: 2 queues x 3 routes (the empty route: keys of older versions)
    assert set(bulk.queue_keys) == {(q, r) for q in ("a", "b") for r in ("noop", "add&zone=eu", "")}


def test_values_are_kept_only_near_the_head_of_their_group():
    view = ClusterView(K)
    for i in range(300):
        key = K.queue_entry("q", 1, 10**15 + i, f"01ARZ3NDEKTSV4RRFFQ69{i:05d}", "noop")
        view.apply(KV(key, b"record", 5, 5, 1), deleted=False)
    kept = [k for k in view.queue_kv if k not in view.unloaded]
    assert len(kept) == 256 and len(view.unloaded) == 44
