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
)
from tasklease.keys import Keyspace
from tasklease.models import Attempt, Outcome, Task, TaskState
from tasklease.purge import PurgeResult
from tasklease.quotas import Quota
from tasklease.retry import RetryPolicy
from tasklease.stats import Stats
from tasklease.store import StoreConfig
from tasklease.version import __version__

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
    "Outcome",
    "PayloadTooLarge",
    "PermanentError",
    "PurgeResult",
    "Quota",
    "QuotaExceeded",
    "Retry",
    "RetryPolicy",
    "Stats",
    "StoreAuthError",
    "StoreConfig",
    "StoreError",
    "StoreNoSpace",
    "StoreRequestTooLarge",
    "StoreUnavailable",
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
    "__version__",
]
