"""What a submit asks for: :class:`TaskSpec`, validated when it is built.

Its own module so that whoever declares tasks (executors/base.py's
``Registry.task``, whose ``.spec()`` builds one) needs no client. May import
codec, errors, ids, keys, models, retry, routing; imported by the client's
submitter and by executors/base.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tasklease import codec
from tasklease.errors import InvalidOption
from tasklease.ids import is_task_id
from tasklease.keys import check_name
from tasklease.models import (
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
    DEFAULT_TIMEOUT_S,
    JSON,
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
    ``max_losses``, ``retention_s``, ``requires``, ``task_id``, ``trace``.

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
    )
