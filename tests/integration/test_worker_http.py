"""The ``http`` built-in against a real local HTTP server (127.0.0.1, a free port).

The server is a plain socket server in threads, so that it can misbehave on
purpose: drip a body one byte at a time, send more than anyone should read,
redirect. It records what it was asked and whether the client closed the
connection while it was still sending.

Loopback is denied by default (executors/netpolicy.py): the worker and the
contexts here allow 127.0.0.0/8 explicitly, except where the refusal is tested.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from faults.procs import until
from tasklease.executors.base import PermanentError, TaskContext, TaskError
from tasklease.executors.builtin import OUTPUT_LIMIT, Http, builtin_registry
from tasklease.executors.netpolicy import NetworkPolicy
from tasklease.keys import Keyspace
from tasklease.models import Outcome, TaskState
from tasklease.queue import assign_next
from tasklease.retry import RetryPolicy
from tasklease.store import Store
from tasklease.worker import Worker, WorkerConfig


@dataclass
class Seen:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    closed_by_client: threading.Event = field(default_factory=threading.Event)


class MisbehavingServer:
    """Answers by path:

    - ``/drip``: 200, Content-Length 10 MB, then one byte every 50 ms, for ever;
    - ``/big``: 200, Content-Length 10 MB, sent as fast as the client reads;
    - ``/chunked``: 200, 100 KiB in chunks of 10 KiB;
    - ``/close``: 200, no length, 1,000 bytes, then closes;
    - ``/redirect``: 302 to ``/target``; ``/target``: 200 ``arrived``;
    - ``/away``: 302 to ``self.away`` (a test sets it); ``/to-https``: 302 to this
      server's ``https://`` URL;
    - ``/nothing``: 204; ``/fail``: 503; ``/echo``: 200 with the request body.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.away = ""
        self.seen: list[Seen] = []
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    def requests_to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    def _accept(self) -> None:
        self.sock.settimeout(0.05)  # to notice `stop`
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                if not head and data[:1] == b"\x16":  # a TLS handshake: answer in plain HTTP
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    return
                head += data
            raw, _, body = head.partition(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
            }
            while len(body) < int(headers.get("content-length", 0)):
                body += conn.recv(65536)
            seen = Seen(method, path, headers, body)
            self.seen.append(seen)
            self._answer(conn, seen)

    def _answer(self, conn: socket.socket, seen: Seen) -> None:
        def send(data: bytes) -> bool:
            try:
                conn.sendall(data)
                return True
            except OSError:
                seen.closed_by_client.set()
                return False

        path = seen.path
        if path in ("/drip", "/big"):
            send(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
            piece, pause = (b"x", 0.05) if path == "/drip" else (b"y" * 65536, 0.0)
            sent = 0
            while not self.stop.is_set() and sent < 10_000_000 and send(piece):
                sent += len(piece)
                if pause:
                    time.sleep(pause)
        elif path == "/chunked":
            send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Twice: a\r\nX-Twice: b\r\n\r\n")
            for i in range(10):
                send(b"2800\r\n" + bytes([ord("a") + i]) * 10240 + b"\r\n")
            send(b"0\r\n\r\n")
        elif path == "/close":
            send(b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 1000)
        elif path == "/redirect":
            send(b"HTTP/1.1 302 Found\r\nLocation: /target\r\nContent-Length: 5\r\n\r\nmoved")
        elif path == "/away":
            send(b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % self.away.encode())
        elif path == "/to-https":
            location = self.url.replace("http://", "https://") + "/target"
            send(b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % location.encode())
        elif path == "/target":
            send(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\narrived")
        elif path == "/nothing":
            send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
        elif path == "/fail":
            send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown")
        else:
            send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(seen.body), seen.body))

    def close(self) -> None:
        self.stop.set()
        self.accepting.join(5)
        self.sock.close()
        for t in self.threads:
            t.join(5)


@pytest.fixture
def server() -> Iterator[MisbehavingServer]:
    s = MisbehavingServer()
    yield s
    s.close()


@pytest.fixture
async def worker(store: Store, keyspace: Keyspace) -> AsyncIterator[Worker]:
    config = WorkerConfig(
        worker_id="wh", lease_ttl_s=3, heartbeat_s=0.5, grace_s=1.0, http_allow_nets=("127.0.0.0/8",)
    )
    w = Worker(store, keyspace, builtin_registry(frozenset({"http"})), config)
    await w.start()
    yield w
    await w.kill()


