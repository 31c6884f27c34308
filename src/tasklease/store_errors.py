"""Client and gRPC errors -> :mod:`tasklease.errors`: the one place that reads etcd's error text.

etcd tells some refusals apart only by their message (a missing lease, a
compacted revision, a wrong password, NOSPACE, a response over the receive
limit): :func:`wrap_error` and :func:`over_receive_limit` read it here, and
nowhere else. The store raises what :func:`wrap_error` returns with
``raise ... from exc``.

Imports: :mod:`tasklease.errors`; the etcd client and gRPC inside the
functions (so the package imports without gRPC loaded). Only ``store*.py``
modules import the etcd client.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

from tasklease.errors import (
    StoreAuthError,
    StoreAuthRequired,
    StoreCompacted,
    StoreError,
    StoreLeaseNotFound,
    StoreNoSpace,
    StoreRequestTooLarge,
    StoreUnavailable,
)
from tasklease.store_h2 import RpcError

if TYPE_CHECKING:
    from tasklease.store import StoreConfig


def wrap_error(exc: BaseException, what: str, config: StoreConfig) -> StoreError:
    """The :mod:`tasklease.errors` exception for ``exc``, raised by the request ``what``.

    Args:
        exc: What the client raised (an etcd3aio or gRPC error, a timeout...).
        what: The request, as messages name it (``"txn"``, ``"lease grant"``...).
        config: The connection (its endpoints and deadline are named in messages).
    """
    import etcd3aio
    import grpc

    endpoints = ",".join(config.endpoints)
    if isinstance(exc, etcd3aio.EtcdUnauthenticatedError | etcd3aio.EtcdPermissionDeniedError):
        return auth_error(f"etcd refused {what}: {exc}")
    if isinstance(exc, etcd3aio.EtcdConnectionError):
        return StoreUnavailable(f"cannot reach etcd at {endpoints} ({what}){tls_hint(str(exc))}")
    if isinstance(exc, etcd3aio.EtcdTransientError | TimeoutError):
        return StoreUnavailable(f"etcd at {endpoints} did not answer {what} within {config.timeout_s:g} s")
    if isinstance(exc, RpcError | grpc.aio.AioRpcError):  # store_h2's or the gRPC library's status
        return status_error(*rpc_status(exc), what, config)
    if isinstance(exc, etcd3aio.EtcdError):
        if "space exceeded" in str(exc) or "too large" in str(exc):
            return size_or_space(what, str(exc))
        return refused(f"etcd {what} failed: {exc}")
    return refused(f"etcd {what} failed: {type(exc).__name__}: {exc}")


def status_error(code: Any, details: str, what: str, config: StoreConfig) -> StoreError:
    """The error for a gRPC status ``code`` (a ``grpc.StatusCode``) with etcd's ``details``."""
    import grpc

    endpoints = ",".join(config.endpoints)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or any(
        m in details for m in AUTH_FAILURES
    ):
        return auth_error(f"etcd refused {what}: {details}")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED or "too large" in details:
        return size_or_space(what, details)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return StoreUnavailable(f"cannot reach etcd at {endpoints} ({what}){tls_hint(details)}")
    if code in (
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNIMPLEMENTED,
    ):
        return StoreUnavailable(f"{endpoints} did not answer {what} like etcd: {code.name} {details}")
    return refused(f"etcd {what} failed: {code.name} {details}")


@functools.cache
def _status_codes() -> dict[int, Any]:
    import grpc

    return {c.value[0]: c for c in grpc.StatusCode}


# Auth failures that etcd reports with other codes than UNAUTHENTICATED/PERMISSION_DENIED
# (a wrong user or password is INVALID_ARGUMENT), so etcd3aio passes them through raw.
AUTH_FAILURES = ("authentication failed", "user name is empty", "user name not found")


def auth_error(message: str) -> StoreAuthError:
    """An auth refusal; :class:`StoreAuthRequired` when etcd wanted a user and got none."""
    if "user name is empty" in message:
        return StoreAuthRequired(message)
    return StoreAuthError(message)


def refused(message: str) -> StoreError:
    """Any other refusal, typed by etcd's text for the cases callers handle.

    etcd tells these apart only by its message (a missing lease is NOT_FOUND
    "requested lease not found"; a compacted read is OUT_OF_RANGE "required
    revision has been compacted"), so this is the one place that reads it.
    """
    if "lease not found" in message:
        return StoreLeaseNotFound(message)
    if "compacted" in message:
        return StoreCompacted(message)
    return StoreError(message)


def size_or_space(what: str, details: str) -> StoreError:
    """Name a size refusal or etcd's NOSPACE alarm (both RESOURCE_EXHAUSTED or INVALID_ARGUMENT)."""
    low = details.lower()
    if "space exceeded" in low or "nospace" in low:
        return StoreNoSpace(
            f"etcd is out of space ({what} refused: {details}); compact and defragment etcd, "
            "disarm the NOSPACE alarm and purge old tasks (docs/operations.md)"
        )
    if "too many requests" in low:
        return StoreUnavailable(f"etcd is overloaded ({what}: {details}); try again")
    return StoreRequestTooLarge(f"etcd {what} too large: {details}")


def tls_hint(detail: str) -> str:
    """Say so when "cannot reach" was in fact a failed TLS handshake."""
    if "handshake" not in detail.lower():
        return ""
    reason = re.search(r"OPENSSL_internal:([A-Z0-9_]+)", detail)
    return (
        f": TLS handshake failed{f' ({reason.group(1)})' if reason else ''}; "
        "check the etcd CA file and the client certificate and key"
    )


def rpc_status(exc: Any) -> tuple[Any, str]:
    """The ``grpc.StatusCode`` and details of a gRPC error or a :class:`~tasklease.store_h2.RpcError`."""
    import grpc

    if isinstance(exc, RpcError):
        return _status_codes().get(exc.code, grpc.StatusCode.UNKNOWN), exc.details
    return exc.code(), exc.details() or ""


def over_receive_limit(code: Any, details: str) -> bool:
    """Whether a status (``rpc_status``) says a response was over the receive limit (``WatchTooLarge``)."""
    import grpc

    return bool(code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details)
