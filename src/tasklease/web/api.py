"""The REST API's routes (docs/api.md): parse the request, call the client, map its errors to statuses.

Each handler is thin: it reads the query or the JSON body (:func:`read_json`
stops reading at the body limit, 413), calls one client method and answers
JSON. Errors are ``{"error": "one line"}``; the client's exceptions get their
status from :data:`ERROR_STATUS` (the first class that matches, in order), and
anything else is a 500 whose details go to the log only.

The routes' state is one :class:`WebState` (``request.app.state.web``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tasklease import codec
from tasklease.client import Client
from tasklease.errors import (
    BatchIncomplete,
    ConflictError,
    InvalidTransition,
    QuotaExceeded,
    StoreError,
    StoreRequestTooLarge,
    TaskNotFound,
    ValidationError,
    WaitTimeout,
    WorkerNotFound,
)
from tasklease.keys import check_name, prefix_end
from tasklease.models import TaskState, check_type
from tasklease.spec import TaskSpec, spec_from_dict
from tasklease.version import __version__
from tasklease.web.feed import worker_view
from tasklease.web.security import DEFAULT_MAX_BODY

log = logging.getLogger("tasklease.web")

MAX_BATCH = 1000
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_WAIT_S = 60.0
DEFAULT_WAIT_S = 30.0
MAX_REASON = 500

# Exception class -> HTTP status; the first class the error is an instance of wins.
ERROR_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (TaskNotFound, 404),  # MalformedTaskId is one too
    (WorkerNotFound, 404),
    (QuotaExceeded, 429),  # a ValidationError: before it
    (ValidationError, 422),  # InvalidOption, InvalidPriority, InvalidQueueName, PayloadTooLarge, ...
    (InvalidTransition, 409),
    (ConflictError, 409),
    (StoreRequestTooLarge, 413),
    (StoreError, 503),  # etcd unreachable, out of space, refusing us: the service is unavailable
)


def status_for(exc: BaseException) -> int:
    """The HTTP status of a client error (:data:`ERROR_STATUS`; 500 for anything else)."""
    for cls, status in ERROR_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


class ApiError(Exception):
    """A request the API refuses itself (a bad query parameter, a body too large, ...).

    Args:
        status: The HTTP status.
        message: The one-line ``error``.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class JSONResponse(Response):
    """A JSON answer encoded with orjson (a non-finite float becomes null)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Encode ``content``."""
        return orjson.dumps(content)


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    """``{"error": message}`` (one line) with ``status``."""
    return JSONResponse({"error": " ".join(str(message).split()), **extra}, status_code=status)


class Feed(Protocol):
    """What the API needs of :class:`tasklease.web.feed.EventFeed`."""

    def stream(self, last_event_id: int | None) -> AsyncIterator[bytes]:
        """SSE bytes from after ``last_event_id`` (None: from now)."""
        ...

    @property
    def revision(self) -> int:
        """The last etcd revision the feed has seen."""
        ...


