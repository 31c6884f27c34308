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


def test_values_are_kept_up_to_the_byte_budget_and_accounted_on_delete(monkeypatch):
    import tasklease.scheduler as scheduler

    monkeypatch.setattr(scheduler, "VALUE_BUDGET_BYTES", 100 * 1000)
    view = ClusterView(K)
    keys = [K.queue_entry("q", 1, 10**15 + i, f"01ARZ3NDEKTSV4RRFFQ69{i:05d}", "noop") for i in range(300)]
    for key in keys:
        view.apply(KV(key, b"r" * 1000, 5, 5, 1), deleted=False)
    assert len(view.unloaded) == 200 and view.value_bytes == 100 * 1000
    # deleting a held value frees its bytes; a key read later is filled within the budget
    view.apply(KV(keys[0], b"", 5, 6, 0), deleted=True)
    assert view.value_bytes == 99 * 1000
    assert view.fill(KV(keys[299], b"r" * 1000, 5, 5, 1))
    assert keys[299] not in view.unloaded and view.value_bytes == 100 * 1000
    # a version the mirror does not hold is not filled
    assert not view.fill(KV(keys[298], b"r" * 1000, 5, 9, 2))