LOOPBACK = NetworkPolicy.from_options(allow=["127.0.0.0/8"])


def ctx(payload: dict, timeout_s: float = 10.0, network: NetworkPolicy = LOOPBACK) -> TaskContext:
    return TaskContext("t", 1, "http", payload, timeout_s, "w", network=network)


# through a worker ----------------------------------------------------------------------------
async def test_timeout_closes_the_connection_of_a_slow_drip(client, store, keyspace, worker, server):
    task = await client.submit("http", {"url": f"{server.url}/drip"}, timeout_s=2)
    await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    final = await client.wait(task.id, timeout_s=20)
    assert final.state is TaskState.FAILED
    assert final.attempts[-1].outcome is Outcome.TIMEOUT
    assert "timed out after 2 s" in (final.error or "")
    # The server sees the connection closed: nothing is left reading the drip
    (drip,) = server.requests_to("/drip")
    await until(drip.closed_by_client.is_set, within_s=5, what="the client to close the drip's connection")


async def test_cancel_closes_the_connection(client, store, keyspace, worker, server):
    task = await client.submit("http", {"url": f"{server.url}/drip"}, timeout_s=300)
    await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    await until(lambda: server.requests_to("/drip"), within_s=10, what="the request to arrive")
    await client.cancel(task.id)
    assert (await client.wait(task.id, timeout_s=10)).state is TaskState.CANCELLED
    (drip,) = server.requests_to("/drip")
    await until(drip.closed_by_client.is_set, within_s=5, what="the client to close the drip's connection")
    assert worker.running == 0


async def test_redirects_are_recorded_not_followed(client, store, keyspace, worker, server):
    task = await client.submit("http", {"url": f"{server.url}/redirect"}, retry=RetryPolicy(max_retries=2))
    await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    final = await client.wait(task.id, timeout_s=20)
    assert final.state is TaskState.SUCCEEDED, final
    assert final.result["status"] == 302
    assert final.result["headers"]["Location"] == "/target"
    assert final.result["body"] == "moved"
    assert server.requests_to("/target") == []


# the executor itself -------------------------------------------------------------------------
async def test_follow_redirects_when_asked(server):
    result = await Http().run(ctx({"url": f"{server.url}/redirect", "follow_redirects": True}))
    assert result["status"] == 200 and result["body"] == "arrived"
    assert len(server.requests_to("/target")) == 1


async def test_body_is_cut_at_64_kib_and_the_rest_is_not_downloaded(server):
    result = await Http().run(ctx({"url": f"{server.url}/big"}))
    assert result["status"] == 200
    assert result["truncated"] is True
    assert result["body"] == "y" * OUTPUT_LIMIT
    (big,) = server.requests_to("/big")
    await until(big.closed_by_client.is_set, within_s=5, what="the client to stop reading")


async def test_chunked_body_repeated_headers_and_read_to_close(server):
    chunked = await Http().run(ctx({"url": f"{server.url}/chunked"}))
    assert chunked["truncated"] is True
    assert chunked["body"] == "".join(chr(ord("a") + i) * 10240 for i in range(10))[:OUTPUT_LIMIT]
    assert chunked["headers"]["X-Twice"] == "a, b"
    closing = await Http().run(ctx({"url": f"{server.url}/close"}))
    assert closing == {"status": 200, "headers": {}, "body": "z" * 1000, "truncated": False}
    nothing = await Http().run(ctx({"url": f"{server.url}/nothing", "method": "DELETE"}))
    assert nothing["status"] == 204 and nothing["body"] == ""


async def test_request_body_and_headers_are_sent(server):
    result = await Http().run(
        ctx({"url": f"{server.url}/echo?q=1", "method": "put", "body": {"a": [1]}, "headers": {"X-K": "v"}})
    )
    assert result["body"] == '{"a":[1]}'
    (seen,) = server.requests_to("/echo?q=1")
    assert seen.method == "PUT"
    assert seen.headers["x-k"] == "v"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["host"] == f"127.0.0.1:{server.port}"
    assert seen.headers["connection"] == "close"


