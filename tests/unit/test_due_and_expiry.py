"""Delays and expiry without etcd: the due heap, the batches of promotions, the expire transaction."""

from __future__ import annotations

import random

import pytest

from tasklease import codec, submitter, transitions
from tasklease.assigner import plan_batch
from tasklease.balancers import LeastLoad, NodeView
from tasklease.errors import InvalidTransition
from tasklease.keys import Keyspace
from tasklease.mirror import ClusterView, DueHeap, MirroredNode
from tasklease.models import Attempt, Task, TaskState
from tasklease.recoverer import READ_BYTES, READ_MAX, delayed_record_bytes, read_groups
from tasklease.routing import parse_route
from tasklease.store import KV, MAX_TXN_OPS, Compare, Delete, Put
from tasklease.submitter import chunk

K = Keyspace("ns")
NOW = 1_700_000_000.0
FENCE = Compare.created_at(K.leader, 7)


def task_id(i: int) -> str:
    return f"01HZZZZZZZZZZZZZZZZZ{i:06d}"


def delayed_kv(due: float, i: int, revision: int = 5) -> KV:
    return KV(K.delayed_entry(due, task_id(i)), b'{"id":"x","q":"default"}', revision, revision, 0)


def task(i: int = 0, **changes: object) -> Task:
    base: dict[str, object] = {
        "id": task_id(i),
        "type": "t",
        "payload": {"x": "y" * 1000},
        "seq": 10**15 + i,
        "state": TaskState.PENDING,
        "not_before": NOW + 60,
    }
    base.update(changes)
    return Task(**base)  # type: ignore[arg-type]


def record_kv(t: Task, revision: int = 5) -> KV:
    return KV(K.task(t.id), codec.encode_task(t), revision, revision, 0)


# the heap -----------------------------------------------------------------------------------
def new_heap() -> tuple[dict[str, KV], DueHeap]:
    live: dict[str, KV] = {}
    return live, DueHeap(live, lambda key: K.parse_delayed(key).due_us)


def add(live: dict[str, KV], heap: DueHeap, kv: KV) -> None:
    live[kv.key] = kv
    heap.push(kv.key)


def test_take_pops_only_what_is_due_soonest_first_up_to_the_limit():
    # Given 1,000 delayed keys pushed in random order, due one per second
    live, heap = new_heap()
    kvs = [delayed_kv(NOW + i, i) for i in range(1000)]
    for kv in random.Random(1).sample(kvs, len(kvs)):
        add(live, heap, kv)
    assert heap.next_due() == NOW + 0.000001
    # When taking what is due 9.5 s later, 4 at a time
    first = heap.take(NOW + 9.5, 4)
    rest = heap.take(NOW + 9.5, 100)
    # Then the 10 due keys come out in due order, each once, and nothing else
    assert [kv.key for kv in first + rest] == [kv.key for kv in kvs[:10]]
    assert heap.take(NOW + 9.5, 100) == []
    assert heap.next_due() == NOW + 10.000001
    # a key is taken only once its time has surely passed (whole microseconds)
    assert heap.take(NOW + 10, 100) == []
    assert heap.take(NOW + 10.000001, 100) == [kvs[10]]


def test_deleted_keys_are_skipped_and_taken_keys_come_back_only_when_given_back():
    live, heap = new_heap()
    kvs = [delayed_kv(NOW + i, i) for i in range(5)]
    for kv in kvs:
        add(live, heap, kv)
    # a deleted key (cancelled task) is never offered, nor its due time
    del live[kvs[0].key]
    assert heap.next_due() == NOW + 1.000001
    taken = heap.take(NOW + 10, 10)
    assert [kv.key for kv in taken] == [kv.key for kv in kvs[1:]]
    # while taken, a key is not offered again (even if put again by the watch: held once)
    assert heap.next_due() == float("inf")
    # given back: what still exists returns; what the watch deleted meanwhile does not
    del live[kvs[1].key]
    heap.give_back(taken)
    assert [kv.key for kv in heap.take(NOW + 10, 10)] == [kv.key for kv in kvs[2:]]


