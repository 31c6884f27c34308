"""The pure parts of the event feed: store events to change objects, SSE bytes, the ring buffer."""

from __future__ import annotations

import orjson
import pytest

from ssetools import parse_sse
from tasklease.codec import encode_task
from tasklease.keys import Keyspace
from tasklease.models import Attempt, Dropped, Outcome, Task, TaskState
from tasklease.nodes import NodeRecord
from tasklease.store import KV, Event
from tasklease.web.feed import (
    KEEPALIVE,
    MAX_ERROR_CHARS,
    RETRY,
    RingBuffer,
    Translator,
    encode_changes,
    encode_resync,
    parse_last_event_id,
    task_change,
    task_change_of_record,
    worker_view,
)

KEYS = Keyspace("ns")
TASK_ID = "01HZZZZZZZZZZZZZZZZZZZZZZZ"
NOW = 1_700_000_100.0


def put(key: str, value: bytes, revision: int) -> Event:
    return Event("put", KV(key, value, create_revision=revision, mod_revision=revision, version=1))


def delete(key: str, revision: int) -> Event:
    return Event("delete", KV(key, b"", create_revision=0, mod_revision=revision, version=0))


def node(worker: str = "w1", **fields: object) -> NodeRecord:
    base: dict[str, object] = {
        "id": worker,
        "host": "h",
        "pid": 7,
        "queues": ("default",),
        "capacity": 4,
        "assigned": 1,
        "running": 1,
        "cpu": 10.0,
        "memory": 20.0,
        "heartbeat_at": NOW - 2.5,
        "started_at": NOW - 100,
        "version": "1.0",
    }
    base.update(fields)
    return NodeRecord(**base)  # type: ignore[arg-type]


def node_put(record: NodeRecord, revision: int) -> Event:
    return put(KEYS.node(record.id), record.encode(), revision)


def running_task(**fields: object) -> Task:
    base: dict[str, object] = {
        "id": TASK_ID,
        "type": "resize",
        "payload": {"big": "x" * 100},
        "queue": "images",
        "priority": 2,
        "state": TaskState.FAILED,
        "created_at": NOW - 10,
        "updated_at": NOW - 1,
        "attempts": (
            Attempt(number=1, worker="w0", started_at=NOW - 9, finished_at=NOW - 8, outcome=Outcome.FAILED),
            Attempt(number=2, worker="w1", started_at=NOW - 5, finished_at=NOW - 1, outcome=Outcome.FAILED),
        ),
        "error": "boom",
    }
    base.update(fields)
    return Task(**base)  # type: ignore[arg-type]


def translate(translator: Translator, *events: Event) -> list[tuple[int, list[dict[str, object]]]]:
    return list(translator.revisions(list(events)))


# change objects -----------------------------------------------------------------------------
def test_a_task_change_has_the_fields_the_lists_show_and_nothing_of_the_payload():
    change = task_change(running_task())
    assert change == {
        "kind": "task",
        "id": TASK_ID,
        "state": "failed",
        "queue": "images",
        "type": "resize",
        "priority": 2,
        "attempts": 2,
        "worker": "w1",
        "updated_at": NOW - 1,
        "error": "boom",
        "rerun_of": None,
    }


def test_a_task_change_counts_dropped_attempts_and_cuts_the_error():
    task = running_task(error="e" * 2000, dropped=Dropped(attempts=5, failures=5))
    change = task_change(task)
    assert change["attempts"] == 7
    assert change["error"] == "e" * MAX_ERROR_CHARS


def test_a_queued_task_has_no_worker_and_no_error():
    change = task_change(running_task(state=TaskState.QUEUED, attempts=(), error=None))
    assert (change["state"], change["worker"], change["error"], change["attempts"]) == (
        "queued",
        None,
        None,
        0,
    )


@pytest.mark.parametrize(
    "task",
    [
        running_task(),
        running_task(error="e" * 2000, dropped=Dropped(attempts=5, failures=5)),
        running_task(state=TaskState.QUEUED, attempts=(), error=None, priority=0),
        running_task(state=TaskState.SUCCEEDED, error=None, result={"ok": True}),
    ],
)
def test_the_change_read_from_the_record_is_the_change_of_the_decoded_task(task):
    assert task_change_of_record(encode_task(task)) == task_change(task)


def test_the_change_of_a_record_carries_rerun_of():
    record = orjson.loads(encode_task(running_task()))
    assert task_change_of_record(orjson.dumps({**record, "rerun_of": "X"}))["rerun_of"] == "X"  # type: ignore[index]
    assert task_change_of_record(orjson.dumps({**record, "rerun_of": 5}))["rerun_of"] is None  # type: ignore[index]


