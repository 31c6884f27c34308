"""Task ids and queue sequences from the per-process hybrid clock."""

import itertools
import os
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasklease.clock import FakeClock
from tasklease.errors import TaskNotFound
from tasklease.ids import (
    ID_LENGTH,
    IdGenerator,
    MalformedTaskId,
    default_process_id,
    is_task_id,
    parse_task_id,
)
from tasklease.keys import NAME_RE

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class ScriptedClock:
    """A clock that returns the given wall-clock readings in turn (may go backwards)."""

    def __init__(self, readings):
        self._readings = iter(readings)

    def now(self):
        return next(self._readings)

    def monotonic(self):
        return 0.0


def strictly_increasing(values):
    return all(a < b for a, b in itertools.pairwise(values))


def decode_ms(task_id):
    """The millisecond timestamp in the first 10 characters (ULID layout)."""
    value = 0
    for char in task_id[:10]:
        value = value * 32 + CROCKFORD.index(char)
    return value


def test_ids_have_the_task_id_shape():
    # Given a generator on a fake clock
    ids = IdGenerator(FakeClock())

    # When ids are made
    made = [ids.task_id() for _ in range(100)]

    # Then each is 26 Crockford characters and unique
    assert all(len(i) == ID_LENGTH == 26 for i in made)
    assert all(is_task_id(i) for i in made)
    assert len(set(made)) == len(made)


def test_ids_increase_strictly_when_the_clock_stands_still():
    # Given a clock that never moves
    ids = IdGenerator(FakeClock())

    # When many ids are made
    made = [ids.task_id() for _ in range(2000)]

    # Then they sort in the order they were made, with no ties
    assert strictly_increasing(made)


def test_ids_increase_strictly_when_the_clock_moves_forward():
    # Given a clock that advances by less than, and more than, a millisecond
    clock = FakeClock()
    ids = IdGenerator(clock)
    made = []

    # When ids are made between steps
    for step in [0.0001, 0.0004, 0.002, 1.0, 0.0] * 20:
        made.append(ids.task_id())
        clock.advance(step)

    # Then they sort in generation order
    assert made == sorted(made)
    assert len(set(made)) == len(made)


def test_ids_increase_strictly_when_the_clock_goes_backwards():
    # Given a wall clock that steps back by a second, then by a day
    clock = ScriptedClock([1000.0, 1000.5, 999.5, 999.5, 1000.5, 913600.0, 827200.0, 913600.001])
    ids = IdGenerator(clock)

    # When an id is made at each reading
    made = [ids.task_id() for _ in range(8)]

    # Then they still sort in generation order
    assert strictly_increasing(made)


@given(st.lists(st.floats(min_value=0, max_value=4e9), min_size=2, max_size=50))
def test_ids_and_sequences_increase_for_any_clock_readings(readings):
    # Given a clock that returns arbitrary readings (forward, still or backwards)
    ids = IdGenerator(ScriptedClock(readings))

    # When one id or sequence is made per reading
    made = [ids.task_id() if i % 2 else str(ids.sequence()) for i in range(len(readings))]
    id_list = made[1::2]
    seqs = [int(s) for s in made[0::2]]

    # Then both kinds increase strictly in generation order
    assert strictly_increasing(id_list)
    assert strictly_increasing(seqs)


def test_sequence_follows_the_clock_in_microseconds():
    # Given a fake clock that moves forward
    clock = FakeClock(start=1_700_000_000.0)
    ids = IdGenerator(clock)

    # When sequences are taken before and after a step of 2 s
    first = ids.sequence()
    clock.advance(2.0)
    second = ids.sequence()

    # Then they are the clock's time in microseconds
    assert first == 1_700_000_000_000_000
    assert second == 1_700_000_002_000_000


def test_sequence_increases_by_one_when_the_clock_stands_still_or_goes_back():
    # Given a clock that stands still, then goes back
    ids = IdGenerator(ScriptedClock([10.0, 10.0, 10.0, 5.0, 20.0]))

    # When a sequence is taken at each reading
    seqs = [ids.sequence() for _ in range(5)]

    # Then it ticks by one microsecond until the clock catches up
    assert seqs == [10_000_000, 10_000_001, 10_000_002, 10_000_003, 20_000_000]


