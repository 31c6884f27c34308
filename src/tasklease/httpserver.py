"""A small HTTP/1.1 server on the process's event loop: ``/metrics``, ``/healthz``, ``/readyz``.

Why not a framework or prometheus_client's own ``start_http_server``: that one
serves from a thread (wsgiref), so a readiness check could not await the
process's etcd connection, and its reads are unbounded. Three GET routes need
no framework; this is ``asyncio.start_server`` with every read bounded.

What it speaks (and why it is enough for Prometheus, load balancers and
container health checks):

- one request per connection: every response says ``Connection: close``;
- ``GET`` and ``HEAD`` (the same response without its body); any other method
  on a known path is ``405`` with ``Allow: GET, HEAD``; an unknown path ``404``;
  the query string is ignored;
- the request line and headers together at most ``max_request_bytes`` (8 KiB,
  else ``431``), at most ``MAX_HEADERS`` header lines; a body is read and
  dropped if its ``Content-Length`` fits that budget too (else ``413``); a
  chunked body is refused (``400``);
- the whole request must arrive within ``read_timeout_s`` (else ``408``) and the
  response must be taken within it too, so a slow or silent client holds a
  connection for a bounded time; at most ``max_connections`` connections at
  once (the next ones are closed unanswered);
- anything malformed is ``400``, a version other than ``HTTP/1.0``/``1.1`` is
  ``505``; a handler that raises is ``500`` (logged once per path and error
  type). Nothing a client sends stops the server.

It binds ``127.0.0.1`` unless told otherwise (:class:`HttpAddress`): metrics
and health are for the local Prometheus or the orchestrator, not the world.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

import orjson

from tasklease.errors import InvalidOption

log = logging.getLogger("tasklease.http")

DEFAULT_HOST = "127.0.0.1"
MAX_REQUEST_BYTES = 8192  # request line + headers (and a body, which is dropped)
MAX_HEADERS = 100
READ_TIMEOUT_S = 5.0  # to receive a whole request; to hand over a whole response
MAX_CONNECTIONS = 64
ALLOWED_METHODS = ("GET", "HEAD")

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token (method, header name)
_VERSION = re.compile(r"HTTP/(\d)\.(\d)")


@dataclass(frozen=True, slots=True)
class HttpAddress:
    """Where the server listens: a host (name or IP) and a TCP port (0: a free one).

    Attributes:
        host: The interface to bind (``127.0.0.1`` by default; ``0.0.0.0`` for every one).
        port: The TCP port.
    """

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HttpAddress:
        """Read ``HOST:PORT``, ``[IPv6]:PORT`` or a bare ``PORT`` (which means ``127.0.0.1:PORT``).

        Raises:
            InvalidOption: Not an address of that form, or a port outside 0..65535.
        """
        raw = text.strip()
        host, port_text = DEFAULT_HOST, raw
        if raw.startswith("["):
            end = raw.find("]")
            if end < 0 or raw[end + 1 : end + 2] != ":":
                raise InvalidOption(f"bad HTTP address {text!r}: use HOST:PORT, [IPv6]:PORT or PORT")
            host, port_text = raw[1:end], raw[end + 2 :]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise InvalidOption(f"bad HTTP address {text!r}: {host!r} is not an IPv6 address") from None
        elif ":" in raw:
            host, _, port_text = raw.rpartition(":")
            if not host or ":" in host:
                raise InvalidOption(f"bad HTTP address {text!r}: use HOST:PORT, [IPv6]:PORT or PORT")
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise InvalidOption(f"bad HTTP address {text!r}: the port must be a number in 0..65535")
        return cls(host, int(port_text))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Response:
    """What a handler answers.

    Attributes:
        status: The HTTP status code.
        body: The body's bytes.
        content_type: Its ``Content-Type``.
    """

    status: int
    body: bytes = b""
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, value: Any) -> Response:
        """``value`` as one line of JSON, newline-terminated."""
        return cls(status, orjson.dumps(value) + b"\n")


Handler = Callable[[], Awaitable[Response]]


class _Refused(Exception):
    """A request answered with an error status without reaching a handler."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str


