"""The only module that talks to etcd (through the pinned ``etcd3aio`` client).

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self
from urllib.parse import urlsplit

from tasklease.errors import (
    InvalidOption,
    StoreAuthError,
    StoreAuthRequired,
    StoreCompacted,
    StoreError,
    StoreLeaseNotFound,
    StoreNoSpace,
    StoreRequestTooLarge,
    StoreUnavailable,
    WatchCompacted,
    WatchTooLarge,
)

log = logging.getLogger("tasklease.store")

# etcd's default --max-txn-ops: each of compare/success/failure may hold this many.
MAX_TXN_OPS = 128
# etcd's default --max-request-bytes is 1.5 MiB; stay below with a margin.
MAX_REQUEST_BYTES = 1_572_864
MAX_TXN_BYTES = 1_400_000
# What the channel accepts in one message (gRPC's default is 4 MiB). A read is
# paged to READ_BUDGET_BYTES, so only a watch catch-up can come near this.
MAX_RECEIVE_BYTES = 128 * 1024 * 1024
# Target size of one page of a scan: pages are sized from the largest value seen.
READ_BUDGET_BYTES = 4 * 1024 * 1024
# First page of a scan with values, before any size is known: even records of
# the 1 MiB maximum stay under the receive limit.
FIRST_PAGE = 64
# Most keys per page (etcd answers faster in moderate pages).
MAX_PAGE = 1000

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


def read_password_file(path: str) -> str:
    """The password in ``path``: its first line, without the line break.

    Raises:
        InvalidOption: If the file cannot be read or its first line is empty.
    """
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InvalidOption(f"cannot read the etcd password file {path}: {reason}") from None
    password = line.rstrip("\r\n")
    if not password:
        raise InvalidOption(f"the etcd password file {path} is empty (the password is its first line)")
    return password


def _endpoint_host(endpoint: str) -> str:
    return endpoint.rpartition(":")[0].strip("[]").lower()


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
        ``..._CERT``, ``..._KEY``, ``..._TLS_SERVER_NAME``. Without a user or
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
        )

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise InvalidOption("no etcd endpoint given")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise InvalidOption(f"etcd timeout must be a finite number > 0, got {self.timeout_s}")
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


def next_page_limit(largest_value: int, budget: int = READ_BUDGET_BYTES) -> int:
    """How many keys the next page may hold so that it stays near ``budget`` bytes."""
    return max(1, min(MAX_PAGE, budget // max(1, largest_value + 128)))


def _kv(pb: Any) -> KV:
    return KV(
        key=pb.key.decode(),
        value=bytes(pb.value),
        create_revision=pb.create_revision,
        mod_revision=pb.mod_revision,
        version=pb.version,
        lease=pb.lease,
    )


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
    tasks of one event loop; not thread-safe.

    Args:
        config: Where etcd is and how to authenticate.
    """

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config or StoreConfig()
        self._client: Any = None
        self._refresher: Any = None
        self._pb: Any = None

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
        # Imported here so the rest of the package imports without gRPC loaded;
        # etcd3aio also puts its proto folder on sys.path (ETCD-NOTES pitfall 7).
        # gRPC core otherwise logs INFO lines (a failed TLS handshake) to stderr.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        import etcd3aio
        from etcd3aio import _protobuf

        self._pb = _protobuf
        cfg = self.config
        tls: dict[str, Any] = {}
        if cfg.ca_file:
            tls["ca_cert"] = _read_pem(cfg.ca_file, "CA")
        elif cfg.tls:
            bundle = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
            tls["ca_cert"] = _read_pem(bundle, "system CA bundle")
        if tls and cfg.cert_file and cfg.key_file:
            tls["cert_chain"] = _read_pem(cfg.cert_file, "client certificate")
            tls["cert_key"] = _read_pem(cfg.key_file, "client key")
        password = cfg.password
        if cfg.password_file is not None:
            password = read_password_file(cfg.password_file)
        # Endpoints are dialled by address (ipv4:), so the name to verify is given
        # explicitly: the host the endpoints name (all the same, StoreConfig checks),
        # or tls_server_name. Never a name the user did not give.
        server_name = cfg.server_name
        self._client = etcd3aio.Etcd3Client(
            [_ipv4_endpoint(e) for e in cfg.endpoints],
            rpc_max_attempts=3,
            watch_reconnect_backoff_seconds=0.1,
            watch_max_reconnect_backoff_seconds=1.0,
            tls_server_name=server_name,
            **tls,
        )
        # etcd3aio sets no message limits: gRPC's 4 MiB receive default is less than
        # one page of 1,000 records of 4.5 KB. Requests are checked by txn() first.
        self._client._manager.grpc_options.extend(
            [
                ("grpc.max_receive_message_length", cfg.max_receive_bytes),
                ("grpc.max_send_message_length", MAX_REQUEST_BYTES + 64 * 1024),
            ]
        )
        await self._client.connect()
        if cfg.user is not None and password is not None:
            refresher = self._client.token_refresher(cfg.user, password, interval=120.0)
            try:
                async with asyncio.timeout(cfg.timeout_s):
                    await refresher.__aenter__()
            except BaseException as exc:
                await self._client.close()
                self._client = None
                raise self._wrap(exc, "authenticate") from exc
            self._refresher = refresher

    async def close(self) -> None:
        """Close the channel. Idempotent."""
        if self._refresher is not None:
            with contextlib.suppress(Exception):
                await self._refresher.__aexit__(None, None, None)
            self._refresher = None
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.close()

    # error mapping --------------------------------------------------------------------
    def _wrap(self, exc: BaseException, what: str) -> StoreError:
        import etcd3aio
        import grpc

        endpoints = ",".join(self.config.endpoints)
        if isinstance(exc, etcd3aio.EtcdUnauthenticatedError | etcd3aio.EtcdPermissionDeniedError):
            return _auth_error(f"etcd refused {what}: {exc}")
        if isinstance(exc, etcd3aio.EtcdConnectionError):
            return StoreUnavailable(f"cannot reach etcd at {endpoints} ({what}){_tls_hint(str(exc))}")
        if isinstance(exc, etcd3aio.EtcdTransientError | TimeoutError):
            return StoreUnavailable(
                f"etcd at {endpoints} did not answer {what} within {self.config.timeout_s:g} s"
            )
        if isinstance(exc, grpc.aio.AioRpcError):
            code = exc.code()
            details = exc.details() or ""
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or any(
                m in details for m in _AUTH_FAILURES
            ):
                return _auth_error(f"etcd refused {what}: {details}")
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED or "too large" in details:
                return _size_or_space(what, details)
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return StoreUnavailable(f"cannot reach etcd at {endpoints} ({what}){_tls_hint(details)}")
            if code in (
                grpc.StatusCode.INTERNAL,
                grpc.StatusCode.UNKNOWN,
                grpc.StatusCode.UNIMPLEMENTED,
            ):
                return StoreUnavailable(
                    f"{endpoints} did not answer {what} like etcd: {code.name} {exc.details()}"
                )
            return _refused(f"etcd {what} failed: {code.name} {exc.details()}")
        if isinstance(exc, etcd3aio.EtcdError):
            if "space exceeded" in str(exc) or "too large" in str(exc):
                return _size_or_space(what, str(exc))
            return _refused(f"etcd {what} failed: {exc}")
        return _refused(f"etcd {what} failed: {type(exc).__name__}: {exc}")

    def _svc(self) -> Any:
        if self._client is None:
            raise StoreError("store is not connected")
        return self._client

    async def _call(self, what: str, coro: Any, timeout_s: float | None = None) -> Any:
        try:
            async with asyncio.timeout(timeout_s or self.config.timeout_s):
                return await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._wrap(exc, what) from exc

    # KV ----------------------------------------------------------------------------------
    async def get(self, key: str) -> tuple[KV | None, int]:
        """Read one key.

        Returns:
            The key (or None) and the revision of the read.
        """
        client = self._svc()
        resp = await self._call("get", client.kv.get(key, timeout=self.config.timeout_s))
        kv = _kv(resp.kvs[0]) if resp.kvs else None
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
        client = self._svc()
        resp = await self._call(
            "range",
            client.kv.get(
                prefix,
                end,
                revision=revision,
                limit=limit,
                keys_only=keys_only,
                count_only=count_only,
                timeout=self.config.timeout_s,
            ),
        )
        return RangeResult([_kv(k) for k in resp.kvs], resp.header.revision, resp.more, resp.count)

    async def scan(
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

        Yields:
            The pages (their ``revision`` is the snapshot's).
        """
        if budget_bytes is None:
            budget_bytes = min(READ_BUDGET_BYTES, self.config.max_receive_bytes // 4)
        limit = MAX_PAGE if keys_only else max(1, min(first_page, MAX_PAGE))
        start = prefix
        largest = 0
        while True:
            try:
                page = await self.range(start, end, limit=limit, keys_only=keys_only, revision=revision)
            except StoreRequestTooLarge:
                if limit == 1:
                    raise
                limit = max(1, limit // 4)
                continue
            revision = page.revision
            if not page.kvs:
                return
            yield page
            if not page.more:
                return
            start = page.kvs[-1].key + "\0"
            if not keys_only:
                largest = max(largest, *(len(kv.value) for kv in page.kvs))
                limit = next_page_limit(largest, budget_bytes)

    def _compare(self, c: Compare) -> Any:
        pb = self._pb.Compare
        ops = {"=": pb.EQUAL, "!=": pb.NOT_EQUAL, "<": pb.LESS, ">": pb.GREATER}
        msg = pb(result=ops[c.op], key=c.key.encode())
        if c.target == "create":
            msg.target = pb.CREATE
            msg.create_revision = int(c.value)
        elif c.target == "mod":
            msg.target = pb.MOD
            msg.mod_revision = int(c.value)
        elif c.target == "version":
            msg.target = pb.VERSION
            msg.version = int(c.value)
        else:
            msg.target = pb.VALUE
            msg.value = c.value if isinstance(c.value, bytes) else str(c.value).encode()
        return msg

    def _op(self, op: Op) -> Any:
        pb = self._pb
        if isinstance(op, Put):
            return pb.RequestOp(
                request_put=pb.PutRequest(key=op.key.encode(), value=op.value, lease=op.lease)
            )
        end = op.range_end.encode() if op.range_end else b""
        if isinstance(op, Delete):
            return pb.RequestOp(
                request_delete_range=pb.DeleteRangeRequest(key=op.key.encode(), range_end=end)
            )
        return pb.RequestOp(request_range=pb.RangeRequest(key=op.key.encode(), range_end=end))

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
        if max(len(compares), len(success), len(failure)) > MAX_TXN_OPS:
            raise StoreRequestTooLarge(f"transaction over etcd's {MAX_TXN_OPS} operations")
        size = txn_size(compares) + txn_size(success) + txn_size(failure)
        if size > MAX_REQUEST_BYTES - 16 * 1024:
            raise StoreRequestTooLarge(
                f"transaction of {size} bytes is over etcd's request limit ({MAX_REQUEST_BYTES} bytes)"
            )
        client = self._svc()
        resp = await self._call(
            "txn",
            client.kv.txn(
                [self._compare(c) for c in compares],
                [self._op(o) for o in success],
                [self._op(o) for o in failure],
                timeout=timeout_s or self.config.timeout_s,
                max_attempts=1,
            ),
            timeout_s,
        )
        reads = [
            [_kv(k) for k in r.response_range.kvs]
            for r in resp.responses
            if r.WhichOneof("response") == "response_range"
        ]
        return TxnResult(resp.succeeded, resp.header.revision, reads)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write one key (idempotent, so retried on transient errors).

        Returns:
            The revision of the write.
        """
        client = self._svc()
        resp = await self._call("put", client.kv.put(key, value, lease=lease, timeout=self.config.timeout_s))
        return int(resp.header.revision)

    async def delete(self, key: str, range_end: str | None = None) -> int:
        """Delete one key or a range.

        Returns:
            How many keys were deleted.
        """
        client = self._svc()
        resp = await self._call("delete", client.kv.delete(key, range_end, timeout=self.config.timeout_s))
        return int(resp.deleted)

    # leases ------------------------------------------------------------------------------
    async def grant(self, ttl_s: int) -> int:
        """Grant a lease.

        Returns:
            The lease id.
        """
        client = self._svc()
        resp = await self._call("lease grant", client.lease.grant(ttl_s, timeout=self.config.timeout_s))
        return int(resp.ID)

    async def keepalive(self, lease_id: int) -> int:
        """Refresh a lease once.

        Returns:
            The remaining TTL in seconds; 0 or less if the lease is gone.
        """
        client = self._svc()

        async def once() -> int:
            stream = client.lease.keep_alive(lease_id)
            try:
                async for resp in stream:
                    return int(resp.TTL)
                return 0
            finally:
                stream.cancel()

        result: int = await self._call("lease keep-alive", once())
        return result

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease, deleting every key under it. A lease already gone is fine."""
        client = self._svc()
        with contextlib.suppress(StoreLeaseNotFound):
            await self._call("lease revoke", client.lease.revoke(lease_id, timeout=self.config.timeout_s))

    # watch -------------------------------------------------------------------------------
    async def watch(
        self, prefix: str, end: str, start_revision: int, *, prev_kv: bool = False
    ) -> AsyncGenerator[list[Event], None]:
        """Stream the changes of ``[prefix, end)`` from ``start_revision`` on.

        Start at the header revision of a read plus one, so that nothing falls
        between the read and the watch. The stream survives etcd restarts and
        fail-overs: it reconnects and resumes right after the last event it
        delivered. (The client library's own watch resumes after the *header*
        revision of the last response, which skips events if the connection
        drops while a watch is catching up; so we drive the gRPC stream here.)

        Yields:
            The events of one etcd response (never empty).

        Raises:
            WatchCompacted: ``start_revision`` (or the resume point) was
                compacted: re-read and watch again.
            WatchTooLarge: A response was over the receive limit (a subclass
                of WatchCompacted, handled the same way).
            StoreError: The watch failed for good.
        """
        import grpc
        from etcd3aio._protobuf import WatchCreateRequest, WatchRequest

        service = self._svc().watch
        next_revision = start_revision
        backoff = 0.1
        while True:
            create = WatchCreateRequest(
                key=prefix.encode(), range_end=end.encode(), start_revision=next_revision, prev_kv=prev_kv
            )

            async def requests(create: Any = create) -> AsyncIterator[Any]:
                yield WatchRequest(create_request=create)
                await asyncio.Event().wait()  # keep the request side open

            call = service._stub.Watch(requests(), metadata=service._metadata or None)
            try:
                async for resp in call:
                    backoff = 0.1
                    if resp.compact_revision > 0:
                        raise WatchCompacted(
                            f"watch of {prefix} from revision {next_revision} was compacted "
                            f"(oldest is {resp.compact_revision})"
                        )
                    if resp.canceled:
                        raise StoreError(f"etcd cancelled the watch of {prefix}: {resp.cancel_reason}")
                    if not resp.events:
                        continue
                    events = [
                        Event(
                            "put" if ev.type == 0 else "delete",
                            _kv(ev.kv),
                            _kv(ev.prev_kv) if ev.HasField("prev_kv") else None,
                        )
                        for ev in resp.events
                    ]
                    next_revision = events[-1].kv.mod_revision + 1
                    yield events
                log.warning("watch of %s ended; watching again from revision %d", prefix, next_revision)
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (
                    exc.details() or ""
                ):
                    raise WatchTooLarge(
                        f"watch of {prefix} from revision {next_revision}: a response was over "
                        f"{self.config.max_receive_bytes} bytes ({exc.details()}); re-read and watch again"
                    ) from exc
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise self._wrap(exc, "watch") from exc
                log.warning(
                    "watch of %s interrupted (%s); resuming from revision %d in %.1f s",
                    prefix,
                    exc.code().name,
                    next_revision,
                    backoff,
                )
            finally:
                call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def status(self) -> dict[str, Any]:
        """Ask the endpoints for their status (a health check)."""
        client = self._svc()
        resp = await self._call("status", client.maintenance.status(timeout=self.config.timeout_s))
        return {"version": resp.version, "leader": resp.leader, "db_size": resp.dbSize}


# Auth failures that etcd reports with other codes than UNAUTHENTICATED/PERMISSION_DENIED
# (a wrong user or password is INVALID_ARGUMENT), so etcd3aio passes them through raw.
_AUTH_FAILURES = ("authentication failed", "user name is empty", "user name not found")


def _auth_error(message: str) -> StoreAuthError:
    """An auth refusal; :class:`StoreAuthRequired` when etcd wanted a user and got none."""
    if "user name is empty" in message:
        return StoreAuthRequired(message)
    return StoreAuthError(message)


def _refused(message: str) -> StoreError:
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


def _size_or_space(what: str, details: str) -> StoreError:
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


def _tls_hint(detail: str) -> str:
    """Say so when "cannot reach" was in fact a failed TLS handshake."""
    if "handshake" not in detail.lower():
        return ""
    reason = re.search(r"OPENSSL_internal:([A-Z0-9_]+)", detail)
    return (
        f": TLS handshake failed{f' ({reason.group(1)})' if reason else ''}; "
        "check the etcd CA file and the client certificate and key"
    )


def _ipv4_endpoint(endpoint: str) -> str:
    """Resolve a host name to an IPv4 address: the client dials ``ipv4:`` targets only.

    Raises:
        StoreUnavailable: If the name does not resolve.
    """
    host, _, port = endpoint.rpartition(":")
    try:
        socket.inet_aton(host)
        return endpoint
    except OSError:
        pass
    try:
        infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        raise StoreUnavailable(f"cannot resolve etcd host {host!r}: {exc}") from None
    return f"{infos[0][4][0]}:{port}"


def _read_pem(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidOption(f"cannot read the etcd {what} file {path}: {exc.strerror}") from None
