"""A small HTTP/1.1 client on asyncio streams, for the ``http`` built-in task type (stdlib only).

Why not ``urllib`` in a thread: a thread cannot be cancelled. At a timeout or
a cancel the worker would stop waiting, but the thread would go on reading
(a server that drips one byte per second keeps every socket read under its
timeout, so it reads for as long as the server likes), and each such attempt
would hold a thread of the default pool. Here the request is a coroutine on
the worker's event loop: cancelling it (timeout, cancel, shutdown) closes the
connection at once, and :func:`fetch` also has its own total deadline.

What it does: one request per connection (``Connection: close``), ``http://``
and ``https://`` (certificates verified against the system's CA bundle), only
to addresses a :class:`~tasklease.executors.netpolicy.NetworkPolicy` permits
(checked on the resolved address of every connection), a
fixed-length, chunked or read-to-close body of which at most ``body_limit``
bytes are kept (reading stops there: the rest is never downloaded), and
redirects only if asked (``follow_redirects``; at most ``MAX_REDIRECTS``, and
only within the same scheme).
No compression (``Accept-Encoding: identity``), no cookies, no proxies. Host
names are resolved by the event loop's resolver (``getaddrinfo`` in a thread
of the default pool: the one blocking step, bounded by the system resolver's
own timeout; the attempt itself still ends at its deadline).
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from tasklease.executors.base import PermanentError, TaskError
from tasklease.executors.netpolicy import NetworkPolicy
from tasklease.version import __version__

MAX_HEAD_LINE = 64 * 1024  # one status or header line (the stream's buffer limit)
MAX_HEAD_BYTES = 256 * 1024  # status line and headers together
MAX_HEADERS = 256
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Header fields the client owns: a user's value would break the framing.
_OWNED = frozenset({"connection", "content-length", "transfer-encoding"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})(?: (.*))?")


@dataclass(frozen=True, slots=True)
class Response:
    """What came back.

    Attributes:
        status: The status code.
        reason: The reason phrase.
        headers: Header fields by name (as the server spelled the first one);
            repeated fields are joined with ``", "``.
        body: The first ``body_limit`` bytes of the body.
        truncated: Whether the body was longer (the rest was not read).
        url: The URL that answered (after redirects, if followed).
    """

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    truncated: bool
    url: str


async def fetch(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout_s: float,
    body_limit: int,
    follow_redirects: bool = False,
    network: NetworkPolicy | None = None,
) -> Response:
    """Make one request (and follow redirects if asked), all within ``timeout_s``.

    Every connection, each redirect hop's included, goes only to a resolved
    address that ``network`` permits (default: :class:`NetworkPolicy()`, which
    denies loopback, private, link-local and other internal networks).
    Redirects are followed only within the same scheme.

    Raises:
        PermanentError: The request itself is invalid (URL, method, headers),
            or its host is refused by ``network`` (the message names the rule).
        TaskError: The network or the server failed (refused, reset, bad
            response, too many redirects): retrying may help.
        TimeoutError: ``timeout_s`` passed; the connection is closed.
    """
    method = _check_method(method)
    fields = _check_headers(headers or {})
    policy = network if network is not None else NetworkPolicy()
    async with asyncio.timeout(timeout_s):
        for _ in range(MAX_REDIRECTS + 1):
            response = await _exchange(method, url, fields, body, body_limit, policy)
            location = _header(response.headers, "location")
            if not follow_redirects or response.status not in REDIRECTS or location is None:
                return response
            target = urljoin(url, location.strip())
            if urlsplit(target).scheme.lower() != urlsplit(url).scheme.lower():
                return response  # another scheme (https -> http, ftp:...): the 3xx is the answer
            if response.status == 303 or (response.status in (301, 302) and method not in ("GET", "HEAD")):
                method, body = "GET", None
                fields = {k: v for k, v in fields.items() if k.lower() != "content-type"}
            if _origin(target) != _origin(url):
                # Credentials are for the host they were given for.
                fields = {k: v for k, v in fields.items() if k.lower() not in ("authorization", "cookie")}
            url = target
    raise TaskError(f"http request failed: more than {MAX_REDIRECTS} redirects")


def _check_method(method: str) -> str:
    method = method.upper()
    if not _TOKEN.fullmatch(method):
        raise PermanentError(f"invalid http method {method!r}")
    return method


def _check_headers(headers: dict[str, str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise PermanentError(f"invalid http header name {name!r}")
        if any(c in value for c in "\r\n\0"):
            raise PermanentError(f"invalid value of http header {name!r}: it holds a line break or NUL")
        if name.lower() not in _OWNED:
            fields[name] = value
    return fields


def _header(headers: dict[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.scheme.lower(), parts.hostname, port


async def _exchange(
    method: str, url: str, fields: dict[str, str], body: bytes | None, body_limit: int, policy: NetworkPolicy
) -> Response:
    """One request on a fresh connection; the connection is closed when this returns or is cancelled."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise PermanentError(f"http needs an http:// or https:// URL with a host, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise PermanentError("credentials in the URL are not supported: send an Authorization header")
    host = parts.hostname
    try:
        port = parts.port
    except ValueError:
        raise PermanentError(f"invalid port in URL {url!r}") from None
    default_port = 443 if scheme == "https" else 80
    port = port or default_port
    authority = f"[{host}]" if ":" in host else host
    if port != default_port:
        authority += f":{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in target for c in " \r\n\0"):
        raise PermanentError(f"invalid characters in the URL path {target!r}")

    lines = [f"{method} {target} HTTP/1.1"]
    given = {k.lower() for k in fields}
    defaults = {
        "host": ("Host", authority),
        "user-agent": ("User-Agent", f"tasklease/{__version__}"),
        "accept-encoding": ("Accept-Encoding", "identity"),
    }
    for key, (name, value) in defaults.items():
        if key not in given:
            lines.append(f"{name}: {value}")
    if body is not None and "content-type" not in given:
        lines.append("Content-Type: application/x-www-form-urlencoded")  # as urllib did
    lines += [f"{name}: {value}" for name, value in fields.items()]
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    lines.append("Connection: close")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + (body or b"")

    reader, writer = await _connect(host, port, authority, scheme == "https", policy)
    try:
        writer.write(request)
        await writer.drain()
        status, reason, headers = await _read_head(reader)
        data, truncated = await _read_body(reader, method, status, headers, body_limit)
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
        raise TaskError(f"http request failed: {_reason(exc)}") from exc
    finally:
        # Close now, without waiting for the peer: also on cancel and timeout.
        writer.transport.abort()
    return Response(status, reason, headers, data, truncated, url)


