"""Rate and concurrency limits without etcd: the model (limits.py), the token bucket and the gate (limiter.py).

The gate is exercised through a real :class:`~tasklease.limiter.Limiter` on a
real :class:`~tasklease.mirror.Mirror` fed the keys the watch would deliver,
with a fake clock; and through :func:`~tasklease.assigner.plan_batch` and
:meth:`~tasklease.mirror.QueueIndex.heads`, as the assigner uses them.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, cast

import pytest

from tasklease import codec
from tasklease.assigner import plan_batch
from tasklease.balancers import NodeView
from tasklease.clock import FakeClock
from tasklease.election import Election
from tasklease.errors import CorruptRecord, InvalidOption, InvalidQueueName
from tasklease.events import as_hooks
from tasklease.ids import IdGenerator
from tasklease.keys import Keyspace
from tasklease.leader import LeaderContext
from tasklease.limiter import UNCERTAIN_HOLD_S, Limiter, TokenBucket
from tasklease.limits import Limit, decode_limit, default_burst, encode_limit, make_limit, parse_rate
from tasklease.mirror import Mirror, MirroredNode
from tasklease.models import Task
from tasklease.recovery import decode_running
from tasklease.retention import RetentionLeases
from tasklease.routing import parse_route
from tasklease.store import KV, Compare, Event, Put

K = Keyspace("ns")
PAD = {"pad": "x" * 2000}  # a realistic 2 KB payload


# the model ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "per_s", "shown"),
    [
        ("100/s", 100.0, "100/s"),
        ("100/min", 100 / 60, "100/min"),
        ("5000/h", 5000 / 3600, "5000/h"),
        (" 20 / minute ", 20 / 60, "20/min"),
        ("1/d", 1 / 86400, "1/d"),
        ("0.5/sec", 0.5, "0.5/s"),
        ("007/HOUR", 7 / 3600, "7/h"),
    ],
)
def test_rates_are_read_per_second_and_shown_canonically(text, per_s, shown):
    got, text_out = parse_rate(text)
    assert math.isclose(got, per_s) and text_out == shown


@pytest.mark.parametrize(
    "text", ["", "100", "100/", "/min", "100/week", "-1/s", "0/s", "1e3/s", "x/s", "2000000/s"]
)
def test_bad_rates_are_refused(text):
    with pytest.raises(InvalidOption):
        parse_rate(text)


def test_a_limit_needs_a_rate_or_a_concurrency_and_sane_numbers():
    with pytest.raises(InvalidOption, match="rate, a concurrency"):
        make_limit("type", "email")
    with pytest.raises(InvalidOption, match="burst needs a rate"):
        make_limit("type", "email", burst=3, concurrency=2)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(InvalidOption):
            make_limit("type", "email", rate="1/s", burst=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidOption):
            make_limit("type", "email", concurrency=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidOption, match="type or a queue"):
        make_limit("worker", "w1", concurrency=1)
    with pytest.raises(InvalidOption):
        make_limit("type", "bad type", concurrency=1)
    with pytest.raises(InvalidQueueName):
        make_limit("queue", "a/b", concurrency=1)
    with pytest.raises(InvalidOption, match="text like"):
        make_limit("type", "email", rate=5)  # type: ignore[arg-type]


def test_the_default_burst_is_a_tenth_of_a_second_of_tokens_at_least_one():
    assert make_limit("type", "email", rate="100/min").burst == 1
    assert make_limit("type", "email", rate="20/s").burst == 2
    assert make_limit("type", "email", rate="1000/s").burst == 100
    assert default_burst(10.0) == 1
    assert make_limit("type", "email", rate="100/min", burst=10).burst == 10


def test_a_limit_round_trips_through_its_key_and_value():
    limit = make_limit("type", "email", rate="100/min", burst=10, concurrency=5, now=1_700_000_000.5)
    kv = KV(K.limit("type", "email"), encode_limit(limit), 3, 3, 1)
    assert decode_limit(K, kv) == limit
    assert limit.as_dict() == {
        "kind": "type",
        "name": "email",
        "rate": "100/min",
        "rate_per_s": 100 / 60,
        "burst": 10,
        "concurrency": 5,
        "set_at": 1_700_000_000.5,
    }
    assert limit.describe() == "rate 100/min (burst 10), concurrency 5"
    only = make_limit("queue", "bulk", concurrency=3)
    assert decode_limit(K, KV(K.limit("queue", "bulk"), encode_limit(only), 3, 3, 1)) == only


@pytest.mark.parametrize(
    "value", [b"nope", b"[]", b'{"set_at": 1}', b'{"rate": "x", "burst": 1}', b'{"rate": 1}']
)
def test_a_stored_limit_that_cannot_be_read_is_a_corrupt_record(value):
    with pytest.raises(CorruptRecord):
        decode_limit(K, KV(K.limit("type", "email"), value, 3, 3, 1))


# the token bucket ---------------------------------------------------------------------------------
def test_a_bucket_starts_empty_and_fills_at_its_rate_up_to_its_burst():
    b = TokenBucket(rate=10.0, burst=3, now=100.0)
    assert not b.ready(100.0)
    assert math.isclose(b.wait_s(100.0), 0.1)
    assert b.ready(100.1)  # one token after 1/rate
    b.take()
    assert not b.ready(100.1)
    assert math.isclose(b.wait_s(100.15), 0.05)
    b.refill(200.0)
    assert b.tokens == 3.0  # never more than the burst, however long it waited
    for _ in range(3):
        assert b.ready(200.0)
        b.take()
    assert not b.ready(200.0)


def test_a_bucket_gives_back_at_most_its_burst_and_ignores_a_clock_going_back():
    b = TokenBucket(rate=1.0, burst=2, now=0.0, tokens=2.0)
    b.take()
    b.give_back()
    b.give_back()
    assert b.tokens == 2.0
    b.take()
    b.refill(-50.0)  # an earlier time adds nothing and takes nothing
    assert b.tokens == 1.0


def test_the_starts_a_bucket_allows_are_burst_plus_rate_times_time():
    # Given a bucket taken from whenever it holds a token, checked every millisecond for 10 s
    b = TokenBucket(rate=7.0, burst=4, now=0.0, tokens=4.0)
    starts = []
    for ms in range(10_001):
        t = ms / 1000
        while b.ready(t):
            b.take()
            starts.append(t)
    # Then it started burst + rate * 10 s tasks (within one token of float slack), never more
    assert 4 + 70 - 1 <= len(starts) <= 4 + 70
    # And no window of 1 s holds more than burst + rate starts
    for i, t in enumerate(starts):
        assert sum(1 for u in starts[i:] if u < t + 1.0) <= 4 + 7


def test_a_changed_limit_keeps_the_tokens_held_up_to_its_new_burst():
    b = TokenBucket(rate=1.0, burst=10, now=0.0, tokens=8.0)
    b.change(rate=100.0, burst=3, now=1.0)
    assert b.tokens == 3.0 and b.rate == 100.0
    b.change(rate=1.0, burst=50, now=1.0)
    assert b.tokens == 3.0  # raising the burst adds no tokens


# the gate -----------------------------------------------------------------------------------------
class Leader:
    """A Limiter on a real Mirror and a fake clock; ``put``/``delete`` are what the watch delivers."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.mirror = Mirror(K, self.clock)
        none = cast(Any, None)  # no store: the limiter never writes
        self.election = Election(none, K, "s1", clock=self.clock)
        self.election.token = 7
        ctx = LeaderContext(
            none, K, self.election, self.mirror, as_hooks(None), "s1", RetentionLeases(none, K), IdGenerator()
        )
        self.limiter = Limiter(ctx)
        self.revision = 10
        self.limiter.gate()  # the leadership starts: the limiter reads the (empty) view

    def put(self, key: str, value: bytes) -> None:
        self.revision += 1
        self.mirror.apply_events([Event("put", KV(key, value, self.revision, self.revision, 1))])

    def delete(self, key: str) -> None:
        self.revision += 1
        self.mirror.apply_events([Event("delete", KV(key, b"", 0, self.revision, 0))])

    def limit(self, kind: str, name: str, **options: Any) -> None:
        self.put(K.limit(kind, name), encode_limit(make_limit(kind, name, **options)))

    def running(self, task_id: str, queue: str, task_type: str) -> None:
        entry = {"worker": "w1", "n": 1, "deadline": 1e10, "t": 60.0, "q": queue, "ty": task_type}
        self.put(K.running_entry(task_id), codec.encode_obj(entry))


