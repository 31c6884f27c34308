"""Records <-> bytes: JSON (never pickle), with a schema version.

Limits (docs/architecture.md, "Limits and sizes"). etcd refuses requests over
1.5 MiB (``--max-request-bytes``). A payload (and a result) may be at most
``MAX_PAYLOAD_BYTES`` (512 KiB) of JSON. A queued record may be at most
``MAX_QUEUED_RECORD_BYTES`` (680 KiB: a batch of submits or of outcomes must
be able to carry one; its queue key holds it without the payload,
:func:`encode_index_record`); an assignment writes no record (the running
record is the queued one plus the attempt of its running entry); a finished
record is at most ``MAX_RECORD_BYTES`` (1.3 MB: a maximal payload and a
maximal result fit). A
payload within its limit always fits, because what accumulates in a record is
bounded too: error texts (4 KiB each), attempts (the first 3 and last 20)
and trace context (``models.MAX_TRACE_BYTES``, 1 KiB). :func:`encode_for_write`
checks the limit of the record's state.

Compatibility. Optional fields (``requires``, ``dropped``, ``trace``) are
written only when set, and readers ignore keys they do not know, so a record
with a ``trace`` decodes in a version that predates it (which drops the trace
if it rewrites the record) and ``SCHEMA_VERSION`` stays 1.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from tasklease.errors import CorruptRecord, InvalidPayload, PayloadTooLarge, TaskleaseError
from tasklease.ids import is_task_id
from tasklease.models import (
    DEFAULT_RETENTION_S,
    JSON,
    SCHEMA_VERSION,
    Attempt,
    Dropped,
    Outcome,
    Task,
    TaskState,
    bound_trace,
)
from tasklease.retry import RetryPolicy

# The schema version of a queue key's value (a record without its payload).
INDEX_SCHEMA_VERSION = 2
MAX_PAYLOAD_BYTES = 512 * 1024
MAX_RECORD_BYTES = 1_300_000
# A queued record (its queue key holds it without the payload: transitions.place_ops).
MAX_QUEUED_RECORD_BYTES = 680 * 1024
# A running record: a queued one plus its new attempt (never written: the assignment
# writes the attempt only; kept as the limit of a running record's size).
MAX_RUNNING_RECORD_BYTES = MAX_QUEUED_RECORD_BYTES + 4096
_MAX_DEPTH = 64


def _check_json_value(value: Any, depth: int = 0) -> None:
    """Reject what orjson would encode silently but JSON does not have (NaN, inf)."""
    if depth > _MAX_DEPTH:
        raise InvalidPayload(f"JSON nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidPayload(f"{value} is not a JSON number")
    elif isinstance(value, dict):
        for item in value.values():
            _check_json_value(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_json_value(item, depth + 1)


def encode_json(value: JSON, what: str = "payload", limit: int = MAX_PAYLOAD_BYTES) -> bytes:
    """Encode a JSON value, checking that it is JSON and within ``limit``.

    Args:
        value: The value (dict, list, str, int, float, bool or None).
        what: What it is, for error messages ("payload", "result").
        limit: Maximum encoded size in bytes.

    Returns:
        The UTF-8 JSON bytes.

    Raises:
        InvalidPayload: If the value is not JSON-serialisable.
        PayloadTooLarge: If its encoding is over ``limit``.
    """
    try:
        data = orjson.dumps(value)
    except TypeError as exc:
        raise InvalidPayload(f"{what} is not JSON-serialisable: {exc}") from None
    _check_json_value(value)
    if len(data) > limit:
        raise PayloadTooLarge(what, len(data), limit)
    return data


def parse_json(text: str | bytes, what: str = "payload") -> JSON:
    """Parse JSON text given by a user.

    Raises:
        InvalidPayload: If it is not valid JSON.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidPayload(f"{what} is not valid JSON: {exc}") from None


def _attempt_to_dict(a: Attempt) -> dict[str, Any]:
    return {
        "n": a.number,
        "worker": a.worker,
        "started_at": a.started_at,
        "finished_at": a.finished_at,
        "outcome": a.outcome.value if a.outcome else None,
        "error": a.error,
    }


def _attempt_from_dict(d: Any) -> Attempt:
    if not isinstance(d, dict):
        raise ValueError("attempt is not a JSON object")
    outcome = d.get("outcome")
    return Attempt(
        number=int(d["n"]),
        worker=str(d["worker"]),
        started_at=float(d["started_at"]),
        finished_at=None if d.get("finished_at") is None else float(d["finished_at"]),
        outcome=None if outcome is None else Outcome(outcome),
        error=d.get("error"),
    )


