"""Dependencies and workflows, the pure parts: verdicts, release transactions, the builder, the leader's index.

No etcd here: transitions.py's builders and verdict, workflows.py's builder
and chunking, executors' ``parents`` parameter, and the Releaser's bookkeeping
of waiting children fed by watch events (its reads and writes are the
integration and fault tests').
"""

from __future__ import annotations

import pytest

from tasklease import codec, transitions
from tasklease.clock import SystemClock
from tasklease.errors import InvalidOption, InvalidTransition, MalformedTaskId, PayloadTooLarge
from tasklease.events import Hooks
from tasklease.executors.base import wants_parents
from tasklease.ids import IdGenerator
from tasklease.keys import Keyspace
from tasklease.leader import LeaderContext
from tasklease.mirror import Mirror
from tasklease.models import Task, TaskState
from tasklease.release import Releaser
from tasklease.spec import TaskSpec
from tasklease.store import KV, MAX_TXN_BYTES, Compare, Event, Put
from tasklease.submitter import Submitter, encode_queued
from tasklease.transitions import ParentEnd, verdict
from tasklease.workflows import MAX_WORKFLOW_TASKS, WorkflowBuilder, chunks

K = Keyspace("ns")
NOW = 1_700_000_000.0
A, B, C = "A" * 26, "B" * 26, "C" * 26
CHILD = "D" * 26
FENCE = Compare.created_at(K.leader, 7)


def waiting(**changes: object) -> Task:
    base: dict[str, object] = {
        "id": CHILD,
        "type": "t",
        "payload": {"x": "y" * 2048},
        "seq": 10**15,
        "state": TaskState.WAITING,
        "depends_on": (A, B),
    }
    base.update(changes)
    return Task(**base)  # type: ignore[arg-type]


def kv_of(key: str, value: bytes, revision: int = 5) -> KV:
    return KV(key, value, revision, revision, 1)


def ops_of(ops: list) -> list[tuple[str, str]]:
    return [(type(op).__name__, op.key) for op in ops]


# the verdict ---------------------------------------------------------------------------------
OK = TaskState.SUCCEEDED


@pytest.mark.parametrize(
    ("policy", "ends", "action"),
    [
        ("cancel", {}, "wait"),
        ("cancel", {A: OK}, "wait"),
        ("cancel", {A: OK, B: OK}, "release"),
        ("cancel", {B: TaskState.FAILED}, "cancel"),  # at once, whether A finished or not
        ("cancel", {A: OK, B: TaskState.CANCELLED}, "cancel"),
        ("cancel", {A: None}, "cancel"),  # its record is gone: as if it failed
        ("run", {A: TaskState.FAILED}, "wait"),
        ("run", {A: TaskState.FAILED, B: TaskState.CANCELLED}, "release"),
        ("run", {A: None, B: OK}, "release"),
    ],
)
def test_the_verdict_of_a_child_by_its_parents_ends_and_its_policy(policy, ends, action):
    known = {p: ParentEnd(p, s) for p, s in ends.items()}
    assert verdict((A, B), policy, known).action == action


def test_a_cancel_names_the_first_parent_that_did_not_succeed_and_quotes_its_error():
    ends = {B: ParentEnd(B, TaskState.FAILED, "RuntimeError: " + "e" * 500), A: ParentEnd(A, None)}
    assert verdict((A, B), "cancel", ends).reason == f"parent {A} no longer exists"
    reason = verdict((B, A), "cancel", ends).reason
    assert reason.startswith(f"parent {B} failed: RuntimeError: ")
    assert len(reason) == len(f"parent {B} failed: ") + transitions.PARENT_ERROR_CHARS
    assert ParentEnd(C, TaskState.CANCELLED).reason() == f"parent {C} cancelled"


def test_parent_end_is_known_only_for_a_finished_or_missing_parent():
    assert transitions.parent_end(A, None) == ParentEnd(A, None)
    assert transitions.parent_end(A, waiting(id=A, state=TaskState.RUNNING)) is None
    done = waiting(id=A, state=TaskState.FAILED, error="boom")
    assert transitions.parent_end(A, done) == ParentEnd(A, TaskState.FAILED, "boom")


# release and cascade ---------------------------------------------------------------------------
def test_a_released_child_is_queued_at_the_back_of_its_band_or_pending_if_its_delay_is_ahead():
    queued = transitions.released(waiting(), NOW, 42)
    assert queued.state is TaskState.QUEUED and queued.seq == 42 and queued.not_before is None
    delayed = transitions.released(waiting(not_before=NOW + 60), NOW, 42)
    assert delayed.state is TaskState.PENDING and delayed.not_before == NOW + 60
    past = transitions.released(waiting(not_before=NOW - 1), NOW, 42)
    assert past.state is TaskState.QUEUED and past.not_before is None
    with pytest.raises(InvalidTransition):
        transitions.released(waiting(state=TaskState.QUEUED), NOW, 42)


