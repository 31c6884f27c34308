"""store_h2's HTTP/2 handling against a scripted HTTP/2 peer on 127.0.0.1.

etcd itself is the peer in every integration and fault test (the default
transport); these cover what etcd seldom or never does on its own: header
blocks split into CONTINUATION frames, padded frames, small flow-control
windows, GOAWAY and refused streams, errors with encoded messages, answers
over the receive limit, a peer that stops answering, a dead endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import hpack
import pytest

from tasklease.store_h2 import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    H2_REFUSED_STREAM,
    HEADERS,
    PADDED,
    PING,
    RESOURCE_EXHAUSTED,
    RST_STREAM,
    SETTINGS,
    UNAVAILABLE,
    WINDOW_UPDATE,
    Endpoint,
    H2Connection,
    RpcError,
    UnaryClient,
    frame,
    grpc_timeout,
    hpack_int,
)

pytestmark = pytest.mark.timeout(30)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Peer:
    """The server side of one connection: frames in, frames out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()

    async def frame(self) -> tuple[int, int, int, bytes]:
        head = await self.reader.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        stream = int.from_bytes(head[5:9], "big") & 0x7FFF_FFFF
        return head[3], head[4], stream, await self.reader.readexactly(length)

    async def request(self) -> tuple[int, dict[str, str], bytes]:
        """The next whole request: its stream, headers and message (other frames answered or noted)."""
        headers: dict[str, str] = {}
        body = bytearray()
        while True:
            kind, flags, stream, payload = await self.frame()
            if kind == HEADERS:
                headers = cast(dict[str, str], dict(self.decoder.decode(payload)))
            elif kind == DATA:
                body += payload
                if flags & END_STREAM:
                    return stream, headers, bytes(body[5:])
            elif kind == SETTINGS and not flags & 1:
                self.send(frame(SETTINGS, 1, 0))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def headers(self, stream: int, fields: list[tuple[str, str]], flags: int = END_HEADERS) -> bytes:
        return frame(HEADERS, flags, stream, self.encoder.encode(fields))

    def answer(self, stream: int, message: bytes, status: int = 0, text: str = "") -> None:
        trailers = [("grpc-status", str(status))] + ([("grpc-message", text)] if text else [])
        self.send(
            self.headers(stream, [(":status", "200"), ("content-type", "application/grpc")])
            + frame(DATA, 0, stream, b"\x00" + len(message).to_bytes(4, "big") + message)
            + self.headers(stream, trailers, END_HEADERS | END_STREAM)
        )