def task_to_dict(task: Task) -> dict[str, Any]:
    """The record as a JSON-ready dict (what ``status --json`` prints)."""
    r = task.retry
    d = {
        "v": SCHEMA_VERSION,
        "id": task.id,
        "type": task.type,
        "payload": task.payload,
        "queue": task.queue,
        "priority": task.priority,
        "timeout_s": task.timeout_s,
        "retry": {
            "max_retries": r.max_retries,
            "backoff_s": r.backoff_s,
            "backoff_max_s": r.backoff_max_s,
            "jitter": r.jitter,
            "max_losses": r.max_losses,
        },
        "state": task.state.value,
        "seq": task.seq,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "not_before": task.not_before,
        "attempts": [_attempt_to_dict(a) for a in task.attempts],
        "result": task.result,
        "error": task.error,
        "retention_s": task.retention_s,
    }
    if task.requires:
        d["requires"] = dict(task.requires)
    if task.dropped.attempts:
        x = task.dropped
        d["dropped"] = {"attempts": x.attempts, "failures": x.failures, "losses": x.losses}
    if task.trace:
        d["trace"] = dict(task.trace)
    if task.rerun_of:
        d["rerun_of"] = task.rerun_of
    if task.reruns:
        d["reruns"] = list(task.reruns)
    if task.depends_on:
        d["depends_on"] = list(task.depends_on)
        if task.on_parent_failure != "cancel":
            d["on_parent_failure"] = task.on_parent_failure
    if task.workflow:
        d["workflow"] = task.workflow
    if task.expires_at is not None:
        d["expires_at"] = task.expires_at
    if task.idempotency_key is not None:
        d["idempotency_key"] = task.idempotency_key
    if task.unique_until is not None:
        d["unique_until"] = task.unique_until
    if task.schedule is not None:
        d["schedule"] = task.schedule
        d["tick"] = task.tick
    return d


def encode_task(task: Task) -> bytes:
    """Encode a task record.

    Raises:
        PayloadTooLarge: If the record is over ``MAX_RECORD_BYTES``.
        InvalidPayload: If the payload or result is not JSON.
    """
    if task.payload_omitted:
        raise ValueError(f"task {task.id} was decoded without its payload: it is not a record to write")
    try:
        data = orjson.dumps(task_to_dict(task))
    except TypeError as exc:
        raise InvalidPayload(f"task {task.id} is not JSON-serialisable: {exc}") from None
    if len(data) > MAX_RECORD_BYTES:
        raise PayloadTooLarge(f"task record {task.id}", len(data), MAX_RECORD_BYTES)
    return data


def encode_index_record(task: Task, record_bytes: int) -> bytes:
    """A queue key's value: the record without its payload, and the record's size.

    The leader assigns from these values without reading records, and needs
    everything but the payload (the worker reads the record). ``record_bytes``
    (the record's encoded size) lets a quota count the bytes that wait without
    reading the records. Decoded, it is a task with ``payload_omitted``.
    """
    return index_record_of(task_to_dict(task), record_bytes)


def index_record_of(record: dict[str, Any], record_bytes: int) -> bytes:
    """:func:`encode_index_record` of a record already in its dict form (``record`` is not changed)."""
    d = {k: v for k, v in record.items() if k != "payload"}
    # Version 2: a version that predates it refuses the value (a corrupt record to it)
    # instead of taking the missing payload for a null one.
    d["v"] = INDEX_SCHEMA_VERSION
    d["payload_omitted"] = True
    d["record_bytes"] = record_bytes
    return orjson.dumps(d)


def index_record_bytes(value: bytes) -> int:
    """The size of the record a queue key stands for: its ``record_bytes``, or its own size.

    Queue keys written by older versions hold the whole record.
    """
    if value.endswith(b"}") and b'"record_bytes"' in value:
        try:
            size = orjson.loads(value).get("record_bytes")
        except (orjson.JSONDecodeError, AttributeError):
            return len(value)
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            return size
    return len(value)


def record_limit(state: TaskState) -> int:
    """The largest encoded record allowed in ``state`` (see the module docstring)."""
    if state is TaskState.QUEUED:
        return MAX_QUEUED_RECORD_BYTES
    if state is TaskState.RUNNING:
        return MAX_RUNNING_RECORD_BYTES
    return MAX_RECORD_BYTES


def encode_for_write(task: Task) -> bytes:
    """Encode a record and check it against the limit of its state.

    Raises:
        PayloadTooLarge: If it is over :func:`record_limit` of its state.
        InvalidPayload: If the payload or result is not JSON.
    """
    data = encode_task(task)
    limit = record_limit(task.state)
    if len(data) > limit:
        raise PayloadTooLarge(f"{task.state.value} task record {task.id}", len(data), limit)
    return data