def test_a_key_put_twice_is_held_once():
    live, heap = new_heap()
    kv = delayed_kv(NOW, 1)
    add(live, heap, kv)
    add(live, heap, kv)
    heap.give_back([kv])
    assert len(heap) == 1
    assert heap.take(NOW + 1, 10) == [kv]


def test_the_heap_is_rebuilt_when_deleted_keys_outnumber_the_live_ones():
    # Given 5,000 keys pushed and then deleted before they were due (cancelled)
    live, heap = new_heap()
    for i in range(5000):
        add(live, heap, delayed_kv(NOW + 3600 + i, i))
    for key in list(live):
        del live[key]
    # When new keys arrive, the entries of the deleted ones are dropped on the way
    for i in range(5000, 5010):
        add(live, heap, delayed_kv(NOW + i, i))
    assert len(heap) <= 2 * len(live) + 1024
    assert [kv.key for kv in heap.take(NOW + 10**6, 100)] == sorted(live)


def test_a_malformed_key_is_not_pushed():
    live, heap = new_heap()
    live["/ns/delayed/x/y"] = KV("/ns/delayed/x/y", b"", 1, 1, 0)
    heap.push("/ns/delayed/x/y")
    assert len(heap) == 0


def test_the_view_takes_due_delayed_keys_from_its_heap():
    view = ClusterView(K)
    kvs = [delayed_kv(NOW + i, i) for i in range(100)]
    for kv in reversed(kvs):
        view.apply(kv, deleted=False)
    view.apply(kvs[1], deleted=True)
    assert view.next_due() == NOW + 0.000001
    assert [kv.key for kv in view.due(NOW + 3.5, 10)] == [kvs[0].key, kvs[2].key, kvs[3].key]
    assert view.next_due() == NOW + 4.000001


# reading and writing in groups -----------------------------------------------------------
def test_delayed_keys_name_their_record_size_and_reads_are_grouped_by_it():
    t = task()
    data = codec.encode_task(t)
    (put,) = transitions.place_ops(K, t, data)
    assert isinstance(put, Put)
    kv = KV(put.key, put.value, 1, 1, 0)
    assert delayed_record_bytes(kv) == len(data)
    # an older key (the bare id) counts as the largest pending record
    assert delayed_record_bytes(KV(put.key, t.id.encode(), 1, 1, 0)) == codec.MAX_QUEUED_RECORD_BYTES
    small = [kv] * 200
    assert [len(g) for g in read_groups(small, delayed_record_bytes)] == [READ_MAX, READ_MAX, READ_MAX, 8]
    old = [KV(put.key, t.id.encode(), 1, 1, 0)] * 10
    groups = read_groups(old, delayed_record_bytes)
    assert all(len(g) * codec.MAX_QUEUED_RECORD_BYTES <= READ_BYTES for g in groups)
    assert sum(map(len, groups)) == 10


def promotion(i: int) -> transitions.Txn:
    t = task(i, not_before=NOW - 1)
    dkv = KV(K.delayed_entry(NOW - 1, t.id), b"{}", 3, 3, 0)
    txn, _ = transitions.promote(K, FENCE, dkv, record_kv(t), t, NOW, 10**16 + i)
    return txn


def test_pack_sends_the_fence_once_and_stays_within_etcd_limits():
    parts = [promotion(i) for i in range(100)]
    groups = transitions.pack(parts)
    # every part once, in order
    assert [i for _, idx in groups for i in idx] == list(range(100))
    for txn, idx in groups:
        assert txn.compares.count(FENCE) == 1
        assert len(txn.compares) == 1 + 2 * len(idx)
        assert len(txn.ops) == 3 * len(idx) <= MAX_TXN_OPS
        assert txn.size() <= 1_400_000
    assert [len(idx) for _, idx in groups] == [42, 42, 16]