def test_release_is_fenced_on_the_leader_the_deps_key_and_the_record():
    old = waiting()
    deps_kv = kv_of(K.deps_entry("default", CHILD), transitions.deps_value(old), 9)
    record_kv = kv_of(K.task(CHILD), codec.encode_task(old), 8)
    new = transitions.released(old, NOW, 42)
    txn = transitions.release(K, FENCE, deps_kv, record_kv, old, new)
    assert txn.compares == [FENCE, Compare.unchanged(deps_kv), Compare.unchanged(record_kv)]
    assert ops_of(txn.ops) == [
        ("Put", K.task(CHILD)),
        ("Delete", deps_kv.key),
        ("Put", transitions.queue_key(K, new)),
    ]
    record, queue_entry = txn.ops[0], txn.ops[2]
    assert isinstance(record, Put) and isinstance(queue_entry, Put)
    # the queue key holds the record without its payload, and the record's size
    assert queue_entry.value == codec.encode_index_record(new, len(record.value))


def test_a_cascade_writes_the_cancelled_record_and_its_finished_entry_under_the_retention_lease():
    old = waiting()
    deps_kv = kv_of(K.deps_entry("default", CHILD), transitions.deps_value(old))
    record_kv = kv_of(K.task(CHILD), codec.encode_task(old))
    new = transitions.cancelled(old, f"parent {A} failed", NOW)
    txn = transitions.release(K, FENCE, deps_kv, record_kv, old, new, lease=77)
    assert ops_of(txn.ops) == [
        ("Put", K.task(CHILD)),
        ("Delete", deps_kv.key),
        ("Put", K.finished_entry("cancelled", "default", NOW, CHILD)),
    ]
    assert all(op.lease == 77 for op in txn.ops if isinstance(op, Put))
    assert new.error == f"parent {A} failed"


def test_release_refuses_a_task_that_is_not_waiting_and_a_queued_record_over_its_limit():
    old = waiting()
    deps_kv = kv_of(K.deps_entry("default", CHILD), b"{}")
    with pytest.raises(InvalidTransition):
        transitions.release(K, FENCE, deps_kv, deps_kv, waiting(state=TaskState.QUEUED), old)
    huge = waiting(payload={"x": "y" * (codec.MAX_QUEUED_RECORD_BYTES + 10)})
    with pytest.raises(PayloadTooLarge):
        transitions.release(K, FENCE, deps_kv, deps_kv, huge, transitions.released(huge, NOW, 1))


def test_a_child_cancelled_at_its_submit_is_written_with_its_finished_entry_if_its_id_is_free():
    task = transitions.cancelled(waiting(), f"parent {A} failed", NOW)
    txn = transitions.enqueue_ended(K, task, lease=5)
    assert txn.compares == [Compare.absent(K.task(CHILD))]
    assert ops_of(txn.ops) == [
        ("Put", K.task(CHILD)),
        ("Put", K.finished_entry("cancelled", "default", NOW, CHILD)),
    ]
    with pytest.raises(InvalidTransition):
        transitions.enqueue_ended(K, waiting(), lease=5)


def test_a_deps_value_reads_back_and_a_bad_one_is_corrupt():
    task = waiting(on_parent_failure="run")
    key = K.deps_entry("default", CHILD)
    assert transitions.parse_deps_value(key, transitions.deps_value(task)) == ((A, B), "run")
    from tasklease.errors import CorruptRecord

    with pytest.raises(CorruptRecord):
        transitions.parse_deps_value(key, b'{"parents": "A"}')
    with pytest.raises(CorruptRecord):
        transitions.parse_deps_value(key, b"not json")


# the builder ------------------------------------------------------------------------------------
def submitter() -> Submitter:
    # No request is made by building: only the id generator is used (store, quotas, hub unused).
    return Submitter(
        None,  # type: ignore[arg-type]
        K,
        clock=SystemClock(),
        ids=IdGenerator(),
        quotas=None,  # type: ignore[arg-type]
        hub=None,  # type: ignore[arg-type]
        hooks=Hooks(),
    )


def test_a_node_may_only_follow_nodes_added_before_or_existing_tasks():
    wf = WorkflowBuilder(submitter(), name="w")
    a = wf.add("t", key="a")
    b = wf.add("t", after=[a, A])
    c = wf.add("t", after=["a", b, A])  # a key, a node, an existing id (once)
    assert b.spec.depends_on == (a.id, A)
    assert c.spec.depends_on == (a.id, b.id, A)
    assert len(wf) == 3 and [n.id for n in wf.nodes] == [a.id, b.id, c.id]
    other = WorkflowBuilder(submitter())
    foreign = other.add("t")
    with pytest.raises(InvalidOption, match="not a task of this workflow"):
        wf.add("t", after=[foreign])
    with pytest.raises(MalformedTaskId):
        wf.add("t", after=["no-such-key"])
    with pytest.raises(InvalidOption, match="used twice"):
        wf.add("t", key="a")
    with pytest.raises(InvalidOption, match="used twice"):
        wf.add_spec(TaskSpec("t", task_id=a.id))


