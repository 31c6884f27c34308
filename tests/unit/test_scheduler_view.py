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
    import tasklease.mirror as scheduler

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


def view_state(view: ClusterView) -> dict:
    return {
        "nodes": dict(view.nodes),
        "assigned": {w: set(ids) for w, ids in view.assigned.items() if ids},
        "assignment_rev": dict(view.assignment_rev),
        "queue_keys": {g: list(v) for g, v in view.queue_keys.items()},
        "queue_kv": dict(view.queue_kv),
        "running": dict(view.running),
        "delayed": dict(view.delayed),
        "next_due": view.next_due(),
        "changed_nodes": view.changed_nodes,
    }


def test_keys_inside_the_watched_range_under_other_prefixes_do_not_change_the_view():
    # Given a view holding one key of each mirrored kind
    view = ClusterView(K)
    task = "01ARZ3NDEKTSV4RRFFQ6900001"
    for key, value in [
        (K.assignment("w1", task), b"{}"),
        (K.queue_entry("q", 1, 10**15, task, "noop"), b"r"),
        (K.running_entry(task), b'{"worker": "w1", "n": 1, "deadline": 1e12, "t": 60}'),
        (K.delayed_entry(1_700_000_000.0, task), task.encode()),
    ]:
        view.apply(KV(key, value, 5, 5, 1), deleted=False)
    view.changed_nodes = False
    before = view_state(view)

    # When keys that sort inside the watched range but under other prefixes arrive,
    # put and then deleted (a new prefix such as cron/ or limit/, the retention leases, the leader key)
    start, end = K.scheduler_range
    others = [
        f"{K.root}cron/every-minute",
        f"{K.root}deps/{task}/x",
        f"{K.root}limit/q",
        K.retention(86400, 19000),
        K.leader,
    ]
    assert all(start <= key < end for key in others)
    for key in others:
        view.apply(KV(key, b'{"capacity": 1, "queues": ["q"]}', 7, 7, 1), deleted=False)
        view.apply(KV(key, b"", 7, 8, 0), deleted=True)

    # Then the view is unchanged
    assert view_state(view) == before
    assert view.running and view.delayed and view.assigned["w1"]


def test_a_malformed_key_under_a_mirrored_prefix_is_ignored():
    # Given an empty view
    view = ClusterView(K)

    # When malformed keys of each mirrored kind arrive
    for key in [K.assignments + "w1", K.running_entry("T") + "/x", K.delayed + "soon/T", K.nodes]:
        view.apply(KV(key, b"{}", 5, 5, 1), deleted=False)

    # Then nothing lands in the mirror
    assert not view.assignment_rev and not view.running and not view.delayed and not view.nodes
    assert view.next_due() == float("inf")
