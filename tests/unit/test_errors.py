"""The exception tree: one module, errors told apart by type, the public task exceptions."""

import math

import pytest

import tasklease
from tasklease import errors
from tasklease.store import _auth_error, _refused


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("tasklease.quotas", "QuotaExceeded"),
        ("tasklease.election", "DuplicateCandidate"),
        ("tasklease.worker", "WorkerIdInUse"),
        ("tasklease.ids", "MalformedTaskId"),
        ("tasklease.executors.base", "PermanentError"),
        ("tasklease.executors.base", "TaskError"),
    ],
)
def test_a_moved_exception_is_the_same_class_at_its_old_import_path(module, name):
    # Given a module an exception used to live in
    import importlib

    old = importlib.import_module(module)

    # When / Then the name there is the class defined in errors.py
    assert getattr(old, name) is getattr(errors, name)
    assert getattr(errors, name).__module__ == "tasklease.errors"


def test_the_tree_in_the_docstring_names_every_exception_class():
    # Given every exception class errors.py defines
    classes = [
        name
        for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == "tasklease.errors"
    ]

    # When / Then each is drawn in the module docstring's tree
    assert classes
    missing = [
        name for name in classes if f" {name} " not in errors.__doc__ and f" {name}\n" not in errors.__doc__
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("cls", "base"),
    [
        (errors.StoreLeaseNotFound, errors.StoreError),
        (errors.StoreCompacted, errors.StoreError),
        (errors.StoreAuthRequired, errors.StoreAuthError),
        (errors.QuotaExceeded, errors.ValidationError),
        (errors.DuplicateCandidate, errors.InvalidOption),
        (errors.WorkerIdInUse, errors.InvalidOption),
        (errors.WorkerIdInUse, errors.ConflictError),
        (errors.MalformedTaskId, errors.TaskNotFound),
        (errors.PermanentError, errors.TaskError),
        (errors.Retry, errors.TaskError),
        (errors.TaskError, errors.TaskleaseError),
    ],
)
def test_new_and_moved_errors_are_caught_by_the_handlers_that_caught_them_before(cls, base):
    # Given / When / Then `except base` still catches them
    assert issubclass(cls, base)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("etcd txn failed: NOT_FOUND etcdserver: requested lease not found", errors.StoreLeaseNotFound),
        (
            "etcd lease revoke failed: NOT_FOUND etcdserver: requested lease not found",
            errors.StoreLeaseNotFound,
        ),
        (
            "etcd range failed: OUT_OF_RANGE etcdserver: mvcc: required revision has been compacted",
            errors.StoreCompacted,
        ),
        (
            "etcd txn failed: INVALID_ARGUMENT etcdserver: duplicate key given in txn request",
            errors.StoreError,
        ),
    ],
)
def test_the_store_types_a_refusal_by_etcds_text_in_one_place(message, expected):
    # Given an etcd refusal's message
    # When the store wraps it
    error = _refused(message)

    # Then its type says what happened, and the message is kept
    assert type(error) is expected
    assert str(error) == message


def test_an_auth_refusal_without_a_user_is_told_apart_by_type():
    # Given / When / Then
    assert type(_auth_error("etcd refused range: etcdserver: user name is empty")) is errors.StoreAuthRequired
    assert type(_auth_error("etcd refused range: etcdserver: authentication failed")) is errors.StoreAuthError


def test_retry_carries_its_delay_and_a_default_message():
    # Given / When task code asks for a retry in 30 s
    err = tasklease.Retry(after=30)

    # Then the delay is kept as seconds, and the message names it
    assert err.after == 30.0
    assert "30" in str(err)
    assert str(tasklease.Retry("rate limited", after=0)) == "rate limited"
    assert isinstance(err, tasklease.TaskleaseError)


@pytest.mark.parametrize("after", [-1, math.inf, math.nan, True, "30", None])
def test_retry_rejects_a_delay_that_is_not_a_finite_number_of_seconds(after):
    # Given / When / Then
    with pytest.raises(errors.InvalidOption, match="after"):
        tasklease.Retry(after=after)


def test_permanent_error_is_public():
    # Given / When / Then task code imports it from the package
    assert tasklease.PermanentError is errors.PermanentError