async def _connect(
    host: str, port: int, authority: str, tls: bool, policy: NetworkPolicy
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Resolve ``host``, keep the addresses ``policy`` permits, connect to the first that answers.

    The connection is made to the checked address itself (never resolved
    again), so a DNS answer that changes in between cannot slip past the check.

    Raises:
        PermanentError: Every address of ``host`` is refused by ``policy``.
        TaskError: It cannot be resolved, or no permitted address answers.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise TaskError(f"http request failed: cannot resolve {host!r}: {_reason(exc)}") from exc
    permitted: list[str] = []
    refusals: list[str] = []
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        refusal = policy.refusal(address)
        if refusal is not None:
            refusals.append(refusal)
        elif address not in permitted:
            permitted.append(address)
    if not permitted:
        named = "" if refusals and refusals[0].split(" ", 1)[0] == host else f"{host}: "
        raise PermanentError(f"http request refused: {named}{refusals[0] if refusals else 'no address'}")
    context = ssl.create_default_context() if tls else None
    failure: BaseException | None = None
    for address in permitted:
        try:
            return await asyncio.open_connection(
                address, port, ssl=context, server_hostname=host if context else None, limit=MAX_HEAD_LINE
            )
        except (OSError, ssl.SSLError) as exc:
            failure = exc
    assert failure is not None
    raise TaskError(f"http request failed: cannot connect to {authority}: {_reason(failure)}") from failure


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the server closed the connection in the middle of the response"
    return str(exc) or type(exc).__name__


async def _readline(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readline()
    except ValueError:  # a line over the stream's limit
        raise TaskError(f"http request failed: a response line is over {MAX_HEAD_LINE} bytes") from None


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str]]:
    """Status line and headers (interim 1xx responses are skipped)."""
    while True:
        line = await _readline(reader)
        if not line:
            raise TaskError("http request failed: the server closed the connection without answering")
        match = _STATUS.fullmatch(line.rstrip(b"\r\n"))
        if match is None:
            raise TaskError(f"http request failed: not an HTTP/1.x status line: {line[:100]!r}")
        status = int(match.group(1))
        reason = (match.group(2) or b"").decode("latin-1")
        headers: dict[str, str] = {}
        names: dict[str, str] = {}  # lower-case name -> the spelling kept
        last: str | None = None
        size = len(line)
        count = 0
        while True:
            line = await _readline(reader)
            size += len(line)
            if size > MAX_HEAD_BYTES or count > MAX_HEADERS:
                raise TaskError("http request failed: the response headers are too large")
            if not line:
                raise TaskError("http request failed: the server closed the connection in the headers")
            text = line.rstrip(b"\r\n").decode("latin-1")
            if not text:
                break
            if text[0] in " \t" and last is not None:  # an obsolete folded line
                headers[last] += " " + text.strip()
                continue
            name, sep, value = text.partition(":")
            if not sep or not _TOKEN.fullmatch(name):
                raise TaskError(f"http request failed: bad response header line {text[:100]!r}")
            count += 1
            value = value.strip()
            key = names.setdefault(name.lower(), name)
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
            last = key
        if 100 <= status < 200:
            continue  # interim (100 Continue, 103 Early Hints): the real answer follows
        return status, reason, headers


async def _read_body(
    reader: asyncio.StreamReader, method: str, status: int, headers: dict[str, str], limit: int
) -> tuple[bytes, bool]:
    """The first ``limit`` bytes of the body, and whether there was more (not read)."""
    if method == "HEAD" or status in (204, 304):
        return b"", False
    encoding = (_header(headers, "transfer-encoding") or "").lower()
    if "chunked" in encoding:
        return await _read_chunked(reader, limit)
    length = _header(headers, "content-length")
    if length is not None:
        try:
            size = int(length.split(",")[0].strip())
            if size < 0:
                raise ValueError(length)
        except ValueError:
            raise TaskError(f"http request failed: bad Content-Length {length!r}") from None
        data = await reader.readexactly(min(size, limit + 1))
        return data[:limit], size > limit
    kept = bytearray()  # no length: the body ends when the server closes
    while len(kept) <= limit and (chunk := await reader.read(65536)):
        kept += chunk
    return bytes(kept[:limit]), len(kept) > limit


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> tuple[bytes, bool]:
    kept = bytearray()
    while len(kept) <= limit:
        line = await _readline(reader)
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size < 0:
                raise ValueError(size)
        except ValueError:
            raise TaskError(f"http request failed: bad chunk size line {line[:100]!r}") from None
        if size == 0:
            break  # trailers are not read: the connection is closed anyway
        want = min(size, limit + 1 - len(kept))
        kept += await reader.readexactly(want)
        if want < size:
            break  # over the limit: the rest is never read
        await reader.readexactly(2)  # the chunk's CRLF
    return bytes(kept[:limit]), len(kept) > limit
