"""The OpenAPI 3.1 document of the REST API, written by hand (served at ``/api/openapi.json``).

A test checks that every route of the app is documented here and that every
path documented here is a route (tests/integration/test_web_api.py).
"""

from __future__ import annotations

from typing import Any

from tasklease.version import __version__


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR_TEXT = {
    400: "Bad JSON, wrong Content-Type, or a bad query parameter",
    401: "No token, or a bad one",
    403: "Read-only dashboard, or a cross-site request",
    404: "No such task, worker, schedule or route",
    409: "The task's state does not allow it, a schedule name taken, or a conflict",
    413: "Request body over the limit (--max-body)",
    422: "Invalid field (priority, queue name, type, payload, ...)",
    429: "Over a quota of the namespace",
    503: "etcd is unavailable (or out of space)",
}


def _responses(ok: dict[str, dict[str, Any]], *statuses: int) -> dict[str, Any]:
    """``ok`` plus the error statuses (every operation may answer 401 and 503)."""
    errors = {str(s): {"$ref": f"#/components/responses/E{s}"} for s in sorted({*statuses, 401, 503})}
    return {**ok, **errors}


def _op(
    summary: str,
    ok: dict[str, dict[str, Any]],
    *statuses: int,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    write: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": _responses(ok, *statuses, *(403, 400) if write else ()),
    }
    if params:
        op["parameters"] = params
    if write:
        op["parameters"] = [*op.get("parameters", []), {"$ref": "#/components/parameters/XTaskleaseRequest"}]
        op["requestBody"] = {
            "required": body is not None and body.get("required", False),
            "content": {"application/json": {"schema": (body or {}).get("schema", {"type": "object"})}},
        }
    return op


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


TASK_ID = _path("id", "A task id (26 characters of Crockford base32; read case-insensitively)")
QUEUE = _path("name", "A queue name ([A-Za-z0-9_.-]{1,64})")
WORKER_ID = _path("id", "A live worker's id")
WORKFLOW_ID = _path("id", "A workflow id, or the id of any of its tasks")
REASON = {
    "schema": {
        "type": "object",
        "properties": {"reason": {"type": "string", "maxLength": 500}},
        "additionalProperties": False,
    }
}
EMPTY = {"schema": {"type": "object", "additionalProperties": False}}
NUM = {"type": "number"}
INT = {"type": "integer"}
STR = {"type": "string"}
NULL_STR = {"type": ["string", "null"]}
NULL_NUM = {"type": ["number", "null"]}
TIME = {
    "type": ["string", "number"],
    "examples": ["2026-12-01T10:00:00Z"],
    "format": "date-time or epoch seconds",
}
STATES = ["waiting", "queued", "pending", "running", "succeeded", "failed", "cancelled"]


def _obj(props: dict[str, Any], required: bool = True, extra: bool = True) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        d["required"] = list(props)
    if not extra:
        d["additionalProperties"] = False
    return d


SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": {"type": "string", "description": "One line"}}),
    "Config": _obj(
        {"read_only": {"type": "boolean"}, "namespace": STR, "version": STR, "auth": {"type": "boolean"}}
    ),
    "TaskSpec": {
        "type": "object",
        "required": ["type"],
        "additionalProperties": False,
        "properties": {
            "type": {**STR, "pattern": "^[A-Za-z0-9_.:-]{1,128}$"},
            "payload": {"description": "Any JSON (at most the payload limit)"},
            "queue": {**STR, "default": "default"},
            "priority": {**INT, "minimum": 0, "maximum": 3, "default": 1},
            "timeout_s": {**NUM, "exclusiveMinimum": 0, "default": 300},
            "retries": {**INT, "minimum": 0, "default": 0},
            "backoff_s": {**NUM, "minimum": 0, "default": 1},
            "retention_s": {**NUM, "exclusiveMinimum": 0},
            "requires": {"type": "object", "additionalProperties": STR},
            "task_id": STR,
            "idempotency_key": {
                **STR,
                "minLength": 1,
                "maxLength": 512,
                "description": "A submit with a key already held returns the task holding it (200) "
                "instead of creating one (docs/idempotency.md)",
            },
            "unique_for_s": {
                **NUM,
                "exclusiveMinimum": 0,
                "description": "Hold the idempotency key this many seconds after the submit "
                "(default: until the task's record expires)",
            },
            "depends_on": {
                "type": "array",
                "items": STR,
                "maxItems": 1000,
                "description": "Parents: it runs once they all succeeded (waits in state waiting)",
            },
            "on_parent_failure": {"enum": ["cancel", "run"], "default": "cancel"},
            "delay_s": {**NUM, "minimum": 0, "description": "Run no sooner than this many seconds from now"},
            "run_at": {
                **TIME,
                "description": "Run no sooner than this time (the later of delay_s and run_at)",
            },
            "expires_s": {
                **NUM,
                "exclusiveMinimum": 0,
                "description": "Discard it (cancelled, reason recorded) if not started this many seconds from now",
            },
            "expires_at": {
                **TIME,
                "description": "Discard it if not started by then (the earlier of the two)",
            },
        },
    },
    "Attempt": _obj(
        {
            "n": INT,
            "worker": STR,
            "started_at": NUM,
            "finished_at": NULL_NUM,
            "outcome": {"type": ["string", "null"]},
            "error": NULL_STR,
        }
    ),
    "Task": {
        "type": "object",
        "description": "The whole record (codec.task_to_dict)",
        "required": ["id", "type", "queue", "priority", "state", "created_at", "updated_at", "attempts"],
        "properties": {
            "id": STR,
            "type": STR,
            "payload": {},
            "queue": STR,
            "priority": INT,
            "timeout_s": NUM,
            "retry": {"type": "object"},
            "state": {"enum": STATES},
            "created_at": NUM,
            "updated_at": NUM,
            "not_before": NULL_NUM,
            "expires_at": {**NULL_NUM, "description": "Discarded if not started by then (epoch seconds)"},
            "attempts": {"type": "array", "items": _ref("Attempt")},
            "result": {},
            "error": NULL_STR,
            "retention_s": NULL_NUM,
            "requires": {"type": "object"},
            "rerun_of": NULL_STR,
            "reruns": {"type": "array", "items": STR},
            "idempotency_key": NULL_STR,
            "unique_until": NULL_NUM,
            "depends_on": {"type": "array", "items": STR},
            "on_parent_failure": {"enum": ["cancel", "run"]},
            "workflow": NULL_STR,
        },
    },
    "BatchResult": _obj(
        {
            "tasks": {
                "type": "array",
                "items": _obj({"id": STR, "created": {"type": "boolean"}}),
                "description": "created false: the spec's idempotency key was held (by an existing task, "
                "or an earlier spec of the batch) and id is that task's",
            },
            "transactions": INT,
        }
    ),
    "TaskSummary": _obj(
        {
            "id": STR,
            "type": STR,
            "queue": STR,
            "state": {"enum": STATES},
            "priority": INT,
            "created_at": NUM,
            "updated_at": NUM,
            "attempts": INT,
            "worker": NULL_STR,
            "error": {**NULL_STR, "maxLength": 500},
            "rerun_of": NULL_STR,
            "reruns": {"type": "array", "items": STR},
        }
    ),
    "TaskPage": _obj(
        {"tasks": {"type": "array", "items": _ref("TaskSummary")}, "cursor": NULL_STR},
    ),
    "Queue": _obj(
        {
            "name": STR,
            "depth": _obj({"3": INT, "2": INT, "1": INT, "0": INT}),
            "queued": INT,
            "running": INT,
            "pending": INT,
            "waiting": INT,
            "succeeded": INT,
            "failed": INT,
            "cancelled": INT,
            "paused": {"type": "boolean"},
            "paused_at": NULL_NUM,
            "paused_reason": STR,
        }
    ),
    "Overview": _obj(
        {
            "revision": INT,
            "at": NUM,
            "states": _obj({s: INT for s in STATES}),
            "queues": {"type": "array", "items": _ref("Queue")},
            "workers": _obj({"live": INT, "capacity": INT, "running": INT, "free": INT, "draining": INT}),
            "throughput": _obj({"window_s": NUM, "finished": INT, "failed": INT}),
            "latest_failures": {"type": "array", "items": _ref("TaskSummary"), "maxItems": 10},
            "leader": NULL_STR,
        }
    ),
    "Stats": {
        "type": "object",
        "description": "tasklease stats --json",
        "properties": {"states": {}, "queues": {}},
    },
    "Worker": _obj(
        {
            "id": STR,
            "host": STR,
            "pid": INT,
            "queues": {"type": "array", "items": STR},
            "capacity": INT,
            "running": INT,
            "assigned": INT,
            "free": INT,
            "cpu": NUM,
            "memory": NUM,
            "tags": {"type": "object", "additionalProperties": STR},
            "types": {"type": "array", "items": STR},
            "version": STR,
            "started_at": NULL_NUM,
            "heartbeat_at": NULL_NUM,
            "heartbeat_age_s": NULL_NUM,
            "draining": {"type": "boolean"},
            "completed": INT,
            "tasks": {"type": "array", "items": STR, "description": "Ids of the tasks assigned to it now"},
        }
    ),
}

