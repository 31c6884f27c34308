"""The REST routes of rate and concurrency limits (limits.py), served by ``tasklease web``.

``GET /api/limits``: every limit. ``PUT /api/limits/{kind}/{name}``
``{"rate"?, "burst"?, "concurrency"?}``: set the limit of a task type
(``kind`` ``type``) or a queue (``queue``), replacing it. ``DELETE
/api/limits/{kind}/{name}``: remove it. Writes go through the same guard as
every other (read-only mode, the CSRF header, JSON); errors are the API's
(``web/api.py``: ``{"error": ...}``, 422 for a bad rate, kind or name).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tasklease.web.api import JSONResponse, WebState, _only, endpoint, read_object


def _target(request: Request) -> tuple[str, str]:
    return request.path_params["kind"], request.path_params["name"]


@endpoint
async def list_limits(request: Request, state: WebState) -> Response:
    """``GET /api/limits``: every limit, types first, then queues."""
    return JSONResponse([x.as_dict() for x in await state.client.limits()])


@endpoint
async def put_limit(request: Request, state: WebState) -> Response:
    """``PUT /api/limits/{kind}/{name}`` ``{"rate"?, "burst"?, "concurrency"?}``: the limit as stored."""
    kind, name = _target(request)
    body = await read_object(request, state)
    _only(body, "rate", "burst", "concurrency")
    limit = await state.client.set_limit(
        kind, name, rate=body.get("rate"), burst=body.get("burst"), concurrency=body.get("concurrency")
    )
    return JSONResponse(limit.as_dict())


@endpoint
async def delete_limit(request: Request, state: WebState) -> Response:
    """``DELETE /api/limits/{kind}/{name}``: ``{"kind", "name", "removed"}`` (removed: there was one)."""
    kind, name = _target(request)
    body = await read_object(request, state)
    _only(body)
    removed = await state.client.remove_limit(kind, name)
    return JSONResponse({"kind": kind, "name": name, "removed": removed})
