"""The values the store speaks in, and etcd's limits: no etcd client here.

Owns :class:`KV`, :class:`Compare`, :class:`Put`, :class:`Delete`, :class:`Get`
(``Op``), :class:`TxnResult`, :class:`Event`, :class:`RangeResult`, etcd's
request limits and the channel's receive limit, :func:`txn_size` (an upper
bound of a transaction's request size) and :func:`check_txn_size`; and the
observer seam: :class:`StoreObserver` (what a ``Store`` reports of its requests
and watches, e.g. to metrics.py) and :func:`error_kind`. Everything
above the store imports these names from :mod:`tasklease.store`, which
re-exports them; the ``store_*`` helpers import them from here.

Imports: :mod:`tasklease.errors` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from tasklease.errors import (
    StoreAuthError,
    StoreCompacted,
    StoreLeaseNotFound,
    StoreNoSpace,
    StoreRequestTooLarge,
    StoreUnavailable,
    WatchCompacted,
)

# etcd's default --max-txn-ops: each of compare/success/failure may hold this many.
MAX_TXN_OPS = 128
# etcd's default --max-request-bytes is 1.5 MiB; stay below with a margin.
MAX_REQUEST_BYTES = 1_572_864
MAX_TXN_BYTES = 1_400_000
# What the channel accepts in one message (gRPC's default is 4 MiB). A read is
# paged to store_paging.READ_BUDGET_BYTES, so only a watch catch-up can come near this.
MAX_RECEIVE_BYTES = 128 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class KV:
    """One key as etcd returned it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Compare:
    """A transaction guard: ``target(key) op value``.

    ``target`` is ``create`` (create revision, 0 = absent), ``mod`` (mod
    revision), ``version`` (0 = absent) or ``value``.
    """

    key: str
    target: Literal["create", "mod", "version", "value"]
    op: Literal["=", "!=", "<", ">"]
    value: int | bytes

    @classmethod
    def absent(cls, key: str) -> Compare:
        """The key does not exist."""
        return cls(key, "create", "=", 0)

    @classmethod
    def exists(cls, key: str) -> Compare:
        """The key exists."""
        return cls(key, "create", ">", 0)

    @classmethod
    def unchanged(cls, kv: KV) -> Compare:
        """The key is exactly as ``kv`` was read (same mod revision)."""
        return cls(kv.key, "mod", "=", kv.mod_revision)

    @classmethod
    def created_at(cls, key: str, revision: int) -> Compare:
        """The key is the incarnation created at ``revision`` (a fencing token)."""
        return cls(key, "create", "=", revision)


@dataclass(frozen=True, slots=True)
class Put:
    """Write ``value`` at ``key`` (under ``lease`` if not 0)."""

    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete ``key`` (or ``[key, range_end)``)."""

    key: str
    range_end: str | None = None


@dataclass(frozen=True, slots=True)
class Get:
    """Read ``key`` (or ``[key, range_end)``) inside a transaction."""

    key: str
    range_end: str | None = None


Op = Put | Delete | Get


@dataclass(frozen=True, slots=True)
class TxnResult:
    """What a transaction did.

    Attributes:
        succeeded: Whether every compare held (the success branch ran).
        revision: The store revision after the transaction.
        reads: For each :class:`Get` of the branch that ran, in order, the keys read.
    """

    succeeded: bool
    revision: int
    reads: list[list[KV]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Event:
    """One watch event."""

    type: Literal["put", "delete"]
    kv: KV
    prev: KV | None = None


@dataclass(frozen=True, slots=True)
class RangeResult:
    """A range read.

    Attributes:
        kvs: The keys, in ascending key order.
        revision: The store revision the read saw (start watches at ``revision + 1``).
        more: Whether ``limit`` cut the result short.
        count: How many keys the whole range holds.
    """

    kvs: list[KV]
    revision: int
    more: bool
    count: int


def txn_size(ops: Sequence[Op | Compare]) -> int:
    """Request size of ``ops`` in bytes (an upper bound of their protobuf encoding)."""
    size = 0
    for op in ops:
        size += len(op.key) + 24
        if isinstance(op, Put):
            size += len(op.value)
        elif isinstance(op, Delete | Get) and op.range_end:
            size += len(op.range_end)
        elif isinstance(op, Compare) and isinstance(op.value, bytes):
            size += len(op.value)
    return size


def check_txn_size(compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> None:
    """Refuse a transaction etcd would refuse, before sending it.

    Raises:
        StoreRequestTooLarge: Over etcd's operations per branch or its request bytes.
    """
    if max(len(compares), len(success), len(failure)) > MAX_TXN_OPS:
        raise StoreRequestTooLarge(f"transaction over etcd's {MAX_TXN_OPS} operations")
    size = txn_size(compares) + txn_size(success) + txn_size(failure)
    if size > MAX_REQUEST_BYTES - 16 * 1024:
        raise StoreRequestTooLarge(
            f"transaction of {size} bytes is over etcd's request limit ({MAX_REQUEST_BYTES} bytes)"
        )


# observer -------------------------------------------------------------------------------
class StoreObserver(Protocol):
    """Sees a store's requests and watch restarts (``Store(config, observer=...)``).

    Called on the store's event loop, once per request, after it ended: must
    not block and must not raise (metrics.py's observer only counts).
    """

    def request(self, operation: str, seconds: float, error_kind: str | None) -> None:
        """One etcd request ended.

        Args:
            operation: ``get``, ``range``, ``txn``, ``put``, ``delete``, ``grant``,
                ``keepalive``, ``revoke`` or ``status``.
            seconds: How long it took (sent to answered, or to its error).
            error_kind: None if it succeeded, else :func:`error_kind` of its error.
        """

    def watch_restarted(self) -> None:
        """A watch started over: its stream was lost and resumed, or it must re-read (compacted)."""


# The typed store errors by kind, most specific first (subclasses before their bases).
ERROR_KINDS: tuple[tuple[type[Exception], str], ...] = (
    (StoreUnavailable, "unavailable"),
    (StoreAuthError, "auth"),
    (StoreRequestTooLarge, "too_large"),
    (StoreNoSpace, "no_space"),
    (StoreCompacted, "compacted"),
    (WatchCompacted, "compacted"),
    (StoreLeaseNotFound, "lease_not_found"),
)


def error_kind(exc: BaseException) -> str:
    """The kind of a store error, as :class:`StoreObserver` reports it (``other`` if none fits)."""
    for kind_type, kind in ERROR_KINDS:
        if isinstance(exc, kind_type):
            return kind
    return "other"
