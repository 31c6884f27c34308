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
