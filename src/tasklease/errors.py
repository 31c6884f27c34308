"""The whole tasklease exception tree.

::

    TaskleaseError
    ├── ValidationError            bad input from a user; nothing was written (CLI exit 2)
    │   ├── InvalidPriority
    │   ├── InvalidQueueName
    │   ├── InvalidPayload         not JSON, or JSON of the wrong shape
    │   ├── PayloadTooLarge
    │   ├── InvalidState
    │   ├── QuotaExceeded          a submit over one of the namespace's quotas
    │   └── InvalidOption          timeouts, retries, batch sizes, ...
    │       ├── DuplicateCandidate another live scheduler has this scheduler id
    │       ├── ScheduleExists     a cron schedule with this name exists
    │       └── WorkerIdInUse      another live worker has this worker id
    │                              (also a ConflictError)
    ├── TaskNotFound               no such task id (CLI exit 2)
    │   ├── MalformedTaskId        text that cannot be a task id
    │   └── WorkflowNotFound       no such workflow (nor a task of one)
    ├── WorkerNotFound             no live worker with this id (CLI exit 2)
    ├── ScheduleNotFound           no cron schedule with this name (CLI exit 2)
    ├── InvalidTransition          e.g. cancel a finished task (CLI exit 2)
    ├── ConflictError              a compare failed too often: someone else kept
    │                              changing the same keys
    ├── CorruptRecord              a value under our prefix that we cannot decode
    ├── EtcdBinaryNotFound         no etcd server binary on this machine
    ├── EtcdStartError             the local etcd did not become healthy
    ├── StoreError                 etcd failed a request (CLI exit 1)
    │   ├── StoreUnavailable       cannot reach etcd / request timed out
    │   ├── StoreAuthError         bad credentials or no permission
    │   │   └── StoreAuthRequired  etcd has auth on and no user was given
    │   ├── StoreRequestTooLarge   a request or response over a size limit
    │   ├── StoreNoSpace           etcd's NOSPACE alarm: writes refused
    │   ├── StoreLeaseNotFound     the request names a lease etcd does not have
    │   │                          (expired or revoked)
    │   ├── StoreCompacted         a read at a revision etcd has compacted away
    │   ├── BatchIncomplete        a split batch failed after some parts were written
    │   └── WatchCompacted         a watch's start revision was compacted: re-read
    │       └── WatchTooLarge      a watch response over the receive limit
    ├── WaitTimeout                wait() gave up before the task finished
    ├── TaskFailed                 raised by result(): the task ended unsuccessfully
    └── TaskError                  raised by task code (or an executor): a failed
        │                          attempt, retried per the task's policy
        ├── PermanentError         retrying cannot help: the task fails at once
        └── Retry                  retry after a given delay (``Retry(after=30)``)

Errors raised by the etcd client are wrapped at the store boundary with
``raise ... from exc``; nothing outside ``store.py`` sees a gRPC exception, and
nothing outside ``store.py`` reads an error's text to tell errors apart: the store
raises a distinct type (``StoreLeaseNotFound``, ``StoreCompacted``, ...) for each
case a caller handles.

Task code raises :class:`PermanentError` (do not retry) or :class:`Retry` (retry
after a delay); both are exported from ``tasklease``.
"""

from __future__ import annotations

import math
from typing import Any


class TaskleaseError(Exception):
    """Base class of every error tasklease raises on purpose."""


class ValidationError(TaskleaseError, ValueError):
    """Input was rejected before anything was written."""


class InvalidPriority(ValidationError):
    """A priority outside 0..3."""


class InvalidQueueName(ValidationError):
    """A queue name outside ``[A-Za-z0-9_.-]{1,64}``."""


class InvalidPayload(ValidationError):
    """A payload or result that is not JSON (or not the JSON we need)."""


class PayloadTooLarge(ValidationError):
    """A payload or encoded record larger than the documented limit.

    Attributes:
        size: The size in bytes that was rejected.
        limit: The limit in bytes.
    """

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class InvalidState(ValidationError):
    """An unknown task state name."""


class InvalidOption(ValidationError):
    """Any other option out of its range."""