def test_pack_cuts_by_bytes_and_never_names_a_key_twice_in_one_group():
    big = [promotion(i) for i in range(3)]
    assert [idx for _, idx in transitions.pack(big, max_bytes=big[0].size() * 2)] == [[0, 1], [2]]
    twice = [promotion(1), promotion(1)]
    assert [idx for _, idx in transitions.pack(twice)] == [[0], [1]]
    # a part larger than the limit goes alone
    assert [idx for _, idx in transitions.pack(big, max_bytes=10)] == [[0], [1], [2]]


# expiry ------------------------------------------------------------------------------------
def test_enqueue_writes_an_expiring_key_for_a_task_with_an_expiry():
    t = task(expires_at=NOW + 600)
    txn = transitions.enqueue(K, t, codec.encode_task(t))
    keys = [op.key for op in txn.ops]
    assert keys == [K.task(t.id), K.delayed_entry(NOW + 60, t.id), K.expiring_entry(NOW + 600, t.id)]
    assert submitter.txn_ops(t) == len(txn.ops) == 3
    assert K.parse_expiring(keys[2]).due_us == int((NOW + 600) * 1_000_000)
    plain = task(state=TaskState.QUEUED, not_before=None)
    assert submitter.txn_ops(plain) == len(transitions.enqueue(K, plain, b"{}").ops) == 2


def test_a_batch_of_expiring_tasks_is_cut_at_128_operations():
    tasks = [task(i, expires_at=NOW + 600) for i in range(100)]
    chunks = chunk(tasks, [codec.encode_task(t) for t in tasks])
    assert [len(c) for c in chunks] == [42, 42, 16]


@pytest.mark.parametrize("state", [TaskState.QUEUED, TaskState.PENDING, TaskState.WAITING])
def test_expire_cancels_a_task_that_has_not_started_with_the_reason(state):
    t = task(state=state, expires_at=NOW - 0.5, depends_on=("01HZZZZZZZZZZZZZZZZZZZZZZZ",))
    ekv = KV(K.expiring_entry(NOW - 0.5, t.id), b"{}", 4, 4, 0)
    rkv = record_kv(t)
    txn, new = transitions.expire(K, FENCE, ekv, rkv, t, NOW, lease=99)
    assert new.state is TaskState.CANCELLED
    assert new.error == "expired: not started by 2023-11-14T22:13:19.500Z"
    fenced = [FENCE, Compare.unchanged(rkv), Compare.unchanged(ekv)]
    if state is TaskState.QUEUED:  # not assigned since: an assignment deletes the queue key
        fenced.append(Compare(transitions.queue_key(K, t), "mod", "=", rkv.mod_revision))
    assert txn.compares == fenced
    index = transitions.unplace_ops(K, t)[0].key
    assert [(type(op).__name__, op.key) for op in txn.ops] == [
        ("Put", rkv.key),
        ("Delete", index),
        ("Put", K.finished_entry("cancelled", t.queue, NOW, t.id)),
        ("Delete", ekv.key),
    ]
    assert all(op.lease == 99 for op in txn.ops if isinstance(op, Put))


def test_a_task_that_ran_or_runs_does_not_expire():
    ekv = KV(K.expiring_entry(NOW, task_id(0)), b"{}", 4, 4, 0)
    attempt = Attempt(number=1, worker="w", started_at=NOW - 5)
    for t in (
        task(state=TaskState.RUNNING, attempts=(attempt,), expires_at=NOW),
        task(state=TaskState.PENDING, attempts=(attempt,), expires_at=NOW),  # a retry backoff
        task(state=TaskState.SUCCEEDED, expires_at=NOW),
    ):
        with pytest.raises(InvalidTransition):
            transitions.expire(K, FENCE, ekv, record_kv(t), t, NOW, 0)
    drop = transitions.drop_expiring(FENCE, ekv)
    assert drop.compares == [FENCE, Compare.unchanged(ekv)] and drop.ops == [Delete(ekv.key)]