def test_chain_group_and_chord_shapes():
    wf = WorkflowBuilder(submitter())
    chain = wf.chain([TaskSpec("t"), TaskSpec("t"), TaskSpec("t")])
    assert [n.spec.depends_on for n in chain] == [(), (chain[0].id,), (chain[1].id,)]
    group = wf.group([TaskSpec("t"), TaskSpec("t")], after=[chain[-1]])
    assert all(n.spec.depends_on == (chain[-1].id,) for n in group)
    header, callback = wf.chord([TaskSpec("t")] * 3, TaskSpec("t"))
    assert callback.spec.depends_on == tuple(n.id for n in header)


def test_a_workflow_is_bounded_and_its_name_is_text():
    with pytest.raises(InvalidOption):
        WorkflowBuilder(submitter(), name="x" * 201)
    with pytest.raises(InvalidOption):
        WorkflowBuilder(submitter(), name="bad\nname")
    wf = WorkflowBuilder(submitter())
    wf.nodes.extend([None] * MAX_WORKFLOW_TASKS)  # type: ignore[list-item]
    with pytest.raises(InvalidOption, match="at most"):
        wf.add("t")


def items(n: int, pad: int = 100) -> list[tuple[Task, bytes]]:
    tasks = [waiting(id=f"{i:026d}", payload={"p": "x" * pad}) for i in range(n)]
    return [(t, encode_queued(t)) for t in tasks]


def test_chunks_keep_the_order_and_leave_room_for_the_workflow_record():
    parts = chunks(items(150), record_bytes=5000)
    assert [len(p) for p in parts] == [63, 64, 23]
    assert [t.id for p in parts for t, _ in p] == [f"{i:026d}" for i in range(150)]
    assert [len(p) for p in chunks(items(63), 100)] == [63]
    assert [len(p) for p in chunks(items(64), 100)] == [63, 1]


def test_chunks_split_by_bytes_and_put_a_record_that_leaves_no_room_alone():
    parts = chunks(items(4, pad=300_000), record_bytes=1000)
    assert [len(p) for p in parts] == [2, 2]
    assert [len(p) for p in chunks(items(1, pad=600_000), record_bytes=MAX_TXN_BYTES // 4)] == [0, 1]


# a task function's parents ------------------------------------------------------------------
def test_a_function_wants_its_parents_results_by_a_parents_parameter():
    def plain(x: int) -> None: ...
    def keyword(x: int, parents: dict) -> None: ...
    def keyword_only(*, parents: dict | None = None) -> None: ...
    def positional_only(parents: dict, /) -> None: ...
    def var_kwargs(**kwargs: object) -> None: ...

    assert [wants_parents(f) for f in (plain, keyword, keyword_only, positional_only, var_kwargs)] == [
        False,
        True,
        True,
        False,
        False,
    ]


# the leader's index of waiting children ------------------------------------------------------
def releaser() -> tuple[Releaser, Mirror]:
    mirror = Mirror(K, SystemClock())
    ctx = LeaderContext(None, K, None, mirror, Hooks(), "s1", None, IdGenerator())  # type: ignore[arg-type]
    return Releaser(ctx), mirror


def deps_kv(child: str, parents: tuple[str, ...], revision: int) -> KV:
    task = waiting(id=child, depends_on=parents)
    return kv_of(K.deps_entry("default", child), transitions.deps_value(task), revision)


def test_the_releaser_indexes_waiting_children_and_is_triggered_by_their_parents_index_keys():
    rel, mirror = releaser()
    # Given a child of A and B loaded with the view, and a child of the child
    mirror.view.apply(deps_kv(CHILD, (A, B), 3), deleted=False)
    mirror.view.apply(deps_kv(C, (CHILD,), 4), deleted=False)
    rel._rebuild()
    assert rel.waiting == 2
    assert rel._children == {A: {CHILD}, B: {CHILD}, CHILD: {C}}
    assert rel._unread == {A, B, CHILD} and rel._due == {CHILD, C}
    rel._unread.clear()
    rel._due.clear()
    # When a running entry of A goes, and an unrelated queue key goes
    events = [
        Event("delete", kv_of(K.running_entry(A), b"", 10)),
        Event("delete", kv_of(K.queue_entry("default", 1, 5, "E" * 26, "t"), b"", 11)),
    ]
    mirror.apply_events(events)
    # Then A is to be read, nothing else
    assert rel._unread == {A}
    # When the child's deps key goes (released or cancelled)
    mirror.apply_events([Event("delete", kv_of(K.deps_entry("default", CHILD), b"", 12))])
    # Then it is forgotten (A and B have no child left) and, as a parent itself, read
    assert rel._children == {CHILD: {C}}
    assert rel._unread == {CHILD}
    # A new deps key is due at once, its parents to be read
    mirror.apply_events([Event("put", deps_kv(A, (B,), 13))])
    assert A in rel._due and B in rel._unread
    rel.reset()
    assert rel.waiting == 0 and not rel._active


def test_the_releaser_ignores_changes_while_it_does_not_lead_and_malformed_keys():
    rel, mirror = releaser()
    mirror.apply_events([Event("put", deps_kv(CHILD, (A,), 3))])
    assert rel.waiting == 0  # not active: rebuilt from the view when it leads
    rel._rebuild()
    assert rel.waiting == 1
    mirror.apply_events([Event("put", kv_of(K.deps_entry("default", C), b"not json", 5))])
    assert rel.waiting == 1
