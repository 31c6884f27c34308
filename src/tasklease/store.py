"""The store: the one way to etcd (through the pinned ``etcd3aio`` client).

Everything above it speaks in :class:`KV`, :class:`Compare`, :class:`Put`,
:class:`Delete` and :class:`Get`, and sees only :mod:`tasklease.errors`
exceptions: client and gRPC errors are wrapped here with ``raise ... from``.

Round trips. Each public coroutine is one etcd request (``watch`` is one
stream; ``scan`` one request per page).

Sizes (docs/architecture.md, "Limits and sizes"). etcd refuses a request
over 1.5 MiB; :meth:`Store.txn` checks the size of a transaction before
sending it and raises :class:`~tasklease.errors.StoreRequestTooLarge`
instead. The channel receives messages up to ``MAX_RECEIVE_BYTES`` (gRPC's
default is 4 MiB, less than a page of 1,000 records of 4.5 KB); reads that may
return many values go through :meth:`Store.scan`, which pages by bytes as well
as by count. A watch response over the receive limit (a catch-up of many
large revisions) raises :class:`~tasklease.errors.WatchTooLarge`: re-read,
then watch again. Transactions are sent once (no client-side retry): a transaction
that committed but whose answer was lost would otherwise be sent again and
come back ``succeeded=False`` (ETCD-NOTES pitfall 3). Callers that need to
know re-read after :class:`~tasklease.errors.StoreUnavailable`.

Owns :class:`StoreConfig`, the :class:`KVStore` protocol and :class:`Store`,
which delegates to the ``store_*`` helpers: :mod:`~tasklease.store_types` (the
values and limits, re-exported here), :mod:`~tasklease.store_channel` (the
client, its connection and messages), :mod:`~tasklease.store_errors` (error
translation), :mod:`~tasklease.store_paging` (the pages of ``scan``),
:mod:`~tasklease.store_leases` and :mod:`~tasklease.store_watch`.
Only ``store*.py`` modules import the etcd client.

Imports: :mod:`tasklease.errors` and the ``store_*`` helpers;
:mod:`tasklease.etcd_server` inside :meth:`StoreConfig.from_options` (a local
etcd's credentials).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

from tasklease.errors import InvalidOption, StoreAuthError, StoreError, StoreNoSpace
from tasklease.store_channel import Channel, decode_kv, encode_compare, encode_op, read_password_file
from tasklease.store_errors import auth_error, refused
from tasklease.store_leases import Leases
from tasklease.store_paging import FIRST_PAGE, MAX_PAGE, READ_BUDGET_BYTES, next_page_limit, scan_pages
from tasklease.store_types import (
    KV,
    MAX_RECEIVE_BYTES,
    MAX_REQUEST_BYTES,
    MAX_TXN_BYTES,
    MAX_TXN_OPS,
    Compare,
    Delete,
    Event,
    Get,
    Op,
    Put,
    RangeResult,
    StoreObserver,
    TxnResult,
    check_txn_size,
    txn_size,
)
from tasklease.store_watch import watch_changes

__all__ = [
    "DEFAULT_ENDPOINT",
    "FIRST_PAGE",
    "KV",
    "MAX_PAGE",
    "MAX_RECEIVE_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_TXN_BYTES",
    "MAX_TXN_OPS",
    "READ_BUDGET_BYTES",
    "Compare",
    "Delete",
    "Event",
    "Get",
    "KVStore",
    "Op",
    "Put",
    "RangeResult",
    "Store",
    "StoreConfig",
    "StoreObserver",
    "TxnResult",
    "next_page_limit",
    "parse_endpoints",
    "read_password_file",
    "txn_size",
]

# Their former names here (tests/unit/test_errors.py imports them).
_auth_error = auth_error
_refused = refused

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"


def parse_endpoints(text: str) -> list[str]:
    """Turn ``"http://a:2379,b:2379"`` into ``["a:2379", "b:2379"]``.

    Raises:
        InvalidOption: On an empty list or an endpoint without host and port.
    """
    result = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        parts = urlsplit(item if "://" in item else f"http://{item}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidOption(f"bad etcd endpoint {item!r}: expected host:port or http://host:port")
        try:
            port = 2379 if parts.port is None else parts.port
        except ValueError:
            raise InvalidOption(f"bad etcd endpoint {item!r}: invalid port") from None
        if port == 0:
            raise InvalidOption(f"bad etcd endpoint {item!r}: port 0")
        result.append(f"{parts.hostname}:{port}")
    if not result:
        raise InvalidOption("no etcd endpoint given")
    return result


def _endpoint_host(endpoint: str) -> str:
    return endpoint.rpartition(":")[0].strip("[]").lower()


log = logging.getLogger("tasklease.store")

# etcd 3.5.0 to 3.5.4 panic, and exit, when the request of a read-only transaction is
# cancelled while it reads (its client timed out, or died): etcd-io/etcd#14110, fixed in
# 3.5.5 (reproduced here with 3.5.1: tests/faults/test_etcd_readonly_txn.py). Against
# those versions, and 3.4 (not verified either way), a read-only transaction is not sent
# as one: up to READS_APART_AT_MOST gets go as concurrent range reads (a range does not
# panic) pinned to one revision (Store._read_apart); more go as one transaction that is
# not read-only, so etcd applies it through its log, where no request's cancellation
# reaches (Store._read_through_log).
READS_APART_VERSIONS = ((0, 0, 0), (3, 5, 5))
# Range reads in flight for one read-only transaction sent apart.
READS_IN_FLIGHT = 16
# StoreConfig.transport: how KV calls and watches travel (store_h2.py, or the gRPC
# library); the first is the default.
TRANSPORTS = ("h2", "grpc")
# Gets sent apart on such a version; more go through etcd's log.
READS_APART_AT_MOST = 2


def reads_apart_for(version: str) -> bool:
    """Whether read-only transactions must go as separate reads against etcd ``version``."""
    numbers = []
    for part in version.split("-", 1)[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits) if digits else 0)
    low, high = READS_APART_VERSIONS
    return low <= tuple(numbers + [0] * (3 - len(numbers))) < high


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """How to reach etcd.

    Attributes:
        endpoints: ``host:port`` strings (or URLs); all are used.
        timeout_s: Deadline of one request.
        user: etcd user name (auth enabled).
        password: Its password (kept out of ``repr``). Prefer ``password_file``:
            a password on a command line is visible to every local user in ``ps``.
        password_file: A file whose first line is the password (read at connect).
        ca_file: PEM CA bundle; turns TLS on.
        cert_file: PEM client certificate (mutual TLS).
        key_file: PEM client key (mutual TLS).
        tls_server_name: Name to check in every member's server certificate.
            Without it, the host name of the endpoints is checked; endpoints with
            different host names over TLS need it (one name is checked for all
            members: give one that every member's certificate carries).
        tls: Use TLS even without ``ca_file`` (the system's CA bundle).
        max_receive_bytes: Largest message the channel accepts (reads are paged
            to a quarter of it; a watch response over it resyncs the watch).
        transport: How reads, writes, transactions and watches travel: ``"h2"``
            (the default: tasklease's own HTTP/2 client, :mod:`tasklease.store_h2`,
            less CPU and latency per call) or ``"grpc"`` (the gRPC library, as
            leases, auth and status always do). ``TASKLEASE_ETCD_TRANSPORT``.
    """

    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    timeout_s: float = 5.0
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_server_name: str | None = None
    tls: bool = False
    max_receive_bytes: int = MAX_RECEIVE_BYTES
    transport: str = TRANSPORTS[0]

    @classmethod
    def from_text(cls, endpoints: str, **kwargs: Any) -> StoreConfig:
        """Build a config from a comma-separated endpoint list.

        ``https://`` endpoints turn TLS on (with the system's CA bundle unless
        ``ca_file`` is given); mixing ``http://`` and ``https://`` is refused.
        """
        schemes = {e.strip().split("://", 1)[0].lower() for e in endpoints.split(",") if "://" in e}
        if schemes == {"http", "https"}:
            raise InvalidOption("etcd endpoints mix http:// and https://")
        if "https" in schemes:
            kwargs.setdefault("tls", True)
        elif "http" in schemes and kwargs.get("ca_file"):
            raise InvalidOption("an etcd CA file was given but the endpoints are http://: use https://")
        return cls(endpoints=tuple(parse_endpoints(endpoints)), **kwargs)

    @classmethod
    def from_options(
        cls,
        endpoints: str,
        *,
        user: str | None = None,
        password: str | None = None,
        password_file: str | None = None,
        **kwargs: Any,
    ) -> StoreConfig:
        """:meth:`from_text`, with the credentials of a local embedded etcd when none are given.

        Without a user, password or password file, a local embedded etcd
        (``tasklease etcd`` or ``dev`` on that loopback port, started by this
        user and still running) is logged in to with its root password file.
        The command line and :meth:`from_env` resolve credentials through it.
        """
        if user is None and password is None and password_file is None:
            from tasklease.etcd_server import find_local_credentials

            user, password_file = find_local_credentials(endpoints) or (None, None)
        return cls.from_text(endpoints, user=user, password=password, password_file=password_file, **kwargs)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StoreConfig:
        """The connection the ``TASKLEASE_ETCD*`` environment variables describe (as the CLI reads them).

        ``TASKLEASE_ETCD`` (default ``http://127.0.0.1:2379``), ``..._TIMEOUT``,
        ``..._USER``, ``..._PASSWORD`` or ``..._PASSWORD_FILE``, ``..._CA``,
        ``..._CERT``, ``..._KEY``, ``..._TLS_SERVER_NAME``, ``..._TRANSPORT``. Without a user or
        password, a local embedded etcd (``tasklease etcd`` or ``dev`` on that
        loopback port, started by this user and running) is logged in to with
        its root password file, like the CLI does.

        Raises:
            InvalidOption: A variable that does not parse (named in the message).
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(f"TASKLEASE_ETCD{name}")
            return value if value else None

        endpoints = get("") or DEFAULT_ENDPOINT
        timeout_s = 5.0
        if (raw := get("_TIMEOUT")) is not None:
            try:
                timeout_s = float(raw)
            except ValueError:
                raise InvalidOption(
                    f"environment variable TASKLEASE_ETCD_TIMEOUT: not a number: {raw!r}"
                ) from None
        return cls.from_options(
            endpoints,
            timeout_s=timeout_s,
            user=get("_USER"),
            password=get("_PASSWORD"),
            password_file=get("_PASSWORD_FILE"),
            ca_file=get("_CA"),
            cert_file=get("_CERT"),
            key_file=get("_KEY"),
            tls_server_name=get("_TLS_SERVER_NAME"),
            transport=get("_TRANSPORT") or TRANSPORTS[0],
        )

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise InvalidOption("no etcd endpoint given")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise InvalidOption(f"etcd timeout must be a finite number > 0, got {self.timeout_s}")
        if self.transport not in TRANSPORTS:
            raise InvalidOption(
                f"etcd transport must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}"
            )
        if self.max_receive_bytes < 1024 * 1024:
            raise InvalidOption("the receive limit must be at least 1 MiB")
        if self.password is not None and self.password_file is not None:
            raise InvalidOption("give the etcd password or a password file, not both")
        if (self.user is None) != (self.password is None and self.password_file is None):
            raise InvalidOption("etcd user and password go together")
        if (self.cert_file is None) != (self.key_file is None):
            raise InvalidOption("etcd client certificate and key go together")
        if self.cert_file is not None and self.ca_file is None and not self.tls:
            raise InvalidOption("a client certificate needs the CA file too")
        hosts = sorted({_endpoint_host(e) for e in self.endpoints})
        if self.uses_tls and self.tls_server_name is None and len(hosts) > 1:
            raise InvalidOption(
                f"etcd endpoints over TLS with different host names ({', '.join(hosts)}): give the "
                "name every member's certificate carries with --etcd-tls-server-name "
                "(TASKLEASE_ETCD_TLS_SERVER_NAME, StoreConfig.tls_server_name)"
            )

    @property
    def uses_tls(self) -> bool:
        """Whether the connection is TLS (a CA file, or ``tls``)."""
        return self.ca_file is not None or self.tls

    @property
    def server_name(self) -> str | None:
        """The name checked in each member's certificate (TLS only): the given one, else the endpoints' host."""
        if not self.uses_tls:
            return None
        if self.tls_server_name is not None:
            return self.tls_server_name
        return _endpoint_host(self.endpoints[0])


class KVStore(Protocol):
    """What components need of etcd: the methods of :class:`Store`, the real one.

    Components (client, scheduler, worker, session, election, ...) take a
    ``KVStore``, so a test can pass a wrapper that fails chosen calls
    (``tests/faultstore.py``) or records them. The contract is
    :class:`Store`'s; in short:

    - Every method is a coroutine (``scan`` and ``watch`` are async
      generators) of one event loop; not thread-safe.
    - Errors are :mod:`tasklease.errors` exceptions only (``StoreError`` and
      its subclasses), never a client or gRPC exception.
    - ``txn`` is sent once and never retried: after ``StoreUnavailable`` it may
      or may not have committed (re-read to know). ``get``, ``range``,
      ``scan``, ``put``, ``delete`` and lease calls are idempotent.
    - Reads and watches are bounded in bytes (``scan`` pages by bytes; a watch
      response over the receive limit raises ``WatchTooLarge``).

    Connecting is not part of it: whoever creates the store connects it and
    closes it (``close`` is here so an owner that took a ``KVStore`` can).
    """

    async def get(self, key: str) -> tuple[KV | None, int]:
        """Read one key: the key (or None) and the revision of the read."""
        ...

    async def range(
        self,
        prefix: str,
        end: str,
        *,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        revision: int = 0,
    ) -> RangeResult:
        """Read ``[prefix, end)`` in ascending key order (one request; see :meth:`Store.range`)."""
        ...

    def scan(
        self,
        prefix: str,
        end: str,
        *,
        revision: int = 0,
        keys_only: bool = False,
        budget_bytes: int | None = None,
        first_page: int = FIRST_PAGE,
    ) -> AsyncGenerator[RangeResult, None]:
        """Read ``[prefix, end)`` page by page, one snapshot, pages bounded by bytes (:meth:`Store.scan`)."""
        ...

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        timeout_s: float | None = None,
    ) -> TxnResult:
        """Run one transaction, sent once (:meth:`Store.txn`)."""
        ...

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write one key; the revision of the write."""
        ...

    async def delete(self, key: str, range_end: str | None = None) -> int:
        """Delete one key or a range; how many keys were deleted."""
        ...

    async def grant(self, ttl_s: int) -> int:
        """Grant a lease; its id."""
        ...

    async def keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; the remaining TTL (0 or less: the lease is gone)."""
        ...

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease and delete its keys; a lease already gone is fine."""
        ...

    def watch(
        self, prefix: str, end: str, start_revision: int, *, prev_kv: bool = False
    ) -> AsyncGenerator[list[Event], None]:
        """Stream the changes of ``[prefix, end)`` from ``start_revision`` on (:meth:`Store.watch`)."""
        ...

    async def status(self) -> dict[str, Any]:
        """Ask the endpoints for their status (a health check)."""
        ...

    async def close(self) -> None:
        """Close the connection. Idempotent."""
        ...


class Store:
    """An async connection to etcd.

    Use as ``async with Store(config) as store:``. Safe to share between the
    tasks of one event loop; not thread-safe. Reads and writes are sent
    here; the connection (:class:`~tasklease.store_channel.Channel`), leases
    (:class:`~tasklease.store_leases.Leases`) and watches
    (:func:`~tasklease.store_watch.watch_changes`) are the helpers'.

    Args:
        config: Where etcd is and how to authenticate.
        observer: Told of every request's operation, latency and error kind,
            and of every watch restart (metrics.py's ``Metrics.store_observer()``);
            None: nobody (and no timing).
    """

    def __init__(self, config: StoreConfig | None = None, observer: StoreObserver | None = None) -> None:
        # No config: the environment's, as the CLI reads it (TASKLEASE_ETCD*, and the
        # credentials of a local `tasklease etcd` or `dev`, which has auth on).
        self.config = config if config is not None else StoreConfig.from_env()
        self.observer = observer
        self._channel = Channel(self.config, observer)
        self._leases = Leases(self._channel)
        self._pb: Any = None  # etcd3aio's protobuf module: set by connect(), read by txn()
        self._apart: bool | None = None  # read-only transactions as separate reads (unknown yet)
        self._log_reads = True  # ... or through etcd's log (until a reader may not write)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the channel (and authenticate, if a user is configured).

        Raises:
            StoreAuthError: Wrong user or password.
            StoreUnavailable: etcd cannot be reached (auth only; otherwise
                the first request tells).
        """
        try:
            await self._channel.open()
        finally:
            self._pb = self._channel.pb

    async def close(self) -> None:
        """Close the channel. Idempotent."""
        await self._channel.close()

    def _svc(self) -> Any:
        return self._channel.svc()

    # KV ----------------------------------------------------------------------------------
    async def get(self, key: str) -> tuple[KV | None, int]:
        """Read one key.

        Returns:
            The key (or None) and the revision of the read.
        """
        resp = await self._channel.kv("get", "Range", self._channel.messages().RangeRequest(key=key.encode()))
        kv = decode_kv(resp.kvs[0]) if resp.kvs else None
        return kv, resp.header.revision

    async def range(
        self,
        prefix: str,
        end: str,
        *,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        revision: int = 0,
    ) -> RangeResult:
        """Read ``[prefix, end)`` in ascending key order.

        Args:
            prefix: First key.
            end: Exclusive end.
            limit: At most this many keys (0 = all).
            keys_only: Leave values out.
            count_only: Only count.
            revision: Read as of this revision (0 = now); pages of one snapshot.
        """
        request = self._channel.messages().RangeRequest(
            key=prefix.encode(),
            range_end=end.encode(),
            revision=revision,
            limit=limit,
            keys_only=keys_only,
            count_only=count_only,
        )
        resp = await self._channel.kv("range", "Range", request)
        return RangeResult([decode_kv(k) for k in resp.kvs], resp.header.revision, resp.more, resp.count)

    def scan(
        self,
        prefix: str,
        end: str,
        *,
        revision: int = 0,
        keys_only: bool = False,
        budget_bytes: int | None = None,
        first_page: int = FIRST_PAGE,
    ) -> AsyncGenerator[RangeResult, None]:
        """Read ``[prefix, end)`` page by page, each page bounded by bytes and by count.

        Every page reads the snapshot of the first one (its revision), so the
        pages together are one consistent read. The first page holds at most
        ``first_page`` keys (``MAX_PAGE`` if ``keys_only``); each next one as
        many as fit ``budget_bytes`` at the size of the largest value seen so
        far (``budget_bytes`` defaults to ``READ_BUDGET_BYTES``, at most a
        quarter of the receive limit). A page refused for its size is read
        again at a quarter of the count (down to one key).

        Returns:
            An async generator of the pages (their ``revision`` is the snapshot's).
        """
        if budget_bytes is None:
            budget_bytes = min(READ_BUDGET_BYTES, self.config.max_receive_bytes // 4)
        return scan_pages(
            self.range,
            prefix,
            end,
            revision=revision,
            keys_only=keys_only,
            budget_bytes=budget_bytes,
            first_page=first_page,
        )

    def _compare(self, c: Compare) -> Any:
        return encode_compare(self._pb, c)

    def _op(self, op: Op) -> Any:
        return encode_op(self._pb, op)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        timeout_s: float | None = None,
    ) -> TxnResult:
        """Run one transaction: if every compare holds, ``success``, else ``failure``.

        Sent once, never retried by the client (see the module docstring).
        ``timeout_s`` overrides the configured deadline: the scheduler and
        workers, whose writes are fenced and safe to resend, use a short one so
        that a write lost in an etcd leader change is sent again quickly.

        Raises:
            StoreUnavailable: No answer: the transaction may or may not have committed.
            StoreRequestTooLarge: Too many operations or too many bytes (checked
                before sending): nothing was sent.
            StoreNoSpace: etcd is out of space.
            StoreLeaseNotFound: A put names a lease etcd does not have (expired
                or revoked): nothing was written.
            StoreCompacted: A read names a revision etcd has compacted away.
            StoreError: etcd rejected it for another reason.
        """
        if (
            not compares
            and not failure
            and success
            and all(type(op) is Get for op in success)
            and await self._reads_apart()
        ):
            return await self._read_on_affected_etcd(success)  # type: ignore[arg-type]
        return await self._send_txn(compares, success, failure, timeout_s)

    async def _send_txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op],
        timeout_s: float | None,
    ) -> TxnResult:
        """:meth:`txn` as it is, one request (the checks of its size first)."""
        check_txn_size(compares, success, failure)
        pb = self._channel.messages()
        request = pb.TxnRequest(
            compare=[encode_compare(pb, c) for c in compares],
            success=[encode_op(pb, o) for o in success],
            failure=[encode_op(pb, o) for o in failure],
        )
        resp = await self._channel.kv("txn", "Txn", request, timeout_s=timeout_s, retry=False)
        reads = [
            [decode_kv(k) for k in r.response_range.kvs]
            for r in resp.responses
            if r.WhichOneof("response") == "response_range"
        ]
        return TxnResult(resp.succeeded, resp.header.revision, reads)

    async def _reads_apart(self) -> bool:
        """Whether read-only transactions go as separate reads here (:func:`reads_apart_for`).

        Asked once per store (etcd's version, from the endpoint that answers);
        while it cannot be asked, reads go apart (the safe way).
        """
        if self._apart is None:
            try:
                version = str((await self.status())["version"])
            except StoreError:
                return True
            self._apart = reads_apart_for(version)
        return self._apart

    async def _read_on_affected_etcd(self, gets: Sequence[Get]) -> TxnResult:
        """A read-only transaction against etcd 3.5.0-3.5.4 (:func:`reads_apart_for`).

        A few gets go apart (:meth:`_read_apart`), more through etcd's log
        (:meth:`_read_through_log`) unless this client may not write there
        (then apart from now on) or etcd refuses writes (NOSPACE: apart this time).
        """
        if len(gets) > READS_APART_AT_MOST and self._log_reads:
            try:
                return await self._read_through_log(gets)
            except StoreAuthError:
                self._log_reads = False
                log.info("reads of many keys go as separate ranges: this client may not write them")
            except StoreNoSpace:
                pass
        return await self._read_apart(gets)

    async def _read_through_log(self, gets: Sequence[Get]) -> TxnResult:
        """Gets in one transaction that is not read-only: etcd applies it through its log.

        ``if mod(first key) < 0 then put first key else the gets``: the compare
        never holds (a mod revision is never negative), so nothing is written and
        the failure branch reads every key at one revision, as a read-only
        transaction would. Being a write, it goes through raft and is applied
        without the request's context, so its cancellation cannot crash an
        affected etcd; it costs one log entry (the keys, not the values) and
        waits for that entry's fsync, shared with the writes of the moment.
        """
        first = gets[0].key
        result = await self._send_txn([Compare(first, "mod", "<", 0)], [Put(first, b"")], gets, None)
        if result.succeeded:  # pragma: no cover - etcd never holds a negative revision
            raise StoreError("a read through etcd's log wrote a key: a revision below 0 held")
        return TxnResult(True, result.revision, result.reads)

    async def _read_apart(self, gets: Sequence[Get]) -> TxnResult:
        """A read-only transaction as concurrent range reads, one snapshot like the transaction's.

        The reads go at once (``READS_IN_FLIGHT`` at a time); any that answered
        from an older revision than the newest is read again at that revision,
        so every key is read as of one revision, which the result carries.
        """
        gate = asyncio.Semaphore(READS_IN_FLIGHT)

        async def one(get: Get, revision: int = 0) -> RangeResult:
            async with gate:
                return await self.range(get.key, get.range_end or get.key + "\0", revision=revision)

        results = list(await asyncio.gather(*(one(g) for g in gets)))
        newest = max(r.revision for r in results)
        behind = [i for i, r in enumerate(results) if r.revision < newest]
        if behind:
            again = await asyncio.gather(*(one(gets[i], newest) for i in behind))
            for i, result in zip(behind, again, strict=True):
                results[i] = result
        return TxnResult(True, newest, [r.kvs for r in results])

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write one key (idempotent, so retried on transient errors).

        Returns:
            The revision of the write.
        """
        request = self._channel.messages().PutRequest(key=key.encode(), value=value, lease=lease)
        resp = await self._channel.kv("put", "Put", request)
        return int(resp.header.revision)

    async def delete(self, key: str, range_end: str | None = None) -> int:
        """Delete one key or a range.

        Returns:
            How many keys were deleted.
        """
        request = self._channel.messages().DeleteRangeRequest(
            key=key.encode(), range_end=(range_end or "").encode()
        )
        resp = await self._channel.kv("delete", "DeleteRange", request)
        return int(resp.deleted)

    # leases (store_leases.py) -------------------------------------------------------------
    async def grant(self, ttl_s: int) -> int:
        """Grant a lease; its id."""
        return await self._leases.grant(ttl_s)

    async def keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; the remaining TTL in seconds (0 or less: the lease is gone)."""
        return await self._leases.keepalive(lease_id)

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease, deleting every key under it. A lease already gone is fine."""
        await self._leases.revoke(lease_id)

    # watch (store_watch.py) ---------------------------------------------------------------
    def watch(
        self, prefix: str, end: str, start_revision: int, *, prev_kv: bool = False
    ) -> AsyncGenerator[list[Event], None]:
        """Stream the changes of ``[prefix, end)`` from ``start_revision`` on.

        Start at the header revision of a read plus one, so that nothing falls
        between the read and the watch. The stream survives etcd restarts and
        fail-overs: it reconnects and resumes right after the last event it
        delivered (store_watch.py drives the gRPC stream: the client library's
        own watch skips events if the connection drops while it catches up).

        Returns:
            An async generator of the events of one etcd response each (never empty).

        Raises:
            WatchCompacted: ``start_revision`` (or the resume point) was
                compacted: re-read and watch again.
            WatchTooLarge: A response was over the receive limit (a subclass
                of WatchCompacted, handled the same way).
            StoreError: The watch failed for good.
        """
        return watch_changes(self._channel, prefix, end, start_revision, prev_kv=prev_kv)

    async def status(self) -> dict[str, Any]:
        """Ask the endpoints for their status (a health check)."""
        client = self._channel.svc()
        resp = await self._channel.call("status", client.maintenance.status(timeout=self.config.timeout_s))
        return {"version": resp.version, "leader": resp.leader, "db_size": resp.dbSize}
