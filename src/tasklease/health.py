"""Liveness and readiness, the routes of a process's HTTP endpoint, and ``tasklease health``.

A long-running process given ``--http`` serves (httpserver.py):

- ``/metrics``: its Prometheus registry, in the text format (``prometheus_client``);
- ``/healthz``: liveness, ``200 {"status": "ok"}`` whenever the event loop
  answers (a loop blocked by a bug answers nothing, and the probe times out);
- ``/readyz``: readiness, ``200 {"status": "ready", "reason": ...}`` or ``503
  {"status": "not ready", "reason": ...}``. Ready means etcd answers a status
  request within ``etcd_timeout_s`` (a fresh request per probe, at most one in
  flight: concurrent probes share it) **and** the component says it is ready
  (``Worker.readiness``: it holds its lease, is registered and is not draining;
  ``Scheduler.readiness``: it leads with its mirror loaded and watched, or
  stands by under a live lease). etcd is checked first: while it is away, the
  reason names it, not its consequences.

:func:`check` is the client side, for container health checks: one GET, no
proxy (``http_proxy`` is not read), no redirect followed, the body's first
64 KiB. :func:`health_url` reads what ``tasklease health`` is given.

May import: store (the ``KVStore`` protocol), errors, httpserver.
"""

from __future__ import annotations

import asyncio
import http.client
import inspect
import urllib.parse
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from tasklease.errors import InvalidOption, StoreError
from tasklease.httpserver import Handler, HttpAddress, Response
from tasklease.store import KVStore

ETCD_TIMEOUT_S = 2.0  # a readiness probe's etcd status request (probes usually time out at 1..10 s)
READY_PATH = "/readyz"
MAX_BODY_BYTES = 64 * 1024  # what `tasklease health` reads of an answer

Readiness = Callable[[], tuple[bool, str]]
"""A component's own readiness: ``(ready, reason)``, from its state in memory (no I/O)."""
ReadyProbe = Callable[[], Awaitable[tuple[bool, str]] | tuple[bool, str]]
"""What ``/readyz`` asks: a :class:`ReadinessCheck`, or any callable, plain or async."""


class ReadinessCheck:
    """Ready = etcd answers within ``etcd_timeout_s`` and the component says it is ready.

    Args:
        store: The process's etcd connection (the one its component uses).
        component: The component's own readiness (``Worker.readiness``, ``Scheduler.readiness``).
        etcd_timeout_s: How long the etcd status request may take.
    """

    def __init__(
        self, store: KVStore, component: Readiness, *, etcd_timeout_s: float = ETCD_TIMEOUT_S
    ) -> None:
        self.store = store
        self.component = component
        self.etcd_timeout_s = etcd_timeout_s
        # The status request in flight, shared by concurrent probes (set and cleared by _etcd only).
        self._probe: asyncio.Task[tuple[bool, str]] | None = None

    async def __call__(self) -> tuple[bool, str]:
        """``(ready, reason)``; the reason is one short line."""
        reachable, why = await self._etcd()
        if not reachable:
            return False, why
        return self.component()

    async def _etcd(self) -> tuple[bool, str]:
        if self._probe is None:
            self._probe = asyncio.create_task(self._ask_etcd(), name="readiness-etcd")
            self._probe.add_done_callback(self._forget)
        # shield: a probe whose client hung up must not cancel the one others wait for
        return await asyncio.shield(self._probe)

    def _forget(self, task: asyncio.Task[tuple[bool, str]]) -> None:
        if self._probe is task:
            self._probe = None

    async def _ask_etcd(self) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(self.etcd_timeout_s):
                await self.store.status()
        except TimeoutError:
            return False, f"etcd unreachable: no answer within {self.etcd_timeout_s:g} s"
        except (StoreError, OSError) as exc:
            return False, f"etcd unreachable: {type(exc).__name__}: {_one_line(str(exc))}"
        return True, "etcd reachable"


def routes(registry: CollectorRegistry, ready: ReadyProbe) -> dict[str, Handler]:
    """The handlers of ``/metrics``, ``/healthz`` and ``/readyz``.

    Args:
        registry: What ``/metrics`` serves.
        ready: Returns (or its awaitable returns) ``(ready, reason)``, e.g. a :class:`ReadinessCheck`.
    """

    async def metrics() -> Response:
        return Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    async def healthz() -> Response:
        return Response.json(200, {"status": "ok"})

    async def readyz() -> Response:
        answer = ready()
        ok, reason = (await answer) if inspect.isawaitable(answer) else answer
        return Response.json(200 if ok else 503, {"status": "ready" if ok else "not ready", "reason": reason})

    return {"/metrics": metrics, "/healthz": healthz, READY_PATH: readyz}


def health_url(text: str) -> str:
    """The URL ``tasklease health`` checks: ``text`` as a URL, ``HOST:PORT`` or a port.

    Without a path (or with ``/`` only) it is ``/readyz``. A listening address
    of every interface (``0.0.0.0``, ``::``) is checked on the loopback, so the
    value of ``TASKLEASE_HTTP`` can be passed as it is.

    Raises:
        InvalidOption: Not an ``http`` URL or address.
    """
    raw = text.strip()
    if "://" not in raw:
        address = HttpAddress.parse(raw)
        raw = f"http://{address}"
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme != "http":
        raise InvalidOption(f"bad health URL {text!r}: only http:// is served")
    try:
        port = parts.port
    except ValueError:
        raise InvalidOption(f"bad health URL {text!r}: bad port") from None
    host = parts.hostname
    if not host or port is None or port == 0:
        raise InvalidOption(f"bad health URL {text!r}: it needs a host and a port")
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    path = parts.path if parts.path not in ("", "/") else READY_PATH
    return urllib.parse.urlunsplit(("http", netloc, path, parts.query, ""))


def check(url: str, *, timeout_s: float = 5.0) -> tuple[int, str]:
    """GET ``url`` once (no proxy, no redirect).

    Returns:
        The status code and the body (its first 64 KiB, decoded, stripped).

    Raises:
        OSError: No answer: refused, unreachable, timed out, or not HTTP.
    """
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", target or "/", headers={"Accept": "application/json"})
        response = connection.getresponse()
        body = response.read(MAX_BODY_BYTES)
    except http.client.HTTPException as exc:
        raise OSError(f"not an HTTP answer: {type(exc).__name__}: {exc}") from None
    finally:
        connection.close()
    return response.status, body.decode(errors="replace").strip()


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