def admitted(gate, queue: str, task_type: str, n: int) -> int:
    return sum(1 for _ in range(n) if gate.admit(queue, task_type))


def test_without_limits_the_gate_is_inactive_and_admits_everything():
    leader = Leader()
    gate = leader.limiter.gate()
    assert not gate.active
    assert admitted(gate, "default", "email", 100) == 100


def test_a_rate_limit_admits_a_token_at_a_time_and_starts_empty():
    # Given a limit of 10/s with a burst of 2, seen when the leadership starts
    leader = Leader()
    leader.limit("type", "email", rate="10/s", burst=2)
    # Then nothing starts at once (an empty bucket), one task per 100 ms after
    gate = leader.limiter.gate()
    assert gate.blocked("default", parse_route("email"))
    assert not gate.blocked("default", parse_route("sms"))  # another type is not limited
    assert admitted(gate, "default", "sms", 5) == 5
    leader.clock.advance(0.1)
    assert admitted(leader.limiter.gate(), "default", "email", 5) == 1
    leader.clock.advance(10.0)
    assert admitted(leader.limiter.gate(), "default", "email", 5) == 2  # the burst


def test_type_and_queue_limits_both_apply_and_a_refusal_takes_no_token():
    leader = Leader()
    leader.limit("type", "email", rate="1/s", burst=5)
    leader.limit("queue", "bulk", rate="1/s", burst=2)
    leader.clock.advance(10.0)
    gate = leader.limiter.gate()
    assert admitted(gate, "bulk", "email", 10) == 2  # the queue's burst
    assert admitted(gate, "other", "email", 10) == 3  # the type's tokens left
    assert admitted(gate, "bulk", "sms", 1) == 0  # the queue is empty now, for every type


