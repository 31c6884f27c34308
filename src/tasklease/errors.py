"""The whole tasklease exception tree.

::

    TaskleaseError
    ├── ValidationError            bad input from a user; nothing was written (CLI exit 2)
    │   ├── InvalidPriority
    │   ├── InvalidQueueName
    │   ├── InvalidPayload         not JSON, or JSON of the wrong shape
    │   ├── PayloadTooLarge
    │   ├── InvalidState
    │   └── InvalidOption          timeouts, retries, batch sizes, ...
    ├── TaskNotFound               no such task id (CLI exit 2)
    ├── InvalidTransition          e.g. cancel a finished task (CLI exit 2)
    ├── ConflictError              a compare failed too often: someone else kept
    │                              changing the same keys
    ├── CorruptRecord              a value under our prefix that we cannot decode
    ├── EtcdBinaryNotFound         no etcd server binary on this machine
    ├── EtcdStartError             the local etcd did not become healthy
    ├── StoreError                 etcd failed a request (CLI exit 1)
    │   ├── StoreUnavailable       cannot reach etcd / request timed out
    │   ├── StoreAuthError         bad credentials or no permission
    │   ├── BatchIncomplete        a split batch failed after some parts were written
    │   └── WatchCompacted         a watch's start revision was compacted: re-read
    ├── WaitTimeout                wait() gave up before the task finished
    └── TaskFailed                 raised by result(): the task ended unsuccessfully

Errors raised by the etcd client are wrapped at the store boundary with
``raise ... from exc``; nothing outside ``store.py`` sees a gRPC exception.
"""

from __future__ import annotations

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


class TaskNotFound(TaskleaseError, LookupError):
    """No task with this id exists (it never did, or it expired).

    Attributes:
        task_id: The id that was looked up.
    """

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} not found")
        self.task_id = task_id


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