def task_from_dict(d: dict[str, Any]) -> Task:
    """Build a task from its dict form (raises on any inconsistency)."""
    omitted = d.get("payload_omitted") is True
    if d.get("v") != (INDEX_SCHEMA_VERSION if omitted else SCHEMA_VERSION):
        raise ValueError(f"unsupported schema version {d.get('v')!r}")
    r = d["retry"]
    return Task(
        id=str(d["id"]),
        type=d["type"],
        payload=d.get("payload"),
        queue=d["queue"],
        priority=d["priority"],
        timeout_s=d["timeout_s"],
        retry=RetryPolicy(
            max_retries=r["max_retries"],
            backoff_s=float(r["backoff_s"]),
            backoff_max_s=float(r["backoff_max_s"]),
            jitter=float(r["jitter"]),
            max_losses=r["max_losses"],
        ),
        state=TaskState(d["state"]),
        seq=int(d["seq"]),
        created_at=float(d["created_at"]),
        updated_at=float(d["updated_at"]),
        not_before=None if d.get("not_before") is None else float(d["not_before"]),
        attempts=tuple(_attempt_from_dict(a) for a in d["attempts"]),
        result=d.get("result"),
        error=d.get("error"),
        retention_s=float(d.get("retention_s", DEFAULT_RETENTION_S)),
        dropped=_dropped_from_dict(d.get("dropped")),
        requires=_requires_from_dict(d.get("requires")),
        # Optional and untrusted: a malformed trace is dropped, never a corrupt record.
        trace=bound_trace(d.get("trace")),
        rerun_of=_task_link(d.get("rerun_of")),
        reruns=tuple(i for i in map(_task_link, d.get("reruns") or ()) if i),
        depends_on=tuple(i for i in map(_task_link, d.get("depends_on") or ()) if i),
        on_parent_failure="run" if d.get("on_parent_failure") == "run" else "cancel",
        workflow=_task_link(d.get("workflow")),
        expires_at=_opt_float(d.get("expires_at")),
        idempotency_key=d["idempotency_key"] if isinstance(d.get("idempotency_key"), str) else None,
        unique_until=_opt_float(d.get("unique_until")),
        schedule=d["schedule"] if isinstance(d.get("schedule"), str) else None,
        tick=_opt_float(d.get("tick")),
        payload_omitted=omitted,
    )


def _opt_float(value: Any) -> float | None:
    """An optional time: a number, or None (anything else is a corrupt record)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a number: {value!r:.40}")
    return float(value)


def _task_link(value: Any) -> str | None:
    """A linked task's id, or None if it is not one (a link never makes a record corrupt)."""
    return value if isinstance(value, str) and is_task_id(value) else None


SUMMARY_ERROR_CHARS = 500


def task_summary(task: Task) -> dict[str, Any]:
    """The short JSON form of a task, for listings: no payload, no result, the error cut.

    Keys: ``id``, ``type``, ``queue``, ``state``, ``priority``, ``created_at``,
    ``updated_at``, ``attempts`` (how many), ``worker`` (of the last attempt),
    ``error`` (at most 500 characters), ``rerun_of``, ``reruns``, ``depends_on``,
    ``workflow``, ``not_before``, ``expires_at``, ``schedule``.
    """
    last = task.current_attempt
    return {
        "id": task.id,
        "type": task.type,
        "queue": task.queue,
        "state": task.state.value,
        "priority": task.priority,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "attempts": len(task.attempts) + task.dropped.attempts,
        "worker": last.worker if last else None,
        "error": task.error[:SUMMARY_ERROR_CHARS] if task.error else None,
        "rerun_of": task.rerun_of,
        "reruns": list(task.reruns),
        "depends_on": list(task.depends_on),
        "workflow": task.workflow,
        "not_before": task.not_before,
        "expires_at": task.expires_at,
        "schedule": task.schedule,
    }


def _requires_from_dict(d: Any) -> tuple[tuple[str, str], ...]:
    if d is None:
        return ()
    if not isinstance(d, dict):
        raise ValueError("requires is not a JSON object")
    return tuple(sorted((str(k), str(v)) for k, v in d.items()))


def _dropped_from_dict(d: Any) -> Dropped:
    if d is None:
        return Dropped()
    if not isinstance(d, dict):
        raise ValueError("dropped is not a JSON object")
    return Dropped(attempts=int(d["attempts"]), failures=int(d["failures"]), losses=int(d["losses"]))


def decode_task(key: str, data: bytes) -> Task:
    """Decode a task record.

    Args:
        key: The etcd key it came from (for the error).
        data: The stored bytes.

    Raises:
        CorruptRecord: If the bytes are not a valid record of our schema.
    """
    try:
        d = orjson.loads(data)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        return task_from_dict(d)
    except (ValueError, KeyError, TypeError, TaskleaseError) as exc:
        raise CorruptRecord(key, str(exc) or type(exc).__name__) from exc


def encode_obj(obj: dict[str, Any]) -> bytes:
    """Encode a small internal record (node, assignment)."""
    return orjson.dumps(obj)


def decode_obj(key: str, data: bytes) -> dict[str, Any]:
    """Decode a small internal record.

    Raises:
        CorruptRecord: If it is not a JSON object.
    """
    try:
        d = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CorruptRecord(key, str(exc)) from exc
    if not isinstance(d, dict):
        raise CorruptRecord(key, "not a JSON object")
    return d
