"""The web server's guard: security headers, the token, read-only mode, the CSRF check, the Host check.

:class:`SecurityMiddleware` wraps the whole ASGI app (pure ASGI, so streamed
responses such as ``/api/events`` pass through unbuffered). For each HTTP
request, in this order:

1. Host: when the server listens on a loopback address, the ``Host`` header
   must name a loopback host (``localhost``, ``*.localhost``, ``127.x.y.z``,
   ``::1``): a page of another site that re-binds its DNS name to 127.0.0.1
   (DNS rebinding) is refused with 400 before it reaches anything.
2. Token (only with one): ``Authorization: Bearer T`` or the cookie
   ``tasklease_token``; ``GET /?token=T`` (any page) sets that cookie
   (HttpOnly, SameSite=Strict, Path=/) and redirects to the same path without
   the query. Otherwise 401 (JSON under ``/api``, a short text page elsewhere).
   Tokens are compared with :func:`hmac.compare_digest`. The probes
   (``GET /healthz`` and ``/readyz``, :data:`PROBE_PATHS`) need none.
3. Writes (any method but GET, HEAD and OPTIONS): in read-only mode, 403
   ``read-only dashboard``; else the request must carry
   ``X-Tasklease-Request: 1``, its ``Origin`` (if any) must be the server's own
   origin (the request's scheme and ``Host``), and its ``Sec-Fetch-Site`` (if
   any) ``same-origin`` or ``none``: else 403 ``cross-site request refused``.
   A custom header cannot be sent cross-site without a CORS preflight, which
   this server never approves; so a request that passes but has another
   ``Content-Type`` than ``application/json`` is a client's mistake: 400.

:func:`web_config` reads the options of ``tasklease web`` (and their
environment variables) into a :class:`WebConfig`, and refuses a non-loopback
address without a token.

Every response gets the headers of :data:`SECURITY_HEADERS` (a strict
Content-Security-Policy among them), and ``Cache-Control: no-store`` under
``/api``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

import orjson

from tasklease.errors import InvalidOption
from tasklease.httpserver import HttpAddress

log = logging.getLogger("tasklease.web")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "tasklease_token"
REQUEST_HEADER = "x-tasklease-request"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PROBE_PATHS = frozenset({"/healthz", "/readyz"})  # liveness and readiness: no token (they tell nothing else)
# What a token may be: URL- and cookie-safe text, long enough not to be guessed.
TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")
MIN_TOKEN = 16


def check_token(token: str) -> str:
    """Validate a dashboard token (``--token`` / ``TASKLEASE_WEB_TOKEN``).

    Returns:
        The token.

    Raises:
        InvalidOption: Shorter than 16 characters, longer than 512, or with a
            character outside ``A-Z a-z 0-9 . _ ~ + / = -`` (it goes in a cookie
            and a URL as is).
    """
    if not TOKEN_RE.fullmatch(token):
        raise InvalidOption(
            f"a web token is {MIN_TOKEN}..512 characters of A-Z a-z 0-9 . _ ~ + / = - "
            "(make one: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address or a ``Host`` name) can only be reached from this machine."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Guard:
    """What the middleware enforces.

    Attributes:
        token: The token every request must carry (None: no token).
        read_only: Refuse every write with 403.
        loopback_only: Accept only loopback names in the ``Host`` header (set
            when the server listens on a loopback address).
    """

    token: str | None = None
    read_only: bool = False
    loopback_only: bool = True

    def token_ok(self, given: str | None) -> bool:
        """Whether ``given`` is the token (constant time)."""
        if self.token is None:
            return True
        if given is None:
            return False
        return hmac.compare_digest(given.encode(errors="replace"), self.token.encode())


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name (the last of repeated ones)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}


def _host_name(host: str) -> str:
    """The name part of a ``Host`` header (no port; an IPv6 literal without brackets)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if ":" in host else host


