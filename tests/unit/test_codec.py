"""Records <-> bytes: round trips, schema version, corrupt input and JSON limits."""

import math
from typing import Literal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasklease import codec
from tasklease.codec import (
    MAX_PAYLOAD_BYTES,
    MAX_RECORD_BYTES,
    decode_obj,
    decode_task,
    encode_json,
    encode_obj,
    encode_task,
    parse_json,
    task_to_dict,
)
from tasklease.errors import CorruptRecord, InvalidPayload, PayloadTooLarge
from tasklease.models import SCHEMA_VERSION, Attempt, Outcome, Task, TaskState
from tasklease.retry import RetryPolicy

MISSING = object()
KEY = "/tasklease/task/01HZZZZZZZZZZZZZZZZZZZZZZZ"
TASK_ID = "01HZZZZZZZZZZZZZZZZZZZZZZZ"
REQUIRED_FIELDS = [
    "v",
    "id",
    "type",
    "queue",
    "priority",
    "timeout_s",
    "retry",
    "state",
    "seq",
    "created_at",
    "updated_at",
    "attempts",
]

# Unicode category of surrogates (not encodable as UTF-8); typed for st.characters
NO_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=NO_SURROGATES), max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=NO_SURROGATES), max_size=8), inner, max_size=4
        )
    ),
    max_leaves=20,
)


def full_task():
    """A finished task that uses every field of the record."""
    return Task(
        id=TASK_ID,
        type="resize-image",
        payload={"path": "/tmp/a.png", "sizes": [64, 128], "ratio": 0.5, "ok": True, "none": None},
        queue="images",
        priority=3,
        timeout_s=30.0,
        retry=RetryPolicy(max_retries=2, backoff_s=0.5, backoff_max_s=8.0, jitter=0.2, max_losses=4),
        state=TaskState.SUCCEEDED,
        seq=1_700_000_000_123_456,
        created_at=1_700_000_000.25,
        updated_at=1_700_000_009.75,
        not_before=1_700_000_003.5,
        attempts=(
            Attempt(1, "w-a", 1_700_000_001.0, 1_700_000_002.0, Outcome.FAILED, "ValueError: bad"),
            Attempt(2, "w-b", 1_700_000_004.0, 1_700_000_005.0, Outcome.LOST),
            Attempt(3, "w-c", 1_700_000_006.0, 1_700_000_009.0, Outcome.SUCCEEDED),
        ),
        result={"thumbs": ["a-64.png", "a-128.png"]},
        error="ValueError: bad",
    )


def record(**changes):
    """The JSON dict of ``full_task()``, with fields changed (``MISSING``: removed)."""
    d = task_to_dict(full_task())
    for name, value in changes.items():
        if value is MISSING:
            d.pop(name)
        else:
            d[name] = value
    return d


# round trip -------------------------------------------------------------------------------


def test_task_round_trips_with_attempts_result_and_error():
    # Given a task that uses every field
    task = full_task()

    # When it is encoded and decoded
    decoded = decode_task(KEY, encode_task(task))

    # Then the same task comes back
    assert decoded == task
    assert decoded.attempts[0].outcome is Outcome.FAILED
    assert decoded.state is TaskState.SUCCEEDED


def test_new_task_with_defaults_round_trips():
    # Given a fresh task with an unfinished attempt
    task = Task(
        id=TASK_ID,
        type="t",
        payload=None,
        state=TaskState.RUNNING,
        attempts=(Attempt(1, "w", 5.0),),
    )

    # When / Then it survives a round trip
    assert decode_task(KEY, encode_task(task)) == task


@given(payload=json_values, result=json_values)
def test_any_json_payload_and_result_round_trip(payload, result):
    # Given a task carrying arbitrary JSON
    task = Task(id=TASK_ID, type="t", payload=payload, result=result)

    # When / Then it survives a round trip
    assert decode_task(KEY, encode_task(task)) == task


def test_record_carries_the_schema_version():
    # Given / When a task is encoded
    d = orjson.loads(encode_task(full_task()))

    # Then the record says which schema it follows
    assert d["v"] == SCHEMA_VERSION


