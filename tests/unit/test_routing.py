"""Routes (task type + required tags) and eligibility: pure logic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasklease import codec
from tasklease.errors import InvalidOption
from tasklease.keys import Keyspace
from tasklease.models import Task
from tasklease.routing import Route, check_requires, eligible, parse_requires, parse_route, route

TYPES = st.text(min_size=1, max_size=40).filter(lambda t: t.isprintable())
TAG_KEYS = st.from_regex(r"[A-Za-z0-9_.-]{1,10}", fullmatch=True).filter(lambda k: k not in {".", ".."})
TAG_VALUES = st.text(max_size=20).filter(lambda v: v.isprintable())


@given(TYPES, st.dictionaries(TAG_KEYS, TAG_VALUES, max_size=4))
def test_route_round_trips_and_never_contains_a_slash(task_type, tags):
    requires = check_requires(tags)
    text = route(task_type, requires)
    assert "/" not in text
    assert parse_route(text) == Route(task_type, requires)


def test_queue_keys_carry_the_route_and_old_keys_still_parse():
    keys = Keyspace("ns")
    task = Task(
        id="01ARZ3NDEKTSV4RRFFQ69G5FAV", type="resize", payload=None, requires=(("zone", "eu"),), seq=7
    )
    key = keys.queue_entry(task.queue, task.priority, task.seq, task.id, task.route)
    parsed = keys.parse_queue_entry(key)
    assert parsed.route == "resize&zone=eu" and parsed.task_id == task.id and parsed.seq == 7
    old = keys.parse_queue_entry(keys.queue_entry("default", 1, 7, task.id))
    assert old.route is None and old.task_id == task.id
    # the route does not change the dequeue order (band, sequence, id come first)
    a = keys.queue_entry("q", 3, 9, "01ARZ3NDEKTSV4RRFFQ69G5FAV", "zzz")
    b = keys.queue_entry("q", 3, 10, "01ARZ3NDEKTSV4RRFFQ69G5FAA", "aaa")
    assert a < b


def test_requires_are_validated_and_canonical():
    assert check_requires({"zone": "eu", "gpu": "true"}) == (("gpu", "true"), ("zone", "eu"))
    assert parse_requires("zone=eu, gpu=true") == (("gpu", "true"), ("zone", "eu"))
    for bad in ("zone", "=eu", "zone=eu,zone=us", "bad key=1"):
        with pytest.raises(InvalidOption):
            parse_requires(bad)
    with pytest.raises(InvalidOption):
        check_requires({"zone": "\x1b[2J"})


def test_eligibility_needs_the_type_and_every_required_tag():
    task = Route("resize", (("gpu", "true"), ("zone", "eu")))
    assert eligible({"resize"}, {"zone": "eu", "gpu": "true", "x": "1"}, task)
    assert not eligible({"resize"}, {"zone": "us", "gpu": "true"}, task)
    assert not eligible({"resize"}, {"zone": "eu"}, task)
    assert not eligible({"noop"}, {"zone": "eu", "gpu": "true"}, task)
    assert eligible({"noop"}, {}, Route("noop"))


def test_requires_round_trip_in_the_record():
    task = Task(id="01ARZ3NDEKTSV4RRFFQ69G5FAV", type="t", payload=None, requires=(("zone", "eu"),))
    assert codec.decode_task("/k", codec.encode_task(task)) == task
    assert b"requires" not in codec.encode_task(Task(id=task.id, type="t", payload=None))
