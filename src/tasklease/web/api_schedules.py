"""The REST API's cron schedule routes (docs/schedules.md): ``/api/schedules`` and ``/api/schedules/{name}``.

Thin like the others (web/api.py): parse, call one client method, answer
JSON (``Schedule.as_dict``). Errors go through the same mapping, plus
``ScheduleNotFound`` (404) and ``ScheduleExists`` (409). Writes pass the same
guard as every write (read-only mode, the CSRF header: web/security.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tasklease.errors import ScheduleExists, ScheduleNotFound, ValidationError
from tasklease.schedules import DEFAULT_CATCH_UP, DEFAULT_OVERLAP, MAX_NEXT
from tasklease.spec import spec_from_dict
from tasklease.web.api import ApiError, JSONResponse, WebState, _only, _query_int, endpoint, read_object

ADD_FIELDS = ("name", "cron", "tz", "task", "overlap", "catch_up", "paused", "replace")
DEFAULT_NEXT = 5


def schedule_endpoint(
    fn: Callable[[Request, WebState], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """:func:`~tasklease.web.api.endpoint`, with a missing schedule a 404 and a taken name a 409."""

    async def mapped(request: Request, state: WebState) -> Response:
        try:
            return await fn(request, state)
        except ScheduleNotFound as exc:
            raise ApiError(404, str(exc)) from None
        except ScheduleExists as exc:
            raise ApiError(409, str(exc)) from None

    mapped.__name__ = fn.__name__
    mapped.__doc__ = fn.__doc__
    return endpoint(mapped)


def _text(body: dict[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise ApiError(422, f"{name} must be a string" if name in body else f"{name} is required")
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise ApiError(422, f"{name} must be true or false")
    return value


@schedule_endpoint
async def list_schedules(request: Request, state: WebState) -> Response:
    """``GET /api/schedules``: every schedule, by name."""
    return JSONResponse([s.as_dict() for s in await state.client.list_schedules()])


@schedule_endpoint
async def add_schedule(request: Request, state: WebState) -> Response:
    """``POST /api/schedules``: 201 and the schedule (200 when ``replace`` replaced one)."""
    body = await read_object(request, state)
    _only(body, *ADD_FIELDS)
    task = body.get("task")
    if not isinstance(task, dict):
        raise ApiError(422, "task must be a JSON object (a task as POST /api/tasks takes it)")
    try:
        spec = spec_from_dict(task)
    except ValidationError as exc:
        raise ApiError(422, f"task: {exc}") from None
    replace = _flag(body, "replace")
    existed = False
    name = _text(body, "name")
    if replace:
        try:
            await state.client.get_schedule(name)
            existed = True
        except (ScheduleNotFound, ValidationError):
            existed = False
    schedule = await state.client.add_schedule(
        name,
        _text(body, "cron"),
        spec,
        tz=_text(body, "tz", "UTC"),
        overlap=_text(body, "overlap", DEFAULT_OVERLAP),
        catch_up=_text(body, "catch_up", DEFAULT_CATCH_UP),
        paused=_flag(body, "paused"),
        replace=replace,
    )
    return JSONResponse(
        schedule.as_dict(),
        status_code=200 if existed else 201,
        headers={"location": f"/api/schedules/{schedule.name}"},
    )


@schedule_endpoint
async def get_schedule(request: Request, state: WebState) -> Response:
    """``GET /api/schedules/{name}``."""
    return JSONResponse((await state.client.get_schedule(request.path_params["name"])).as_dict())


@schedule_endpoint
async def remove_schedule(request: Request, state: WebState) -> Response:
    """``DELETE /api/schedules/{name}``: 200 if it was removed, 404 if there was none."""
    name: str = request.path_params["name"]
    if not await state.client.remove_schedule(name):
        raise ScheduleNotFound(name)
    return JSONResponse({"name": name, "removed": True})


@schedule_endpoint
async def pause_schedule(request: Request, state: WebState) -> Response:
    """``POST /api/schedules/{name}/pause``: the schedule."""
    _only(await read_object(request, state))
    return JSONResponse((await state.client.pause_schedule(request.path_params["name"])).as_dict())


@schedule_endpoint
async def resume_schedule(request: Request, state: WebState) -> Response:
    """``POST /api/schedules/{name}/resume``: the schedule (its catch-up decides about missed ticks)."""
    _only(await read_object(request, state))
    return JSONResponse((await state.client.resume_schedule(request.path_params["name"])).as_dict())


@schedule_endpoint
async def next_times(request: Request, state: WebState) -> Response:
    """``GET /api/schedules/{name}/next?count=5``: the next fire times (epoch seconds)."""
    count = _query_int(request, "count", DEFAULT_NEXT, 1, MAX_NEXT)
    name: str = request.path_params["name"]
    schedule = await state.client.get_schedule(name)
    times = await state.client.next_fire_times(name, count)
    return JSONResponse({"name": name, "tz": schedule.tz, "times": times})
