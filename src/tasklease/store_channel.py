"""The store's connection to etcd: an ``etcd3aio`` client, a ``store_h2`` one, and their messages.

Owns :class:`Channel` (opening the clients: TLS material, the password file,
endpoints dialled by IPv4 address, message limits, authentication; every
request's deadline and error translation; closing). KV calls go through
:meth:`Channel.kv` and watches through ``store_watch``: over ``store_h2``
(transport ``h2``, the default) or etcd3aio's gRPC stub (``grpc``); leases,
auth and status always over etcd3aio. It also owns the conversions between
the client's protobuf messages and :mod:`tasklease.store_types` values
(:func:`decode_kv`, :func:`encode_compare`, :func:`encode_op`).

Imports: :mod:`tasklease.errors`, :mod:`tasklease.store_h2`, :mod:`tasklease.store_types`,
:mod:`tasklease.store_errors`; the etcd client inside :meth:`Channel.open`
(so the package imports without gRPC loaded). Only ``store*.py`` modules import
the etcd client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasklease.errors import InvalidOption, StoreError, StoreUnavailable
from tasklease.store_errors import wrap_error
from tasklease.store_h2 import Endpoint, UnaryClient
from tasklease.store_types import KV, MAX_REQUEST_BYTES, Compare, Delete, Op, Put, StoreObserver, error_kind

if TYPE_CHECKING:
    from tasklease.store import StoreConfig


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


# A request as error messages name it -> its ``operation`` for a StoreObserver.
OPERATIONS = {
    "lease grant": "grant",
    "lease keep-alive": "keepalive",
    "lease revoke": "revoke",
}


class Channel:
    """The ``etcd3aio`` client of one :class:`~tasklease.store.Store`.

    Every request goes through :meth:`call`, the one place that sees them all:
    its deadline, its error translation, and what ``observer`` is told.

    Args:
        config: Where etcd is and how to authenticate.
        observer: Told of every request (operation, seconds, error kind) and
            watch restart; None (the default) costs one attribute test per request.
    """

    def __init__(self, config: StoreConfig, observer: StoreObserver | None = None) -> None:
        self.config = config
        self.observer = observer
        # Set by open(), cleared by close(); the store's requests only read them.
        self.client: Any = None
        self.refresher: Any = None
        self.pb: Any = None  # etcd3aio's protobuf module (request and response messages)
        self.unary: UnaryClient | None = None  # KV calls over store_h2 (transport "h2")

    async def open(self) -> None:
        """Create the client, connect it and authenticate (if a user is configured).

        Raises:
            InvalidOption: A TLS or password file cannot be read.
            StoreAuthError: Wrong user or password.
            StoreUnavailable: etcd cannot be reached (auth only; otherwise
                the first request tells), or a host name does not resolve.
        """
        # Imported here so the rest of the package imports without gRPC loaded;
        # etcd3aio also puts its proto folder on sys.path (ETCD-NOTES pitfall 7).
        # gRPC core otherwise logs INFO lines (a failed TLS handshake) to stderr.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        import etcd3aio
        from etcd3aio import _protobuf

        self.pb = _protobuf
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
        self.client = etcd3aio.Etcd3Client(
            [_ipv4_endpoint(e) for e in cfg.endpoints],
            rpc_max_attempts=3,
            watch_reconnect_backoff_seconds=0.1,
            watch_max_reconnect_backoff_seconds=1.0,
            tls_server_name=server_name,
            **tls,
        )
        # etcd3aio sets no message limits: gRPC's 4 MiB receive default is less than
        # one page of 1,000 records of 4.5 KB. Requests are checked by txn() first.
        self.client._manager.grpc_options.extend(
            [
                ("grpc.max_receive_message_length", cfg.max_receive_bytes),
                ("grpc.max_send_message_length", MAX_REQUEST_BYTES + 64 * 1024),
            ]
        )
        await self.client.connect()
        if cfg.transport == "h2":
            self.unary = _unary_client(cfg)
        if cfg.user is not None and password is not None:
            from etcd3aio.auth import TokenRefresher

            refresher = TokenRefresher(self.client.auth, self._set_token, cfg.user, password, interval=120.0)
            try:
                async with asyncio.timeout(cfg.timeout_s):
                    await refresher.__aenter__()
            except BaseException as exc:
                await self.close()
                raise wrap_error(exc, "authenticate", cfg) from exc
            self.refresher = refresher

    def _set_token(self, token: str | None) -> None:
        """The auth token for every later call (etcd3aio's and store_h2's)."""
        if self.client is not None:
            self.client.set_token(token)
        if self.unary is not None:
            self.unary.token = token

    async def close(self) -> None:
        """Stop the token refresher and close the client. Idempotent."""
        if self.refresher is not None:
            with contextlib.suppress(Exception):
                await self.refresher.__aexit__(None, None, None)
            self.refresher = None
        if self.unary is not None:
            unary, self.unary = self.unary, None
            with contextlib.suppress(Exception):
                await unary.close()
        if self.client is not None:
            client, self.client = self.client, None
            with contextlib.suppress(Exception):
                await client.close()

    def svc(self) -> Any:
        """The client.

        Raises:
            StoreError: The channel is not open.
        """
        if self.client is None:
            raise StoreError("store is not connected")
        return self.client

    def messages(self) -> Any:
        """The protobuf messages of etcd's API (request and response types); :meth:`svc`'s check."""
        self.svc()
        return self.pb

    async def kv(
        self, what: str, method: str, request: Any, *, timeout_s: float | None = None, retry: bool = True
    ) -> Any:
        """One call of etcd's KV service (``Range``, ``Put``, ``DeleteRange``, ``Txn``): its response message.

        Over :mod:`tasklease.store_h2` (transport ``h2``) or etcd3aio's gRPC
        stub (``grpc``); either way through :meth:`call`. ``retry``: the call
        is idempotent and may be sent again (at most 3 times) after an
        UNAVAILABLE answer; a transaction is not.
        """
        deadline = timeout_s or self.config.timeout_s
        unary = self.unary
        if unary is not None:
            raw = await self.call(
                what,
                unary.call(method, request.SerializeToString(), timeout_s=deadline, retry=retry),
                timeout_s,
            )
            try:
                return getattr(self.pb, f"{method}Response").FromString(raw)
            except Exception as exc:  # protobuf's DecodeError: not etcd's message
                raise StoreUnavailable(f"etcd's answer to {what} does not decode: {exc}") from exc
        kv = self.svc().kv
        stub_method = getattr(kv._stub, method)
        attempts = None if retry else 1
        return await self.call(
            what,
            kv._rpc(stub_method, request, operation=f"KV.{method}", timeout=deadline, max_attempts=attempts),
            timeout_s,
        )

    async def call(self, what: str, coro: Any, timeout_s: float | None = None) -> Any:
        """Await one request within its deadline; its errors become :mod:`tasklease.errors` ones.

        Args:
            what: The request, as error messages name it.
            coro: The client's coroutine.
            timeout_s: The deadline (default: the configured one).
        """
        observer = self.observer
        if observer is None:
            try:
                async with asyncio.timeout(timeout_s or self.config.timeout_s):
                    return await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise wrap_error(exc, what, self.config) from exc
        operation = OPERATIONS.get(what, what)
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s or self.config.timeout_s):
                result = await coro
        except asyncio.CancelledError:
            raise  # the caller gave up: neither an answer nor an etcd error
        except Exception as exc:
            error = wrap_error(exc, what, self.config)
            observer.request(operation, time.perf_counter() - start, error_kind(error))
            raise error from exc
        observer.request(operation, time.perf_counter() - start, None)
        return result


# messages -----------------------------------------------------------------------------
def decode_kv(pb: Any) -> KV:
    """A :class:`KV` from etcd's ``KeyValue`` message."""
    return KV(
        key=pb.key.decode(),
        value=bytes(pb.value),
        create_revision=pb.create_revision,
        mod_revision=pb.mod_revision,
        version=pb.version,
        lease=pb.lease,
    )


