"""RetryPolicy validation and the pure backoff function (seeded randomness)."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasklease.errors import InvalidOption
from tasklease.retry import MAX_LOSSES_LIMIT, MAX_RETRIES_LIMIT, RetryPolicy, compute_backoff


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"max_retries": MAX_RETRIES_LIMIT + 1},
        {"max_retries": 1.5},
        {"max_retries": "3"},
        {"max_retries": None},
        {"max_losses": 0},
        {"max_losses": MAX_LOSSES_LIMIT + 1},
        {"max_losses": 2.0},
        {"backoff_s": -0.1},
        {"backoff_s": float("nan")},
        {"backoff_s": 10.0, "backoff_max_s": 5.0},
        {"backoff_max_s": float("nan")},
        {"jitter": -0.1},
        {"jitter": 1.01},
        {"jitter": float("nan")},
    ],
    ids=repr,
)
def test_invalid_policy_raises_invalid_option(kwargs):
    # Given / When / Then an option out of its range is refused on construction
    with pytest.raises(InvalidOption):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"max_retries": 0},
        {"max_retries": MAX_RETRIES_LIMIT},
        {"max_losses": 1},
        {"max_losses": MAX_LOSSES_LIMIT},
        {"backoff_s": 0, "backoff_max_s": 0},
        {"backoff_s": 5, "backoff_max_s": 5},
        {"jitter": 0},
        {"jitter": 1},
    ],
    ids=repr,
)
def test_boundary_policies_are_accepted(kwargs):
    # Given / When a policy at the edge of each range is built
    policy = RetryPolicy(**kwargs)

    # Then it keeps the given values
    assert all(getattr(policy, name) == value for name, value in kwargs.items())


@pytest.mark.parametrize("field", ["max_retries", "max_losses"])
def test_bool_counts_are_refused(field):
    # Given / When / Then True is not a count (check_priority refuses bools too)
    with pytest.raises(InvalidOption):
        RetryPolicy(**{field: True})


@pytest.mark.parametrize("kwargs", [{"backoff_s": "1"}, {"backoff_max_s": None}, {"jitter": "0.1"}], ids=repr)
def test_non_numeric_durations_raise_invalid_option(kwargs):
    # Given / When / Then a non-number is a validation error, not a TypeError
    with pytest.raises(InvalidOption):
        RetryPolicy(**kwargs)


def test_backoff_without_jitter_doubles_exactly():
    # Given a 0.5 s backoff, no jitter, a high cap
    policy = RetryPolicy(backoff_s=0.5, backoff_max_s=1000.0, jitter=0)
    rng = random.Random(1)

    # When the first eight delays are computed
    delays = [compute_backoff(policy, n, rng) for n in range(1, 9)]

    # Then each is backoff_s * 2**(n-1)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]


def test_backoff_is_capped_at_backoff_max():
    # Given a 1 s backoff capped at 10 s
    policy = RetryPolicy(backoff_s=1.0, backoff_max_s=10.0, jitter=0)
    rng = random.Random(1)

    # When late retries are computed (including very large retry numbers)
    delays = [compute_backoff(policy, n, rng) for n in (4, 5, 6, 100, 10_000)]

    # Then they grow to the cap and stay there, without overflowing
    assert delays == [8.0, 10.0, 10.0, 10.0, 10.0]


@given(
    seed=st.integers(min_value=0, max_value=2**32),
    retry_number=st.integers(min_value=1, max_value=200),
    jitter=st.floats(min_value=0, max_value=1),
    backoff_s=st.floats(min_value=0, max_value=1000),
)
def test_jittered_delay_stays_within_bounds(seed, retry_number, jitter, backoff_s):
    # Given any valid policy and a seeded rng
    policy = RetryPolicy(backoff_s=backoff_s, backoff_max_s=backoff_s * 10, jitter=jitter)
    full = min(policy.backoff_max_s, backoff_s * 2.0 ** min(retry_number - 1, 62))

    # When a delay is computed
    delay = compute_backoff(policy, retry_number, random.Random(seed))

    # Then it lies in [(1 - jitter) * d, d] for the capped delay d
    assert (1 - jitter) * full * (1 - 1e-12) <= delay <= full * (1 + 1e-12)


def test_jitter_varies_the_delay_within_the_range():
    # Given a 50 % jitter on a fixed 8 s delay
    policy = RetryPolicy(backoff_s=8.0, backoff_max_s=8.0, jitter=0.5)
    rng = random.Random(7)

    # When many delays are drawn
    delays = [compute_backoff(policy, 1, rng) for _ in range(200)]

    # Then they spread over [4, 8] instead of sitting on one value
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert max(delays) - min(delays) > 2.0


def test_full_jitter_can_reach_near_zero():
    # Given full jitter
    policy = RetryPolicy(backoff_s=8.0, backoff_max_s=8.0, jitter=1.0)
    rng = random.Random(3)

    # When many delays are drawn
    delays = [compute_backoff(policy, 1, rng) for _ in range(200)]

    # Then they use the whole range [0, 8]
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert min(delays) < 1.0


def test_same_seed_gives_same_delays():
    # Given a jittered policy and two rngs with the same seed
    policy = RetryPolicy(backoff_s=1.0, backoff_max_s=60.0, jitter=0.3)

    # When delays are drawn from each
    first = [compute_backoff(policy, n, random.Random(42)) for n in range(1, 10)]
    second = [compute_backoff(policy, n, random.Random(42)) for n in range(1, 10)]
    other = [compute_backoff(policy, n, random.Random(43)) for n in range(1, 10)]

    # Then the same seed repeats them and another seed does not
    assert first == second
    assert first != other


def test_zero_backoff_is_zero_even_with_jitter():
    # Given a zero backoff with jitter
    policy = RetryPolicy(backoff_s=0, backoff_max_s=0, jitter=1.0)

    # When / Then every delay is exactly 0 (the task is requeued at once)
    assert compute_backoff(policy, 3, random.Random(0)) == 0


@pytest.mark.parametrize("retry_number", [0, -1])
def test_retry_number_starts_at_one(retry_number):
    # Given / When / Then retry number 0 or less is refused
    with pytest.raises(InvalidOption):
        compute_backoff(RetryPolicy(), retry_number, random.Random(0))
