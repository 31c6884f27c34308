"""The public surface: ``tasklease.__all__`` changes only on purpose."""

import importlib

import pytest

import tasklease

EXPECTED = {
    "Limit",
    "Schedule",
    "ScheduleExists",
    "ScheduleNotFound",
    "Workflow",
    "WorkflowBuilder",
    "WorkflowNotFound",
    "WorkflowStatus",
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
    "__version__",
}


def test_all_is_exactly_the_expected_surface():
    # Given the package's declared public names
    declared = tasklease.__all__

    # When / Then they are the expected set, each listed once
    # (update EXPECTED deliberately when the public API changes)
    assert set(declared) == EXPECTED
    assert len(declared) == len(set(declared))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_public_name_is_importable(name):
    # Given a fresh import of the package
    module = importlib.import_module("tasklease")

    # When / Then the name is an attribute of it
    assert getattr(module, name) is not None


def test_star_import_gives_exactly_the_public_names():
    # Given an empty namespace
    namespace: dict = {}

    # When everything is star-imported
    exec("from tasklease import *", namespace)

    # Then exactly the public names arrive
    assert set(namespace) - {"__builtins__"} == EXPECTED


def test_every_exported_exception_derives_from_the_base_error():
    # Given the exported exception classes
    objects = [getattr(tasklease, name) for name in EXPECTED]
    errors = [o for o in objects if isinstance(o, type) and issubclass(o, BaseException)]

    # When / Then there are some, and one ``except TaskleaseError`` catches them all
    assert errors
    assert all(issubclass(e, tasklease.TaskleaseError) for e in errors)


def test_version_matches_the_distribution():
    # Given / When / Then the module version is the installed package version
    from importlib.metadata import version

    assert tasklease.__version__ == version("tasklease")
