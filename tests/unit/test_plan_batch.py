"""assigner.plan_batch: which queued tasks go to which workers in one transaction (no etcd, no clock)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from tasklease import codec
from tasklease.assigner import BatchPlan, plan_batch
from tasklease.balancers import LeastLoad, NodeView
from tasklease.errors import CorruptRecord
from tasklease.keys import Keyspace
from tasklease.mirror import ClusterView, MirroredNode
from tasklease.models import Task, TaskState
from tasklease.routing import Route, parse_route
from tasklease.store import KV, MAX_TXN_BYTES, Compare, Delete, Get, Put

K = Keyspace("ns")
NOW = 1_700_000_000.0
FENCE = Compare.created_at(K.leader, 7)
PAYLOAD = {"blob": "x" * 4500}  # a realistic record of about 4.5 KB


def task_id(i: int) -> str:
    return f"01HZZZZZZZZZZZZZZZZZZZ{i:04d}"


def queued(
    i: int, *, type: str = "noop", queue: str = "default", priority: int = 1, **changes: object
) -> Task:
    base: dict[str, object] = {
        "id": task_id(i),
        "type": type,
        "payload": PAYLOAD,
        "queue": queue,
        "priority": priority,
        "seq": 10**15 + i,
        "timeout_s": 30.0,
    }
    base.update(changes)
    return Task(**base)  # type: ignore[arg-type]


def head(task: Task, revision: int = 5, *, value: bytes | None = None, with_route: bool = True) -> KV:
    """The queue key of ``task`` with its value as the client writes it (the record without its payload)."""
    key = K.queue_entry(task.queue, task.priority, task.seq, task.id, task.route if with_route else "")
    if value is None:
        value = codec.encode_index_record(task, len(codec.encode_task(task)))
    return KV(key, value, revision, revision, 1)


def node(
    worker: str,
    capacity: int = 4,
    *,
    assigned: int = 0,
    queues: Sequence[str] = ("default",),
    types: Sequence[str] = ("noop",),
    tags: dict[str, str] | None = None,
) -> MirroredNode:
    view = NodeView(id=worker, capacity=capacity, assigned=assigned)
    return MirroredNode(view, frozenset(queues), 100 + int(worker[1:]), False, frozenset(types), tags or {})


def route(text: str) -> Route | None:
    return parse_route(text) if text else None


class FirstChoice:
    """A balancer that takes the first candidate and remembers what it was offered."""

    name = "first"

    def __init__(self) -> None:
        self.offered: list[list[str]] = []

    def choose(self, candidates: Sequence[NodeView]) -> NodeView:
        self.offered.append([c.id for c in candidates])
        return candidates[0]


def plan(
    heads: list[KV], free: list[MirroredNode], *, balancer=None, batch_size: int = 10, **kw
) -> BatchPlan:
    return plan_batch(
        heads,
        free,
        keys=K,
        route=route,
        balancer=balancer or FirstChoice(),
        fence=FENCE,
        now=NOW,
        batch_size=batch_size,
        **kw,
    )


def picked(p: BatchPlan) -> list[tuple[str, str]]:
    return [(K.parse_queue_entry(pick.queue_kv.key).task_id, pick.worker) for pick in p.picks]


# capacity and free slots ------------------------------------------------------------------------
def test_picks_fill_free_slots_only_and_count_them_per_worker():
    # Given two workers with 2 and 1 free slots, and 5 queued tasks
    w1, w2 = node("w1", capacity=3, assigned=1), node("w2", capacity=3, assigned=2)
    heads = [head(queued(i)) for i in range(5)]

    # When a batch is planned
    p = plan(heads, [w1, w2], balancer=LeastLoad())

    # Then 3 tasks are picked, never more than a worker's free slots
    assert len(p.picks) == 3
    assert p.per_worker == {"w1": 2, "w2": 1}
    assert (w1.view.assigned, w2.view.assigned) == (3, 3)  # what the balancer saw last
    assert {pick.lease for pick in p.picks if pick.worker == "w1"} == {101}


def test_no_free_eligible_worker_gives_an_empty_plan():
    p = plan([head(queued(0))], [node("w1", types=("other",))])
    assert p.picks == [] and p.txn.ops == [] and p.txn.compares == [] and p.per_worker == {}


# eligibility --------------------------------------------------------------------------------------
def test_a_task_goes_only_to_a_worker_serving_its_queue_running_its_type_with_its_tags():
    # Given workers that differ in queues, types and tags
    free = [
        node("w1", queues=("other",), types=("resize",), tags={"zone": "eu"}),
        node("w2", types=("noop",), tags={"zone": "eu"}),
        node("w3", types=("resize",), tags={"zone": "us"}),
        node("w4", types=("resize", "noop"), tags={"zone": "eu", "gpu": "true"}),
    ]
    resize_eu = queued(0, type="resize", requires=(("zone", "eu"),))
    noop = queued(1)
    other_queue = queued(2, type="resize", queue="other")
    balancer = FirstChoice()

    # When they are planned
    p = plan([head(resize_eu), head(noop), head(other_queue)], free, balancer=balancer)

    # Then each went to an eligible worker, and the balancer was offered only those
    assert picked(p) == [(resize_eu.id, "w4"), (noop.id, "w2"), (other_queue.id, "w1")]
    assert balancer.offered == [["w4"], ["w2", "w4"], ["w1"]]


def test_draining_and_silent_workers_get_nothing_through_the_mirror():
    # Given a mirror with a draining worker, a live one and one queued task
    view = ClusterView(K)
    for worker, draining in (("w1", True), ("w2", False)):
        record = {"id": worker, "queues": ["default"], "capacity": 2, "types": ["noop"], "draining": draining}
        view.apply(KV(K.node(worker), orjson.dumps(record), 3, 3, 1, lease=9), deleted=False)
    view.apply(head(queued(0)), deleted=False)

    # When the batch is planned from the mirror's free workers and heads
    free = view.free_nodes({})
    p = plan(list(view.queues.heads(free, 10, set())), free)

    # Then only the live worker that takes work gets it
    assert [n.view.id for n in free] == ["w2"]
    assert [pick.worker for pick in p.picks] == ["w2"]


# order and limits ---------------------------------------------------------------------------------
def test_picks_follow_dequeue_order_priority_first_then_fifo():
    # Given a mirror holding tasks of mixed priorities, submitted in this order
    view = ClusterView(K)
    tasks = [queued(i, priority=p) for i, p in enumerate([0, 1, 3, 1, 3, 0, 2])]
    for t in tasks:
        view.apply(head(t), deleted=False)
    free = [node("w1", capacity=100)]

    # When a batch of 4 is planned from its heads
    p = plan(list(view.queues.heads(free, 4, set())), free, batch_size=4)

    # Then the urgent ones come first (FIFO among them), then priority 2, then 1
    assert [t for t, _ in picked(p)] == [tasks[2].id, tasks[4].id, tasks[6].id, tasks[1].id]


def test_batch_size_bounds_the_picks_and_one_transaction_carries_them_fence_first():
    # Given 30 queued tasks and room for all of them
    heads = [head(queued(i), revision=10 + i) for i in range(30)]

    # When a batch of 10 is planned
    p = plan(heads, [node("w1", capacity=100)], batch_size=10)

    # Then 10 are picked, in one transaction: the fence first, then two compares
    # and three writes per task (no record: the queue key goes, the assignment and the
    # running entry come); the failure branch reads the leader, each record and queue key
    assert len(p.picks) == 10
    assert p.txn.compares[0] == FENCE
    assert len(p.txn.compares) == 1 + 2 * 10
    assert p.txn.compares[1:3] == [Compare.unchanged(heads[0]), Compare.unchanged(p.picks[0].record_kv)]
    assert [type(op) for op in p.txn.ops[:3]] == [Delete, Put, Put]
    assert len(p.txn.ops) == 3 * 10
    assert not [op for op in p.txn.ops if op.key.startswith(K.tasks)]
    assert p.txn.failure[0] == Get(K.leader)
    assert p.txn.failure[1:3] == [Get(K.task(task_id(0))), Get(heads[0].key)]
    assert p.txn.size() <= MAX_TXN_BYTES


def test_the_running_records_start_their_attempt_at_now():
    p = plan([head(queued(0))], [node("w1")])
    (record,) = p.running
    assert record.state is TaskState.RUNNING
    assert (record.attempts[-1].number, record.attempts[-1].worker, record.attempts[-1].started_at) == (
        1,
        "w1",
        NOW,
    )
    running_entry = orjson.loads(p.txn.ops[2].value)  # type: ignore[union-attr]
    assert running_entry["deadline"] == NOW + 30.0
    assert (running_entry["s"], running_entry["n"], running_entry["rv"]) == (NOW, 1, 5)


def test_maximal_payloads_weigh_nothing_on_an_assignment():
    # Given three tasks with the largest payload a client accepts: their queue keys
    # hold the records without the payloads, and the assignment writes no record
    big = {"blob": "x" * (codec.MAX_PAYLOAD_BYTES - 100)}
    heads = [head(queued(i, payload=big)) for i in range(3)]
    assert all(len(h.value) < 2000 for h in heads)
    free = [node("w1", capacity=10)]

    # When a batch is planned
    p = plan(heads, free)

    # Then all three go in one small transaction
    assert picked(p) == [(task_id(i), "w1") for i in range(3)]
    assert p.txn.size() < 10_000
    # and a smaller byte limit cuts a batch short, never below one task
    assert len(plan([head(queued(8)), head(queued(9))], free, max_txn_bytes=1).picks) == 1


def test_a_record_over_the_old_running_limit_is_assigned_like_any_other():
    # Given a queued record (planted, or from an older version) larger than a running
    # record could be when the assignment wrote it, between two ordinary ones
    huge = queued(1, payload={"blob": "x" * codec.MAX_RUNNING_RECORD_BYTES})
    heads = [head(queued(0)), head(huge, value=codec.encode_task(huge)), head(queued(2))]

    # When the batch is planned
    p = plan(heads, [node("w1", capacity=3)])

    # Then nothing of it is written at assignment: all three are picked (the worker's
    # outcome fits what it writes: transitions.fit_record)
    assert picked(p) == [(task_id(0), "w1"), (task_id(1), "w1"), (task_id(2), "w1")]
    assert p.txn.size() <= MAX_TXN_BYTES


def test_a_corrupt_queued_record_is_skipped_and_the_others_go_on():
    # Given a corrupt record under a key with its route, and one under a key of an
    # older version (without route: the route must be read from the record)
    corrupt = head(queued(0), value=b"{not json")
    old_corrupt = head(queued(1), value=b"\x00", with_route=False)
    old_good = head(queued(2), with_route=False)

    # When the batch is planned
    p = plan([corrupt, old_corrupt, old_good, head(queued(3))], [node("w1")])

    # Then both corrupt ones are skipped (with why), and the others picked
    assert [(kv.key, t, type(exc)) for kv, t, exc in p.skipped] == [
        (corrupt.key, task_id(0), CorruptRecord),
        (old_corrupt.key, task_id(1), CorruptRecord),
    ]
    assert [t for t, _ in picked(p)] == [task_id(2), task_id(3)]


def test_the_balancer_chooses_among_eligible_workers_with_a_free_slot():
    # Given a balancer that always takes the last candidate, and two workers of one free slot each
    class Last(FirstChoice):
        def choose(self, candidates: Sequence[NodeView]) -> NodeView:
            super().choose(candidates)
            return candidates[-1]

    balancer = Last()
    p = plan(
        [head(queued(i)) for i in range(3)],
        [node("w1", capacity=1), node("w2", capacity=1)],
        balancer=balancer,
    )

    # Then it is asked once per task, with the workers that still have room
    assert balancer.offered == [["w1", "w2"], ["w1"]]
    assert picked(p) == [(task_id(0), "w2"), (task_id(1), "w1")]
