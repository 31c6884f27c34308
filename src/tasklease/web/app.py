"""The ASGI app of ``tasklease web``: the REST API, the dashboard's pages and files, the guard.

:func:`create_app` builds a Starlette app from :func:`routes` and wraps it in
:class:`~tasklease.web.security.SecurityMiddleware` (outermost, so every
answer, errors included, carries the security headers).

Pages: ``GET /`` and every ``/ui/...`` path serve ``index.html`` (the
dashboard routes by the URL's hash); ``/static/NAME`` serves the package's
files (``tasklease/web/static``, read with :mod:`importlib.resources`), only
names made of ``A-Z a-z 0-9 _ . -`` segments (no hidden files, no ``..``).

Probes: ``/healthz`` (liveness) and ``/readyz`` (ready: etcd answers and the
server is not stopping), the same answers as a worker's or scheduler's
(:mod:`tasklease.health`); they need no token (a container's or Kubernetes'
probe carries none) and tell nothing but that.
"""

from __future__ import annotations

import importlib.resources
import mimetypes
import re
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from tasklease.health import ReadinessCheck
from tasklease.web import api, api_limits, api_schedules, api_workflows
from tasklease.web.api import JSONResponse, WebState
from tasklease.web.openapi import openapi_document
from tasklease.web.security import Guard, SecurityMiddleware, is_api

_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}


def package_static() -> Any:
    """The dashboard's files shipped in the package (a Traversable)."""
    return importlib.resources.files("tasklease.web").joinpath("static")


def _file(root: Any, parts: list[str]) -> bytes | None:
    """The bytes of ``root/parts...`` if every part is a plain name and it is a file, else None."""
    if not parts or not all(_SEGMENT.fullmatch(p) for p in parts):
        return None
    node = root
    for part in parts:
        node = node.joinpath(part)
    try:
        if not node.is_file():
            return None
        data: bytes = node.read_bytes()
    except OSError:
        return None
    return data


def _content_type(name: str) -> str:
    suffix = name[name.rfind(".") :].lower() if "." in name else ""
    return _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


async def index(request: Request) -> Response:
    """``GET /`` and ``/ui/...``: the dashboard's ``index.html``."""
    state: WebState = request.app.state.web
    data = _file(state.static, ["index.html"])
    if data is None:
        return PlainTextResponse("404: the dashboard's files are not installed (tasklease/web/static)\n", 404)
    return Response(data, media_type="text/html; charset=utf-8", headers={"cache-control": "no-cache"})


async def static(request: Request) -> Response:
    """``GET /static/NAME``: a file of the dashboard."""
    state: WebState = request.app.state.web
    path: str = request.path_params["path"]
    data = _file(state.static, path.split("/"))
    if data is None:
        return PlainTextResponse("404: not found\n", 404)
    return Response(data, media_type=_content_type(path), headers={"cache-control": "no-cache"})


async def healthz(request: Request) -> Response:
    """``GET /healthz``: liveness, ``200 {"status": "ok"}`` whenever the event loop answers."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """``GET /readyz``: 200 when etcd answers and the server is not stopping, else 503."""
    ok, reason = await request.app.state.readiness()
    return JSONResponse(
        {"status": "ready" if ok else "not ready", "reason": reason}, status_code=200 if ok else 503
    )


def _serving(state: WebState) -> Callable[[], tuple[bool, str]]:
    def readiness() -> tuple[bool, str]:
        return (False, "stopping") if state.stopping.is_set() else (True, "serving")

    return readiness


async def openapi(request: Request) -> Response:
    """``GET /api/openapi.json``."""
    return JSONResponse(request.app.state.openapi)


def routes() -> list[BaseRoute]:
    """Every route of the app (the API's are documented in openapi.py)."""
    return [
        Route("/api/config", api.get_config, methods=["GET"]),
        Route("/api/overview", api.get_overview, methods=["GET"]),
        Route("/api/stats", api.get_stats, methods=["GET"]),
        Route("/api/tasks", api.list_tasks, methods=["GET"]),
        Route("/api/tasks", api.submit_task, methods=["POST"]),
        Route("/api/tasks/batch", api.submit_batch, methods=["POST"]),
        Route("/api/tasks/{id}", api.get_task, methods=["GET"]),
        Route("/api/tasks/{id}/wait", api.wait_task, methods=["GET"]),
        Route("/api/tasks/{id}/cancel", api.cancel_task, methods=["POST"]),
        Route("/api/tasks/{id}/priority", api.set_priority, methods=["POST"]),
        Route("/api/tasks/{id}/rerun", api.rerun_task, methods=["POST"]),
        Route("/api/queues", api.list_queues, methods=["GET"]),
        Route("/api/queues/{name}/pause", api.pause_queue, methods=["POST"]),
        Route("/api/queues/{name}/resume", api.resume_queue, methods=["POST"]),
        Route("/api/workers", api.list_workers, methods=["GET"]),
        Route("/api/workers/{id}/drain", api.drain_worker, methods=["POST"]),
        Route("/api/limits", api_limits.list_limits, methods=["GET"]),
        Route("/api/limits/{kind}/{name}", api_limits.put_limit, methods=["PUT"]),
        Route("/api/limits/{kind}/{name}", api_limits.delete_limit, methods=["DELETE"]),
        Route("/api/schedules", api_schedules.list_schedules, methods=["GET"]),
        Route("/api/schedules", api_schedules.add_schedule, methods=["POST"]),
        Route("/api/schedules/{name}", api_schedules.get_schedule, methods=["GET"]),
        Route("/api/schedules/{name}", api_schedules.remove_schedule, methods=["DELETE"]),
        Route("/api/schedules/{name}/pause", api_schedules.pause_schedule, methods=["POST"]),
        Route("/api/schedules/{name}/resume", api_schedules.resume_schedule, methods=["POST"]),
        Route("/api/schedules/{name}/next", api_schedules.next_times, methods=["GET"]),
        Route("/api/workflows", api_workflows.submit_workflow, methods=["POST"]),
        Route("/api/workflows/{id}", api_workflows.get_workflow, methods=["GET"]),
        Route("/api/workflows/{id}/cancel", api_workflows.cancel_workflow, methods=["POST"]),
        Route("/api/events", api.events, methods=["GET"]),
        Route("/api/openapi.json", openapi, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        Route("/ui/{rest:path}", index, methods=["GET"]),
        Route("/static/{path:path}", static, methods=["GET"]),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such route, method not allowed): JSON under /api, text elsewhere."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if is_api(request.url.path):
        message = {404: "no such API path", 405: f"method {request.method} not allowed"}.get(
            exc.status_code, str(exc.detail)
        )
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=headers)
    return PlainTextResponse(f"{exc.status_code}: {exc.detail}\n", exc.status_code, headers=headers)


def create_app(state: WebState, guard: Guard) -> SecurityMiddleware:
    """The whole app: routes, state and the guard around them.

    Args:
        state: What the routes use (client, feed, limits, static files; see
            :class:`~tasklease.web.api.WebState`). ``state.static`` None: the
            package's files.
        guard: Token, read-only, Host check (:class:`~tasklease.web.security.Guard`).
    """
    if state.static is None:
        state.static = package_static()
    state.read_only = guard.read_only
    state.auth = guard.token is not None
    app = Starlette(routes=routes(), exception_handlers={HTTPException: _http_error})
    app.state.web = state
    app.state.openapi = openapi_document()
    app.state.readiness = ReadinessCheck(state.client.store, _serving(state))
    return SecurityMiddleware(app, guard)
