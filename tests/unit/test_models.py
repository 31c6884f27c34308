"""Task states, the transition table, validation and the ``decide`` function."""

import itertools
import random
from typing import cast

import pytest

from tasklease.errors import InvalidOption, InvalidPriority, InvalidQueueName, InvalidState, InvalidTransition
from tasklease.models import (
    FIRST_ATTEMPTS_KEPT,
    LAST_ATTEMPTS_KEPT,
    MAX_ERROR_BYTES,
    MAX_TIMEOUT_S,
    TERMINAL_STATES,
    TRANSITIONS,
    Attempt,
    Outcome,
    Task,
    TaskState,
    can_transition,
    decide,
    transition,
    truncate_error,
)
from tasklease.retry import RetryPolicy

S = TaskState
ALLOWED = {
    (S.WAITING, S.WAITING),  # a priority change (the deps key stays)
    (S.WAITING, S.PENDING),  # released, but its delay has not passed
    (S.WAITING, S.QUEUED),  # released: its parents finished
    (S.WAITING, S.CANCELLED),  # a parent failed or was cancelled (or it was)
    (S.WAITING, S.FAILED),  # no transaction can carry it any more
    (S.PENDING, S.PENDING),  # a priority change (the delayed key stays)
    (S.PENDING, S.QUEUED),
    (S.PENDING, S.CANCELLED),
    (S.PENDING, S.FAILED),  # no transaction can carry it any more (scheduler records why)
    (S.QUEUED, S.QUEUED),
    (S.QUEUED, S.FAILED),
    (S.QUEUED, S.RUNNING),
    (S.QUEUED, S.CANCELLED),
    (S.RUNNING, S.SUCCEEDED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.QUEUED),
    (S.RUNNING, S.PENDING),
    (S.RUNNING, S.CANCELLED),
}
ALL_PAIRS = list(itertools.product(TaskState, TaskState))
FORBIDDEN = [p for p in ALL_PAIRS if p not in ALLOWED]
NOW = 1_700_000_000.0
TASK_ID = "01HZZZZZZZZZZZZZZZZZZZZZZZ"


def make_task(*outcomes, retry=None, state=TaskState.RUNNING):
    """A task whose attempts ended with ``outcomes``, oldest first."""
    attempts = tuple(
        Attempt(
            number=n,
            worker=f"w{n}",
            started_at=NOW + n,
            finished_at=NOW + n + 0.5,
            outcome=outcome,
            error="boom" if outcome in (Outcome.FAILED, Outcome.TIMEOUT) else None,
        )
        for n, outcome in enumerate(outcomes, start=1)
    )
    return Task(
        id=TASK_ID, type="t", payload={}, retry=retry or RetryPolicy(), state=state, attempts=attempts
    )


def run_decide(task, outcome, *, permanent=False, seed=0):
    return decide(task, outcome, permanent=permanent, now=NOW, rng=random.Random(seed))


# transition table -----------------------------------------------------------------------


def test_table_covers_every_state():
    # Given / When / Then every state has a row, and only known states appear
    assert set(TRANSITIONS) == set(TaskState)
    assert all(dst in TaskState for dsts in TRANSITIONS.values() for dst in dsts)


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_terminal_states_have_no_exits(state):
    # Given a terminal state
    # When / Then nothing leaves it
    assert state.terminal
    assert TRANSITIONS[state] == frozenset()
    assert not any(can_transition(state, dst) for dst in TaskState)


@pytest.mark.parametrize("state", [S.PENDING, S.QUEUED, S.RUNNING])
def test_non_terminal_states_have_exits_including_cancel(state):
    # Given a live state
    # When / Then it is not terminal and it can be cancelled
    assert not state.terminal
    assert can_transition(state, S.CANCELLED)


@pytest.mark.parametrize(("src", "dst"), ALL_PAIRS)
def test_can_transition_matches_the_expected_table(src, dst):
    # Given a pair of states
    # When / Then it is allowed exactly when the documented table says so
    assert can_transition(src, dst) == ((src, dst) in ALLOWED)


@pytest.mark.parametrize(("src", "dst"), sorted(ALLOWED))
def test_transition_applies_an_allowed_move(src, dst):
    # Given a task in src
    task = make_task(state=src)

    # When it moves to dst with a change
    moved = transition(task, dst, now=NOW + 5, error="why")

    # Then it has the new state, time and change, and the original is untouched
    assert (moved.state, moved.updated_at, moved.error) == (dst, NOW + 5, "why")
    assert task.state is src