# corrupt records --------------------------------------------------------------------------


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, "1", None, MISSING])
def test_unknown_or_missing_schema_version_is_corrupt(version):
    # Given a record of another schema version, or of none
    data = orjson.dumps(record(v=version))

    # When / Then decoding it names the key
    with pytest.raises(CorruptRecord, match="schema version") as info:
        decode_task(KEY, data)
    assert info.value.key == KEY


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff\xfe garbage", b"{", b"null", b"42", b'"text"', b"[1, 2]", b"[]", b"{}"],
)
def test_garbage_or_non_object_is_corrupt(data):
    # Given bytes that are not a JSON object of our schema
    # When / Then decoding raises CorruptRecord with the key
    with pytest.raises(CorruptRecord) as info:
        decode_task(KEY, data)
    assert info.value.key == KEY


@pytest.mark.parametrize("field", REQUIRED_FIELDS)
def test_missing_required_field_is_corrupt(field):
    # Given a record without one required field
    data = orjson.dumps(record(**{field: MISSING}))

    # When / Then decoding raises CorruptRecord
    with pytest.raises(CorruptRecord):
        decode_task(KEY, data)


@pytest.mark.parametrize(
    "changes",
    [
        {"state": "finished"},
        {"priority": 9},
        {"priority": "1"},
        {"queue": "a/b"},
        {"type": ""},
        {"timeout_s": -1},
        {"seq": "x"},
        {"created_at": [1]},
        {"retry": {"max_retries": 1}},
        {"retry": {"max_retries": -1, "backoff_s": 1, "backoff_max_s": 2, "jitter": 0, "max_losses": 1}},
        {"attempts": [{"n": 1, "worker": "w", "started_at": 0, "outcome": "exploded"}]},
        {"attempts": [{"worker": "w", "started_at": 0}]},
        {"attempts": 5},
    ],
    ids=repr,
)
def test_inconsistent_field_is_corrupt(changes):
    # Given a record with one field of the wrong shape or range
    data = orjson.dumps(record(**changes))

    # When / Then decoding raises CorruptRecord
    with pytest.raises(CorruptRecord):
        decode_task(KEY, data)


@given(field=st.sampled_from(sorted(set(task_to_dict(full_task())) - {"attempts"})), value=json_values)
def test_any_field_replaced_decodes_or_is_corrupt(field, value):
    # Given a record with any field (but the attempt list) replaced by any JSON value
    data = orjson.dumps(record(**{field: value}))

    # When / Then it decodes to a task or raises CorruptRecord, never another exception
    assert_task_or_corrupt(data)


attempt_fields = st.sampled_from(["n", "worker", "started_at", "finished_at", "outcome", "error"])


@given(st.lists(st.dictionaries(attempt_fields, json_values), max_size=3))
def test_any_attempt_objects_decode_or_are_corrupt(attempts):
    # Given a record whose attempts are JSON objects with arbitrary fields
    data = orjson.dumps(record(attempts=attempts))

    # When / Then it decodes to a task or raises CorruptRecord, never another exception
    assert_task_or_corrupt(data)


@pytest.mark.parametrize("attempt", [None, "not an attempt", 1, []], ids=repr)
def test_attempt_that_is_not_an_object_is_corrupt(attempt):
    # Given a record whose attempt list holds something other than an object
    data = orjson.dumps(record(attempts=[attempt]))

    # When / Then decoding raises CorruptRecord
    with pytest.raises(CorruptRecord):
        decode_task(KEY, data)


def assert_task_or_corrupt(data):
    try:
        decoded = decode_task(KEY, data)
    except CorruptRecord:
        return
    assert isinstance(decoded, Task)


# encode_json / parse_json -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        {"a": [1, math.nan]},
        [{"deep": math.inf}],
        set(),
        object(),
        b"bytes",
        {1: "non-string key"},
        2**64,
    ],
    ids=repr,
)
def test_non_json_values_raise_invalid_payload(value):
    # Given / When / Then a value JSON cannot represent is refused
    with pytest.raises(InvalidPayload):
        encode_json(value)


def test_too_deep_nesting_raises_invalid_payload():
    # Given a list nested 100 levels deep
    value: list = []
    for _ in range(100):
        value = [value]

    # When / Then it is refused
    with pytest.raises(InvalidPayload, match="deeper"):
        encode_json(value)


def test_payload_over_limit_raises_payload_too_large_with_sizes():
    # Given a string whose JSON encoding (with its quotes) is one byte over the limit
    value = "x" * (MAX_PAYLOAD_BYTES - 1)

    # When it is encoded
    with pytest.raises(PayloadTooLarge) as info:
        encode_json(value)

    # Then the error carries the size and the limit
    assert info.value.size == MAX_PAYLOAD_BYTES + 1
    assert info.value.limit == MAX_PAYLOAD_BYTES