@pytest.mark.parametrize(
    "damage",
    [
        {"v": 2},
        {"id": 5},
        {"state": "sleeping"},
        {"state": None},
        {"queue": ["q"]},
        {"type": None},
        {"priority": "3"},
        {"priority": True},
        {"updated_at": "now"},
        {"attempts": {}},
    ],
)
def test_a_record_with_a_field_of_the_wrong_kind_has_no_change(damage):
    record = orjson.loads(encode_task(running_task()))
    assert task_change_of_record(orjson.dumps({**record, **damage})) is None


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"null", b'"task"', b"{}"])
def test_a_record_that_is_not_a_json_object_of_ours_has_no_change(data):
    assert task_change_of_record(data) is None


def test_odd_values_in_the_fields_the_change_does_not_need_to_be_exact_are_left_out():
    record = orjson.loads(encode_task(running_task()))
    odd = {**record, "attempts": [1, 2], "dropped": {"attempts": "many"}, "error": {"x": 1}}
    change = task_change_of_record(orjson.dumps(odd))
    assert change is not None
    assert (change["attempts"], change["worker"], change["error"]) == (2, None, None)


def test_a_worker_view_is_the_workers_api_object_without_tasks():
    view = worker_view(node(tags={"gpu": "a100"}, types=("resize",)), NOW)
    assert list(view) == [
        "id",
        "host",
        "pid",
        "queues",
        "capacity",
        "running",
        "assigned",
        "free",
        "cpu",
        "memory",
        "tags",
        "types",
        "version",
        "started_at",
        "heartbeat_at",
        "heartbeat_age_s",
        "draining",
        "completed",
    ]
    assert view["free"] == 3
    assert view["heartbeat_age_s"] == 2.5
    assert view["tags"] == {"gpu": "a100"} and view["queues"] == ["default"] and view["types"] == ["resize"]
    assert worker_view(node(assigned=9), NOW)["free"] == 0
    assert worker_view(node(heartbeat_at=None), NOW)["heartbeat_age_s"] is None
    assert worker_view(node(heartbeat_at=NOW + 5), NOW)["heartbeat_age_s"] == 0  # its clock runs ahead


# translating events -----------------------------------------------------------------------------
def test_events_are_grouped_by_revision_and_other_keys_send_nothing_but_count():
    t = Translator(KEYS, clock=lambda: NOW)
    record = encode_task(running_task(state=TaskState.QUEUED, attempts=(), error=None))
    ids = [TASK_ID[:-1] + c for c in "ABC"]
    events = [
        put(KEYS.task(ids[0]), record.replace(TASK_ID.encode(), ids[0].encode()), 10),
        put(KEYS.queue_entry("images", 2, 1, ids[0]), record, 10),
        put(KEYS.running_entry(ids[1]), b"{}", 11),  # a revision with nothing to show
        put(KEYS.task(ids[1]), record.replace(TASK_ID.encode(), ids[1].encode()), 12),
        put(KEYS.task(ids[2]), record.replace(TASK_ID.encode(), ids[2].encode()), 12),
        put(KEYS.quota, b"{}", 13),
    ]
    got = translate(t, *events)
    assert [rev for rev, _ in got] == [10, 11, 12, 13]
    assert [[c["id"] for c in changes] for _, changes in got] == [[ids[0]], [], ids[1:], []]


def test_a_corrupt_task_record_is_skipped_and_a_deleted_one_is_gone():
    t = Translator(KEYS)
    got = translate(t, put(KEYS.task(TASK_ID), b"{not json", 5), delete(KEYS.task(TASK_ID), 6))
    assert got == [(5, []), (6, [{"kind": "task_gone", "id": TASK_ID}])]


def test_pauses_and_the_leader():
    t = Translator(KEYS)
    got = translate(
        t,
        put(KEYS.paused("images"), b'{"at": 1, "reason": "x"}', 3),
        delete(KEYS.paused("images"), 4),
        put(KEYS.leader, b"s1", 5),
        delete(KEYS.leader, 6),
    )
    assert got == [
        (3, [{"kind": "queue", "name": "images", "paused": True}]),
        (4, [{"kind": "queue", "name": "images", "paused": False}]),
        (5, [{"kind": "leader", "id": "s1"}]),
        (6, [{"kind": "leader", "id": None}]),
    ]


def test_heartbeat_only_node_puts_are_sent_at_most_once_per_worker_per_second():
    t = Translator(KEYS, clock=lambda: NOW)
    hb = 1_700_000_000.0
    puts = [
        node_put(node(heartbeat_at=hb + 0.1), 1),  # first record seen: sent
        node_put(node(heartbeat_at=hb + 0.4, cpu=50.0), 2),  # heartbeat of the same second: coalesced
        node_put(node(heartbeat_at=hb + 0.9, memory=99.0), 3),  # still the same second
        node_put(node(heartbeat_at=hb + 1.2), 4),  # the next second: sent
        node_put(node(heartbeat_at=hb + 1.3, assigned=2), 5),  # a real change: sent at once
        node_put(node(heartbeat_at=hb + 1.4, assigned=2), 6),  # heartbeat again: coalesced
        node_put(node("w2", heartbeat_at=hb + 1.5), 7),  # another worker has its own second
        node_put(node(heartbeat_at=hb + 1.6, assigned=2, draining=True), 8),
    ]
    got = translate(t, *puts)
    sent = {rev: [c["id"] for c in changes] for rev, changes in got if changes}
    assert sent == {1: ["w1"], 4: ["w1"], 5: ["w1"], 7: ["w2"], 8: ["w1"]}
    assert got[4][1][0] == {"kind": "worker", **worker_view(node(heartbeat_at=hb + 1.3, assigned=2), NOW)}


