"""The cron schedule routes of the REST API (``/api/schedules``), over real HTTP against a real etcd.

The app is served as ``tasklease web`` serves it (web.server.serve, uvicorn on
a free port, this test's event loop); a real scheduler fires where a test
needs ticks.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from integration.test_web_api import web
from tasklease.schedules import CronExpr

pytestmark = pytest.mark.timeout(120)

GUARD_S = 60
WRITE = {"Content-Type": "application/json", "X-Tasklease-Request": "1"}
TASK = {"type": "noop", "payload": {"report": "z" * 3000}, "queue": "cron", "priority": 2, "retries": 1}


async def post(http: httpx.AsyncClient, path: str, body: Any = None) -> httpx.Response:
    return await http.post(path, content=b"" if body is None else orjson.dumps(body), headers=WRITE)


def err(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body["error"], str) and "\n" not in body["error"], body
    return str(body["error"])


async def test_add_get_list_next_pause_resume_delete(client, static, cluster):
    async with web(client, static) as http:
        # When a schedule is added
        r = await post(
            http,
            "/api/schedules",
            {"name": "beat", "cron": "* * * * * *", "task": TASK, "catch_up": "all", "tz": "Europe/Berlin"},
        )
        assert r.status_code == 201, r.text
        assert r.headers["location"] == "/api/schedules/beat"
        added = r.json()
        assert (added["name"], added["cron"], added["tz"], added["catch_up"], added["overlap"]) == (
            "beat",
            "* * * * * *",
            "Europe/Berlin",
            "all",
            "allow",
        )
        assert added["task"]["payload"] == TASK["payload"] and added["next_at"] is not None
        # Then a scheduler fires it, and the API shows its counts
        await cluster.scheduler()
        for _ in range(600):
            got = (await http.get("/api/schedules/beat")).json()
            if got["fired"] >= 2:
                break
            await asyncio.sleep(0.05)
        assert got["fired"] >= 2 and got["last_task"] and got["last_tick"]
        listed = (await http.get("/api/schedules")).json()
        assert [s["name"] for s in listed] == ["beat"]
        nxt = (await http.get("/api/schedules/beat/next", params={"count": "4"})).json()
        assert nxt["tz"] == "Europe/Berlin" and len(nxt["times"]) == 4
        assert nxt["times"] == CronExpr("* * * * * *").next_times(nxt["times"][0] - 1, 4)
        # pause and resume
        paused = (await post(http, "/api/schedules/beat/pause", {})).json()
        assert paused["paused"] is True and paused["next_at"] is None
        resumed = (await post(http, "/api/schedules/beat/resume")).json()
        assert resumed["paused"] is False
        # replace: 200, the counts kept
        r = await post(
            http,
            "/api/schedules",
            {"name": "beat", "cron": "0 3 * * *", "task": {"type": "noop"}, "replace": True},
        )
        assert r.status_code == 200, r.text
        assert r.json()["cron"] == "0 3 * * *" and r.json()["fired"] >= 2
        # delete
        r = await http.delete("/api/schedules/beat", headers=WRITE)
        assert r.status_code == 200 and r.json() == {"name": "beat", "removed": True}
        assert "no schedule 'beat'" in err(await http.delete("/api/schedules/beat", headers=WRITE), 404)
        assert "no schedule 'beat'" in err(await http.get("/api/schedules/beat"), 404)
        assert "no schedule" in err(await post(http, "/api/schedules/beat/pause"), 404)
        assert "no schedule" in err(await http.get("/api/schedules/beat/next"), 404)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"name": "x", "cron": "61 * * * *", "task": {"type": "noop"}}, 422, "bad cron expression"),
        ({"name": "x", "cron": "* * * * *", "task": {"type": "noop"}, "tz": "Mars/Base"}, 422, "time zone"),
        ({"name": "x", "cron": "* * * * *", "task": {"type": "noop", "task_id": "0" * 26}}, 422, "task id"),
        ({"name": "x", "cron": "* * * * *", "task": {"type": "noop", "bogus": 1}}, 422, "unknown task field"),
        ({"name": "x", "cron": "* * * * *", "task": "noop"}, 422, "task must be a JSON object"),
        ({"name": "x", "cron": "* * * * *"}, 422, "task must be"),
        ({"cron": "* * * * *", "task": {"type": "noop"}}, 422, "name is required"),
        ({"name": "x", "cron": "* * * * *", "task": {"type": "noop"}, "catch_up": "most"}, 422, "catch-up"),
        (
            {"name": "x", "cron": "* * * * *", "task": {"type": "noop"}, "paused": "yes"},
            422,
            "paused must be",
        ),
        ({"name": "x/y", "cron": "* * * * *", "task": {"type": "noop"}}, 422, "invalid schedule name"),
        ({"name": "x", "cron": "* * * * *", "task": {"type": "noop"}, "extra": 1}, 422, "unknown field"),
    ],
)
async def test_bad_schedules_are_refused_with_one_line(client, static, body, status, fragment):
    async with web(client, static) as http:
        assert fragment in err(await post(http, "/api/schedules", body), status)
        assert (await http.get("/api/schedules")).json() == []


async def test_a_taken_name_is_409_a_bad_count_400_and_read_only_refuses_writes(client, static):
    async with web(client, static) as http:
        body = {"name": "n", "cron": "0 3 * * *", "task": {"type": "noop"}}
        assert (await post(http, "/api/schedules", body)).status_code == 201
        assert "exists" in err(await post(http, "/api/schedules", body), 409)
        assert "count" in err(await http.get("/api/schedules/n/next", params={"count": "0"}), 400)
    async with web(client, static, read_only=True) as http:
        assert (await http.get("/api/schedules")).status_code == 200
        for response in (
            await post(http, "/api/schedules", {**body, "name": "m"}),
            await post(http, "/api/schedules/n/pause"),
            await http.delete("/api/schedules/n", headers=WRITE),
        ):
            assert "read-only" in err(response, 403)
    assert [s.name for s in await client.list_schedules()] == ["n"]