class QuotaExceeded(ValidationError):
    """A submit is over one of the namespace's quotas; nothing was written.

    Attributes:
        limit: Which limit: ``max_queued``, ``max_queued_bytes`` or ``max_retention_s``.
        allowed: The limit's value.
        usage: What the namespace holds now (waiting tasks or bytes; for
            retention, the retention asked for).
        adding: What the submit would add (0 for retention).
    """

    def __init__(self, message: str, *, limit: str, allowed: float, usage: float, adding: float) -> None:
        super().__init__(message)
        self.limit = limit
        self.allowed = allowed
        self.usage = usage
        self.adding = adding


class TaskNotFound(TaskleaseError, LookupError):
    """No task with this id exists (it never did, or it expired).

    Attributes:
        task_id: The id that was looked up.
    """

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} not found")
        self.task_id = task_id


class WorkerNotFound(TaskleaseError, LookupError):
    """No live worker with this id (it never registered, or it is gone).

    Attributes:
        worker_id: The id that was looked up.
    """

    def __init__(self, worker_id: str) -> None:
        super().__init__(f"no live worker {worker_id!r}")
        self.worker_id = worker_id


class ScheduleNotFound(TaskleaseError, LookupError):
    """No cron schedule with this name (schedules.py).

    Attributes:
        name: The name that was looked up.
    """

    def __init__(self, name: str) -> None:
        super().__init__(f"no schedule {name!r}")
        self.name = name


class MalformedTaskId(TaskNotFound):
    """Text that cannot be a task id (a :class:`TaskNotFound`: no task has it)."""

    def __init__(self, text: str) -> None:
        from tasklease.ids import ID_LENGTH  # ids.py imports this module

        super().__init__(text)
        self.args = (f"malformed task id {text!r}: a task id is {ID_LENGTH} characters of Crockford base32",)


class WorkflowNotFound(TaskNotFound):
    """No workflow with this id, and no task of a workflow with this id (workflows.py).

    Attributes:
        task_id: The id that was looked up.
    """

    def __init__(self, workflow_id: str) -> None:
        super().__init__(workflow_id)
        self.args = (f"workflow {workflow_id!r} not found (nor a task of a workflow with this id)",)


class InvalidTransition(TaskleaseError):
    """The task's current state does not allow the requested change.

    Attributes:
        task_id: The task.
        state: Its current state name.
        action: What was asked.
    """

    def __init__(self, task_id: str, state: str, action: str) -> None:
        super().__init__(f"cannot {action} task {task_id}: it is {state}")
        self.task_id = task_id
        self.state = state
        self.action = action


class ConflictError(TaskleaseError):
    """A transaction's compare kept failing because others changed the same keys."""


class DuplicateCandidate(InvalidOption):
    """Another live process is registered with this scheduler id.

    Attributes:
        candidate: The id.
        holder: What the other process registered (host, pid, ttl), if readable.
    """

    def __init__(self, candidate: str, holder: dict[str, object]) -> None:
        where = ", ".join(f"{k} {holder[k]}" for k in ("host", "pid") if k in holder)
        super().__init__(
            f"another scheduler is running with id {candidate!r}{f' ({where})' if where else ''}: "
            "give each scheduler its own --id (or leave --id out for a unique one)"
        )
        self.candidate = candidate
        self.holder = holder


class ScheduleExists(InvalidOption):
    """A cron schedule with this name exists (add it with ``replace`` to change it).

    Attributes:
        name: The name.
    """

    def __init__(self, name: str) -> None:
        super().__init__(f"schedule {name!r} exists: remove it first, or replace it (--replace)")
        self.name = name


class WorkerIdInUse(InvalidOption, ConflictError):
    """Another live worker is registered under this worker id.

    Raised by :meth:`Worker.start <tasklease.worker.Worker.start>` (the command
    line exits 2 with this one-line message). A registration left by a worker
    that crashed is waited for (up to its lease TTL and a margin), so a restart
    right after a crash succeeds.
    """