def encode_compare(pb: Any, c: Compare) -> Any:
    """The ``Compare`` request message for ``c`` (``pb``: etcd3aio's protobuf module)."""
    msg_type = pb.Compare
    ops = {"=": msg_type.EQUAL, "!=": msg_type.NOT_EQUAL, "<": msg_type.LESS, ">": msg_type.GREATER}
    msg = msg_type(result=ops[c.op], key=c.key.encode())
    if c.target == "create":
        msg.target = msg_type.CREATE
        msg.create_revision = int(c.value)
    elif c.target == "mod":
        msg.target = msg_type.MOD
        msg.mod_revision = int(c.value)
    elif c.target == "version":
        msg.target = msg_type.VERSION
        msg.version = int(c.value)
    else:
        msg.target = msg_type.VALUE
        msg.value = c.value if isinstance(c.value, bytes) else str(c.value).encode()
    return msg


def encode_op(pb: Any, op: Op) -> Any:
    """The ``RequestOp`` request message for ``op`` (``pb``: etcd3aio's protobuf module)."""
    if isinstance(op, Put):
        return pb.RequestOp(request_put=pb.PutRequest(key=op.key.encode(), value=op.value, lease=op.lease))
    end = op.range_end.encode() if op.range_end else b""
    if isinstance(op, Delete):
        return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=op.key.encode(), range_end=end))
    return pb.RequestOp(request_range=pb.RangeRequest(key=op.key.encode(), range_end=end))


# connecting ---------------------------------------------------------------------------
def _unary_client(cfg: StoreConfig) -> UnaryClient:
    """The :mod:`tasklease.store_h2` client for ``cfg`` (TLS material read here).

    Raises:
        InvalidOption: A TLS file cannot be read or is not PEM.
    """
    endpoints = []
    for endpoint in cfg.endpoints:
        host, _, port = _ipv4_endpoint(endpoint).rpartition(":")
        endpoints.append(Endpoint(host, int(port)))
    context = None
    if cfg.uses_tls:
        try:
            if cfg.ca_file:
                context = ssl.create_default_context(cadata=_read_pem(cfg.ca_file, "CA").decode("ascii"))
            else:
                context = ssl.create_default_context()
            if cfg.cert_file and cfg.key_file:
                context.load_cert_chain(cfg.cert_file, cfg.key_file)
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise InvalidOption(f"cannot load the etcd TLS files: {exc}") from None
        context.set_alpn_protocols(["h2"])
    return UnaryClient(
        endpoints, ssl_context=context, server_name=cfg.server_name, max_receive=cfg.max_receive_bytes
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