def test_a_failed_batch_gives_its_tokens_back_a_committed_one_does_not():
    leader = Leader()
    leader.limit("type", "email", rate="1/s", burst=3)
    leader.clock.advance(10.0)
    gate = leader.limiter.gate()
    assert admitted(gate, "default", "email", 2) == 2
    gate.rollback()
    gate = leader.limiter.gate()
    assert admitted(gate, "default", "email", 5) == 3
    gate.commit(leader.revision + 1)
    assert admitted(leader.limiter.gate(), "default", "email", 5) == 0


def test_concurrency_counts_running_entries_batches_in_flight_and_the_batch_itself():
    leader = Leader()
    leader.limit("type", "email", concurrency=3)
    leader.running("01HZZZZZZZZZZZZZZZZZZZ0001", "default", "email")
    leader.running("01HZZZZZZZZZZZZZZZZZZZ0002", "default", "sms")
    gate = leader.limiter.gate()
    assert admitted(gate, "default", "email", 5) == 2  # 1 running + 2 in this batch
    gate.commit(leader.revision + 5)  # committed, not yet seen by the watch
    assert admitted(leader.limiter.gate(), "default", "email", 5) == 0
    # When the watch shows the batch (its running entries) and one task finishes
    leader.running("01HZZZZZZZZZZZZZZZZZZZ0003", "default", "email")
    leader.running("01HZZZZZZZZZZZZZZZZZZZ0004", "default", "email")
    leader.revision += 3
    leader.delete(K.running_entry("01HZZZZZZZZZZZZZZZZZZZ0001"))
    # Then one more may start
    assert admitted(leader.limiter.gate(), "default", "email", 5) == 1


