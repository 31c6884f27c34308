"""Tasks, attempts, states and the one function that decides what comes next.

States and the transitions allowed between them (``TRANSITIONS``)::

    waiting ──► pending / queued          (its parents finished: released)
       └──────► cancelled / failed        (a parent failed, or cancelled)

    pending ──► queued ──► running ──► succeeded
       │  ▲        │  ▲        │ └────► failed
       │  │        │  └────────┤        (retries or losses used up, or permanent)
       │  └────────┼───────────┤        (retry after a backoff: waits in pending)
       ▼           ▼           ▼
    cancelled ◄────┴───────────┘

``waiting`` is a task whose parents (``depends_on``) have not all finished;
``pending`` is a task that may not run yet (a delayed submit, or a retry backoff);
``queued`` is in a queue; ``running`` is assigned to a worker. A waiting
(pending or queued) task also goes straight to ``failed`` when no transaction
can carry it any more (its record is over the limit of the next state, e.g. a
record from an older version): the scheduler records why instead of looping. ``succeeded``,
``failed`` and ``cancelled`` are terminal. Every transition is one etcd
transaction (docs/architecture.md).
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from tasklease.errors import InvalidOption, InvalidPriority, InvalidState, InvalidTransition
from tasklease.keys import MAX_PRIORITY, check_name
from tasklease.retry import RetryPolicy, compute_backoff
from tasklease.routing import Requires, check_requires, route

JSON = Any
"""A value that ``json`` can encode: dict, list, str, int, float, bool or None."""

TraceContext = tuple[tuple[str, str], ...]
"""Trace context as ``(key, value)`` pairs in the order given (a propagator's carrier)."""

SCHEMA_VERSION = 1
DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY = 1
DEFAULT_TIMEOUT_S = 300.0
MAX_TIMEOUT_S = 7 * 24 * 3600.0
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
MAX_RETENTION_S = 366 * 24 * 3600.0
MAX_ERROR_BYTES = 4096
"""An error text (per attempt, and the task's) is cut to this many UTF-8 bytes."""
FIRST_ATTEMPTS_KEPT = 3
LAST_ATTEMPTS_KEPT = 20
"""A record keeps its first 3 and last 20 attempts; those between are counted, not kept."""


class TaskState(enum.StrEnum):
    """Where a task is in its life."""

    WAITING = "waiting"
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Whether no transition leaves this state."""
        return self in TERMINAL_STATES

    @classmethod
    def parse(cls, name: str) -> TaskState:
        """Return the state called ``name``.

        Raises:
            InvalidState: For an unknown name.
        """
        try:
            return cls(name)
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise InvalidState(f"unknown state {name!r}: expected one of {names}") from None


TERMINAL_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})

TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    # waiting -> waiting is a priority change (the deps key stays).
    TaskState.WAITING: frozenset(
        {TaskState.WAITING, TaskState.PENDING, TaskState.QUEUED, TaskState.CANCELLED, TaskState.FAILED}
    ),
    # pending -> pending is a priority change (the delayed key stays).
    TaskState.PENDING: frozenset(
        {TaskState.PENDING, TaskState.QUEUED, TaskState.CANCELLED, TaskState.FAILED}
    ),
    # queued -> queued is a priority change (the queue key moves).
    TaskState.QUEUED: frozenset({TaskState.QUEUED, TaskState.RUNNING, TaskState.CANCELLED, TaskState.FAILED}),
    TaskState.RUNNING: frozenset(
        {
            TaskState.SUCCEEDED,
            TaskState.FAILED,
            TaskState.QUEUED,
            TaskState.PENDING,
            TaskState.CANCELLED,
        }
    ),
    TaskState.SUCCEEDED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.CANCELLED: frozenset(),
}


def can_transition(src: TaskState, dst: TaskState) -> bool:
    """Whether the table allows ``src -> dst``."""
    return dst in TRANSITIONS[src]


class Outcome(enum.StrEnum):
    """How one attempt ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    LOST = "lost"
    """The worker vanished (crash, lease expiry) before it reported."""
    CANCELLED = "cancelled"
    HANDED_BACK = "handed_back"
    """The worker shut down before finishing and returned the task to its queue."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One run of a task on one worker.

    Attributes:
        number: 1 for the first attempt.
        worker: The worker id (as ``tasklease nodes`` shows it).
        started_at: When it was assigned (epoch seconds).
        finished_at: When it ended, if it has.
        outcome: How it ended, if it has.
        error: The error message of a failed attempt.
    """

    number: int
    worker: str
    started_at: float
    finished_at: float | None = None
    outcome: Outcome | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.error is not None and len(self.error) > MAX_ERROR_BYTES // 4:
            object.__setattr__(self, "error", truncate_error(self.error))


@dataclass(frozen=True, slots=True)
class Dropped:
    """The attempts a record no longer keeps (between its first and last ones), counted.

    Attributes:
        attempts: How many attempts were dropped.
        failures: How many of them failed or timed out (they still count against
            ``max_retries``).
        losses: How many were lost with their worker (they count against ``max_losses``).
    """

    attempts: int = 0
    failures: int = 0
    losses: int = 0


MAX_RERUNS_KEPT = 20
"""A record names at most this many tasks that ran it again (the newest)."""


@dataclass(frozen=True, slots=True)
class Task:
    """A task record, as stored at ``/{ns}/task/{id}``.

    Attributes:
        id: Sortable unique id.
        type: The executor name that runs it.
        payload: JSON arguments.
        queue: The queue it waits in.
        priority: 0 (low) .. 3 (urgent).
        timeout_s: Wall-clock limit of one attempt.
        retry: Retry and loss policy.
        state: Current state.
        seq: Queue sequence (FIFO order within a priority) while queued.
        created_at: Submit time.
        updated_at: Time of the last transition.
        not_before: Earliest time a pending task may be queued (backoff).
        attempts: The attempts, oldest first: the first 3 and the last 20
            (``FIRST_ATTEMPTS_KEPT``, ``LAST_ATTEMPTS_KEPT``); those between are
            counted in ``dropped``, so a record's size stays bounded however
            often a task is retried, lost or handed back.
        result: The JSON result of the successful attempt.
        error: The error of the last failed attempt, or why it was cancelled.
        retention_s: How long the record is kept once the task is finished.
        dropped: The attempts no longer kept, counted.
        requires: Tags a worker must have to run it (sorted ``(key, value)`` pairs).
        trace: Trace context carried from the submit to each attempt (e.g. a W3C
            ``traceparent``), as ``(key, value)`` pairs bounded by :func:`bound_trace`;
            empty unless a hook or the submit gave one (see tracing.py).
        rerun_of: The task this one runs again (``Client.run_again``), if any.
        reruns: The tasks that run this one again, oldest first (the last
            ``MAX_RERUNS_KEPT``).
        depends_on: The tasks that must finish before this one is queued (its
            parents, workflows.py); a task with parents starts ``waiting``.
        on_parent_failure: What a failed or cancelled parent does to it:
            ``"cancel"`` (the default: cancelled, and its descendants with it)
            or ``"run"`` (released all the same once every parent finished).
        workflow: The workflow (DAG) it was submitted in, if any.
        expires_at: A task not started by then is discarded (cancelled with
            the reason recorded); epoch seconds.
        idempotency_key: Its submit's idempotency key: a second submit with
            the same key returns this task (while the key is held).
        unique_until: When its idempotency key is released if earlier than
            when its record expires (``unique_for``); epoch seconds.
        schedule: The cron schedule that fired it, if any (schedules.py).
        tick: The schedule's tick it was fired for (epoch seconds).
        payload_omitted: Decoded from an index value that leaves the payload
            out (a queue key's value, docs/architecture.md): ``payload`` is
            None there, not the task's; such a task is never written as a record.
    """

    id: str
    type: str
    payload: JSON
    queue: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    state: TaskState = TaskState.QUEUED
    seq: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    not_before: float | None = None
    attempts: tuple[Attempt, ...] = ()
    result: JSON = None
    error: str | None = None
    retention_s: float = DEFAULT_RETENTION_S
    dropped: Dropped = field(default_factory=Dropped)
    requires: Requires = ()
    trace: TraceContext = ()
    rerun_of: str | None = None
    reruns: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    on_parent_failure: str = "cancel"
    workflow: str | None = None
    expires_at: float | None = None
    idempotency_key: str | None = None
    unique_until: float | None = None
    schedule: str | None = None
    tick: float | None = None
    payload_omitted: bool = False

    def __post_init__(self) -> None:
        if len(self.reruns) > MAX_RERUNS_KEPT:
            object.__setattr__(self, "reruns", tuple(self.reruns[-MAX_RERUNS_KEPT:]))
        if len(self.attempts) > FIRST_ATTEMPTS_KEPT + LAST_ATTEMPTS_KEPT:
            _trim_attempts(self)
        if self.error is not None and len(self.error) > MAX_ERROR_BYTES // 4:
            object.__setattr__(self, "error", truncate_error(self.error))
        check_retention(self.retention_s)
        check_priority(self.priority)
        check_name(self.queue)
        check_timeout(self.timeout_s)
        if self.requires:
            object.__setattr__(self, "requires", check_requires(self.requires))
        # Only the length here: a record stored before the character set was
        # enforced must still decode. New types are checked by check_type.
        if not isinstance(self.type, str) or not 1 <= len(self.type) <= MAX_TYPE_LENGTH:
            raise InvalidOption("task type must be a string of 1 to 128 characters")

    @property
    def current_attempt(self) -> Attempt | None:
        """The last attempt, if any."""
        return self.attempts[-1] if self.attempts else None

    @property
    def route(self) -> str:
        """Its route: type and required tags (the last part of its queue key)."""
        return route(self.type, self.requires)

    @property
    def next_attempt_number(self) -> int:
        """The number the next attempt gets (dropped attempts included)."""
        return self.attempts[-1].number + 1 if self.attempts else 1

    @property
    def failures(self) -> int:
        """Attempts that failed or timed out (dropped ones included)."""
        kept = sum(1 for a in self.attempts if a.outcome in (Outcome.FAILED, Outcome.TIMEOUT))
        return kept + self.dropped.failures

    @property
    def losses(self) -> int:
        """Attempts lost with their worker (dropped ones included)."""
        return sum(1 for a in self.attempts if a.outcome is Outcome.LOST) + self.dropped.losses


def _trim_attempts(task: Task) -> None:
    """Keep the first and last attempts of ``task``; count the others in ``task.dropped``."""
    attempts = task.attempts
    middle = attempts[FIRST_ATTEMPTS_KEPT : len(attempts) - LAST_ATTEMPTS_KEPT]
    d = task.dropped
    dropped = Dropped(
        attempts=d.attempts + len(middle),
        failures=d.failures + sum(1 for a in middle if a.outcome in (Outcome.FAILED, Outcome.TIMEOUT)),
        losses=d.losses + sum(1 for a in middle if a.outcome is Outcome.LOST),
    )
    object.__setattr__(
        task, "attempts", attempts[:FIRST_ATTEMPTS_KEPT] + attempts[len(attempts) - LAST_ATTEMPTS_KEPT :]
    )
    object.__setattr__(task, "dropped", dropped)


MAX_TRACE_ENTRIES = 8
MAX_TRACE_BYTES = 1024
"""A record carries at most 8 trace entries of 1 KiB in all (a ``traceparent`` is 55 bytes)."""
_TRACE_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TRACE_VALUE_RE = re.compile(r"[\x20-\x7e]{1,512}")


def bound_trace(carrier: object) -> TraceContext:
    """The well-formed entries of a trace carrier, in order, as many as fit.

    Trace context is untrusted input (a hook's output, a record read from
    etcd): only a mapping of string keys ``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`` to
    printable-ASCII values of 1 to 512 characters is kept, at most
    ``MAX_TRACE_ENTRIES`` entries and ``MAX_TRACE_BYTES`` of keys and values
    in all. Entries that are malformed or do not fit are dropped (a long
    ``baggage`` rather than the ``traceparent`` before it); anything but a
    mapping gives ``()``. Never raises.
    """
    if not isinstance(carrier, Mapping) or not carrier:
        return ()
    kept: list[tuple[str, str]] = []
    budget = MAX_TRACE_BYTES
    for key, value in carrier.items():
        if len(kept) == MAX_TRACE_ENTRIES:
            break
        if not (isinstance(key, str) and isinstance(value, str)):
            continue
        size = len(key) + len(value)
        if size > budget or _TRACE_KEY_RE.fullmatch(key) is None or _TRACE_VALUE_RE.fullmatch(value) is None:
            continue
        kept.append((key, value))
        budget -= size
    return tuple(kept)


def check_trace(carrier: Mapping[str, str] | None) -> TraceContext:
    """Validate trace context given with a submit (``TaskSpec.trace``).

    Returns:
        Its entries, as :func:`bound_trace` keeps them.

    Raises:
        InvalidOption: If :func:`bound_trace` would drop any of it.
    """
    if carrier is None:
        return ()
    kept = bound_trace(carrier)
    if not isinstance(carrier, Mapping) or len(kept) != len(carrier):
        raise InvalidOption(
            f"trace context must map at most {MAX_TRACE_ENTRIES} keys [A-Za-z0-9_.-] to printable"
            f" ASCII values, {MAX_TRACE_BYTES} bytes in all"
        )
    return kept


TYPE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
"""The characters a task type may use (checked at submit and at registration)."""
MAX_TYPE_LENGTH = 128


def check_type(task_type: object) -> str:
    """Validate a new task type (at submit and when a task function is registered).

    Task types are ``[A-Za-z0-9_.:-]{1,128}``: no spaces, no control or
    non-ASCII characters, so a type printed to a terminal or a log is always
    plain text. Records decoded from etcd are not checked against this (one
    stored by an older version still reads); only the length is.

    Returns:
        The type unchanged.

    Raises:
        InvalidOption: For anything else (the message shows the type escaped).
    """
    if not isinstance(task_type, str) or TYPE_RE.fullmatch(task_type) is None:
        shown = ascii(task_type)[:140]
        raise InvalidOption(f"invalid task type {shown}: use 1 to 128 characters from [A-Za-z0-9_.:-]")
    return task_type


def check_priority(priority: object) -> int:
    """Validate a priority.

    Raises:
        InvalidPriority: Unless it is an int in 0..3.
    """
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidPriority(f"priority must be an integer 0..{MAX_PRIORITY}, got {priority!r}")
    if not 0 <= priority <= MAX_PRIORITY:
        raise InvalidPriority(f"priority {priority} outside 0 (low) .. {MAX_PRIORITY} (urgent)")
    return priority


def check_timeout(timeout_s: object) -> float:
    """Validate a per-attempt timeout.

    Raises:
        InvalidOption: Unless it is a number in (0, 7 days].
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        raise InvalidOption(f"timeout must be a number of seconds, got {timeout_s!r}")
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise InvalidOption(f"timeout must be > 0 and <= {MAX_TIMEOUT_S:g} s, got {timeout_s}")
    return float(timeout_s)


def check_retention(retention_s: object) -> float:
    """Validate how long a finished task is kept.

    Raises:
        InvalidOption: Unless it is a number of seconds in [1, 366 days].
    """
    if isinstance(retention_s, bool) or not isinstance(retention_s, int | float):
        raise InvalidOption(f"retention must be a number of seconds, got {retention_s!r}")
    if not 1 <= retention_s <= MAX_RETENTION_S:
        raise InvalidOption(f"retention must be >= 1 s and <= {MAX_RETENTION_S:g} s, got {retention_s}")
    return float(retention_s)


MAX_PARENTS = 1000
"""A task depends on at most this many parents (its record and its deps key name them all)."""
PARENT_POLICIES = ("cancel", "run")
MAX_IDEMPOTENCY_KEY_CHARS = 512


def check_depends_on(parents: object) -> tuple[str, ...]:
    """Validate a task's parents: distinct task ids, at most ``MAX_PARENTS``.

    Raises:
        InvalidOption: Not a list of task ids, a duplicate, or too many.
    """
    from tasklease.ids import is_task_id

    if parents is None:
        return ()
    if isinstance(parents, str) or not isinstance(parents, list | tuple):
        raise InvalidOption(f"depends_on must be a list of task ids, got {parents!r:.80}")
    if len(parents) > MAX_PARENTS:
        raise InvalidOption(f"a task depends on at most {MAX_PARENTS} tasks, got {len(parents)}")
    for parent in parents:
        if not is_task_id(parent):
            raise InvalidOption(f"bad task id in depends_on: {parent!r:.80}")
    if len(set(parents)) != len(parents):
        raise InvalidOption("depends_on names the same task twice")
    return tuple(parents)


def check_parent_policy(policy: object) -> str:
    """Validate ``on_parent_failure``: ``"cancel"`` or ``"run"``.

    Raises:
        InvalidOption: Anything else.
    """
    if policy not in PARENT_POLICIES:
        raise InvalidOption(
            f"on_parent_failure must be one of {', '.join(PARENT_POLICIES)}, got {policy!r:.80}"
        )
    return str(policy)


def check_idempotency_key(key: object) -> str:
    """Validate an idempotency key: 1 to 512 characters, no control characters.

    Raises:
        InvalidOption: Anything else.
    """
    if (
        not isinstance(key, str)
        or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_CHARS
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key)
    ):
        raise InvalidOption(
            f"idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters without control characters"
        )
    return key


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to a task after an attempt ends.

    Attributes:
        state: The next state.
        not_before: For ``pending``: when it may be queued again.
    """

    state: TaskState
    not_before: float | None = None


def decide(
    task: Task,
    outcome: Outcome,
    *,
    permanent: bool,
    now: float,
    rng: random.Random,
    retry_after: float | None = None,
) -> Decision:
    """The one pure function for "what happens next" after an attempt.

    ``task.attempts`` must already hold the finished attempt with ``outcome``.

    Args:
        task: The task, including the attempt that just ended.
        outcome: How that attempt ended.
        permanent: The error cannot be cured by retrying (unknown task type,
            non-retryable error): fail at once.
        now: Current time (for the backoff deadline).
        rng: Randomness for jitter.
        retry_after: The task asked to be retried after this many seconds
            (``tasklease.Retry``): that delay replaces the policy's backoff; the
            attempt still counts against ``max_retries``.

    Returns:
        The next state, with ``not_before`` when a retry must wait.
    """
    policy = task.retry
    match outcome:
        case Outcome.SUCCEEDED:
            return Decision(TaskState.SUCCEEDED)
        case Outcome.CANCELLED:
            return Decision(TaskState.CANCELLED)
        case Outcome.HANDED_BACK:
            return Decision(TaskState.QUEUED)
        case Outcome.LOST:
            if task.losses >= policy.max_losses:
                return Decision(TaskState.FAILED)
            return Decision(TaskState.QUEUED)
        case Outcome.FAILED | Outcome.TIMEOUT:
            # The n-th failure asks for retry number n.
            retry_number = task.failures
            if permanent or retry_number > policy.max_retries:
                return Decision(TaskState.FAILED)
            delay = compute_backoff(policy, retry_number, rng) if retry_after is None else retry_after
            if delay <= 0:
                return Decision(TaskState.QUEUED)
            return Decision(TaskState.PENDING, not_before=now + delay)
    raise AssertionError(f"unhandled outcome {outcome}")  # pragma: no cover


def evolve(obj: _T, **changes: Any) -> _T:
    """``dataclasses.replace`` without its per-call field introspection (hot path).

    The new object is built through ``__init__``, so ``__post_init__`` validation runs.
    """
    names = _FIELDS.get(type(obj))
    if names is None:
        names = _FIELDS[type(obj)] = tuple(f.name for f in fields(obj))  # type: ignore[arg-type]
    kwargs = {name: getattr(obj, name) for name in names}
    kwargs.update(changes)
    return type(obj)(**kwargs)


_FIELDS: dict[type, tuple[str, ...]] = {}
_T = TypeVar("_T")


def transition(task: Task, state: TaskState, *, now: float, **changes: Any) -> Task:
    """Return ``task`` moved to ``state``, checked against the table.

    Raises:
        InvalidTransition: If the table does not allow it.
    """
    if not can_transition(task.state, state):
        raise InvalidTransition(task.id, task.state.value, f"move to {state.value}")
    return evolve(task, state=state, updated_at=now, **changes)


_TRUNCATED = " ... [truncated: {} bytes in all]"


def truncate_error(message: str) -> str:
    """Bound an error message to ``MAX_ERROR_BYTES`` of UTF-8, with a marker saying so."""
    if len(message) <= MAX_ERROR_BYTES // 4:
        return message
    data = message.encode("utf-8", "replace")
    if len(data) <= MAX_ERROR_BYTES:
        return message
    marker = _TRUNCATED.format(len(data))
    cut = data[: MAX_ERROR_BYTES - len(marker)].decode("utf-8", "ignore")
    return cut + marker