# rate and concurrency limits (web/api_limits.py)
SCHEMAS["Limit"] = _obj(
    {
        "kind": {"enum": ["type", "queue"]},
        "name": STR,
        "rate": {**NULL_STR, "description": "Most starts, as given: 100/s, 100/min, 5000/h, 20000/d"},
        "rate_per_s": NULL_NUM,
        "burst": {"type": ["integer", "null"], "description": "Most starts at once after a quiet spell"},
        "concurrency": {"type": ["integer", "null"], "description": "Most running at once, cluster-wide"},
        "set_at": NUM,
    }
)
LIMIT_PARAMS = [
    {
        "name": "kind",
        "in": "path",
        "required": True,
        "schema": {"enum": ["type", "queue"]},
        "description": "What is limited: a task type or a queue",
    },
    _path("name", "The task type or the queue name"),
]
LIMIT_BODY = {
    "required": True,
    "schema": {
        "type": "object",
        "additionalProperties": False,
        "description": "A rate, a concurrency, or both",
        "properties": {
            "rate": {**STR, "pattern": "^[0-9]+(\\.[0-9]+)?/(s|sec|second|min|minute|h|hour|d|day)$"},
            "burst": {**INT, "minimum": 1, "description": "With a rate; default 0.1 s worth, at least 1"},
            "concurrency": {**INT, "minimum": 1},
        },
    },
}