def test_batches_in_flight_are_forgotten_once_the_watch_shows_them_even_with_rate_limits_only():
    leader = Leader()
    leader.limit("type", "email", rate="1000/s", burst=1000)
    leader.clock.advance(5.0)
    view = leader.mirror.view
    for _ in range(100):
        gate = leader.limiter.gate()
        assert admitted(gate, "default", "email", 3) == 3
        gate.commit(view.revision + 1)
        view.revision += 1  # the watch shows the batch
    # Then only the last batch is remembered (nothing reads the list without a concurrency limit)
    assert len(leader.limiter._inflight) <= 3
    assert leader.limiter.inflight() == []


def test_a_batch_of_unknown_outcome_counts_as_running_for_a_while():
    leader = Leader()
    leader.limit("queue", "bulk", concurrency=1)
    gate = leader.limiter.gate()
    assert admitted(gate, "bulk", "email", 2) == 1
    gate.uncertain()
    assert admitted(leader.limiter.gate(), "bulk", "email", 1) == 0
    leader.clock.advance(UNCERTAIN_HOLD_S)
    assert admitted(leader.limiter.gate(), "bulk", "email", 1) == 1


def test_running_entries_of_older_versions_without_a_type_still_read():
    kv = KV(
        K.running_entry("01HZZZZZZZZZZZZZZZZZZZ0001"), b'{"worker": "w1", "n": 1, "deadline": 5}', 3, 3, 1
    )
    entry = decode_running(K, kv)
    assert (entry.queue, entry.type) == ("", "")
    leader = Leader()
    leader.limit("type", "email", concurrency=1)
    leader.put(kv.key, kv.value)
    assert dict(leader.mirror.view.running_by_type) == {"": 1}
    assert admitted(leader.limiter.gate(), "default", "email", 2) == 1


def test_a_change_applies_to_the_next_gate_and_keeps_the_tokens():
    leader = Leader()
    leader.limit("type", "email", rate="1/s", burst=5)
    leader.clock.advance(2.0)  # 2 tokens
    leader.limiter.gate()
    leader.mirror.wake.clear()
    # When the rate is raised
    leader.limit("type", "email", rate="100/s", burst=5)
    # Then the assigner is woken and the tokens held are kept (not refilled to the burst)
    assert leader.mirror.wake.is_set()
    gate = leader.limiter.gate()
    assert admitted(gate, "default", "email", 10) == 2
    leader.clock.advance(0.01)
    assert admitted(leader.limiter.gate(), "default", "email", 10) == 1
    # When the limit is removed, everything goes
    leader.delete(K.limit("type", "email"))
    assert admitted(leader.limiter.gate(), "default", "email", 10) == 10


def test_a_new_leadership_starts_every_bucket_empty_a_reload_keeps_them():
    leader = Leader()
    leader.limit("type", "email", rate="1/s", burst=5)
    leader.clock.advance(10.0)
    leader.limiter.gate()
    # When the view is read again under the same leadership (a compacted watch)
    view = leader.mirror.reset()
    key = K.limit("type", "email")
    view.plain[K.limits][key] = KV(
        key, encode_limit(make_limit("type", "email", rate="1/s", burst=5)), 11, 11, 1
    )
    # Then the tokens held are kept
    assert admitted(leader.limiter.gate(), "default", "email", 10) == 5
    leader.clock.advance(10.0)
    # When this scheduler leads again later (a new token)
    leader.election.token = 99
    # Then the bucket starts empty, whatever it held
    assert admitted(leader.limiter.gate(), "default", "email", 10) == 0


def test_a_limit_that_cannot_be_read_is_ignored_and_logged(caplog):
    leader = Leader()
    leader.limiter.gate()
    leader.put(K.limit("type", "email"), b"not json")
    assert admitted(leader.limiter.gate(), "default", "email", 3) == 3
    assert "cannot be read" in caplog.text


