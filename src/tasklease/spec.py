"""What a submit asks for: :class:`TaskSpec`, validated when it is built.

Its own module so that whoever declares tasks (executors/base.py's
``Registry.task``, whose ``.spec()`` builds one) needs no client. May import
codec, errors, ids, keys, models, retry, routing; imported by the client's
submitter and by executors/base.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from tasklease import codec
from tasklease.errors import InvalidOption
from tasklease.ids import is_task_id
from tasklease.keys import check_name
from tasklease.models import (
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
    DEFAULT_TIMEOUT_S,
    JSON,
    check_depends_on,
    check_idempotency_key,
    check_parent_policy,
    check_priority,
    check_retention,
    check_timeout,
    check_trace,
    check_type,
)
from tasklease.retry import RetryPolicy
from tasklease.routing import Requires, check_requires


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What to run: everything a submit needs, validated on construction.

    Attributes:
        type: The executor name (task type).
        payload: JSON arguments.
        queue: Queue name.
        priority: 0 (low) .. 3 (urgent).
        timeout_s: Limit of one attempt.
        retry: Retry policy.
        task_id: An id to use instead of a new one (must be unused).
        retention_s: How long the record is kept once the task has finished
            (seconds; ``None``: 7 days, or the namespace's maximum retention
            if that is lower, see quotas.py).
        requires: Tags a worker must have (``{"zone": "eu"}``): only workers
            started with matching ``--tags`` run it.
        trace: Trace context to carry to the task's attempts, as a propagator's
            carrier (``{"traceparent": "00-..."}``): at most 8 entries of
            printable ASCII, 1 KiB in all. A hook that carries trace context
            (``tracing.TracingHook``) takes it as the parent of its submit span.
        depends_on: Task ids that must finish first (its parents): the task
            waits until they all succeeded (workflows.py). Unknown ids are refused.
        on_parent_failure: ``"cancel"`` (default: a failed or cancelled parent
            cancels it and its descendants) or ``"run"`` (it runs anyway once
            every parent finished).
        delay_s: Run no sooner than this many seconds after the submit.
        run_at: Run no sooner than this time (epoch seconds); with ``delay_s``
            the later of the two.
        expires_s: Discard the task if it has not started this many seconds
            after the submit (cancelled, the reason recorded).
        expires_at: Discard it if not started by this time (epoch seconds);
            with ``expires_s`` the earlier of the two.
        idempotency_key: A second submit with the same key returns the task
            the first created instead of a new one, while the key is held:
            until the task's record expires, or ``unique_for_s`` after the submit.
        unique_for_s: Hold the idempotency key this long instead.
    """

    type: str
    payload: JSON = None
    queue: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    task_id: str | None = None
    retention_s: float | None = None
    requires: Mapping[str, str] | Requires | None = None
    trace: Mapping[str, str] | None = None
    depends_on: Sequence[str] | None = None
    on_parent_failure: str = "cancel"
    delay_s: float | None = None
    run_at: float | None = None
    expires_s: float | None = None
    expires_at: float | None = None
    idempotency_key: str | None = None
    unique_for_s: float | None = None

    def __post_init__(self) -> None:
        check_type(self.type)  # [A-Za-z0-9_.:-]{1,128}: a new type is plain text
        if self.retention_s is not None:
            check_retention(self.retention_s)
        check_priority(self.priority)
        check_name(self.queue)
        check_timeout(self.timeout_s)
        codec.encode_json(self.payload)
        if self.task_id is not None and not is_task_id(self.task_id):
            # A new id must be canonical (upper case): it is stored as given.
            raise InvalidOption(f"bad task id {self.task_id!r}")
        check_requires(self.requires)
        check_trace(self.trace)
        if self.depends_on is not None:
            object.__setattr__(self, "depends_on", check_depends_on(list(self.depends_on)))
        check_parent_policy(self.on_parent_failure)
        for name in ("delay_s", "expires_s", "unique_for_s"):
            _check_seconds(getattr(self, name), name, positive=name != "delay_s")
        for name in ("run_at", "expires_at"):
            _check_time(getattr(self, name), name)
        if self.idempotency_key is not None:
            check_idempotency_key(self.idempotency_key)
        if self.unique_for_s is not None and self.idempotency_key is None:
            raise InvalidOption("unique_for needs an idempotency key")


MAX_DELAY_S = 366 * 24 * 3600.0
"""A delay, an expiry and ``unique_for`` are at most a year (and a day)."""


