"""etcd's unary KV calls over tasklease's own HTTP/2 client on asyncio (no gRPC core, no threads).

Why: one ``grpc.aio`` call costs about 0.36 ms of CPU in the calling process
(its C core runs in threads and hands every answer back to the event loop);
the same ``Txn`` framed here costs about 0.14 ms and answers sooner
(``python -m bench.submit_profile``; docs/benchmarks.md). A submit, an
assignment and every record write is one such call, so the whole system spends
less CPU per task.

Scope: the unary calls of etcd's ``KV`` service (``Range``, ``Put``,
``DeleteRange``, ``Txn``) and the ``Watch`` stream (:meth:`UnaryClient.stream`),
request and answers being the protobuf messages of the etcd client library.
Leases, authentication and status stay on ``etcd3aio``
(:mod:`tasklease.store_channel`), which is also the whole transport when
``StoreConfig.transport`` is ``"grpc"``.

What it does of HTTP/2 and gRPC (RFC 9113, gRPC over HTTP/2):

- one connection at a time, to one endpoint; on a failed connect, a lost
  connection, an ``UNAVAILABLE`` answer or a missed deadline the next call
  goes to the next endpoint (a member without a leader, or gone, is left);
- TLS with ALPN ``h2`` (CA, client certificate, the server name to check);
- the auth token as ``token`` metadata; ``grpc-timeout`` from the deadline;
  a call whose deadline passes is reset (``RST_STREAM`` CANCEL) and the
  connection is pinged: no answer within ``PING_TIMEOUT_S`` and it is dropped;
  a connection with calls open (a watch has no deadline) that received
  nothing for ``KEEPALIVE_S`` is pinged the same way;
- flow control both ways: requests are sent within the server's windows
  (split into frames of its ``MAX_FRAME_SIZE``), answers are read with a
  1 GiB window topped up as it is used (a stream's as its reader takes each
  message); answers over the receive limit are refused (``RESOURCE_EXHAUSTED``)
  like gRPC does;
- ``GOAWAY``: no new call on that connection; calls etcd did not take are sent
  again on a new one (:class:`NotSent`, safe even for a transaction);
- ``grpc-status`` and ``grpc-message`` (trailers, or trailers-only answers),
  HTTP statuses without them, and ``RST_STREAM`` codes become :class:`RpcError`
  with gRPC's status codes, which :func:`tasklease.store_errors.wrap_error` reads.

Not done: server push (refused in SETTINGS), priorities, compression
(requests are never compressed and etcd answers uncompressed unless asked).

Imports: ``hpack`` (the server's header blocks; its dynamic table must be
followed) and the standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

import hpack

log = logging.getLogger(__name__)

# gRPC status codes (grpc.StatusCode values)
OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED = 0, 1, 2, 4
PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = (
    7,
    8,
    12,
    13,
    14,
    16,
)

# HTTP/2 frame types, flags, settings and error codes (RFC 9113)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
(
    SETTINGS_ENABLE_PUSH,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_FRAME_SIZE,
) = (
    0x2,
    0x3,
    0x4,
    0x5,
)
H2_NO_ERROR, H2_PROTOCOL_ERROR, H2_REFUSED_STREAM, H2_CANCEL = 0x0, 0x1, 0x7, 0x8
H2_ENHANCE_YOUR_CALM, H2_INADEQUATE_SECURITY = 0xB, 0xC
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384
RECEIVE_WINDOW = 1 << 30  # per stream and per connection; answers are bounded by the receive limit
LAST_STREAM_ID = (1 << 31) - 1
PING_TIMEOUT_S = 2.0  # a connection that does not answer a ping within this is dropped
KEEPALIVE_S = 10.0  # a connection with calls open and silent this long is pinged
PING_EVERY_S = 5.0  # at most one ping per connection in this time (etcd's --grpc-keepalive-min-time)
CONNECT_TIMEOUT_S = 3.0  # at most this per endpoint tried (the call's own deadline bounds it too)

PATHS = {
    "Range": "/etcdserverpb.KV/Range",
    "Put": "/etcdserverpb.KV/Put",
    "DeleteRange": "/etcdserverpb.KV/DeleteRange",
    "Txn": "/etcdserverpb.KV/Txn",
}

# HTTP status -> gRPC code when an answer carries no grpc-status (gRPC's http-grpc-status-mapping)
HTTP_TO_GRPC = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED}
HTTP_UNAVAILABLE = (429, 502, 503, 504)


class RpcError(Exception):
    """A call failed with gRPC status ``code`` (an int, as ``grpc.StatusCode`` values) and ``details``."""

    def __init__(self, code: int, details: str) -> None:
        super().__init__(f"gRPC status {code}: {details}")
        self.code = code
        self.details = details


class NotSent(RpcError):
    """etcd never took the call (no connection, refused stream, after GOAWAY): sending it again is safe."""

    def __init__(self, details: str) -> None:
        super().__init__(UNAVAILABLE, details)


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 5.1) with ``prefix_bits`` bits in the first byte."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes((first | value,))
    out = bytearray((first | top,))
    value -= top
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: str, value: str) -> bytes:
    """A header field as an HPACK literal that is never indexed (no encoder state to keep)."""
    n, v = name.encode(), value.encode()
    return b"\x10" + hpack_int(len(n), 7) + n + hpack_int(len(v), 7) + v


def grpc_timeout(seconds: float) -> str:
    """The ``grpc-timeout`` header value for a deadline ``seconds`` away (at most 8 digits)."""
    ms = max(1, int(seconds * 1000))
    return f"{ms}m" if ms < 100_000_000 else f"{max(1, int(seconds))}S"


StreamItem = bytes | RpcError | None


class _Call:
    """One stream: the answer's bytes, headers and status; the request bytes not sent yet."""

    __slots__ = (
        "data",
        "future",
        "http_status",
        "message",
        "messages",
        "pending",
        "status",
        "unacked",
        "window",
    )

    def __init__(
        self, future: asyncio.Future[bytes], window: int, messages: asyncio.Queue[StreamItem] | None = None
    ) -> None:
        self.future = future
        # A stream (watch): each whole message as it arrives, then None (ended) or an error.
        self.messages = messages
        self.data = bytearray()
        self.status: int | None = None
        self.message = ""
        self.http_status: int | None = None
        self.pending = b""  # request bytes held back by flow control
        self.window = window  # what the server lets this stream send
        self.unacked = 0  # answer bytes not yet given back to this stream's window

    def fail(self, error: RpcError) -> None:
        """End the call with ``error`` (a unary call's future, or a stream's last item)."""
        if self.messages is not None:
            self.messages.put_nowait(error)
        elif not self.future.done():
            self.future.set_exception(error)


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection to one etcd member; :meth:`start` sends a unary call.

    Args:
        authority: ``host:port`` for ``:authority``.
        scheme: ``http`` or ``https``.
        max_receive: The largest answer message accepted (bytes).
    """

    def __init__(self, authority: str, scheme: str, max_receive: int) -> None:
        self.authority = authority
        self.scheme = scheme
        self.max_receive = max_receive
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.draining = False  # GOAWAY received or asked to close: no new calls
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._next_stream = 1
        self._calls: dict[int, _Call] = {}
        self._blocked: dict[int, None] = {}  # streams with request bytes held back (in order)
        self._decoder = hpack.Decoder()
        self._decoder.max_allowed_table_size = 1 << 20
        self._send_window = DEFAULT_WINDOW  # connection-level, what the server lets us send
        self._stream_window = DEFAULT_WINDOW  # the server's SETTINGS_INITIAL_WINDOW_SIZE
        self._max_frame = DEFAULT_FRAME
        self._max_streams = 1 << 31
        self._room: asyncio.Event | None = None  # set when a stream closes under max_streams
        self._unacked = 0  # answer bytes not yet given back to the connection window
        self._pings: list[asyncio.Future[None]] = []
        self._blocks: dict[str, bytes] = {}
        self._continuing: tuple[int, bytearray, bool] | None = None  # a header block awaiting CONTINUATION
        self.last_ping = -PING_EVERY_S  # loop time of the last ping sent
        self.last_received = asyncio.get_running_loop().time()  # loop time bytes last arrived

    # asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the preface, our SETTINGS and the connection's receive window."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        settings = (
            struct.pack(">HI", SETTINGS_ENABLE_PUSH, 0)
            + struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, RECEIVE_WINDOW)
            + struct.pack(">HI", SETTINGS_MAX_FRAME_SIZE, 1 << 20)
        )
        window = frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", RECEIVE_WINDOW - DEFAULT_WINDOW))
        transport.write(PREFACE + frame(SETTINGS, 0, 0, settings) + window)

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every call in flight with UNAVAILABLE (they may or may not have been applied)."""
        self.closed = self.draining = True
        self.transport = None
        reason = f"the connection to etcd at {self.authority} was lost" + (f" ({exc})" if exc else "")
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call.fail(RpcError(UNAVAILABLE, reason))
        for ping in self._pings:
            if not ping.done():
                ping.set_exception(ConnectionError(reason))
        self._pings.clear()
        if self._room is not None:
            self._room.set()
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        """Read every whole frame received; answer what must be answered in one write."""
        self.last_received = asyncio.get_running_loop().time()
        buffer = self._buffer
        buffer += data
        pos, size = 0, len(buffer)
        out: list[bytes] = []
        try:
            while size - pos >= 9:
                length = int.from_bytes(buffer[pos : pos + 3], "big")
                if size - pos - 9 < length:
                    break
                kind, flags = buffer[pos + 3], buffer[pos + 4]
                stream = int.from_bytes(buffer[pos + 5 : pos + 9], "big") & 0x7FFF_FFFF
                payload = bytes(buffer[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._frame(kind, flags, stream, payload, out)
        except _ProtocolError as exc:
            log.warning("etcd at %s broke HTTP/2: %s; connection dropped", self.authority, exc)
            self._abort(frame(GOAWAY, 0, 0, struct.pack(">II", 0, H2_PROTOCOL_ERROR)))
            return
        del buffer[:pos]
        if self._unacked > RECEIVE_WINDOW // 2:
            out.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._unacked)))
            self._unacked = 0
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    # frames --------------------------------------------------------------------------------
    def _frame(self, kind: int, flags: int, stream: int, payload: bytes, out: list[bytes]) -> None:
        if kind == DATA:
            counted = len(payload)  # flow control counts the whole payload, padding included
            self._unacked += counted
            call = self._calls.get(stream)
            if call is None:
                return  # a stream already reset or finished
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            call.data += payload
            if call.messages is not None:
                call.unacked += counted - len(payload)  # padding: given back with the next message taken
                self._messages(stream, call, out)
            else:
                call.unacked += counted
                if call.unacked > RECEIVE_WINDOW // 2:  # only an answer over 512 MiB gets here
                    out.append(frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", call.unacked)))
                    call.unacked = 0
            if len(call.data) >= 5 and int.from_bytes(call.data[1:5], "big") > self.max_receive:
                size = int.from_bytes(call.data[1:5], "big")
                self._fail(
                    stream,
                    RpcError(
                        RESOURCE_EXHAUSTED,
                        f"received message larger than max ({size} vs. {self.max_receive})",
                    ),
                    out,
                )
                return
            if flags & END_STREAM:
                self._finish(stream)
        elif kind in (HEADERS, CONTINUATION):
            self._headers(kind, flags, stream, payload)
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
                out.append(frame(SETTINGS, ACK, 0))
        elif kind == WINDOW_UPDATE:
            increment = int.from_bytes(payload[:4], "big") & 0x7FFF_FFFF
            if stream == 0:
                self._send_window += increment
                self._flush(out)
            elif (call := self._calls.get(stream)) is not None:
                call.window += increment
                self._flush(out)
        elif kind == PING:
            if flags & ACK:
                if self._pings:
                    ping = self._pings.pop(0)
                    if not ping.done():
                        ping.set_result(None)
            else:
                out.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            code = int.from_bytes(payload[:4], "big")
            self._reset_by_server(stream, code)
        elif kind == GOAWAY:
            last, code = struct.unpack(">II", payload[:8])
            self._goaway(last & 0x7FFF_FFFF, code, payload[8:])
        elif kind == PUSH_PROMISE:
            raise _ProtocolError("a PUSH_PROMISE although push is off")
        # PRIORITY and unknown frame types are ignored (RFC 9113 4.1, 5.5)

    def _messages(self, stream: int, call: _Call, out: list[bytes]) -> None:
        """Hand a stream's whole messages to its reader (their bytes are given back as it takes them)."""
        data = call.data
        assert call.messages is not None
        while len(data) >= 5:
            size = int.from_bytes(data[1:5], "big")
            if size > self.max_receive or len(data) < 5 + size:
                return  # over the limit (refused by the caller) or not whole yet
            if data[0]:
                self._fail(stream, RpcError(INTERNAL, "etcd's message was compressed (not asked for)"), out)
                return
            call.messages.put_nowait(bytes(data[5 : 5 + size]))
            del data[: 5 + size]

    def taken(self, stream: int, size: int) -> None:
        """A stream's reader took a message of ``size`` bytes: give them back to its window."""
        call = self._calls.get(stream)
        if call is None or self.transport is None:
            return
        call.unacked += size + 5
        if call.unacked > RECEIVE_WINDOW // 2:
            self.transport.write(frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", call.unacked)))
            call.unacked = 0

    def _headers(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        """A HEADERS frame or its CONTINUATION: the block is decoded once whole (RFC 9113 6.10)."""
        if kind == HEADERS:
            if self._continuing is not None:
                raise _ProtocolError("HEADERS inside another header block")
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            block, end_stream = bytearray(payload), bool(flags & END_STREAM)
        else:
            if self._continuing is None or self._continuing[0] != stream:
                raise _ProtocolError("a CONTINUATION without its HEADERS")
            _, block, end_stream = self._continuing
            block += payload
        if not flags & END_HEADERS:
            self._continuing = (stream, block, end_stream)
            return
        self._continuing = None
        try:
            fields = self._decoder.decode(bytes(block), raw=True)
        except hpack.HPACKError as exc:
            raise _ProtocolError(f"undecodable header block: {exc}") from None
        call = self._calls.get(stream)
        if call is None:
            return  # the table is kept in step; the stream is gone
        for name, value in fields:
            if name == b":status":
                call.http_status = int(value)
            elif name == b"grpc-status":
                call.status = int(value)
            elif name == b"grpc-message":
                call.message = unquote(value.decode("utf-8", "replace"))
        if end_stream:
            self._finish(stream)

    def _settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - len(payload) % 6, 6):
            ident, value = struct.unpack(">HI", payload[i : i + 6])
            if ident == SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self._stream_window
                self._stream_window = value
                for call in self._calls.values():
                    call.window += delta
            elif ident == SETTINGS_MAX_FRAME_SIZE:
                self._max_frame = value
            elif ident == SETTINGS_MAX_CONCURRENT_STREAMS:
                self._max_streams = value

    def _finish(self, stream: int) -> None:
        call = self._calls.pop(stream, None)
        self._blocked.pop(stream, None)
        self._stream_closed()
        if call is None or call.future.done():
            return
        status = call.status
        if call.messages is not None and status == OK:
            if call.data:
                call.fail(RpcError(INTERNAL, "etcd's stream ended inside a message"))
            else:
                call.messages.put_nowait(None)
            return
        if status is None:
            http = call.http_status
            if http is not None and http != 200:
                code = UNAVAILABLE if http in HTTP_UNAVAILABLE else HTTP_TO_GRPC.get(http, UNKNOWN)
                call.fail(RpcError(code, f"HTTP status {http} from etcd at {self.authority}"))
            else:
                call.fail(RpcError(INTERNAL, "etcd's answer carried no grpc-status"))
        elif status != OK:
            call.fail(RpcError(status, call.message))
        elif len(call.data) < 5 or len(call.data) != 5 + int.from_bytes(call.data[1:5], "big"):
            call.future.set_exception(RpcError(INTERNAL, "etcd's answer was not one whole gRPC message"))
        elif call.data[0]:
            call.future.set_exception(RpcError(INTERNAL, "etcd's answer was compressed (not asked for)"))
        else:
            call.future.set_result(bytes(memoryview(call.data)[5:]))

    def _fail(self, stream: int, error: RpcError, out: list[bytes]) -> None:
        call = self._calls.pop(stream, None)
        self._blocked.pop(stream, None)
        self._stream_closed()
        out.append(frame(RST_STREAM, 0, stream, struct.pack(">I", H2_CANCEL)))
        if call is not None:
            call.fail(error)

    def _reset_by_server(self, stream: int, code: int) -> None:
        call = self._calls.pop(stream, None)
        self._blocked.pop(stream, None)
        self._stream_closed()
        if call is None or call.future.done():
            return
        if code == H2_REFUSED_STREAM:
            call.fail(NotSent(f"etcd at {self.authority} refused the stream"))
            return
        grpc_code = {
            H2_CANCEL: CANCELLED,
            H2_ENHANCE_YOUR_CALM: RESOURCE_EXHAUSTED,
            H2_INADEQUATE_SECURITY: PERMISSION_DENIED,
        }.get(code, INTERNAL)
        call.fail(RpcError(grpc_code, f"etcd at {self.authority} reset the stream (code {code})"))

    def _goaway(self, last: int, code: int, debug: bytes) -> None:
        self.draining = True
        text = debug.decode("utf-8", "replace")
        if code != H2_NO_ERROR:
            log.info("etcd at %s closes the connection: code %d %s", self.authority, code, text)
        for stream in [s for s in self._calls if s > last]:
            call = self._calls.pop(stream)
            self._blocked.pop(stream, None)
            call.fail(NotSent(f"etcd at {self.authority} is closing the connection"))
        self._stream_closed()

    def _stream_closed(self) -> None:
        if self._room is not None and len(self._calls) < self._max_streams:
            self._room.set()
        if self.draining and not self._calls and self.transport is not None:
            self.transport.close()

    def _abort(self, last_words: bytes = b"") -> None:
        if self.transport is not None:
            if last_words:
                self.transport.write(last_words)
            self.transport.abort()

    # sending -------------------------------------------------------------------------------
    def _header_block(self, path: str, token: str | None, timeout_s: float | None) -> bytes:
        block = self._blocks.get(path)
        if block is None:
            block = (
                b"\x83"  # :method POST (static table 3)
                + (b"\x87" if self.scheme == "https" else b"\x86")  # :scheme
                + literal(":path", path)
                + literal(":authority", self.authority)
                + literal("content-type", "application/grpc")
                + literal("te", "trailers")
            )
            self._blocks[path] = block
        if timeout_s is not None:
            block += literal("grpc-timeout", grpc_timeout(timeout_s))
        if token:
            block += literal("token", token)
        return block

    async def room(self) -> None:
        """Wait until a stream may be opened (the server's MAX_CONCURRENT_STREAMS)."""
        while len(self._calls) >= self._max_streams and not self.closed:
            self._room = self._room or asyncio.Event()
            self._room.clear()
            await self._room.wait()

    def start(
        self,
        path: str,
        message: bytes,
        token: str | None,
        timeout_s: float | None,
        *,
        stream_of: bool = False,
    ) -> tuple[int, _Call]:
        """Send one call: its stream and its :class:`_Call` (``future``: the answer's message).

        ``stream_of``: a streaming call (a watch): the request side stays open,
        no deadline, the answers arrive one by one in ``messages``.

        Raises:
            NotSent: The connection is closed or closing.
        """
        transport = self.transport
        if transport is None or self.draining or self._next_stream > LAST_STREAM_ID:
            self.draining = True
            raise NotSent(f"the connection to etcd at {self.authority} is closing")
        stream = self._next_stream
        self._next_stream += 2
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        call = _Call(future, self._stream_window, asyncio.Queue() if stream_of else None)
        self._calls[stream] = call
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        head = frame(HEADERS, END_HEADERS, stream, self._header_block(path, token, timeout_s))
        if len(body) <= min(self._send_window, call.window, self._max_frame):
            self._send_window -= len(body)
            call.window -= len(body)
            transport.write(head + frame(DATA, 0 if stream_of else END_STREAM, stream, body))
            return stream, call
        out = [head]
        call.pending = body
        self._blocked[stream] = None
        self._flush(out)
        transport.write(b"".join(out))
        return stream, call

    def _flush(self, out: list[bytes]) -> None:
        """Send what the windows allow of the requests held back, oldest first."""
        for stream in list(self._blocked):
            call = self._calls.get(stream)
            if call is None:
                self._blocked.pop(stream, None)
                continue
            while call.pending and self._send_window > 0 and call.window > 0:
                n = min(len(call.pending), self._send_window, call.window, self._max_frame)
                chunk, call.pending = call.pending[:n], call.pending[n:]
                self._send_window -= n
                call.window -= n
                last = not call.pending and call.messages is None
                out.append(frame(DATA, END_STREAM if last else 0, stream, chunk))
            if not call.pending:
                self._blocked.pop(stream, None)
            if self._send_window <= 0:
                break

    def cancel(self, stream: int) -> None:
        """Give up a call (its deadline passed or its caller was cancelled): reset its stream."""
        call = self._calls.pop(stream, None)
        self._blocked.pop(stream, None)
        if call is not None and self.transport is not None:
            self.transport.write(frame(RST_STREAM, 0, stream, struct.pack(">I", H2_CANCEL)))
        self._stream_closed()

    @property
    def busy(self) -> bool:
        """Whether any call is open on this connection."""
        return bool(self._calls)

    async def alive(self) -> bool:
        """Ping the server; whether it answered within ``PING_TIMEOUT_S``."""
        if self.transport is None:
            return False
        ping: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings.append(ping)
        self.transport.write(frame(PING, 0, 0, b"tasklea\x00"))
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                await ping
        except (TimeoutError, ConnectionError):
            return False
        return True

    def close(self) -> None:
        """Close now (calls in flight fail with UNAVAILABLE)."""
        self.draining = True
        if self.transport is not None:
            self.transport.write(frame(GOAWAY, 0, 0, struct.pack(">II", 0, H2_NO_ERROR)))
            self.transport.close()

    def retire(self) -> None:
        """No new calls here; close once the calls in flight are answered."""
        self.draining = True
        self._stream_closed()


def _factory(authority: str, scheme: str, max_receive: int) -> Callable[[], H2Connection]:
    return lambda: H2Connection(authority, scheme, max_receive)


class _ProtocolError(Exception):
    """The server broke HTTP/2 framing: the connection is dropped."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One etcd member to dial: its address (an IPv4 address) and port."""

    host: str
    port: int


class UnaryClient:
    """Unary calls to etcd's KV service over one :class:`H2Connection` at a time.

    Args:
        endpoints: The members, tried in turn.
        ssl_context: TLS (with ALPN ``h2``), or None for plain TCP.
        server_name: The name checked in the members' certificates (TLS).
        max_receive: The largest answer accepted.

    ``token`` is the auth token sent with every call (None: none).
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
        max_receive: int,
    ) -> None:
        if not endpoints:
            raise ValueError("no endpoint")
        self.endpoints = list(endpoints)
        self.ssl_context = ssl_context
        self.server_name = server_name
        self.max_receive = max_receive
        self.token: str | None = None
        self._next = 0  # the endpoint the next connection dials first
        self._conn: H2Connection | None = None
        self._connecting: asyncio.Task[H2Connection] | None = None
        self._closed = False
        self._checks: set[asyncio.Task[None]] = set()  # pings after a missed deadline; keep-alives
        self._checking = False  # a ping after a missed deadline is under way

    async def call(self, method: str, request: bytes, *, timeout_s: float, retry: bool) -> bytes:
        """Send ``request`` to ``KV/method``; the answer's message bytes.

        A call etcd never took is sent again (on the next endpoint) until the
        caller's deadline; one etcd may have taken is sent again only if
        ``retry`` (idempotent calls: reads, puts, deletes), at most 3 times.

        Raises:
            RpcError: etcd's status, or UNAVAILABLE (no endpoint could be reached,
                or the connection was lost with the call in flight).
        """
        path = PATHS[method]
        attempts = unsent = 0  # answered UNAVAILABLE (maybe taken) / never taken
        backoff = 0.05
        while True:
            try:
                conn = await self._connection(timeout_s)
                await conn.room()
                stream, started = conn.start(path, request, self.token, timeout_s)
            except NotSent:
                unsent += 1
            except RpcError:  # no endpoint could be reached: nothing was sent
                attempts += 1
                if attempts >= 3:
                    raise
            else:
                try:
                    return await started.future
                except asyncio.CancelledError:
                    conn.cancel(stream)
                    self._check(conn)
                    raise
                except NotSent:
                    self._leave(conn)
                    unsent += 1
                except RpcError as exc:
                    if exc.code != UNAVAILABLE:
                        raise
                    self._leave(conn)
                    attempts += 1
                    if not retry or attempts >= 3:
                        raise
            if unsent > 1 or attempts:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def stream(
        self, path: str, request: bytes, *, connect_timeout_s: float
    ) -> AsyncGenerator[bytes, None]:
        """Open a streaming call (``/etcdserverpb.Watch/Watch``) with ``request``; its answers, one message each.

        The request side stays open and the call has no deadline; it ends when
        the server ends it (the iterator stops) or fails (:class:`RpcError`:
        UNAVAILABLE when the connection is lost, or refused before etcd took
        it). Closing the iterator resets the stream.

        Raises:
            RpcError: No endpoint could be reached, or the stream failed.
        """
        conn = await self._connection(connect_timeout_s)
        await conn.room()
        stream, call = conn.start(path, request, self.token, None, stream_of=True)
        messages = call.messages
        assert messages is not None
        try:
            while True:
                item = await messages.get()
                if item is None:
                    return
                if isinstance(item, RpcError):
                    if item.code == UNAVAILABLE:
                        self._leave(conn)
                    raise item
                conn.taken(stream, len(item))
                yield item
        finally:
            conn.cancel(stream)

    async def _connection(self, timeout_s: float) -> H2Connection:
        conn = self._conn
        if conn is not None and not conn.draining:
            return conn
        if self._closed:
            raise NotSent("the etcd client is closed")
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._dial(timeout_s))
        return await asyncio.shield(self._connecting)

    async def _dial(self, timeout_s: float) -> H2Connection:
        """Connect to the next endpoint that answers (each tried once, in turn)."""
        loop = asyncio.get_running_loop()
        errors: list[str] = []
        for _ in range(len(self.endpoints)):
            endpoint = self.endpoints[self._next % len(self.endpoints)]
            authority = f"{endpoint.host}:{endpoint.port}"
            scheme = "https" if self.ssl_context is not None else "http"
            try:
                async with asyncio.timeout(min(CONNECT_TIMEOUT_S, timeout_s)):
                    _, conn = await loop.create_connection(
                        _factory(authority, scheme, self.max_receive),
                        endpoint.host,
                        endpoint.port,
                        ssl=self.ssl_context,
                        server_hostname=self.server_name if self.ssl_context is not None else None,
                    )
                if self.ssl_context is not None:
                    assert conn.transport is not None
                    alpn = conn.transport.get_extra_info("ssl_object").selected_alpn_protocol()
                    if alpn != "h2":
                        conn.close()
                        raise ConnectionError(
                            f"TLS handshake failed: the server did not agree to HTTP/2 ({alpn})"
                        )
            except ssl.SSLCertVerificationError as exc:
                errors.append(f"{authority}: TLS handshake failed ({exc.reason}: {exc.verify_message})")
            except ssl.SSLError as exc:
                errors.append(f"{authority}: TLS handshake failed ({exc.reason or exc})")
            except (OSError, TimeoutError) as exc:
                errors.append(f"{authority}: {exc or type(exc).__name__}")
            else:
                if self._closed:
                    conn.close()
                    raise NotSent("the etcd client is closed")
                self._conn = conn
                self._watch_over(conn)
                return conn
            self._next += 1
        raise RpcError(UNAVAILABLE, "; ".join(errors))

    def _leave(self, conn: H2Connection) -> None:
        """Calls go to the next endpoint from now on; ``conn`` closes once its calls end."""
        if self._conn is conn:
            self._conn = None
            self._next += 1
        conn.retire()

    def _watch_over(self, conn: H2Connection) -> None:
        """Ping ``conn`` whenever it holds calls but nothing arrived for ``KEEPALIVE_S``.

        A watch has no deadline: without this, a connection that died silently
        (a network cut, a frozen member) would hold it forever. No ping while
        no call is open (etcd counts those against its keep-alive policy).
        """

        async def keepalive() -> None:
            loop = asyncio.get_running_loop()
            while not conn.closed:
                await asyncio.sleep(KEEPALIVE_S)
                if conn.closed or not conn.busy or loop.time() - conn.last_received < KEEPALIVE_S:
                    continue
                conn.last_ping = loop.time()
                if not await conn.alive():
                    log.info("etcd at %s did not answer a keep-alive ping: connecting again", conn.authority)
                    self._drop(conn)
                    return

        task = asyncio.get_running_loop().create_task(keepalive())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    def _drop(self, conn: H2Connection) -> None:
        """``conn`` is dead: the next call dials the next endpoint; its calls fail now."""
        if self._conn is conn:
            self._conn = None
            self._next += 1
        conn.close()
        if conn.transport is not None:
            conn.transport.abort()

    def _check(self, conn: H2Connection) -> None:
        """After a missed deadline: drop ``conn`` unless it answers a ping."""
        now = asyncio.get_running_loop().time()
        if conn.closed or self._checking or now - conn.last_ping < PING_EVERY_S:
            return
        conn.last_ping = now

        async def check() -> None:
            if not await conn.alive():
                log.info("etcd at %s did not answer a ping: connecting again", conn.authority)
                self._drop(conn)

        self._checking = True
        task = asyncio.get_running_loop().create_task(check())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)
        task.add_done_callback(lambda _: setattr(self, "_checking", False))

    async def close(self) -> None:
        """Close the connection; calls in flight fail. Idempotent."""
        self._closed = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        for task in list(self._checks):
            task.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await conn.lost