def _bearer(headers: dict[str, str]) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _cookie(headers: dict[str, str]) -> str | None:
    raw = headers.get("cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed Cookie header: no token from it
        return None
    morsel = jar.get(COOKIE)
    return str(morsel.value) if morsel is not None else None


def is_api(path: str) -> bool:
    """Whether ``path`` is under the REST API (JSON answers, no-store)."""
    return path == "/api" or path.startswith("/api/")


async def _answer(
    send: Send, status: int, body: bytes, content_type: str, extra: tuple[tuple[str, str], ...] = ()
) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def refuse(send: Send, path: str, status: int, message: str, *extra: tuple[str, str]) -> None:
    """Answer ``status`` with ``{"error": message}`` under ``/api``, a one-line text page elsewhere."""
    if is_api(path):
        await _answer(send, status, orjson.dumps({"error": message}) + b"\n", "application/json", extra)
    else:
        await _answer(send, status, f"{status}: {message}\n".encode(), "text/plain; charset=utf-8", extra)


class SecurityMiddleware:
    """Wrap ``app``: headers on every response, then the Host, token and write checks (module docstring).

    Args:
        app: The ASGI app to guard.
        guard: What to enforce.
    """

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "/")
        send = self._with_headers(send, is_api(path))
        headers = _headers(scope)
        guard = self.guard
        host = headers.get("host", "")
        if guard.loopback_only and not is_loopback(_host_name(host)):
            await refuse(
                send, path, 400, "unexpected Host header: this server answers only to loopback names"
            )
            return
        method: str = scope.get("method", "GET")
        if guard.token is not None and not (path in PROBE_PATHS and method in SAFE_METHODS):
            if not is_api(path) and method == "GET" and (given := _query_token(scope)) is not None:
                await self._login(send, path, given)
                return
            if not guard.token_ok(_bearer(headers) or _cookie(headers)):
                hint = "send Authorization: Bearer TOKEN" if is_api(path) else "open /?token=TOKEN once"
                await refuse(
                    send,
                    path,
                    401,
                    f"this dashboard needs its token ({hint})",
                    ("www-authenticate", "Bearer"),
                )
                return
        if method not in SAFE_METHODS:
            problem = self._write_problem(scope, headers)
            if problem is not None:
                status, message = problem
                await refuse(send, path, status, message)
                return
        await self.app(scope, receive, send)

    def _write_problem(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        """Why a write is refused (status and message), or None."""
        if self.guard.read_only:
            return 403, "read-only dashboard"
        cross_site = 403, "cross-site request refused"
        if headers.get(REQUEST_HEADER, "").strip() != "1":
            return cross_site
        origin = headers.get("origin")
        if origin is not None and origin != f"{scope.get('scheme', 'http')}://{headers.get('host', '')}":
            return cross_site
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return cross_site
        media = headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != "application/json":
            return 400, "Content-Type must be application/json"
        return None

    async def _login(self, send: Send, path: str, given: str) -> None:
        """``GET PAGE?token=T``: a good token sets the cookie and redirects to the page without the query."""
        if not self.guard.token_ok(given):
            log.warning("refused a page request with a bad token", extra={"component": "web"})
            await refuse(send, path, 401, "bad token")
            return
        cookie = f"{COOKIE}={given}; HttpOnly; SameSite=Strict; Path=/"
        location = path if path.startswith("/") and not path.startswith("//") else "/"
        await _answer(
            send,
            303,
            b"",
            "text/plain; charset=utf-8",
            (("location", location), ("set-cookie", cookie)),
        )

    @staticmethod
    def _with_headers(send: Send, api: bool) -> Send:
        """``send`` adding the security headers (and no-store under /api) to the response's start."""

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", ())}
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS if k.encode() not in names]
                if api:
                    kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"cache-control"]
                    message["headers"] = [*kept, (b"cache-control", b"no-store"), *extra]
                else:
                    message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        return wrapped


def _query_token(scope: Scope) -> str | None:
    """The ``token`` query parameter of a page request, if any."""
    query: str = bytes(scope.get("query_string", b"")).decode("latin-1")
    if not query:
        return None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "token":
            return value
    return None


# options of `tasklease web` ----------------------------------------------------------------
ADDRESS_VARIABLE = "TASKLEASE_WEB"
TOKEN_VARIABLE = "TASKLEASE_WEB_TOKEN"
DEFAULT_ADDRESS = HttpAddress("127.0.0.1", 8080)
DEFAULT_MAX_BODY = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class WebConfig:
    """How ``tasklease web`` serves.

    Attributes:
        address: Where to listen.
        token: The token every request needs (None: none; required off loopback).
        read_only: Refuse every write.
        max_body: Most bytes of a request body.
    """

    address: HttpAddress = DEFAULT_ADDRESS
    token: str | None = None
    read_only: bool = False
    max_body: int = DEFAULT_MAX_BODY

    @property
    def guard(self) -> Guard:
        """The security middleware's settings."""
        return Guard(token=self.token, read_only=self.read_only, loopback_only=is_loopback(self.address.host))


def web_config(
    http: HttpAddress | None,
    token: str | None,
    *,
    read_only: bool = False,
    max_body: int = DEFAULT_MAX_BODY,
    environ: Mapping[str, str] | None = None,
) -> WebConfig:
    """The options of ``tasklease web``, with their environment variables, checked.

    Raises:
        InvalidOption: A bad ``TASKLEASE_WEB``, a bad token, a body limit < 1 KiB,
            or a non-loopback address without a token (the CLI exits 2).
    """
    env = os.environ if environ is None else environ
    if http is None:
        raw = env.get(ADDRESS_VARIABLE, "").strip()
        try:
            http = HttpAddress.parse(raw) if raw else DEFAULT_ADDRESS
        except InvalidOption as exc:
            raise InvalidOption(f"environment variable {ADDRESS_VARIABLE}: {exc}") from None
    if token is None:
        token = env.get(TOKEN_VARIABLE, "").strip() or None
    if token is not None:
        check_token(token)
    elif not is_loopback(http.host):
        raise InvalidOption(
            f"--http {http}: listening beyond this machine needs a token: "
            f"set {TOKEN_VARIABLE} (or --token); "
            "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if max_body < 1024:
        raise InvalidOption(f"--max-body must be at least 1KiB, got {max_body} bytes")
    return WebConfig(address=http, token=token, read_only=read_only, max_body=max_body)
