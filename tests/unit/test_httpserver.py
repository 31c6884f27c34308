"""The HTTP endpoint without etcd: addresses, URLs, and what garbage gets (httpserver.py, health.py).

Every request here is raw bytes on a real loopback socket, so what is checked
is what a client sees on the wire; the server must answer the next request
after each of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from tasklease.errors import InvalidOption
from tasklease.health import ReadinessCheck, health_url, routes
from tasklease.httpserver import HttpAddress, HttpServer, Response


# addresses and URLs -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("9100", "127.0.0.1", 9100),
        ("0", "127.0.0.1", 0),
        ("127.0.0.1:9100", "127.0.0.1", 9100),
        ("0.0.0.0:80", "0.0.0.0", 80),
        ("localhost:9100", "localhost", 9100),
        ("[::1]:9100", "::1", 9100),
        (" 9100 ", "127.0.0.1", 9100),
    ],
)
def test_an_address_is_host_port_or_a_bare_port_on_the_loopback(text, host, port):
    address = HttpAddress.parse(text)
    assert (address.host, address.port) == (host, port)
    assert HttpAddress.parse(str(address)) == address


@pytest.mark.parametrize(
    "text", ["", "host", "host:", ":9100", "1.2.3.4:99999", "-1", "::1:9100", "[::1]", "[nope]:1", "a:b"]
)
def test_a_bad_address_is_refused(text):
    with pytest.raises(InvalidOption, match="bad HTTP address"):
        HttpAddress.parse(text)


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("9100", "http://127.0.0.1:9100/readyz"),
        ("0.0.0.0:9100", "http://127.0.0.1:9100/readyz"),
        ("[::]:9100", "http://[::1]:9100/readyz"),
        ("http://127.0.0.1:9100", "http://127.0.0.1:9100/readyz"),
        ("http://127.0.0.1:9100/", "http://127.0.0.1:9100/readyz"),
        ("http://h:9100/healthz", "http://h:9100/healthz"),
        ("http://h:9100/readyz?x=1", "http://h:9100/readyz?x=1"),
    ],
)
def test_the_health_url_defaults_to_readyz_on_a_reachable_host(given, url):
    assert health_url(given) == url


@pytest.mark.parametrize(
    "given", ["https://h:1/readyz", "http://h/readyz", "http://:9/", "http://h:x/", "nope"]
)
def test_a_bad_health_url_is_refused(given):
    with pytest.raises(InvalidOption):
        health_url(given)


# the server ---------------------------------------------------------------------------------
async def ok() -> Response:
    return Response.json(200, {"status": "ok"})


async def broken() -> Response:
    raise RuntimeError("a bug")


@pytest.fixture
async def server():
    async with HttpServer(
        {"/healthz": ok, "/broken": broken},
        HttpAddress("127.0.0.1", 0),
        max_request_bytes=1024,
        read_timeout_s=0.5,
    ) as s:
        yield s


async def exchange(server: HttpServer, data: bytes, *, half_close: bool = True) -> bytes:
    """Send ``data``, then read the whole answer (the server closes every connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        await writer.drain()
        if half_close and writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body(answer: bytes) -> dict:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


async def still_serves(server: HttpServer) -> None:
    answer = await exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status(answer) == 200, answer
    assert body(answer) == {"status": "ok"}


async def test_a_get_is_answered_once_and_closed(server):
    answer = await exchange(server, b"GET /healthz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    head = answer.partition(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 200 OK")
    assert "Connection: close" in head
    assert "Content-Type: application/json" in head
    assert body(answer) == {"status": "ok"}


async def test_head_gets_the_headers_only(server):
    answer = await exchange(server, b"HEAD /healthz HTTP/1.0\r\n\r\n")
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert status(answer) == 200
    assert b"Content-Length: 16" in head
    assert rest == b""


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"GET /nope HTTP/1.1\r\n\r\n", 404),
        (b"POST /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 405),
        (b"DELETE /healthz HTTP/1.1\r\n\r\n", 405),
        (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
        (b"GET /healthz HTTP/1.1 extra\r\n\r\n", 400),
        (b"GET healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz FTP/1.1\r\n\r\n", 400),
        (b"G(T /healthz HTTP/1.1\r\n\r\n", 400),
        (b"garbage\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\r\n", 400),  # a TLS hello
        (b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
        (b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nContent-Length: 100000\r\n\r\n", 413),
        (b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", 400),  # ends before the blank line
        (b"GET /broken HTTP/1.1\r\n\r\n", 500),
    ],
)
async def test_garbage_gets_an_error_status_and_the_server_goes_on(server, request_bytes, code):
    answer = await exchange(server, request_bytes)
    assert status(answer) == code, answer
    assert body(answer)["reason"]
    if code == 405:
        assert b"Allow: GET, HEAD" in answer
    await still_serves(server)


async def test_a_silent_client_gets_408_and_a_mute_one_nothing(server):
    # Given a client that connects and sends part of a request, then waits
    answer = await exchange(server, b"GET /healthz HTT", half_close=False)
    # Then the read timeout answers it
    assert status(answer) == 408
    # And one that sends nothing at all and hangs up gets nothing
    assert await exchange(server, b"") == b""
    await still_serves(server)


async def test_connections_beyond_the_limit_are_closed_unanswered():
    async with HttpServer({"/healthz": ok}, HttpAddress("127.0.0.1", 0), max_connections=2) as server:
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        try:
            await asyncio.sleep(0)  # let the server accept them
            # When a third arrives while two are held
            try:
                answer = await exchange(server, b"GET /healthz HTTP/1.1\r\n\r\n")
            except ConnectionResetError:
                answer = b""
            # Then it is dropped without an answer (or answered, if one of the two was not accepted yet)
            assert answer == b"" or status(answer) == 200
        finally:
            for _, w in idle:
                w.close()
        await still_serves(server)


async def test_a_port_in_use_cannot_be_bound():
    async with HttpServer({"/healthz": ok}, HttpAddress("127.0.0.1", 0)) as first:
        second = HttpServer({"/healthz": ok}, HttpAddress("127.0.0.1", first.port))
        with pytest.raises(OSError):
            await second.start()


async def test_stop_is_idempotent_and_ends_held_connections():
    server = HttpServer({"/healthz": ok}, HttpAddress("127.0.0.1", 0), read_timeout_s=60)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz")  # never finished
    await writer.drain()
    await server.stop()
    await server.stop()
    async with asyncio.timeout(10):
        with contextlib.suppress(ConnectionResetError):  # dropped: closed or reset
            assert await reader.read() == b""
    writer.close()


# the routes ---------------------------------------------------------------------------------
class FakeStore:
    def __init__(self) -> None:
        self.up = True
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def status(self):
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if not self.up:
            raise OSError("connection refused")
        return {}


async def test_routes_serve_metrics_health_and_readiness():
    registry = CollectorRegistry()
    Counter("tasklease_things", "Things", registry=registry).inc(3)
    store = FakeStore()
    component = {"ready": (True, "fine")}
    check = ReadinessCheck(store, lambda: component["ready"])  # type: ignore[arg-type]
    async with HttpServer(routes(registry, check), HttpAddress("127.0.0.1", 0)) as server:
        answer = await exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert status(answer) == 200
        assert f"Content-Type: {CONTENT_TYPE_LATEST}\r\n".encode() in answer
        families = {
            f.name: f for f in text_string_to_metric_families(answer.partition(b"\r\n\r\n")[2].decode())
        }
        assert families["tasklease_things"].samples[0].value == 3

        answer = await exchange(server, b"GET /readyz HTTP/1.1\r\n\r\n")
        assert (status(answer), body(answer)) == (200, {"status": "ready", "reason": "fine"})

        component["ready"] = (False, "draining")
        answer = await exchange(server, b"GET /readyz HTTP/1.1\r\n\r\n")
        assert (status(answer), body(answer)) == (503, {"status": "not ready", "reason": "draining"})

        store.up = False  # etcd's reason comes first
        answer = await exchange(server, b"GET /readyz HTTP/1.1\r\n\r\n")
        assert status(answer) == 503
        assert body(answer)["reason"].startswith("etcd unreachable: OSError: connection refused")


async def test_concurrent_probes_share_one_etcd_request():
    store = FakeStore()
    store.gate = asyncio.Event()
    check = ReadinessCheck(store, lambda: (True, "fine"))  # type: ignore[arg-type]
    probes = [asyncio.create_task(check()) for _ in range(5)]
    await asyncio.sleep(0)
    store.gate.set()
    assert await asyncio.gather(*probes) == [(True, "fine")] * 5
    assert store.calls == 1


async def test_an_etcd_that_does_not_answer_is_not_ready():
    store = FakeStore()
    store.gate = asyncio.Event()  # never set
    check = ReadinessCheck(store, lambda: (True, "fine"), etcd_timeout_s=0.05)  # type: ignore[arg-type]
    ready, reason = await check()
    assert not ready
    assert reason == "etcd unreachable: no answer within 0.05 s"


# the embedded stack (dev, demo): one endpoint per process ------------------------------------
def test_the_stack_gives_each_process_its_own_endpoint(tmp_path, monkeypatch):
    from tasklease.dev import Stack

    monkeypatch.setenv("TASKLEASE_HTTP", "127.0.0.1:9999")
    # Given a base port: the scheduler on it, worker-i on PORT+i, others on free ports
    stack = Stack(tmp_path, http=HttpAddress("0.0.0.0", 19100))
    assert stack.http_args("scheduler") == ["--http", "0.0.0.0:19100"]
    assert stack.http_args("worker-2") == ["--http", "0.0.0.0:19102"]
    other = stack.http_args("scheduler-b")
    assert other[1].startswith("0.0.0.0:") and other[1] != "0.0.0.0:0"
    # And the URLs printed are ones a local client can reach
    assert stack.http_urls["scheduler"] == "http://127.0.0.1:19100"
    assert stack.http_urls["worker-2"] == "http://127.0.0.1:19102"
    # And the processes never inherit the caller's TASKLEASE_HTTP (all would bind one port)
    assert "TASKLEASE_HTTP" not in stack.env()
    # Given port 0: a free port each
    stack = Stack(tmp_path, http=HttpAddress("127.0.0.1", 0))
    for name in ("scheduler", "worker-1"):
        assert HttpAddress.parse(stack.http_args(name)[1]).port != 0
    # Without http, nothing
    assert Stack(tmp_path).http_args("scheduler") == []