SCHEDULE_NAME = _path("name", "A schedule name ([A-Za-z0-9_.-]{1,64})")
_SCHEDULE_DEFINITION = {
    "cron": {**STR, "description": "5 fields, or 6 with the seconds first, or @hourly/@daily/..."},
    "tz": {**STR, "default": "UTC", "description": "IANA time zone of the expression"},
    "task": _ref("TaskSpec"),
    "overlap": {"enum": ["allow", "skip"], "default": "allow"},
    "catch_up": {"enum": ["none", "one", "all"], "default": "one"},
    "paused": {"type": "boolean", "default": False},
}
SCHEMAS["Schedule"] = _obj(
    {
        "name": STR,
        **_SCHEDULE_DEFINITION,
        "created_at": NUM,
        "updated_at": NUM,
        "since": {**NUM, "description": "Its ticks are those after this (added or replaced)"},
        "last_tick": {**NULL_NUM, "description": "The newest tick dealt with (fired or skipped)"},
        "last_task": NULL_STR,
        "fired": INT,
        "skipped": INT,
        "next_at": {**NULL_NUM, "description": "When it fires next (null while paused)"},
    }
)
SCHEMAS["NewSchedule"] = {
    "type": "object",
    "required": ["name", "cron", "task"],
    "additionalProperties": False,
    "properties": {
        "name": {**STR, "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
        **_SCHEDULE_DEFINITION,
        "replace": {"type": "boolean", "default": False, "description": "Replace one of that name"},
    },
}


def _schedule_paths() -> dict[str, Any]:
    """The cron schedules' routes (web/api_schedules.py)."""
    schedule = _json(_ref("Schedule"), "The schedule")
    return {
        "/api/schedules": {
            "get": _op(
                "Every cron schedule, by name",
                {"200": _json({"type": "array", "items": _ref("Schedule")}, "")},
            ),
            "post": _op(
                "Add a cron schedule: the leader submits its task at each tick, exactly once",
                {
                    "201": _json(_ref("Schedule"), "Added (Location: /api/schedules/{name})"),
                    "200": _json(_ref("Schedule"), "Replaced (replace: true)"),
                },
                409,
                413,
                422,
                body={"required": True, "schema": _ref("NewSchedule")},
                write=True,
            ),
        },
        "/api/schedules/{name}": {
            "get": _op("A cron schedule", {"200": schedule}, 404, params=[SCHEDULE_NAME]),
            "delete": _op(
                "Remove a cron schedule (the tasks it fired stay)",
                {"200": _json(_obj({"name": STR, "removed": {"const": True}}), "Removed")},
                404,
                params=[SCHEDULE_NAME],
                body=EMPTY,
                write=True,
            ),
        },
        "/api/schedules/{name}/pause": {
            "post": _op(
                "Pause a cron schedule: it does not fire until resumed",
                {"200": schedule},
                404,
                413,
                422,
                params=[SCHEDULE_NAME],
                body=EMPTY,
                write=True,
            )
        },
        "/api/schedules/{name}/resume": {
            "post": _op(
                "Resume a cron schedule (its catch-up policy decides about the ticks it missed)",
                {"200": schedule},
                404,
                413,
                422,
                params=[SCHEDULE_NAME],
                body=EMPTY,
                write=True,
            )
        },
        "/api/schedules/{name}/next": {
            "get": _op(
                "The next fire times of a cron schedule",
                {
                    "200": _json(
                        _obj({"name": STR, "tz": STR, "times": {"type": "array", "items": NUM}}),
                        "Epoch seconds, soonest first",
                    )
                },
                400,
                404,
                params=[
                    SCHEDULE_NAME,
                    _query("count", {**INT, "minimum": 1, "maximum": 1000, "default": 5}, "How many"),
                ],
            )
        },
    }


SCHEMAS["WorkflowSpec"] = {
    "type": "object",
    "required": ["tasks"],
    "additionalProperties": False,
    "description": "A DAG: each task may only come after tasks listed before it (or tasks that exist)",
    "properties": {
        "name": {**STR, "maxLength": 200},
        "id": {**STR, "description": "A workflow id to use (default: a new one)"},
        "tasks": {
            "type": "array",
            "minItems": 1,
            "maxItems": 10000,
            "items": {
                "allOf": [_ref("TaskSpec")],
                "description": "A TaskSpec plus key and after",
                "properties": {
                    "key": {**STR, "pattern": "^[A-Za-z0-9_.:-]{1,64}$"},
                    "after": {
                        "type": "array",
                        "items": STR,
                        "description": "Keys of earlier tasks, or task ids",
                    },
                },
            },
        },
    },
}
SCHEMAS["Workflow"] = _obj(
    {
        "id": STR,
        "name": STR,
        "tasks": {"type": "array", "items": _obj({"id": STR, "type": STR, "state": {"enum": STATES}})},
        "keys": {"type": "object", "additionalProperties": STR, "description": "Task key -> task id"},
        "transactions": {**INT, "description": "1: written all or nothing"},
    }
)
SCHEMAS["WorkflowStatus"] = _obj(
    {
        "id": STR,
        "name": STR,
        "created_at": NUM,
        "finished": {"type": "boolean"},
        "states": {"type": "object", "additionalProperties": INT},
        "tasks": {
            "type": "array",
            "description": "In the order they were added (a topological order)",
            "items": _obj(
                {
                    "id": STR,
                    "state": {"enum": [*STATES, "missing"]},
                    "type": NULL_STR,
                    "queue": NULL_STR,
                    "parents": {"type": "array", "items": STR},
                    "error": NULL_STR,
                    "updated_at": NULL_NUM,
                }
            ),
        },
    }
)

RESPONSES = {f"E{status}": _json(_ref("Error"), text) for status, text in ERROR_TEXT.items()}


def _document() -> dict[str, Any]:
    task_page_params = [
        _query("state", {"enum": STATES}, "Only this state (finished states: newest first, from the index)"),
        _query("queue", STR, "Only this queue"),
        _query("type", STR, "Only this task type"),
        _query("since", NUM, "Finished at or after this time (epoch seconds; finished states only)"),
        _query("limit", {**INT, "minimum": 1, "maximum": 1000, "default": 50}, "Page size"),
        _query("cursor", STR, "The previous page's cursor"),
    ]
    paths: dict[str, Any] = {
        "/api/config": {
            "get": _op("What the dashboard needs to know", {"200": _json(_ref("Config"), "Config")})
        },
        "/api/overview": {
            "get": _op(
                "Counts per state and queue, workers, throughput, failures",
                {"200": _json(_ref("Overview"), "")},
            )
        },
        "/api/stats": {
            "get": _op(
                "tasklease stats (scans every task record)",
                {"200": _json(_ref("Stats"), "")},
                400,
                params=[_query("window", {**NUM, "default": 60}, "Throughput window in seconds")],
            )
        },
        "/api/tasks": {
            "get": _op(
                "One page of task summaries",
                {"200": _json(_ref("TaskPage"), "")},
                400,
                422,
                params=task_page_params,
            ),
            "post": _op(
                "Submit a task",
                {
                    "201": _json(_ref("Task"), "The new task (Location: /api/tasks/{id})"),
                    "200": {
                        **_json(
                            _ref("Task"),
                            "Its idempotency key is held: the task holding it, nothing new submitted",
                        ),
                        "headers": {
                            "Idempotent-Replayed": {
                                "description": "true: the answer is the existing task",
                                "schema": STR,
                            }
                        },
                    },
                },
                413,
                422,
                429,
                body={"required": True, "schema": _ref("TaskSpec")},
                write=True,
            ),
        },
        "/api/tasks/batch": {
            "post": _op(
                "Submit up to 1000 tasks in as few transactions as etcd allows",
                {
                    "201": _json(_ref("BatchResult"), "The ids, in order (some may be existing tasks)"),
                    "200": _json(
                        _ref("BatchResult"), "Every spec's idempotency key was held: existing tasks only"
                    ),
                },
                413,
                422,
                429,
                body={
                    "required": True,
                    "schema": _obj(
                        {
                            "tasks": {
                                "type": "array",
                                "items": _ref("TaskSpec"),
                                "minItems": 1,
                                "maxItems": 1000,
                            }
                        },
                        extra=False,
                    ),
                },
                write=True,
            )
        },
        "/api/tasks/{id}": {
            "get": _op("A task's whole record", {"200": _json(_ref("Task"), "")}, 404, params=[TASK_ID])
        },
        "/api/tasks/{id}/wait": {
            "get": _op(
                "Wait for a task to finish (by watch)",
                {
                    "200": _json(_ref("Task"), "Finished"),
                    "202": _json(_ref("Task"), "Not finished when the timeout ran out: the task now"),
                },
                400,
                404,
                params=[
                    TASK_ID,
                    _query(
                        "timeout", {**NUM, "exclusiveMinimum": 0, "maximum": 60, "default": 30}, "Seconds"
                    ),
                ],
            )
        },
        "/api/tasks/{id}/cancel": {
            "post": _op(
                "Cancel a task that has not finished",
                {"200": _json(_ref("Task"), "The cancelled task")},
                404,
                409,
                413,
                422,
                params=[TASK_ID],
                body=REASON,
                write=True,
            )
        },
        "/api/tasks/{id}/priority": {
            "post": _op(
                "Change a waiting task's priority",
                {"200": _json(_ref("Task"), "The task")},
                404,
                409,
                413,
                422,
                params=[TASK_ID],
                body={
                    "required": True,
                    "schema": _obj({"priority": {**INT, "minimum": 0, "maximum": 3}}, extra=False),
                },
                write=True,
            )
        },
        "/api/tasks/{id}/rerun": {
            "post": _op(
                "Run a failed or cancelled task again: a new queued task with the same spec",
                {"201": _json(_ref("Task"), "The new task (its rerun_of is the old id)")},
                404,
                409,
                413,
                422,
                429,
                params=[TASK_ID],
                body=EMPTY,
                write=True,
            )
        },
        "/api/queues": {
            "get": _op(
                "Every queue that holds tasks or is paused",
                {"200": _json({"type": "array", "items": _ref("Queue")}, "")},
            )
        },
        "/api/queues/{name}/pause": {
            "post": _op(
                "Pause a queue: nothing more is assigned from it (running tasks go on; submits still work)",
                {"200": _json(_ref("Queue"), "The queue")},
                413,
                422,
                params=[QUEUE],
                body=REASON,
                write=True,
            )
        },
        "/api/queues/{name}/resume": {
            "post": _op(
                "Resume a paused queue",
                {"200": _json(_ref("Queue"), "The queue")},
                413,
                422,
                params=[QUEUE],
                body=EMPTY,
                write=True,
            )
        },
        "/api/workers": {
            "get": _op("The live workers", {"200": _json({"type": "array", "items": _ref("Worker")}, "")})
        },
        "/api/workers/{id}/drain": {
            "post": _op(
                "Ask a worker to stop as on SIGTERM (it finishes its running tasks, takes no new ones)",
                {
                    "202": _json(
                        _obj({"id": STR, "draining": {"const": True}}),
                        "Asked; the worker's record shows draining",
                    )
                },
                404,
                413,
                422,
                params=[WORKER_ID],
                body=EMPTY,
                write=True,
            )
        },
        "/api/limits": {
            "get": _op(
                "Every rate and concurrency limit: types first, then queues",
                {"200": _json({"type": "array", "items": _ref("Limit")}, "")},
            )
        },
        "/api/limits/{kind}/{name}": {
            "put": _op(
                "Set the limit of a task type or a queue (replaces it; the scheduler applies it at once)",
                {"200": _json(_ref("Limit"), "The limit as stored")},
                413,
                422,
                params=LIMIT_PARAMS,
                body=LIMIT_BODY,
                write=True,
            ),
            "delete": _op(
                "Remove the limit of a task type or a queue",
                {
                    "200": _json(
                        _obj({"kind": STR, "name": STR, "removed": {"type": "boolean"}}),
                        "removed: whether there was one",
                    )
                },
                413,
                422,
                params=LIMIT_PARAMS,
                body=EMPTY,
                write=True,
            ),
        },
        "/api/events": {
            "get": {
                "summary": "Server-sent events: one message per etcd revision that changed what the dashboard shows",
                "parameters": [
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {**INT, "minimum": 0},
                        "description": "Resume after this revision (what the browser's EventSource sends)",
                    },
                    _query(
                        "last_event_id",
                        {**INT, "minimum": 0},
                        "The same, for clients that cannot set headers",
                    ),
                ],
                "responses": _responses(
                    {
                        "200": {
                            "description": "id: REVISION / event: changes (or resync) / data: JSON; keepalive comments",
                            "content": {"text/event-stream": {"schema": STR}},
                        }
                    },
                    400,
                ),
            }
        },
        "/api/workflows": {
            "post": _op(
                "Submit a workflow (a DAG of tasks): one transaction when it fits",
                {"201": _json(_ref("Workflow"), "The workflow (Location: /api/workflows/{id})")},
                404,
                413,
                422,
                429,
                write=True,
                body={"required": True, "schema": _ref("WorkflowSpec")},
            )
        },
        "/api/workflows/{id}": {
            "get": _op(
                "A workflow (by its id, or any of its tasks' ids) and each task's state and parents",
                {"200": _json(_ref("WorkflowStatus"), "")},
                404,
                params=[WORKFLOW_ID],
            )
        },
        "/api/workflows/{id}/cancel": {
            "post": _op(
                "Cancel every task of the workflow that has not finished (waiting ones too)",
                {
                    "200": _json(
                        _obj(
                            {
                                "id": STR,
                                "cancelled": {"type": "array", "items": STR},
                                "states": {"type": "object", "additionalProperties": INT},
                            }
                        ),
                        "The tasks cancelled by this call",
                    )
                },
                404,
                params=[WORKFLOW_ID],
                write=True,
                body=REASON,
            )
        },
        "/api/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"}, "OpenAPI 3.1")})},
    }
    paths.update(_schedule_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tasklease",
            "version": __version__,
            "description": 'The REST API of `tasklease web` (docs/api.md). Errors are {"error": "one line"}.',
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": RESPONSES,
            "parameters": {
                "XTaskleaseRequest": {
                    "name": "X-Tasklease-Request",
                    "in": "header",
                    "required": True,
                    "schema": {"const": "1"},
                    "description": "Every write needs it (with Content-Type: application/json): the CSRF check",
                }
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Only when started with a token",
                },
                "cookie": {"type": "apiKey", "in": "cookie", "name": "tasklease_token"},
            },
        },
        "security": [{}, {"bearer": []}, {"cookie": []}],
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a new dict each call)."""
    return _document()