class SharedOverview:
    """The overview, counted once for every browser that needs the same changes, one count at a time.

    Each dashboard refetches the overview when the feed shows changes; counting
    costs etcd a walk of the index keys (overview.py). A request needs a count
    that saw at least the feed's revision at the time it came: the last count if
    it did, else the count in flight if it started after that revision, else a
    new count, started at most every ``min_interval_s`` (requests meanwhile wait
    and share it). So an answer is never older than the changes the feed had
    shown, and etcd counts at most one overview at a time.

    Args:
        min_interval_s: Least time between the starts of two counts.
    """

    def __init__(self, min_interval_s: float = 0.5) -> None:
        self.min_interval_s = min_interval_s
        self._value: dict[str, Any] | None = None
        self._value_revision = -1  # the feed's revision when the last count started
        self._pending: asyncio.Future[dict[str, Any]] | None = None
        self._pending_revision = -1
        self._last_start = -math.inf

    async def get(
        self, client: Client, revision: Callable[[], int], *, fresh: bool = False
    ) -> dict[str, Any]:
        """The overview's JSON form, counted after the feed's ``revision()`` now (``fresh``: after this call)."""
        loop = asyncio.get_running_loop()
        needed = revision()
        while not fresh:
            if self._value is not None and self._value_revision >= needed:
                return self._value
            pending = self._pending
            if pending is not None:
                if self._pending_revision >= needed:
                    return await asyncio.shield(pending)
                await asyncio.wait([pending])  # an older count: wait for it, then count again
                continue
            wait = self._last_start + self.min_interval_s - loop.time()
            if wait <= 0:
                break
            await asyncio.sleep(wait)  # another request may start the count meanwhile
        return await self._count(client, revision(), loop)

    async def _count(self, client: Client, started: int, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
        self._last_start = loop.time()
        pending = self._pending = loop.create_future()
        self._pending_revision = started
        try:
            value = (await client.overview()).as_dict()
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            if self._pending is pending:
                self._pending = None
        if started >= self._value_revision:
            self._value, self._value_revision = value, started
        pending.set_result(value)
        return value


@dataclass
class WebState:
    """Everything the routes use.

    Attributes:
        client: The process's one client.
        feed: The process's one event feed.
        read_only: Writes are refused (403) and ``/api/config`` says so.
        auth: A token is required.
        max_body: Most bytes of a request body (413 beyond).
        static: The directory (a :class:`importlib.resources.abc.Traversable`
            or a :class:`pathlib.Path`) of the dashboard's files.
        stopping: Set when the server stops: open event streams end.
        overview: The overview shared by every request (:class:`SharedOverview`).
    """

    client: Client
    feed: Feed
    read_only: bool = False
    auth: bool = False
    max_body: int = DEFAULT_MAX_BODY
    static: Any = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    overview: SharedOverview = field(default_factory=SharedOverview)

    def feed_revision(self) -> int:
        """The last etcd revision the event feed has seen (what an overview must include)."""
        return self.feed.revision


Handler = Callable[[Request, WebState], Awaitable[Response]]


def endpoint(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A route from ``fn(request, state)``: errors become JSON answers with their status."""

    async def route(request: Request) -> Response:
        state: WebState = request.app.state.web
        try:
            return await fn(request, state)
        except ApiError as exc:
            return error(exc.status, exc.message)
        except BatchIncomplete as exc:
            log.warning("batch incomplete: %s", exc, extra={"component": "web"})
            return error(503, str(exc), tasks=[{"id": t.id} for t in exc.written])
        except Exception as exc:
            status = status_for(exc)
            if status == 500:
                log.exception("%s %s failed", request.method, request.url.path, extra={"component": "web"})
                return error(500, f"internal error ({type(exc).__name__}); see the server's log")
            return error(status, str(exc))

    route.__name__ = fn.__name__
    route.__doc__ = fn.__doc__
    return route


# request parsing ----------------------------------------------------------------------------
async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body (None if empty), read in chunks up to ``limit`` bytes.

    Raises:
        ApiError: 413 over the limit (stops reading at once); 400 not JSON.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"bad JSON: {exc}") from None


async def read_object(request: Request, state: WebState) -> dict[str, Any]:
    """The JSON body as an object (an empty body is ``{}``).

    Raises:
        ApiError: 413, 400 (see :func:`read_json`), 422 not a JSON object.
    """
    body = await read_json(request, state.max_body)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ApiError(422, "the body must be a JSON object")
    return body


def _query(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    return value if value else None


def _query_number(request: Request, name: str, default: float, low: float, high: float) -> float:
    text = _query(request, name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ApiError(400, f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value) or not low < value <= high:
        raise ApiError(400, f"{name} must be > {low:g} and <= {high:g}, got {text!r}")
    return value


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = _query(request, name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise ApiError(400, f"{name} must be an integer in {low}..{high}, got {text!r}")
    return int(text)


def _query_checked(request: Request, name: str, check: Callable[[str], object]) -> str | None:
    text = _query(request, name)
    if text is not None:
        try:
            check(text)
        except ValidationError as exc:
            raise ApiError(400, f"{name}: {exc}") from None
    return text


def _reason(body: Mapping[str, Any], default: str) -> str:
    reason = body.get("reason", default)
    if reason is None:
        return default
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise ApiError(422, f"reason must be a string of at most {MAX_REASON} characters")
    return reason or default


def _only(body: Mapping[str, Any], *names: str) -> None:
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise ApiError(422, f"unknown field {unknown[0]!r} (expected {', '.join(names) or 'none'})")


def last_event_id(request: Request) -> int | None:
    """``Last-Event-ID`` (header), else ``?last_event_id=`` (query), as a revision; None if neither.

    Raises:
        ApiError: 400 not a non-negative integer.
    """
    text = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if text is None or not text.strip():
        return None
    text = text.strip()
    if not text.isdigit() or len(text) > 19:
        raise ApiError(400, f"Last-Event-ID must be a revision (a non-negative integer), got {text[:40]!r}")
    return int(text)


# JSON forms ---------------------------------------------------------------------------------
def _queue_object(overview: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The queue's object from an overview (a queue with no task yet: zeros)."""
    for queue in overview.get("queues", ()):
        if queue.get("name") == name:
            return dict(queue)
    return {
        "name": name,
        "depth": {"3": 0, "2": 0, "1": 0, "0": 0},
        "queued": 0,
        "running": 0,
        "pending": 0,
        "waiting": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
        "paused": False,
        "paused_at": None,
        "paused_reason": "",
    }


# routes ---------------------------------------------------------------------------------------
@endpoint
async def get_config(request: Request, state: WebState) -> Response:
    """``GET /api/config``."""
    return JSONResponse(
        {
            "read_only": state.read_only,
            "namespace": state.client.keys.namespace,
            "version": __version__,
            "auth": state.auth,
        }
    )


@endpoint
async def get_overview(request: Request, state: WebState) -> Response:
    """``GET /api/overview``."""
    return JSONResponse(await state.overview.get(state.client, state.feed_revision))


@endpoint
async def get_stats(request: Request, state: WebState) -> Response:
    """``GET /api/stats?window=60``."""
    window = _query_number(request, "window", 60.0, 0.0, 86_400.0 * 366)
    stats = await state.client.stats(window)
    return JSONResponse(stats.as_dict())


@endpoint
async def list_tasks(request: Request, state: WebState) -> Response:
    """``GET /api/tasks?state=&queue=&type=&since=&limit=50&cursor=``."""
    state_text = _query(request, "state")
    task_state = None
    if state_text is not None:
        try:
            task_state = TaskState(state_text.lower())
        except ValueError:
            names = ", ".join(s.value for s in TaskState)
            raise ApiError(400, f"state must be one of {names}, got {state_text!r}") from None
    queue = _query_checked(request, "queue", check_name)
    task_type = _query_checked(request, "type", check_type)
    since = None
    if _query(request, "since") is not None:
        since = _query_number(request, "since", 0.0, -math.inf, math.inf)
    limit = _query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    cursor = _query(request, "cursor")
    page = await state.client.list_page(
        state=task_state, queue=queue, task_type=task_type, since=since, limit=limit, cursor=cursor
    )
    return JSONResponse({"tasks": [codec.task_summary(t) for t in page.tasks], "cursor": page.cursor})


def _spec(value: Any, where: str = "") -> TaskSpec:
    if not isinstance(value, dict):
        raise ApiError(422, f"{where}a task must be a JSON object")
    try:
        return spec_from_dict(value)
    except ValidationError as exc:
        if where:
            raise ApiError(422, f"{where}{exc}") from None
        raise


# Set (to "true") on a submit answered with the task already holding its idempotency key.
REPLAYED = "idempotent-replayed"


@endpoint
async def submit_task(request: Request, state: WebState) -> Response:
    """``POST /api/tasks``: 201 and the task; 200 and the existing task if its idempotency key is held."""
    body = await read_json(request, state.max_body)
    spec = _spec(body)
    if spec.idempotency_key is None:
        task, created = await state.client.submit_spec(spec), True
    else:
        result = await state.client.submit_unique(spec)
        task, created = result.task, result.created
    headers = {"location": f"/api/tasks/{task.id}"}
    if not created:
        headers[REPLAYED] = "true"
    return JSONResponse(codec.task_to_dict(task), status_code=201 if created else 200, headers=headers)


@endpoint
async def submit_batch(request: Request, state: WebState) -> Response:
    """``POST /api/tasks/batch``: the ids (each saying whether it is new) and the number of transactions.

    201 if the batch created a task, 200 if every spec's idempotency key was held.
    """
    body = await read_object(request, state)
    _only(body, "tasks")
    items = body.get("tasks")
    if not isinstance(items, list) or not items:
        raise ApiError(422, "tasks must be a non-empty list of task objects")
    if len(items) > MAX_BATCH:
        raise ApiError(422, f"at most {MAX_BATCH} tasks per batch, got {len(items)}")
    specs = [_spec(item, f"tasks[{i}]: ") for i, item in enumerate(items)]
    result = await state.client.submit_many(specs)
    tasks = [{"id": t.id, "created": new} for t, new in zip(result.tasks, result.created, strict=True)]
    return JSONResponse(
        {"tasks": tasks, "transactions": result.transactions},
        status_code=201 if any(result.created) else 200,
    )


@endpoint
async def get_task(request: Request, state: WebState) -> Response:
    """``GET /api/tasks/{id}``."""
    task = await state.client.get(request.path_params["id"])
    return JSONResponse(codec.task_to_dict(task))


@endpoint
async def wait_task(request: Request, state: WebState) -> Response:
    """``GET /api/tasks/{id}/wait?timeout=30``: 200 finished, 202 still going when the time ran out."""
    timeout = _query_number(request, "timeout", DEFAULT_WAIT_S, 0.0, MAX_WAIT_S)
    task_id = request.path_params["id"]
    try:
        task = await state.client.wait(task_id, timeout)
    except WaitTimeout:
        return JSONResponse(codec.task_to_dict(await state.client.get(task_id)), status_code=202)
    return JSONResponse(codec.task_to_dict(task))


@endpoint
async def cancel_task(request: Request, state: WebState) -> Response:
    """``POST /api/tasks/{id}/cancel`` ``{"reason"?}``."""
    body = await read_object(request, state)
    _only(body, "reason")
    task = await state.client.cancel(request.path_params["id"], _reason(body, "cancelled from the dashboard"))
    return JSONResponse(codec.task_to_dict(task))


@endpoint
async def set_priority(request: Request, state: WebState) -> Response:
    """``POST /api/tasks/{id}/priority`` ``{"priority": 0..3}``."""
    body = await read_object(request, state)
    _only(body, "priority")
    priority = body.get("priority")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ApiError(422, "priority must be an integer 0..3")
    task = await state.client.set_priority(request.path_params["id"], priority)
    return JSONResponse(codec.task_to_dict(task))


@endpoint
async def rerun_task(request: Request, state: WebState) -> Response:
    """``POST /api/tasks/{id}/rerun``: 201 and the new task."""
    body = await read_object(request, state)
    _only(body)
    task = await state.client.run_again(request.path_params["id"])
    return JSONResponse(
        codec.task_to_dict(task), status_code=201, headers={"location": f"/api/tasks/{task.id}"}
    )


@endpoint
async def list_queues(request: Request, state: WebState) -> Response:
    """``GET /api/queues``."""
    return JSONResponse((await state.overview.get(state.client, state.feed_revision))["queues"])


def _queue_name(request: Request) -> str:
    name: str = request.path_params["name"]
    check_name(name)  # InvalidQueueName: 422
    return name


@endpoint
async def pause_queue(request: Request, state: WebState) -> Response:
    """``POST /api/queues/{name}/pause`` ``{"reason"?}``: the queue."""
    name = _queue_name(request)
    body = await read_object(request, state)
    _only(body, "reason")
    await state.client.pause(name, _reason(body, ""))
    return JSONResponse(
        _queue_object(await state.overview.get(state.client, state.feed_revision, fresh=True), name)
    )


@endpoint
async def resume_queue(request: Request, state: WebState) -> Response:
    """``POST /api/queues/{name}/resume``: the queue."""
    name = _queue_name(request)
    body = await read_object(request, state)
    _only(body)
    await state.client.resume(name)
    return JSONResponse(
        _queue_object(await state.overview.get(state.client, state.feed_revision, fresh=True), name)
    )


async def assignments(client: Client) -> dict[str, list[str]]:
    """Worker id -> the ids of the tasks assigned to it now (one keys-only read of ``assign/``)."""
    keys = client.keys
    prefix = keys.assignments
    found: dict[str, list[str]] = {}
    async for page in client.store.scan(prefix, prefix_end(prefix), keys_only=True):
        for kv in page.kvs:
            try:
                worker, task_id = keys.parse_assignment(kv.key)
            except ValueError:
                continue
            found.setdefault(worker, []).append(task_id)
    return found


@endpoint
async def list_workers(request: Request, state: WebState) -> Response:
    """``GET /api/workers``."""
    nodes, assigned = await asyncio.gather(state.client.nodes(), assignments(state.client))
    now = time.time()
    return JSONResponse([{**worker_view(n, now), "tasks": assigned.get(n.id, [])} for n in nodes])


@endpoint
async def drain_worker(request: Request, state: WebState) -> Response:
    """``POST /api/workers/{id}/drain``: 202 (the worker stops as on SIGTERM)."""
    body = await read_object(request, state)
    _only(body)
    worker_id: str = request.path_params["id"]
    await state.client.drain(worker_id)
    return JSONResponse({"id": worker_id, "draining": True}, status_code=202)


@endpoint
async def events(request: Request, state: WebState) -> Response:
    """``GET /api/events``: the server-sent event stream (resumable with ``Last-Event-ID``)."""
    after = last_event_id(request)
    return StreamingResponse(
        state.feed.stream(after),  # ends when the feed stops (the server stops); closed on disconnect
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )
