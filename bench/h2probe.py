"""A minimal gRPC-over-HTTP/2 client on asyncio, to measure what a call could cost (bench only).

Not a transport tasklease uses: plain TCP only, no TLS, no auth, no deadlines, no
retries, no GOAWAY or RST_STREAM handling, unary calls only. It exists to measure
the floor of one gRPC call from an asyncio process on this machine, beside
``grpc.aio`` (``bench.submit_profile``): the same etcd ``Txn`` request, framed by
hand (the request's HEADERS block encoded once per method as literals, so no HPACK
state is needed to send; the server's header blocks decoded with ``hpack`` to keep
its dynamic table in step), no threads, one ``write`` per call and the frames of
every answer read in one ``data_received``.
"""

from __future__ import annotations

import asyncio
import struct

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, WINDOW_UPDATE = 0x0, 0x1, 0x4, 0x6, 0x8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE = 0x2, 0x4
WINDOW = 1 << 30  # receive window: answers are never held back by flow control
DEFAULT_WINDOW = 65_535


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    """One HTTP/2 frame."""
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


class H2Probe(asyncio.Protocol):
    """One connection; :meth:`call` sends a unary gRPC request and returns the answer's bytes."""

    def __init__(self, authority: str) -> None:
        self.authority = authority
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._next_stream = 1
        self._calls: dict[int, tuple[asyncio.Future[bytes], bytearray]] = {}
        self._blocks: dict[str, bytes] = {}
        self._decoder = hpack.Decoder()
        self._unacked = 0

    @classmethod
    async def connect(cls, host: str, port: int) -> H2Probe:
        loop = asyncio.get_running_loop()
        _, probe = await loop.create_connection(lambda: cls(f"{host}:{port}"), host, port)
        return probe

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        settings = struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, WINDOW) + struct.pack(
            ">HI", SETTINGS_ENABLE_PUSH, 0
        )
        window = frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", WINDOW - DEFAULT_WINDOW))
        transport.write(PREFACE + frame(SETTINGS, 0, 0, settings) + window)

    def _headers(self, path: str) -> bytes:
        block = self._blocks.get(path)
        if block is None:
            fields = [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", self.authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
            encoder = hpack.Encoder()
            block = encoder.encode([hpack.NeverIndexedHeaderTuple(k, v) for k, v in fields])
            self._blocks[path] = block
        return block

    def call(self, path: str, message: bytes) -> asyncio.Future[bytes]:
        """Send ``message`` to ``path`` (e.g. ``/etcdserverpb.KV/Txn``); the answer's message bytes."""
        assert self.transport is not None
        stream = self._next_stream
        self._next_stream += 2
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._calls[stream] = (future, bytearray())
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        self.transport.write(
            frame(HEADERS, END_HEADERS, stream, self._headers(path)) + frame(DATA, END_STREAM, stream, body)
        )
        return future

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        pos = 0
        replies: list[bytes] = []
        while len(buffer) - pos >= 9:
            length = int.from_bytes(buffer[pos : pos + 3], "big")
            if len(buffer) - pos - 9 < length:
                break
            kind, flags = buffer[pos + 3], buffer[pos + 4]
            stream = int.from_bytes(buffer[pos + 5 : pos + 9], "big") & 0x7FFF_FFFF
            payload = bytes(buffer[pos + 9 : pos + 9 + length])
            pos += 9 + length
            if kind == SETTINGS and not flags & ACK:
                replies.append(frame(SETTINGS, ACK, 0, b""))
            elif kind == PING and not flags & ACK:
                replies.append(frame(PING, ACK, 0, payload))
            elif kind == HEADERS:
                self._decoder.decode(payload)  # the server's table must stay in step
                if flags & END_STREAM:
                    self._finish(stream)
            elif kind == DATA:
                call = self._calls.get(stream)
                if call is not None:
                    call[1].extend(payload)
                self._unacked += length
                if flags & END_STREAM:
                    self._finish(stream)
        del buffer[:pos]
        if self._unacked > WINDOW // 2:
            replies.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._unacked)))
            self._unacked = 0
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))

    def _finish(self, stream: int) -> None:
        call = self._calls.pop(stream, None)
        if call is not None and not call[0].done():
            call[0].set_result(bytes(call[1][5:]))  # one message: drop its 5-byte prefix