def _check_seconds(value: object, name: str, *, positive: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidOption(f"{name} must be a number of seconds, got {value!r:.60}")
    if value < 0 or (positive and value == 0) or value > MAX_DELAY_S:
        bound = "> 0" if positive else ">= 0"
        raise InvalidOption(f"{name} must be {bound} and <= {MAX_DELAY_S:g} s, got {value}")


def _check_time(value: object, name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e11:
        raise InvalidOption(f"{name} must be a time in epoch seconds, got {value!r:.60}")


def parse_time(value: object, name: str = "time") -> float:
    """Epoch seconds from a number or an ISO 8601 time with a zone (``2026-12-01T10:00:00Z``).

    Raises:
        InvalidOption: Anything else (a time without a zone is ambiguous: refused).
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        _check_time(value, name)
        return float(value)
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidOption(
                f"{name} must be an ISO 8601 time like 2026-12-01T10:00:00Z, got {value!r:.60}"
            ) from None
        if when.tzinfo is None:
            raise InvalidOption(
                f"{name} needs a time zone (e.g. 2026-12-01T10:00:00Z or +01:00), got {value!r:.60}"
            )
        return when.timestamp()
    raise InvalidOption(f"{name} must be an ISO 8601 time or epoch seconds, got {value!r:.60}")


# The JSON form of a submit (the REST API's body): key -> what it must be.
SPEC_KEYS: dict[str, str] = {
    "type": "a string",
    "payload": "any JSON value",
    "queue": "a string",
    "priority": "an integer 0..3",
    "timeout_s": "a number of seconds",
    "retries": "an integer >= 0",
    "backoff_s": "a number of seconds",
    "backoff_max_s": "a number of seconds",
    "max_losses": "an integer >= 1",
    "retention_s": "a number of seconds",
    "requires": "an object of string values",
    "task_id": "a task id",
    "trace": "an object of string values",
    "depends_on": "a list of task ids",
    "on_parent_failure": '"cancel" or "run"',
    "delay_s": "a number of seconds",
    "run_at": "an ISO 8601 time or epoch seconds",
    "expires_s": "a number of seconds",
    "expires_at": "an ISO 8601 time or epoch seconds",
    "idempotency_key": "a string",
    "unique_for_s": "a number of seconds",
}


def _get(d: Mapping[str, object], name: str, kinds: type | tuple[type, ...]) -> object:
    """``d[name]`` if present and of ``kinds`` (never a bool), else None if absent."""
    value = d.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise InvalidOption(f"{name} must be {SPEC_KEYS[name]}, got {value!r}"[:200])
    return value


def _int(d: Mapping[str, object], name: str, default: int) -> int:
    value = _get(d, name, int)
    return default if value is None else int(str(value))


def _num(d: Mapping[str, object], name: str, default: float | None) -> float | None:
    value = _get(d, name, (int, float))
    return default if value is None else float(str(value))


def _map(d: Mapping[str, object], name: str) -> Mapping[str, str] | None:
    value = _get(d, name, Mapping)
    if value is None:
        return None
    assert isinstance(value, Mapping)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidOption(f"{name} must be {SPEC_KEYS[name]}")
    return value


def spec_from_dict(d: object) -> TaskSpec:
    """Build a :class:`TaskSpec` from its JSON form (a submit over HTTP, a batch file).

    Keys: ``type`` (required), ``payload``, ``queue``, ``priority``,
    ``timeout_s``, ``retries``, ``backoff_s``, ``backoff_max_s``,
    ``max_losses``, ``retention_s``, ``requires``, ``task_id``, ``trace``,
    ``depends_on``, ``on_parent_failure``, ``delay_s``, ``run_at``,
    ``expires_s``, ``expires_at``, ``idempotency_key``, ``unique_for_s``.

    Raises:
        InvalidOption: Not an object, an unknown key, a value of the wrong type
            (one line naming the key), or any check of :class:`TaskSpec`.
    """
    if not isinstance(d, Mapping):
        raise InvalidOption("a task must be a JSON object")
    unknown = sorted(str(k) for k in d if k not in SPEC_KEYS)
    if unknown:
        raise InvalidOption(f"unknown task field(s): {', '.join(unknown)}"[:200])
    task_type = _get(d, "type", str)
    if task_type is None:
        raise InvalidOption("a task needs a type")
    queue = _get(d, "queue", str)
    task_id = _get(d, "task_id", str)
    defaults = RetryPolicy()
    retry = RetryPolicy(
        max_retries=_int(d, "retries", defaults.max_retries),
        backoff_s=_num(d, "backoff_s", defaults.backoff_s) or 0.0,
        backoff_max_s=_num(d, "backoff_max_s", defaults.backoff_max_s) or 0.0,
        max_losses=_int(d, "max_losses", defaults.max_losses),
    )
    payload: JSON = d.get("payload")  # checked by TaskSpec (codec.encode_json)
    return TaskSpec(
        type=str(task_type),
        payload=payload,
        queue=DEFAULT_QUEUE if queue is None else str(queue),
        priority=_int(d, "priority", DEFAULT_PRIORITY),
        timeout_s=_num(d, "timeout_s", DEFAULT_TIMEOUT_S) or 0.0,
        retry=retry,
        task_id=None if task_id is None else str(task_id),
        retention_s=_num(d, "retention_s", None),
        requires=_map(d, "requires"),
        trace=_map(d, "trace"),
        depends_on=_ids(d, "depends_on"),
        on_parent_failure=str(_get(d, "on_parent_failure", str) or "cancel"),
        delay_s=_num(d, "delay_s", None),
        run_at=None if d.get("run_at") is None else parse_time(d["run_at"], "run_at"),
        expires_s=_num(d, "expires_s", None),
        expires_at=None if d.get("expires_at") is None else parse_time(d["expires_at"], "expires_at"),
        idempotency_key=None if (key := _get(d, "idempotency_key", str)) is None else str(key),
        unique_for_s=_num(d, "unique_for_s", None),
    )


def _ids(d: Mapping[str, object], name: str) -> list[str] | None:
    value = _get(d, name, list)
    if value is None:
        return None
    assert isinstance(value, list)
    if not all(isinstance(v, str) for v in value):
        raise InvalidOption(f"{name} must be {SPEC_KEYS[name]}")
    return [str(v) for v in value]