async def test_a_group_held_back_by_a_rate_wakes_the_assigner_at_its_next_token():
    leader = Leader()
    leader.limit("type", "email", rate="20/s", burst=1)
    gate = leader.limiter.gate()
    assert gate.blocked("default", parse_route("email"))
    leader.mirror.wake.clear()
    leader.limiter.schedule_wake()
    # Then the assigner is woken about 50 ms later (the real event loop's timer)
    async with asyncio.timeout(5):
        await leader.mirror.wake.wait()


# the assigner's use: heads past blocked groups, plan_batch's admit --------------------------------
def queued(i: int, task_type: str, queue: str = "default", priority: int = 1) -> Task:
    return Task(
        id=f"01HZZZZZZZZZZZZZZZZZZZ{i:04d}",
        type=task_type,
        payload=PAD,
        queue=queue,
        priority=priority,
        seq=10**15 + i,
        timeout_s=30.0,
    )


def worker(types: tuple[str, ...] = ("email", "sms"), capacity: int = 50) -> MirroredNode:
    return MirroredNode(
        NodeView(id="w1", capacity=capacity), frozenset({"default"}), 101, False, frozenset(types)
    )


def test_a_blocked_group_never_monopolises_the_heads_of_a_batch():
    # Given 20 urgent emails (rate-limited, no token yet) queued before 5 ordinary sms
    leader = Leader()
    leader.limit("type", "email", rate="1/min", burst=1)
    for i in range(20):
        t = queued(i, "email", priority=3)
        leader.put(K.queue_entry(t.queue, t.priority, t.seq, t.id, t.route), codec.encode_task(t))
    for i in range(20, 25):
        t = queued(i, "sms")
        leader.put(K.queue_entry(t.queue, t.priority, t.seq, t.id, t.route), codec.encode_task(t))
    free = [worker()]
    gate = leader.limiter.gate()
    # When a batch of 10 gathers its heads past the groups the gate holds back
    heads = list(leader.mirror.view.queues.heads(free, 10, set(), gate.blocked))[:10]
    # Then the sms come, no email
    assert {codec.decode_task(kv.key, kv.value).type for kv in heads} == {"sms"}
    assert len(heads) == 5


def test_plan_batch_asks_admit_last_and_passes_over_what_it_refuses():
    # Given emails and sms interleaved, and a gate admitting 2 emails
    leader = Leader()
    leader.limit("type", "email", rate="1/s", burst=2)
    leader.clock.advance(5.0)
    tasks = [queued(i, "email" if i % 2 == 0 else "sms") for i in range(8)]
    heads = [
        KV(K.queue_entry(t.queue, t.priority, t.seq, t.id, t.route), codec.encode_task(t), 5, 5, 1)
        for t in tasks
    ]
    gate = leader.limiter.gate()
    plan = plan_batch(
        heads,
        [worker()],
        keys=K,
        route=lambda text: parse_route(text) if text else None,
        balancer=cast(Any, type("First", (), {"choose": staticmethod(lambda c: c[0])})()),
        fence=Compare.created_at(K.leader, 7),
        now=1_700_000_000.0,
        batch_size=10,
        admit=gate.admit,
    )
    # Then the plan holds the 2 first emails and every sms, and the gate counted exactly those
    types = [codec.decode_task(p.record_kv.key, p.record_kv.value).type for p in plan.picks]
    assert types == ["email", "sms", "email", "sms", "sms", "sms"]
    assert [t for _, t in gate.taken].count("email") == 2
    assert len(gate.taken) == 6
    # And the running entries written carry the queue and the type
    running = [op for op in plan.txn.ops if isinstance(op, Put) and op.key.startswith(K.running)]
    assert [codec.decode_obj(op.key, op.value)["ty"] for op in running] == types
    assert {codec.decode_obj(op.key, op.value)["q"] for op in running} == {"default"}


def test_limit_keys_are_the_only_thing_the_limiter_reads_from_the_plain_maps():
    leader = Leader()
    leader.put(K.limit("queue", "bulk"), encode_limit(Limit("queue", "bulk", concurrency=1)))
    leader.put(K.cron("nightly"), b"{}")
    gate = leader.limiter.gate()
    assert set(leader.limiter.rules) == {("queue", "bulk")}
    assert gate.active