def test_the_first_put_after_a_known_record_is_coalesced_too():
    # A catch-up starts from the records at its start revision, so it decides as the live feed did.
    hb = 1_700_000_000.0
    t = Translator(KEYS, [("w1", node(heartbeat_at=hb + 0.1))])
    assert translate(t, node_put(node(heartbeat_at=hb + 0.6), 9)) == [(9, [])]


def test_a_worker_that_goes_and_comes_back_is_sent_again():
    hb = 1_700_000_000.0
    t = Translator(KEYS, [("w1", node(heartbeat_at=hb + 0.1))])
    got = translate(t, delete(KEYS.node("w1"), 3), node_put(node(heartbeat_at=hb + 0.2), 4))
    assert got[0] == (3, [{"kind": "worker_gone", "id": "w1"}])
    assert [c["kind"] for c in got[1][1]] == ["worker"]


def test_a_corrupt_node_record_is_skipped():
    t = Translator(KEYS, [("w1", node())])
    assert translate(t, put(KEYS.node("w1"), b"[]", 3)) == [(3, [])]
    assert "w1" not in t.nodes


# SSE bytes ----------------------------------------------------------------------------------------
def test_a_changes_message_is_one_sse_event_with_the_revision_as_its_id():
    changes = [task_change(running_task(error="line one\nline two\r\n: not a comment\n\ndata: x"))]
    raw = encode_changes(42, changes)
    assert raw.startswith(b"id: 42\nevent: changes\ndata: {")
    [msg] = parse_sse(raw)
    assert (msg.id, msg.event) == ("42", "changes")
    assert msg.json == {"revision": 42, "changes": changes}


def test_resync_retry_and_keepalive():
    [msg] = parse_sse(encode_resync(77))
    assert (msg.event, msg.id, msg.json) == ("resync", "77", {"revision": 77})
    assert parse_sse(RETRY)[0].retry == 2000
    assert parse_sse(KEEPALIVE)[0].comments == ["keepalive"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("12", 12),
        (" 12 ", 12),
        ("", None),
        ("-1", None),
        ("1e3", None),
        ("٣", None),
        ("9" * 30, None),
    ],
)
def test_last_event_id(text, expected):
    assert parse_last_event_id(text) == expected


# the ring buffer ----------------------------------------------------------------------------------
def test_the_ring_buffer_keeps_the_last_messages_by_count():
    buf = RingBuffer(max_messages=3, max_bytes=1000, floor=10)
    assert buf.after(10) == [] and buf.after(9) is None
    for rev in (11, 13, 14, 20):
        buf.append(rev, b"m%d" % rev)
    assert len(buf) == 3 and buf.floor == 11
    assert buf.after(11) == [(13, b"m13"), (14, b"m14"), (20, b"m20")]
    assert buf.after(12) == [(13, b"m13"), (14, b"m14"), (20, b"m20")]  # 12 had no message
    assert buf.after(14) == [(20, b"m20")]
    assert buf.after(20) == []
    assert buf.after(10) is None  # the message of 11 is gone


def test_the_ring_buffer_keeps_the_last_messages_by_bytes():
    buf = RingBuffer(max_messages=100, max_bytes=25, floor=0)
    for rev in range(1, 6):
        buf.append(rev, b"x" * 10)
    assert len(buf) == 2 and buf.nbytes == 20 and buf.floor == 3
    assert [rev for rev, _ in buf.after(3) or []] == [4, 5]
    buf.append(6, b"y" * 100)  # bigger than the bound: kept alone
    assert len(buf) == 1 and buf.nbytes == 100 and buf.floor == 5


def test_the_ring_buffer_reset_forgets_everything():
    buf = RingBuffer(max_messages=10, max_bytes=100, floor=0)
    buf.append(1, b"a")
    buf.reset(50)
    assert len(buf) == 0 and buf.nbytes == 0 and buf.after(49) is None and buf.after(50) == []


def test_changes_of_one_revision_are_encoded_once_as_compact_json():
    changes = [{"kind": "task_gone", "id": TASK_ID}]
    raw = encode_changes(3, changes)
    assert raw.split(b"data: ", 1)[1] == orjson.dumps({"revision": 3, "changes": changes}) + b"\n\n"