class HttpServer:
    """Serves ``routes`` (path -> handler) over HTTP/1.1; see the module docstring for the protocol.

    Use ``async with HttpServer(...)`` or :meth:`start` / :meth:`stop`.

    Args:
        routes: Handlers by exact path (``/metrics``...). Each is awaited per
            request, on the event loop; it must not block.
        address: Where to listen.
        max_request_bytes: Budget of the request line and headers (and of a body).
        read_timeout_s: Time for a whole request to arrive, and for a response to be taken.
        max_connections: Connections served at once.
    """

    def __init__(
        self,
        routes: Mapping[str, Handler],
        address: HttpAddress,
        *,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        read_timeout_s: float = READ_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.routes = dict(routes)
        self.address = address
        self.max_request_bytes = max_request_bytes
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        # Connection tasks being served: added and removed by _serve only; cancelled by stop().
        self._connections: set[asyncio.Task[Any]] = set()
        # (path, error type) already logged by _dispatch, so a failing handler logs once.
        self._logged: set[tuple[str, str]] = set()

    @property
    def port(self) -> int:
        """The port it listens on (the one picked, when the address said 0)."""
        if self._server is None or not self._server.sockets:
            return self.address.port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the listening socket."""
        host = f"[{self.address.host}]" if ":" in self.address.host else self.address.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving.

        Raises:
            OSError: The address cannot be bound (in use, not local...).
        """
        if self._server is not None:
            return
        # The stream's buffer limit bounds one header line; _read_head bounds the total.
        self._server = await asyncio.start_server(
            self._serve, self.address.host, self.address.port, limit=self.max_request_bytes
        )

    async def stop(self) -> None:
        """Stop listening and drop the connections in flight. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.read_timeout_s):
                await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # one connection ------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._connections) >= self.max_connections:
            writer.transport.abort()
            return
        self._connections.add(task)
        answered = False
        try:
            await self._answer(reader, writer)
            answered = True
        except (ConnectionError, TimeoutError):
            pass  # the client went away, or would not take the answer
        except asyncio.CancelledError:
            # stop() ends it. This task is the connection's own, and asyncio's
            # stream callback logs an error for a connection task that ends
            # cancelled: end it normally instead (the connection is dropped below).
            pass
        except Exception:
            log.exception("HTTP connection failed", extra={"component": "http"})
        finally:
            self._connections.discard(task)
            if answered:
                writer.close()  # after what is buffered is sent
            else:
                writer.transport.abort()  # nothing more to send, or a client that does not read

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head_only = False
        try:
            async with asyncio.timeout(self.read_timeout_s):
                request = await self._read_request(reader)
        except TimeoutError:
            response = _error(408, "the request did not arrive in time")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return  # closed before sending anything (a port probe): nobody to answer
            response = _error(400, "incomplete request")
        except _Refused as exc:
            response = _error(exc.status, exc.reason)
        else:
            head_only = request.method == "HEAD"
            response = await self._dispatch(request)
        async with asyncio.timeout(self.read_timeout_s):
            writer.write(_encode(response, head_only=head_only))
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

    async def _read_request(self, reader: asyncio.StreamReader) -> _Request:
        budget = self.max_request_bytes
        lines: list[str] = []
        while True:
            try:
                raw = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                raise _Refused(431, "request line or headers too large") from None
            except asyncio.IncompleteReadError as exc:
                if lines or exc.partial:
                    raise _Refused(400, "incomplete request") from None
                raise
            budget -= len(raw)
            if budget < 0:
                raise _Refused(431, "request line or headers too large")
            line = raw.rstrip(b"\r\n")
            if not line:
                if not lines:
                    continue  # RFC 9112 2.2: ignore empty lines before the request line
                break
            try:
                lines.append(line.decode("ascii"))
            except UnicodeDecodeError:
                raise _Refused(400, "request is not ASCII") from None
            if len(lines) > MAX_HEADERS + 1:
                raise _Refused(431, "too many headers")
        method, path = _request_line(lines[0])
        headers = _headers(lines[1:])
        if "transfer-encoding" in headers:
            raise _Refused(400, "request bodies are not accepted")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise _Refused(400, "bad Content-Length")
        length = int(length_text)
        if length > budget:
            raise _Refused(413, "request body too large")
        if length:
            await reader.readexactly(length)  # dropped: no route takes a body
        return _Request(method, path)

    async def _dispatch(self, request: _Request) -> Response:
        handler = self.routes.get(request.path)
        if handler is None:
            return _error(404, f"no such path (try {', '.join(sorted(self.routes))})")
        if request.method not in ALLOWED_METHODS:
            return _error(405, f"method {request.method} not allowed")
        try:
            return await handler()
        except Exception as exc:
            key = (request.path, type(exc).__name__)
            if key not in self._logged:
                self._logged.add(key)
                log.exception("HTTP handler of %s failed", request.path, extra={"component": "http"})
            return _error(500, f"{type(exc).__name__}")


def _request_line(line: str) -> tuple[str, str]:
    parts = line.split(" ")
    if len(parts) != 3:
        raise _Refused(400, "bad request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise _Refused(400, "bad method")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise _Refused(400, "bad HTTP version")
    if match.group(1) != "1":
        raise _Refused(505, "only HTTP/1.0 and HTTP/1.1 are served")
    if not target.startswith("/"):
        raise _Refused(400, "the target must be a path")
    path = target.split("?", 1)[0].split("#", 1)[0]
    return method, path


def _headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise _Refused(400, "bad header line")
        key = name.lower()
        value = value.strip()
        if key in headers and key in ("content-length", "host"):
            raise _Refused(400, f"repeated {name} header")
        headers[key] = value
    return headers


def _error(status: int, reason: str) -> Response:
    return Response.json(status, {"status": http.HTTPStatus(status).phrase.lower(), "reason": reason})


def _encode(response: Response, *, head_only: bool) -> bytes:
    phrase = http.HTTPStatus(response.status).phrase
    lines = [
        f"HTTP/1.1 {response.status} {phrase}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if response.status == 405:
        lines.append(f"Allow: {', '.join(ALLOWED_METHODS)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + response.body
