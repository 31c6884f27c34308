"""tasklease: a distributed task scheduler for Python, coordinated by etcd."""

from tasklease.client import BatchResult, Client, SubmitResult, SyncClient, TaskSpec
from tasklease.errors import (
    BatchIncomplete,
    ConflictError,
    CorruptRecord,
    InvalidOption,
    InvalidPayload,
    InvalidPriority,
    InvalidQueueName,
    InvalidState,
    InvalidTransition,
    PayloadTooLarge,
    PermanentError,
    QuotaExceeded,
    Retry,
    ScheduleExists,
    ScheduleNotFound,
    StoreAuthError,
    StoreError,
    StoreNoSpace,
    StoreRequestTooLarge,
    StoreUnavailable,
    TaskFailed,
    TaskleaseError,
    TaskNotFound,
    ValidationError,
    WaitTimeout,
    WorkerNotFound,
    WorkflowNotFound,
)
from tasklease.keys import Keyspace
from tasklease.limits import Limit
from tasklease.models import Attempt, Outcome, Task, TaskState
from tasklease.purge import PurgeResult
from tasklease.quotas import Quota
from tasklease.retry import RetryPolicy
from tasklease.schedules import Schedule
from tasklease.sending import SubmitFuture
from tasklease.stats import Stats
from tasklease.store import StoreConfig
from tasklease.version import __version__
from tasklease.workflows import Workflow, WorkflowBuilder, WorkflowStatus

__all__ = [
    "Attempt",
    "BatchIncomplete",
    "BatchResult",
    "Client",
    "ConflictError",
    "CorruptRecord",
    "InvalidOption",
    "InvalidPayload",
    "InvalidPriority",
    "InvalidQueueName",
    "InvalidState",
    "InvalidTransition",
    "Keyspace",
    "Limit",
    "Outcome",
    "PayloadTooLarge",
    "PermanentError",
    "PurgeResult",
    "Quota",
    "QuotaExceeded",
    "Retry",
    "RetryPolicy",
    "Schedule",
    "ScheduleExists",
    "ScheduleNotFound",
    "Stats",
    "StoreAuthError",
    "StoreConfig",
    "StoreError",
    "StoreNoSpace",
    "StoreRequestTooLarge",
    "StoreUnavailable",
    "SubmitFuture",
    "SubmitResult",
    "SyncClient",
    "Task",
    "TaskFailed",
    "TaskNotFound",
    "TaskSpec",
    "TaskState",
    "TaskleaseError",
    "ValidationError",
    "WaitTimeout",
    "WorkerNotFound",
    "Workflow",
    "WorkflowBuilder",
    "WorkflowNotFound",
    "WorkflowStatus",
    "__version__",
]