def test_id_starts_with_its_creation_millisecond():
    # Given a clock at a known time
    clock = FakeClock(start=1_700_000_123.456)
    ids = IdGenerator(clock)

    # When an id is made
    task_id = ids.task_id()

    # Then its first ten characters hold the time in milliseconds, as in a ULID
    assert decode_ms(task_id) == 1_700_000_123_456


def test_ids_from_two_generators_follow_the_wall_clock():
    # Given two generators whose clocks are one millisecond apart
    early = IdGenerator(FakeClock(start=1_700_000_000.000))
    late = IdGenerator(FakeClock(start=1_700_000_000.001))

    # When each makes an id (the later one first)
    late_id = late.task_id()
    early_id = early.task_id()

    # Then the ids sort by clock time, not by generation order
    assert early_id < late_id


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0" * 25,
        "0" * 27,
        "01hzzzzzzzzzzzzzzzzzzzzzzz",
        "01HZZZZZZZZZZZZZZZZZZZZZZI",
        "01HZZZZZZZZZZZZZZZZZZZZZZL",
        "01HZZZZZZZZZZZZZZZZZZZZZZO",
        "01HZZZZZZZZZZZZZZZZZZZZZZU",
        "01HZZZZZZZZZZZZZZZZZZZZZ-Z",
        "../../../../../../../../..",
    ],
)
def test_is_task_id_rejects_other_shapes(text):
    # Given / When / Then text of another length or alphabet is not a task id
    assert not is_task_id(text)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("01HZZZZZZZZZZZZZZZZZZZZZZZ", "01HZZZZZZZZZZZZZZZZZZZZZZZ"),
        ("01hzzzzzzzzzzzzzzzzzzzzzzz", "01HZZZZZZZZZZZZZZZZZZZZZZZ"),
        ("  01hZzzzzzzzzzzzzzzzzzzzzzz\n", "01HZZZZZZZZZZZZZZZZZZZZZZZ"),
        # Crockford: I and L read as 1, O as 0
        ("0IHZZZZZZZZZZZZZZZZZZZZZZl", "01HZZZZZZZZZZZZZZZZZZZZZZ1"),
        ("o1HZZZZZZZZZZZZZZZZZZZZZZO", "01HZZZZZZZZZZZZZZZZZZZZZZ0"),
    ],
)
def test_parse_task_id_reads_ids_case_insensitively(text, canonical):
    assert parse_task_id(text) == canonical
    assert is_task_id(parse_task_id(text))


def test_parse_task_id_of_a_made_id_in_lower_case_is_the_id():
    made = IdGenerator(FakeClock()).task_id()
    assert parse_task_id(made.lower()) == made


@pytest.mark.parametrize(
    "text", ["", "0" * 25, "0" * 27, "01HZZZZZZZZZZZZZZZZZZZZZZU", "01HZZZZZZZZZZZZZZZZZZZZZ-Z", "../x"]
)
def test_parse_task_id_says_malformed(text):
    with pytest.raises(MalformedTaskId, match="malformed task id") as info:
        parse_task_id(text)
    # still a TaskNotFound: callers that handle unknown ids handle these too
    assert isinstance(info.value, TaskNotFound)


def test_default_process_ids_are_unique_names():
    made = {default_process_id("sched") for _ in range(1000)}
    assert len(made) == 1000
    for pid in made:
        assert NAME_RE.fullmatch(pid)
        assert pid.startswith("sched-")
        assert f"-{os.getpid()}-" in pid
        assert len(pid.rsplit("-", 1)[1]) == 16  # 64 random bits


def test_default_process_id_fits_a_name_with_a_long_host(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "very.long.host name/with*odd" * 10)
    made = default_process_id("worker")
    assert NAME_RE.fullmatch(made), made
    assert made.startswith("worker-very.long.host-name-with-odd")
