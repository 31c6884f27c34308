"""The REST API's workflow routes (docs/workflows.md): submit a DAG, read its status, cancel it.

``POST /api/workflows`` takes the JSON form of a workflow
(:func:`tasklease.workflows.builder_from_dict`); ``GET /api/workflows/{id}``
and ``POST /api/workflows/{id}/cancel`` take a workflow id or the id of any of
its tasks. Errors go through :data:`tasklease.web.api.ERROR_STATUS` like every
route (an unknown workflow is a 404, a bad DAG a 422); writes are guarded like
the others (token, read-only, the CSRF header: web/security.py).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tasklease.web.api import JSONResponse, WebState, _only, _reason, endpoint, read_json, read_object


@endpoint
async def submit_workflow(request: Request, state: WebState) -> Response:
    """``POST /api/workflows``: 201 and the workflow (its id, its tasks' ids, keys and states)."""
    body = await read_json(request, state.max_body)
    workflow = await state.client.submit_workflow(body if body is not None else {})
    return JSONResponse(
        workflow.as_dict(), status_code=201, headers={"location": f"/api/workflows/{workflow.id}"}
    )


@endpoint
async def get_workflow(request: Request, state: WebState) -> Response:
    """``GET /api/workflows/{id}``: the workflow and each task's state and parents."""
    status = await state.client.workflow_status(request.path_params["id"])
    return JSONResponse(status.as_dict())


@endpoint
async def cancel_workflow(request: Request, state: WebState) -> Response:
    """``POST /api/workflows/{id}/cancel`` ``{"reason"?}``: the ids of the tasks cancelled."""
    body = await read_object(request, state)
    _only(body, "reason")
    reason = _reason(body, "workflow cancelled from the dashboard")
    given = request.path_params["id"]
    cancelled = await state.client.cancel_workflow(given, reason)
    status = await state.client.workflow_status(given)
    return JSONResponse({"id": status.id, "cancelled": [t.id for t in cancelled], "states": status.states})