class CorruptRecord(TaskleaseError):
    """A value under our namespace could not be decoded.

    Attributes:
        key: The etcd key that holds it.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"corrupt record at {key}: {reason}")
        self.key = key


class EtcdBinaryNotFound(TaskleaseError):
    """No etcd server binary was found."""


class EtcdStartError(TaskleaseError):
    """A local etcd process failed to start or become healthy."""


class StoreError(TaskleaseError):
    """etcd failed a request."""


class StoreUnavailable(StoreError):
    """etcd could not be reached, or did not answer in time."""


class StoreAuthError(StoreError):
    """etcd refused our credentials or our permissions."""


class StoreAuthRequired(StoreAuthError):
    """etcd has authentication on and the request named no user ("user name is empty")."""


class StoreRequestTooLarge(StoreError):
    """A request or a response is over a size limit (etcd's or gRPC's).

    Never retried unchanged: the caller must send less (split the batch, read
    a smaller page) or give up on the item.
    """


class StoreNoSpace(StoreError):
    """etcd is out of space (its NOSPACE alarm): it refuses writes until an operator frees room.

    Remedy: compact and defragment etcd, disarm the alarm, and purge old tasks
    (docs/operations.md).
    """


class StoreLeaseNotFound(StoreError):
    """etcd does not have the lease a request names (it expired or was revoked).

    Raised by a write under a lease (``put``, ``txn``), a keep-alive or a
    revoke; nothing was written.
    """


class StoreCompacted(StoreError):
    """A read asked for a revision etcd has compacted away: read again at a newer revision.

    (A watch that starts at a compacted revision raises :class:`WatchCompacted`.)
    """


class BatchIncomplete(StoreError):
    """A batch too large for one transaction failed part-way.

    Attributes:
        written: The tasks that were committed before the failure.
    """

    def __init__(self, written: list[Any], reason: str) -> None:
        super().__init__(f"batch incomplete: {len(written)} tasks were written before it failed: {reason}")
        self.written = written


class WatchCompacted(StoreError):
    """A watch asked for history etcd has compacted away; re-read, then watch again."""


class WatchTooLarge(WatchCompacted):
    """A watch response (a catch-up of many revisions) was over the receive limit.

    Handled like :class:`WatchCompacted`: re-read the range, then watch again
    from the read's revision (a fresh watch has no backlog to catch up).
    """


class WaitTimeout(TaskleaseError, TimeoutError):
    """A wait for a task's terminal state gave up.

    Attributes:
        task_id: The task waited for.
        timeout_s: How long we waited.
    """

    def __init__(self, task_id: str, timeout_s: float) -> None:
        super().__init__(f"task {task_id} did not finish within {timeout_s:g} s")
        self.task_id = task_id
        self.timeout_s = timeout_s


class TaskFailed(TaskleaseError):
    """The task reached a terminal state other than ``succeeded``.

    Attributes:
        task_id: The task.
        state: Its terminal state name.
        error: The last recorded error, if any.
    """

    def __init__(self, task_id: str, state: str, error: str | None) -> None:
        detail = f": {error}" if error else ""
        super().__init__(f"task {task_id} ended {state}{detail}")
        self.task_id = task_id
        self.state = state
        self.error = error


class TaskError(TaskleaseError):
    """Raised by task code (or an executor) for a failed attempt; retried per policy."""


class PermanentError(TaskError):
    """A failure that retrying cannot cure: the task fails at once.

    Raise it from task code when another attempt would fail the same way (bad
    input, a missing file); the task ends ``failed`` whatever retries are left.
    """


class Retry(TaskError):
    """Raised by task code to ask for another attempt after a given delay.

    ``raise Retry(after=30)`` asks for the next attempt no sooner than 30
    seconds from now (for example when a remote service said "try later"),
    instead of the task's backoff. It is a failed attempt like any other
    :class:`TaskError`: it counts against the task's retries.

    Args:
        message: Why (recorded as the attempt's error); defaults to one that
            names the delay.
        after: Seconds to wait before the next attempt: finite and >= 0.

    Attributes:
        after: The delay in seconds.

    Raises:
        InvalidOption: ``after`` is negative, not finite, or not a number (an
            :class:`InvalidOption` is a ``ValueError``).
    """

    def __init__(self, message: str | None = None, *, after: float) -> None:
        if (
            isinstance(after, bool)
            or not isinstance(after, int | float)
            or not math.isfinite(after)
            or after < 0
        ):
            raise InvalidOption(f"Retry(after={after!r}): after must be a finite number of seconds >= 0")
        super().__init__(message if message is not None else f"retry requested after {after:g} s")
        self.after = float(after)