@pytest.mark.parametrize(("src", "dst"), FORBIDDEN)
def test_transition_raises_for_a_forbidden_move(src, dst):
    # Given a task in src
    task = make_task(state=src)

    # When / Then moving it to dst raises, naming the task, state and action
    with pytest.raises(InvalidTransition) as info:
        transition(task, dst, now=NOW)
    assert (info.value.task_id, info.value.state) == (TASK_ID, src.value)
    assert dst.value in info.value.action


# state names ----------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(TaskState))
def test_parse_accepts_every_state_name(state):
    # Given / When / Then a state's own name parses back to it
    assert TaskState.parse(state.value) is state


def test_parse_unknown_name_raises_invalid_state_listing_valid_names():
    # Given an unknown name
    # When it is parsed
    with pytest.raises(InvalidState) as info:
        TaskState.parse("finished")

    # Then the error names it and every valid state
    message = str(info.value)
    assert "finished" in message
    assert all(state.value in message for state in TaskState)


# decide ---------------------------------------------------------------------------------


def test_success_succeeds():
    # Given a task whose attempt succeeded
    task = make_task(Outcome.SUCCEEDED)

    # When / Then it is succeeded, with no backoff
    assert run_decide(task, Outcome.SUCCEEDED).state is S.SUCCEEDED
    assert run_decide(task, Outcome.SUCCEEDED).not_before is None


def test_cancelled_attempt_cancels():
    # Given / When / Then a cancelled attempt cancels the task
    assert run_decide(make_task(Outcome.CANCELLED), Outcome.CANCELLED).state is S.CANCELLED


def test_handed_back_requeues_without_using_a_retry():
    # Given a task handed back twice, with no retries and one loss allowed
    task = make_task(Outcome.HANDED_BACK, Outcome.HANDED_BACK, retry=RetryPolicy(max_retries=0, max_losses=1))

    # When the last hand-back is decided
    decision = run_decide(task, Outcome.HANDED_BACK)

    # Then it is queued again at once
    assert decision.state is S.QUEUED
    assert decision.not_before is None


@pytest.mark.parametrize("losses", [1, 2])
def test_lost_under_max_losses_requeues(losses):
    # Given a task lost fewer times than max_losses
    task = make_task(*[Outcome.LOST] * losses, retry=RetryPolicy(max_losses=3))

    # When / Then it goes back to its queue at once
    decision = run_decide(task, Outcome.LOST)
    assert decision.state is S.QUEUED
    assert decision.not_before is None


@pytest.mark.parametrize("max_losses", [1, 3])
def test_lost_at_max_losses_fails(max_losses):
    # Given a task lost max_losses times
    task = make_task(*[Outcome.LOST] * max_losses, retry=RetryPolicy(max_losses=max_losses))

    # When / Then it fails instead of looping
    assert run_decide(task, Outcome.LOST).state is S.FAILED


def test_losses_and_failures_are_counted_separately():
    # Given two failures (retries left) and one loss (losses left)
    policy = RetryPolicy(max_retries=5, backoff_s=0, max_losses=2)
    task = make_task(Outcome.FAILED, Outcome.FAILED, Outcome.LOST, retry=policy)

    # When / Then the loss requeues: failures do not count as losses
    assert run_decide(task, Outcome.LOST).state is S.QUEUED


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.TIMEOUT])
def test_failure_with_retries_left_and_no_backoff_requeues(outcome):
    # Given a policy with retries and a zero backoff
    task = make_task(outcome, retry=RetryPolicy(max_retries=2, backoff_s=0))

    # When the attempt fails or times out
    decision = run_decide(task, outcome)

    # Then the task is queued again at once
    assert decision.state is S.QUEUED
    assert decision.not_before is None


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.TIMEOUT])
@pytest.mark.parametrize("failures", [1, 2, 3])
def test_failure_with_retries_left_and_backoff_waits_in_pending(outcome, failures):
    # Given a policy with a 2 s backoff doubling per retry and 50 % jitter
    policy = RetryPolicy(max_retries=3, backoff_s=2.0, backoff_max_s=100.0, jitter=0.5)
    task = make_task(*[outcome] * failures, retry=policy)

    # When the n-th attempt fails
    decision = run_decide(task, outcome, seed=failures)

    # Then it waits in pending until now + a delay within the jitter bounds
    full_delay = 2.0 * 2 ** (failures - 1)
    assert decision.state is S.PENDING
    assert decision.not_before is not None
    assert NOW + full_delay * 0.5 <= decision.not_before <= NOW + full_delay