async def test_failures_are_retryable_or_permanent(server):
    with pytest.raises(TaskError, match="http status 503") as err:
        await Http().run(ctx({"url": f"{server.url}/fail"}))
    assert not isinstance(err.value, PermanentError)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(TaskError, match="cannot connect") as err:
        await Http().run(ctx({"url": f"http://127.0.0.1:{port}/"}))
    assert not isinstance(err.value, PermanentError)
    with pytest.raises(TaskError, match="http request failed") as err:
        await Http().run(ctx({"url": f"https://127.0.0.1:{server.port}/echo"}))  # no TLS there
    assert not isinstance(err.value, PermanentError)
    for bad in (
        {"url": f"{server.url}/", "headers": {"X-A": "1\r\nX-Injected: 2"}},
        {"url": f"{server.url}/", "method": "GE T"},
        {"url": f"http://user:pw@127.0.0.1:{server.port}/"},
        {"url": "ftp://example.com/"},
        {"url": f"{server.url}/", "follow_redirects": "yes"},
    ):
        with pytest.raises(PermanentError):
            await Http().run(ctx(bad))
    assert all(s.path != "/" for s in server.seen)


async def test_own_deadline_closes_the_connection(server):
    with pytest.raises(TimeoutError):
        await Http().run(ctx({"url": f"{server.url}/drip"}, timeout_s=0.5))
    (drip,) = server.requests_to("/drip")
    await until(drip.closed_by_client.is_set, within_s=5, what="the client to close the drip's connection")


# which addresses: loopback, private and link-local are refused unless allowed --------------
async def test_loopback_is_refused_by_default_naming_the_rule(client, store, keyspace, server):
    config = WorkerConfig(worker_id="wh-default", lease_ttl_s=3, heartbeat_s=0.5, grace_s=1.0)
    w = Worker(store, keyspace, builtin_registry(frozenset({"http"})), config)
    await w.start()
    try:
        task = await client.submit("http", {"url": f"{server.url}/echo"}, retry=RetryPolicy(max_retries=3))
        await assign_next(store, keyspace, "default", w.id, w.lease_id, time.time())
        final = await client.wait(task.id, timeout_s=20)
    finally:
        await w.kill()
    assert final.state is TaskState.FAILED
    assert len(final.attempts) == 1, "a refused address is a permanent failure"
    error = final.error or ""
    assert "127.0.0.1 is in 127.0.0.0/8 (loopback), denied by default" in error, error
    assert "--http-allow-net 127.0.0.0/8" in error
    assert server.seen == []


async def test_a_name_that_resolves_to_loopback_is_refused(server):
    with pytest.raises(PermanentError, match=r"refused: localhost: .*(127\.0\.0\.0/8|::1/128)"):
        await Http().run(ctx({"url": f"http://localhost:{server.port}/echo"}, network=NetworkPolicy()))
    # A network denied explicitly wins over an allowed one
    denied = NetworkPolicy.from_options(allow=["127.0.0.0/8"], deny=["127.0.0.1/32"])
    with pytest.raises(PermanentError, match=r"denied by --http-deny-net 127\.0\.0\.1/32"):
        await Http().run(ctx({"url": f"{server.url}/echo"}, network=denied))
    assert server.seen == []


@pytest.fixture
def other_server() -> Iterator[MisbehavingServer]:
    s = MisbehavingServer("127.0.0.2")  # another loopback address, another port
    yield s
    s.close()


async def test_each_redirect_hop_is_checked(server, other_server):
    server.away = f"{other_server.url}/target"
    payload = {"url": f"{server.url}/away", "follow_redirects": True, "method": "POST", "body": "x"}
    only_first = NetworkPolicy.from_options(allow=["127.0.0.1/32"])
    with pytest.raises(PermanentError, match=r"127\.0\.0\.2 is in 127\.0\.0\.0/8 \(loopback\)"):
        await Http().run(ctx(payload, network=only_first))
    assert len(server.requests_to("/away")) == 1
    assert other_server.seen == [], "the redirect's target was reached"
    # Allowed: the hop is followed (a POST redirected by a 302 becomes a GET)
    result = await Http().run(ctx(payload, network=LOOPBACK))
    assert result["status"] == 200 and result["body"] == "arrived"
    assert [s.method for s in other_server.requests_to("/target")] == ["GET"]


async def test_redirects_stay_within_their_scheme(server):
    result = await Http().run(ctx({"url": f"{server.url}/to-https", "follow_redirects": True}))
    assert result["status"] == 302
    assert result["headers"]["Location"].startswith("https://")
    assert server.requests_to("/target") == []
