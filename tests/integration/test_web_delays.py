"""Delays and expiry through the REST API (POST /api/tasks), over real HTTP against a real etcd."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from integration.test_web_api import web
from tasklease.models import TaskState

pytestmark = pytest.mark.timeout(120)

GUARD_S = 60  # a hang guard only: nothing here is timed
WRITE = {"Content-Type": "application/json", "X-Tasklease-Request": "1"}
PAD = "p" * 1000


async def post(http: httpx.AsyncClient, path: str, body: Any) -> httpx.Response:
    """A write as the dashboard sends it (JSON, the CSRF header)."""
    return await http.post(path, content=orjson.dumps(body), headers=WRITE)


def err(response: httpx.Response, status: int) -> str:
    """The one-line error of a JSON error answer with ``status``."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body["error"], str) and "\n" not in body["error"], body
    return body["error"]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_submit_delayed_and_expiring_tasks_over_rest(client, cluster, static):
    await cluster.scheduler()  # no worker: the expiring task waits queued until it expires
    async with web(client, static) as http:
        # a delay in seconds: pending, with its time and an expiry an hour on
        r = await post(http, "/api/tasks", {"type": "pad_echo", "payload": {"pad": PAD}, "delay_s": 600})
        assert r.status_code == 201, r.text
        delayed = r.json()
        assert delayed["state"] == "pending"
        assert delayed["created_at"] + 599 < delayed["not_before"] < delayed["created_at"] + 601

        # a time (ISO 8601) and an expiry time: the record carries both
        at = time.time() + 3600
        body = {"type": "pad_echo", "payload": {"pad": PAD}, "run_at": iso(at), "expires_at": iso(at + 60)}
        r = await post(http, "/api/tasks", body)
        assert r.status_code == 201, r.text
        task = r.json()
        assert task["state"] == "pending"
        assert task["not_before"] == datetime.fromisoformat(iso(at)).timestamp()
        assert task["expires_at"] == datetime.fromisoformat(iso(at + 60)).timestamp()

        # an expiry in seconds: discarded when not started in time, the reason recorded
        r = await post(http, "/api/tasks", {"type": "pad_echo", "payload": {"pad": PAD}, "expires_s": 0.3})
        assert r.status_code == 201, r.text
        expiring = r.json()
        final = await client.wait(expiring["id"], timeout_s=60)
        assert final.state is TaskState.CANCELLED and (final.error or "").startswith(
            "expired: not started by"
        )
        got = (await http.get(f"/api/tasks/{expiring['id']}")).json()
        assert got["state"] == "cancelled" and got["error"] == final.error

        # bad input: one-line 422s (as any invalid option), nothing written
        before = len(await client.list(state=TaskState.PENDING))
        for bad, fragment in (
            ({"run_at": "2026-12-01T10:00:00"}, "time zone"),
            ({"run_at": "tomorrow"}, "ISO 8601"),
            ({"delay_s": -1}, "delay_s"),
            ({"expires_s": "10m"}, "expires_s must be a number"),
        ):
            r = await post(http, "/api/tasks", {"type": "pad_echo", **bad})
            assert fragment in err(r, 422), (bad, r.text)
        assert len(await client.list(state=TaskState.PENDING)) == before


async def test_openapi_documents_the_delay_fields(client, static):
    async with web(client, static) as http:
        spec = (await http.get("/api/openapi.json")).json()["components"]["schemas"]["TaskSpec"]
        assert {"delay_s", "run_at", "expires_s", "expires_at"} <= set(spec["properties"])
        assert spec["properties"]["run_at"]["type"] == ["string", "number"]