def test_payload_at_limit_is_accepted():
    # Given a string whose encoding is exactly the limit
    value = "x" * (MAX_PAYLOAD_BYTES - 2)

    # When / Then it encodes
    assert len(encode_json(value)) == MAX_PAYLOAD_BYTES


def test_custom_limit_and_name_are_used():
    # Given a small limit for a result
    # When / Then the error names the result and the limit
    with pytest.raises(PayloadTooLarge, match="result") as info:
        encode_json([1, 2, 3], what="result", limit=4)
    assert (info.value.size, info.value.limit) == (7, 4)


@pytest.mark.parametrize("value", [None, True, 0, -1.5, "é", [], {}, {"a": [1, {"b": None}]}], ids=repr)
def test_json_values_encode_and_parse_back(value):
    # Given / When a JSON value is encoded and parsed
    # Then it comes back unchanged
    assert parse_json(encode_json(value)) == value


@pytest.mark.parametrize("text", ["", "{", "NaN", "Infinity", "{'a': 1}", "[1,]", b"\xff"], ids=repr)
def test_parse_json_bad_text_raises_invalid_payload(text):
    # Given / When / Then text that is not JSON is refused
    with pytest.raises(InvalidPayload, match="not valid JSON"):
        parse_json(text)


def test_record_over_limit_raises_payload_too_large():
    # Given a task whose record would be over the record limit
    task = Task(id=TASK_ID, type="t", payload="x" * MAX_RECORD_BYTES)

    # When / Then encoding it is refused with the record limit
    with pytest.raises(PayloadTooLarge) as info:
        encode_task(task)
    assert info.value.limit == MAX_RECORD_BYTES
    assert info.value.size > MAX_RECORD_BYTES


def test_record_with_non_json_payload_raises_invalid_payload():
    # Given a task built around a payload that is not JSON
    task = Task(id=TASK_ID, type="t", payload={"s": {1, 2}})

    # When / Then encoding it is refused
    with pytest.raises(InvalidPayload):
        encode_task(task)


# small internal records -------------------------------------------------------------------


def test_obj_round_trips():
    # Given / When / Then a small record survives a round trip
    obj = {"attempt": 2, "deadline": 1.5}
    assert decode_obj("/k", encode_obj(obj)) == obj


@pytest.mark.parametrize("data", [b"", b"{", b"[1]", b"3"])
def test_obj_that_is_not_a_json_object_is_corrupt(data):
    # Given / When / Then anything but a JSON object is corrupt
    with pytest.raises(CorruptRecord) as info:
        decode_obj("/k", data)
    assert info.value.key == "/k"


def test_dropped_attempts_round_trip_and_are_left_out_when_none():
    from tasklease.models import Attempt, Outcome, Task

    attempts = tuple(
        Attempt(n, "w", 1.0, 2.0, Outcome.LOST if n % 2 else Outcome.FAILED, "e") for n in range(1, 41)
    )
    task = Task(id="01ARZ3NDEKTSV4RRFFQ69G5FAV", type="t", payload={"a": 1}, attempts=attempts)
    back = codec.decode_task("/k", codec.encode_task(task))
    assert back == task
    assert back.dropped.attempts == 40 - 23
    plain = Task(id="01ARZ3NDEKTSV4RRFFQ69G5FAV", type="t", payload=None)
    assert b"dropped" not in codec.encode_task(plain)


def test_encode_for_write_checks_the_limit_of_the_state():
    from tasklease.errors import PayloadTooLarge
    from tasklease.models import Task, TaskState

    big = "x" * (codec.MAX_QUEUED_RECORD_BYTES - 1000)
    queued = Task(id="01ARZ3NDEKTSV4RRFFQ69G5FAV", type="t", payload=big, result=None)
    codec.encode_for_write(queued)
    too_big = Task(id=queued.id, type="t", payload=big + "y" * 2000)
    with pytest.raises(PayloadTooLarge, match="queued task record"):
        codec.encode_for_write(too_big)
    # the same record, finished, is written once and fits
    done = Task(
        id=queued.id,
        type="t",
        payload=big + "y" * 2000,
        state=TaskState.SUCCEEDED,
        result="r" * codec.MAX_PAYLOAD_BYTES,
    )
    codec.encode_for_write(done)