def test_the_assigner_passes_over_a_queued_task_whose_expiry_has_passed():
    # Given three queued heads, the first expired (its Expirer has not discarded it yet)
    heads = []
    for i, expires in enumerate((NOW - 1, NOW + 60, None)):
        t = task(i, state=TaskState.QUEUED, not_before=None, type="noop", expires_at=expires)
        key = K.queue_entry(t.queue, t.priority, t.seq, t.id, t.route)
        heads.append(KV(key, codec.encode_task(t), 5, 5, 1))
    worker = MirroredNode(
        NodeView(id="w1", capacity=4), frozenset({"default"}), 101, False, frozenset({"noop"})
    )
    # When a batch is planned
    plan = plan_batch(
        heads,
        [worker],
        keys=K,
        route=lambda text: parse_route(text) if text else None,
        balancer=LeastLoad(),
        fence=FENCE,
        now=NOW,
        batch_size=10,
    )
    # Then the expired one is not assigned, the others are
    assert [K.parse_queue_entry(p.queue_kv.key).task_id for p in plan.picks] == [task_id(1), task_id(2)]
    assert plan.skipped == []


def test_the_assigner_still_assigns_a_retry_past_the_expiry():
    # a task that started before its expiry (its retry is queued now) is not expired
    attempt = Attempt(number=1, worker="w0", started_at=NOW - 10, finished_at=NOW - 9)
    t = task(0, state=TaskState.QUEUED, not_before=None, type="noop", expires_at=NOW - 5, attempts=(attempt,))
    key = K.queue_entry(t.queue, t.priority, t.seq, t.id, t.route)
    worker = MirroredNode(
        NodeView(id="w1", capacity=4), frozenset({"default"}), 101, False, frozenset({"noop"})
    )
    plan = plan_batch(
        [KV(key, codec.encode_task(t), 5, 5, 1)],
        [worker],
        keys=K,
        route=lambda text: parse_route(text) if text else None,
        balancer=LeastLoad(),
        fence=FENCE,
        now=NOW,
        batch_size=10,
    )
    assert len(plan.picks) == 1


# the leader's fast path ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"requires": (("gpu", "true"), ("zone", "eu west")), "priority": 3, "queue": "mail.q-1"},
        {"expires_at": NOW + 900, "trace": {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}},
        {"attempts": (Attempt(number=1, worker="w1", started_at=NOW - 9, finished_at=NOW - 8),)},
    ],
)
def test_the_fast_promotion_writes_exactly_what_promote_writes(changes):
    t = task(7, not_before=NOW - 1, **changes)
    dkv = KV(K.delayed_entry(NOW - 1, t.id), b"{}", 3, 3, 0)
    rkv = record_kv(t)
    slow, queued = transitions.promote(K, FENCE, dkv, rkv, t, NOW, 10**16)
    fast = transitions.promote_record(K, FENCE, dkv, rkv, NOW, 10**16)
    assert fast is not None
    assert fast[0] == slow
    assert codec.encode_task(codec.task_from_dict(fast[1])) == codec.encode_task(queued)


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"[]",
        codec.encode_task(task(7, state=TaskState.QUEUED, not_before=None)),  # not pending
        codec.encode_task(task(8)),  # another task's record
        codec.encode_task(task(7)).replace(b'"v":1', b'"v":2'),
        codec.encode_task(task(7)).replace(b'"queue":"default"', b'"queue":"bad/name"'),
        codec.encode_task(task(7)).replace(b'"priority":1', b'"priority":true'),
        codec.encode_task(task(7, payload="x" * (codec.MAX_QUEUED_RECORD_BYTES + 1))),
    ],
)
def test_the_fast_promotion_leaves_anything_unusual_to_promote(value):
    dkv = KV(K.delayed_entry(NOW - 1, task_id(7)), b"{}", 3, 3, 0)
    rkv = KV(K.task(task_id(7)), value, 5, 5, 0)
    assert transitions.promote_record(K, FENCE, dkv, rkv, NOW, 10**16) is None