def test_failure_backoff_without_jitter_is_exact():
    # Given a policy without jitter and two failures so far
    policy = RetryPolicy(max_retries=3, backoff_s=1.5, jitter=0)
    task = make_task(Outcome.FAILED, Outcome.FAILED, retry=policy)

    # When / Then the second retry waits exactly 2 * 1.5 s
    assert run_decide(task, Outcome.FAILED).not_before == NOW + 3.0


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.TIMEOUT])
@pytest.mark.parametrize("max_retries", [0, 2])
def test_failure_with_retries_exhausted_fails(outcome, max_retries):
    # Given a task that failed once more than max_retries allows
    task = make_task(*[outcome] * (max_retries + 1), retry=RetryPolicy(max_retries=max_retries))

    # When / Then it fails for good
    decision = run_decide(task, outcome)
    assert decision.state is S.FAILED
    assert decision.not_before is None


def test_timeouts_and_failures_share_the_retry_budget():
    # Given one failure and one timeout, with one retry allowed
    task = make_task(Outcome.FAILED, Outcome.TIMEOUT, retry=RetryPolicy(max_retries=1))

    # When / Then the timeout used up the budget
    assert run_decide(task, Outcome.TIMEOUT).state is S.FAILED


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.TIMEOUT])
def test_permanent_failure_fails_at_once(outcome):
    # Given a task with plenty of retries left
    task = make_task(outcome, retry=RetryPolicy(max_retries=10))

    # When the attempt failed permanently
    decision = run_decide(task, outcome, permanent=True)

    # Then it fails without a retry
    assert decision.state is S.FAILED


@pytest.mark.parametrize("max_retries", [0, 1, 4])
def test_a_task_that_always_fails_runs_max_retries_plus_one_times(max_retries):
    # Given a task whose every attempt fails
    task = make_task(retry=RetryPolicy(max_retries=max_retries, backoff_s=0))
    runs = 0

    # When attempts run until decide stops retrying
    while True:
        runs += 1
        task = make_task(*[Outcome.FAILED] * runs, retry=task.retry)
        if run_decide(task, Outcome.FAILED).state is S.FAILED:
            break

    # Then it ran once plus once per retry
    assert runs == max_retries + 1


# task counters ----------------------------------------------------------------------------


def test_failures_losses_and_current_attempt():
    # Given a history of mixed outcomes
    task = make_task(Outcome.FAILED, Outcome.LOST, Outcome.TIMEOUT, Outcome.HANDED_BACK, Outcome.LOST)

    # When / Then failures count failed + timeout, losses count lost
    assert (task.failures, task.losses) == (2, 2)
    assert task.current_attempt is not None
    assert task.current_attempt.number == 5
    assert make_task().current_attempt is None


# validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", [7, 4, -1, True, False, "1", 1.0, None])
def test_bad_priority_raises_invalid_priority(priority):
    # Given / When / Then a priority that is not an int in 0..3 is refused
    with pytest.raises(InvalidPriority):
        Task(id=TASK_ID, type="t", payload=None, priority=priority)


@pytest.mark.parametrize("priority", [0, 1, 2, 3])
def test_priorities_zero_to_three_are_accepted(priority):
    # Given / When / Then each valid priority builds a task
    assert Task(id=TASK_ID, type="t", payload=None, priority=priority).priority == priority


@pytest.mark.parametrize(
    "timeout_s",
    [0, -1, "x", None, True, float("nan"), float("inf"), MAX_TIMEOUT_S + 1],
)
def test_bad_timeout_raises_invalid_option(timeout_s):
    # Given / When / Then a timeout outside (0, 7 days] is refused
    with pytest.raises(InvalidOption):
        Task(id=TASK_ID, type="t", payload=None, timeout_s=timeout_s)


@pytest.mark.parametrize("timeout_s", [0.001, 1, MAX_TIMEOUT_S])
def test_timeouts_within_range_are_accepted(timeout_s):
    # Given / When / Then a timeout in (0, 7 days] builds a task
    assert Task(id=TASK_ID, type="t", payload=None, timeout_s=timeout_s).timeout_s == timeout_s


@pytest.mark.parametrize("task_type", ["", "x" * 129, None, 5])
def test_bad_task_type_raises_invalid_option(task_type):
    # Given / When / Then a type that is not a string of 1..128 characters is refused
    with pytest.raises(InvalidOption):
        Task(id=TASK_ID, type=task_type, payload=None)


