"""Balancer distributions (B1-B5), no etcd."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tasklease.balancers import (
    BALANCERS,
    LeastLoad,
    NodeView,
    RandomBalancer,
    RoundRobin,
    Weighted,
    load_score,
    make_balancer,
)
from tasklease.errors import InvalidOption


def nodes(*specs: tuple[str, float]) -> list[NodeView]:
    return [NodeView(id=i, capacity=100, weight=w) for i, w in specs]


def test_factory_builds_each_by_name_and_rejects_unknown():
    for name in BALANCERS:
        assert make_balancer(name).name == name
    with pytest.raises(InvalidOption, match="round_robin"):
        make_balancer("fastest")


def test_round_robin_is_exactly_even():
    rr = RoundRobin()
    candidates = nodes(("c", 1), ("a", 1), ("b", 1))
    picks = [rr.choose(candidates).id for _ in range(9999)]
    assert Counter(picks) == {"a": 3333, "b": 3333, "c": 3333}
    assert picks[:6] == ["a", "b", "c", "a", "b", "c"]


def test_round_robin_continues_when_a_worker_joins_or_leaves():
    rr = RoundRobin()
    assert rr.choose(nodes(("a", 1), ("b", 1))).id == "a"
    assert rr.choose(nodes(("a", 1), ("c", 1))).id == "c"  # b left: the next after a
    assert rr.choose(nodes(("a", 1), ("c", 1))).id == "a"


def test_random_is_roughly_uniform_and_seeded():
    rb = RandomBalancer(random.Random(42))
    four = nodes(("a", 1), ("b", 1), ("c", 1), ("d", 1))
    counts = Counter(rb.choose(four).id for _ in range(10_000))
    assert set(counts) == {"a", "b", "c", "d"}
    for share in counts.values():
        assert 0.22 < share / 10_000 < 0.28
    first = RandomBalancer(random.Random(7))
    second = RandomBalancer(random.Random(7))
    assert [first.choose(four).id for _ in range(50)] == [second.choose(four).id for _ in range(50)]


def test_weighted_three_to_one_gives_75_percent():
    w = Weighted()
    candidates = nodes(("big", 3), ("small", 1))
    counts = Counter(w.choose(candidates).id for _ in range(10_000))
    assert abs(counts["big"] / 10_000 - 0.75) < 0.02
    # smooth: never more than 3 in a row for the heavy one, the light one is spread out
    seq = [w.choose(candidates).id for _ in range(40)]
    assert "small" in seq[:4]
    assert "small,small" not in ",".join(seq)


def test_weighted_fractional_and_many_weights():
    w = Weighted()
    candidates = nodes(("a", 0.5), ("b", 1.5), ("c", 2.0))
    counts = Counter(w.choose(candidates).id for _ in range(10_000))
    assert counts == {"a": 1250, "b": 3750, "c": 5000}


def test_least_load_prefers_free_slots_then_cpu_and_memory():
    ll = LeastLoad()
    busy = NodeView("busy", capacity=4, assigned=3)
    idle = NodeView("idle", capacity=4, assigned=0, cpu=90, memory=90)
    assert ll.choose([busy, idle]).id == "idle"  # slots dominate
    hot = NodeView("hot", capacity=4, assigned=1, cpu=95)
    cool = NodeView("cool", capacity=4, assigned=1, cpu=5)
    assert ll.choose([hot, cool]).id == "cool"  # equal slots: cpu decides
    assert load_score(NodeView("x", capacity=2, assigned=1, cpu=50, memory=20)) == pytest.approx(
        0.6 * 0.5 + 0.25 * 0.5 + 0.15 * 0.2
    )


def test_least_load_spreads_a_batch_when_the_caller_counts_assignments():
    ll = LeastLoad()
    candidates = [NodeView(i, capacity=10) for i in ("a", "b", "c")]
    for _ in range(9):
        pick = ll.choose(candidates)
        pick.assigned += 1
    assert [n.assigned for n in candidates] == [3, 3, 3]