Script = Callable[[Peer, int], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted(script: Script, *, settings: bytes = b"") -> AsyncIterator[tuple[Endpoint, list[int]]]:
    """A server on 127.0.0.1 running ``script(peer, connection number)`` per connection."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(connections)
        connections.append(number)
        assert await reader.readexactly(len(PREFACE)) == PREFACE
        peer = Peer(reader, writer)
        peer.send(frame(SETTINGS, 0, 0, settings))
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await script(peer, number)
            await writer.drain()
            await reader.read()  # until the client closes
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Endpoint("127.0.0.1", port), connections
    finally:
        server.close()


def client(*endpoints: Endpoint, max_receive: int = 1 << 20) -> UnaryClient:
    return UnaryClient(list(endpoints), max_receive=max_receive)


def dead_endpoint() -> Endpoint:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return Endpoint("127.0.0.1", s.getsockname()[1])


async def test_an_answer_in_continuation_and_padded_frames() -> None:
    async def script(peer: Peer, _number: int) -> None:
        stream, headers, message = await peer.request()
        assert headers[":path"] == "/etcdserverpb.KV/Range"
        assert headers["token"] == "secret"
        assert headers["grpc-timeout"] == "2000m"
        block = peer.encoder.encode([(":status", "200"), ("content-type", "application/grpc")])
        padded = bytes([3]) + b"\x00" + len(message).to_bytes(4, "big") + message + b"\x00" * 3
        trailers = peer.encoder.encode([("grpc-status", "0"), ("x-long", "v" * 300)])
        peer.send(
            frame(HEADERS, 0, stream, block[:2])
            + frame(CONTINUATION, END_HEADERS, stream, block[2:])
            + frame(DATA, PADDED, stream, padded)
            + frame(HEADERS, END_STREAM, stream, trailers[:10])
            + frame(CONTINUATION, 0, stream, trailers[10:20])
            + frame(CONTINUATION, END_HEADERS, stream, trailers[20:])
        )

    async with scripted(script) as (endpoint, _):
        c = client(endpoint)
        c.token = "secret"
        assert await c.call("Range", b"echo me" * 100, timeout_s=2.0, retry=False) == b"echo me" * 100
        await c.close()


async def test_a_large_request_waits_for_the_windows_and_arrives_whole() -> None:
    got: list[bytes] = []
    # the peer lets 1,000 bytes per stream in at first, frames of 16 KiB
    settings = struct.pack(">HI", 0x4, 1000)

    async def script(peer: Peer, _number: int) -> None:
        received = bytearray()
        stream = 0
        while True:
            kind, flags, stream, payload = await peer.frame()
            if kind == DATA:
                assert len(payload) <= 16_384
                received += payload
                # hand back exactly what arrived, a little at a time
                peer.send(frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", len(payload))))
                peer.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", len(payload))))
                if flags & END_STREAM:
                    break
        got.append(bytes(received[5:]))
        peer.answer(stream, b"ok")

    message = bytes(range(256)) * 1200  # 300 KiB: over the default 64 KiB connection window
    async with scripted(script, settings=settings) as (endpoint, _):
        c = client(endpoint)
        assert await c.call("Txn", message, timeout_s=5.0, retry=False) == b"ok"
        await c.close()
    assert got == [message]


async def test_a_status_with_an_encoded_message_is_an_rpc_error() -> None:
    async def script(peer: Peer, _number: int) -> None:
        stream, _, _ = await peer.request()
        # trailers-only: one HEADERS that ends the stream
        peer.send(
            peer.headers(
                stream,
                [
                    (":status", "200"),
                    ("grpc-status", "9"),
                    ("grpc-message", "etcdserver:%20lease%20not%20found"),
                ],
                END_HEADERS | END_STREAM,
            )
        )

    async with scripted(script) as (endpoint, _):
        c = client(endpoint)
        with pytest.raises(RpcError) as caught:
            await c.call("Put", b"x", timeout_s=2.0, retry=True)
        assert (caught.value.code, caught.value.details) == (9, "etcdserver: lease not found")
        await c.close()


async def test_an_answer_over_the_receive_limit_is_refused() -> None:
    async def script(peer: Peer, _number: int) -> None:
        stream, _, _ = await peer.request()
        peer.answer(stream, b"x" * 5000)
        kind, _, reset, _ = await peer.frame()
        while kind != RST_STREAM:
            kind, _, reset, _ = await peer.frame()
        assert reset == stream

    async with scripted(script) as (endpoint, _):
        c = client(endpoint, max_receive=4096)
        with pytest.raises(RpcError) as caught:
            await c.call("Range", b"", timeout_s=2.0, retry=True)
        assert caught.value.code == RESOURCE_EXHAUSTED
        assert "larger than max (5000 vs. 4096)" in caught.value.details
        await c.close()


@pytest.mark.parametrize("refusal", ["goaway", "refused stream"])
async def test_a_call_the_peer_did_not_take_is_sent_again_even_a_txn(refusal: str) -> None:
    seen: list[tuple[int, bytes]] = []

    async def script(peer: Peer, number: int) -> None:
        stream, _, message = await peer.request()
        seen.append((number, message))
        if number == 0:
            if refusal == "goaway":
                peer.send(frame(GOAWAY, 0, 0, struct.pack(">II", stream - 1, 0) + b"bye"))
            else:
                peer.send(frame(RST_STREAM, 0, stream, struct.pack(">I", H2_REFUSED_STREAM)))
            return
        peer.answer(stream, b"applied once")

    async with scripted(script) as (endpoint, connections):
        c = client(endpoint)
        assert await c.call("Txn", b"the txn", timeout_s=2.0, retry=False) == b"applied once"
        await c.close()
    assert seen == [(0, b"the txn"), (1, b"the txn")]
    assert len(connections) == 2


async def test_a_lost_connection_fails_a_txn_but_resends_a_read_elsewhere() -> None:
    async def drop(peer: Peer, _number: int) -> None:
        await peer.request()
        peer.writer.transport.abort()

    async def serve(peer: Peer, _number: int) -> None:
        stream, _, message = await peer.request()
        peer.answer(stream, message)

    async with scripted(drop) as (bad, _), scripted(serve) as (good, _):
        c = client(bad, good)
        with pytest.raises(RpcError) as caught:
            await c.call("Txn", b"maybe applied", timeout_s=2.0, retry=False)
        assert caught.value.code == UNAVAILABLE
        assert (
            await c.call("Txn", b"next one", timeout_s=2.0, retry=False) == b"next one"
        )  # on the other member
        await c.close()
        c = client(bad, good)
        assert await c.call("Range", b"read", timeout_s=2.0, retry=True) == b"read"
        await c.close()


async def test_a_dead_endpoint_is_skipped() -> None:
    async def serve(peer: Peer, _number: int) -> None:
        stream, _, message = await peer.request()
        peer.answer(stream, message)

    async with scripted(serve) as (good, _):
        c = client(dead_endpoint(), good)
        assert await c.call("Txn", b"hello", timeout_s=2.0, retry=False) == b"hello"
        await c.close()
    c = client(dead_endpoint())
    with pytest.raises(RpcError) as caught:
        await c.call("Range", b"", timeout_s=1.0, retry=True)
    assert caught.value.code == UNAVAILABLE and "127.0.0.1" in caught.value.details
    await c.close()


async def test_a_missed_deadline_resets_the_stream_and_a_silent_peer_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tasklease.store_h2.PING_TIMEOUT_S", 0.3)
    resets: list[int] = []
    pinged = asyncio.Event()

    async def silent(peer: Peer, _number: int) -> None:
        stream, _, _ = await peer.request()
        while True:  # never answers, not even pings
            kind, _, got, _ = await peer.frame()
            if kind == RST_STREAM:
                resets.append(got)
            elif kind == PING:
                pinged.set()
            if resets and pinged.is_set():
                assert resets == [stream]
                return

    async def serve(peer: Peer, _number: int) -> None:
        stream, _, message = await peer.request()
        peer.answer(stream, message)

    async with scripted(silent) as (quiet, _), scripted(serve) as (good, _):
        c = client(quiet, good)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await c.call("Txn", b"lost", timeout_s=0.3, retry=False)
        await asyncio.wait_for(pinged.wait(), 5)
        for _ in range(50):  # the ping goes unanswered: the connection is dropped
            if c._conn is None:
                break
            await asyncio.sleep(0.05)
        assert await c.call("Txn", b"then here", timeout_s=2.0, retry=False) == b"then here"
        await c.close()


async def test_many_calls_in_flight_each_get_their_own_answer() -> None:
    async def script(peer: Peer, _number: int) -> None:
        pending = []
        for _ in range(200):
            stream, _, message = await peer.request()
            pending.append((stream, message))
        for stream, message in reversed(pending):  # answered out of order
            peer.answer(stream, message[::-1])

    async with scripted(script) as (endpoint, _):
        c = client(endpoint)
        messages = [f"call {i}".encode() * (1 + i % 50) for i in range(200)]
        answers = await asyncio.gather(*(c.call("Txn", m, timeout_s=5.0, retry=False) for m in messages))
        assert answers == [m[::-1] for m in messages]
        await c.close()


def test_hpack_integers_and_timeouts() -> None:
    assert hpack_int(10, 7) == b"\x0a"
    assert hpack_int(127, 7) == b"\x7f\x00"
    assert hpack_int(1337, 5) == b"\x1f\x9a\x0a"  # RFC 7541 C.1.2
    assert grpc_timeout(5.0) == "5000m"
    assert grpc_timeout(0.0001) == "1m"
    assert grpc_timeout(1e6) == "1000000S"


async def test_closed_connection_refuses_new_calls() -> None:
    loop = asyncio.get_running_loop()
    conn = H2Connection("127.0.0.1:1", "http", 1024)
    with pytest.raises(RpcError):
        conn.start("/etcdserverpb.KV/Range", b"", None, 1.0)
    assert not loop.is_closed()


async def test_an_answer_over_the_receive_windows_is_read_as_they_are_given_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Windows of 100 kB (1 GiB in use): a peer that keeps to them sends 300 kB only as the
    # client gives the stream's and the connection's windows back.
    monkeypatch.setattr("tasklease.store_h2.RECEIVE_WINDOW", 100_000)
    answer = bytes(range(256)) * 1200
    updates: list[int] = []

    async def script(peer: Peer, _number: int) -> None:
        stream, _, _ = await peer.request()
        peer.send(peer.headers(stream, [(":status", "200"), ("content-type", "application/grpc")]))
        body = b"\x00" + len(answer).to_bytes(4, "big") + answer
        conn_window = stream_window = 100_000
        while body:
            while conn_window <= 0 or stream_window <= 0:
                kind, _, on, payload = await peer.frame()
                if kind == WINDOW_UPDATE:
                    increment = int.from_bytes(payload, "big")
                    updates.append(on)
                    if on == 0:
                        conn_window += increment
                    else:
                        stream_window += increment
            n = min(16_384, conn_window, stream_window, len(body))
            peer.send(frame(DATA, 0, stream, body[:n]))
            body = body[n:]
            conn_window -= n
            stream_window -= n
            await peer.writer.drain()
        peer.send(peer.headers(stream, [("grpc-status", "0")], END_HEADERS | END_STREAM))

    async with scripted(script) as (endpoint, _):
        c = client(endpoint)
        assert await c.call("Range", b"", timeout_s=5.0, retry=True) == answer
        await c.close()
    assert 0 in updates and 1 in updates  # both windows were given back


WATCH = "/etcdserverpb.Watch/Watch"


async def test_a_stream_yields_each_message_and_ends_with_the_server() -> None:
    async def script(peer: Peer, _number: int) -> None:
        kind, flags, stream, payload = await peer.frame()
        while kind != HEADERS:
            kind, flags, stream, payload = await peer.frame()
        headers = cast(dict[str, str], dict(peer.decoder.decode(payload)))
        assert "grpc-timeout" not in headers  # a watch has no deadline
        kind, flags, _, body = await peer.frame()
        assert kind == DATA and not flags & END_STREAM and body[5:] == b"create"  # request side open
        framed = b"".join(b"\x00" + len(m).to_bytes(4, "big") + m for m in (b"one", b"two" * 5000, b"three"))
        peer.send(peer.headers(stream, [(":status", "200"), ("content-type", "application/grpc")]))
        for i in range(0, len(framed), 7000):  # messages cut across frames
            peer.send(frame(DATA, 0, stream, framed[i : i + 7000]))
        peer.send(peer.headers(stream, [("grpc-status", "0")], END_HEADERS | END_STREAM))

    async with scripted(script) as (endpoint, _):
        c = client(endpoint)
        got = [m async for m in c.stream(WATCH, b"create", connect_timeout_s=2.0)]
        assert got == [b"one", b"two" * 5000, b"three"]
        await c.close()


async def test_a_stream_closed_early_is_reset_and_a_failed_one_raises() -> None:
    resets: list[int] = []

    async def script(peer: Peer, number: int) -> None:
        kind, _, stream, _ = await peer.frame()
        while kind != DATA:
            kind, _, stream, _ = await peer.frame()
        if number == 1:
            peer.send(
                peer.headers(
                    stream,
                    [(":status", "200"), ("grpc-status", "7"), ("grpc-message", "permission denied")],
                    END_HEADERS | END_STREAM,
                )
            )
            return
        peer.send(peer.headers(stream, [(":status", "200"), ("content-type", "application/grpc")]))
        peer.send(frame(DATA, 0, stream, b"\x00\x00\x00\x00\x02hi"))
        while kind != RST_STREAM:
            kind, _, got, _ = await peer.frame()
        resets.append(got)

    async with scripted(script) as (endpoint, _):
        c = client(endpoint)
        async for message in c.stream(WATCH, b"w", connect_timeout_s=2.0):
            assert message == b"hi"
            break
        c._leave(c._conn)  # type: ignore[arg-type]  # the second stream on a new connection
        with pytest.raises(RpcError) as caught:
            async for _ in c.stream(WATCH, b"w", connect_timeout_s=2.0):
                pass
        assert (caught.value.code, caught.value.details) == (7, "permission denied")
        await c.close()
    assert resets == [1]


async def test_a_silent_connection_under_an_open_stream_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tasklease.store_h2.KEEPALIVE_S", 0.2)
    monkeypatch.setattr("tasklease.store_h2.PING_TIMEOUT_S", 0.2)

    async def silent(peer: Peer, _number: int) -> None:
        while True:  # takes the stream, then answers nothing, not even pings
            await peer.frame()

    async with scripted(silent) as (endpoint, _):
        c = client(endpoint)
        with pytest.raises(RpcError) as caught:
            async with asyncio.timeout(5):
                async for _ in c.stream(WATCH, b"w", connect_timeout_s=2.0):
                    pass
        assert caught.value.code == UNAVAILABLE
        await c.close()