def test_bad_queue_raises_invalid_queue_name():
    # Given / When / Then a bad queue name is refused
    with pytest.raises(InvalidQueueName):
        Task(id=TASK_ID, type="t", payload=None, queue="a/b")


def test_truncate_error_bounds_long_messages():
    # Given a short and a long message
    short, long = "x" * MAX_ERROR_BYTES, "y" * (MAX_ERROR_BYTES * 3)

    # When they are truncated
    kept, cut = truncate_error(short), truncate_error(long)

    # Then the short one is unchanged and the long one fits and says so
    assert kept == short
    assert len(cut.encode()) <= MAX_ERROR_BYTES
    assert cut.endswith(f"[truncated: {MAX_ERROR_BYTES * 3} bytes in all]")


def test_truncate_error_counts_utf8_bytes_and_keeps_characters_whole():
    # Given a message of 4-byte characters: 4,096 characters are 16 KiB
    text = "\U0001f600" * MAX_ERROR_BYTES

    # When it is truncated
    cut = truncate_error(text)

    # Then it fits in bytes and is still valid text (no half character)
    assert len(cut.encode("utf-8")) <= MAX_ERROR_BYTES
    assert cut.startswith("\U0001f600" * 100)
    assert "truncated" in cut


def test_errors_are_bounded_wherever_a_record_is_built():
    # Given attempts and a task built with huge error texts (e.g. from a worker or a cancel reason)
    huge = "e" * 100_000
    attempt = Attempt(1, "w", 1.0, 2.0, Outcome.FAILED, huge)
    task = Task(id="01ARZ3NDEKTSV4RRFFQ69G5FAV", type="t", payload=None, error=huge, attempts=(attempt,))

    # Then both are cut to the limit
    assert len(cast(str, task.error).encode()) <= MAX_ERROR_BYTES
    assert len(cast(str, task.attempts[0].error).encode()) <= MAX_ERROR_BYTES


def test_attempts_keep_first_and_last_and_count_the_rest():
    # Given a task with 100 attempts: failures, losses and hand-backs mixed
    outcomes = [Outcome.FAILED, Outcome.LOST, Outcome.HANDED_BACK, Outcome.TIMEOUT]
    attempts = tuple(Attempt(n, "w", float(n), float(n), outcomes[n % 4], "boom") for n in range(1, 101))
    full_failures = sum(1 for a in attempts if a.outcome in (Outcome.FAILED, Outcome.TIMEOUT))
    full_losses = sum(1 for a in attempts if a.outcome is Outcome.LOST)

    # When the record is built
    task = Task(id="01ARZ3NDEKTSV4RRFFQ69G5FAV", type="t", payload=None, attempts=attempts)

    # Then it keeps the first and last attempts, and the counts that decide() uses are unchanged
    kept = [a.number for a in task.attempts]
    assert kept == [*range(1, FIRST_ATTEMPTS_KEPT + 1), *range(101 - LAST_ATTEMPTS_KEPT, 101)]
    assert task.dropped.attempts == 100 - FIRST_ATTEMPTS_KEPT - LAST_ATTEMPTS_KEPT
    assert task.failures == full_failures
    assert task.losses == full_losses
    assert task.next_attempt_number == 101

    # And trimming again (one more attempt) keeps counting
    more = Task(
        id=task.id,
        type="t",
        payload=None,
        attempts=(*task.attempts, Attempt(101, "w", 1.0, 2.0, Outcome.FAILED, "x")),
        dropped=task.dropped,
    )
    assert more.dropped.attempts == task.dropped.attempts + 1
    assert more.failures == full_failures + 1


def test_default_scheduler_ids_are_unique_and_valid_names():
    import re

    from tasklease.scheduler import SchedulerConfig, default_scheduler_id

    ids = {default_scheduler_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"sched-[A-Za-z0-9_.-]+-\d+-[0-9a-f]{16}", i) and len(i) <= 64 for i in ids)
    assert SchedulerConfig().scheduler_id.startswith("sched-")


@pytest.mark.parametrize("grace", [float("nan"), float("inf"), -1.0])
def test_scheduler_config_refuses_a_grace_that_is_not_a_finite_number(grace):
    from tasklease.scheduler import SchedulerConfig

    with pytest.raises(InvalidOption, match="deadline grace"):
        SchedulerConfig(deadline_grace_s=grace)
