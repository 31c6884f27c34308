"""The REST API's workflow routes and the waiting state, over real HTTP against a real etcd.

Served as ``tasklease web`` serves it (web.server.serve, uvicorn on a free
127.0.0.1 port, in this test's event loop), talked to with httpx; a real
scheduler and worker run where an outcome is needed.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from integration.test_web_api import web

pytestmark = pytest.mark.timeout(120)

GUARD_S = 60  # a hang guard only: nothing here is timed
WRITE = {"Content-Type": "application/json", "X-Tasklease-Request": "1"}
MISSING = "0" * 26


async def post(http: httpx.AsyncClient, path: str, body: Any = None) -> httpx.Response:
    content = b"" if body is None else orjson.dumps(body)
    return await http.post(path, content=content, headers=WRITE)


def err(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body["error"], str) and "\n" not in body["error"], body
    return body["error"]


DIAMOND = {
    "name": "diamond",
    "tasks": [
        {"key": "a", "type": "noop", "payload": {"pad": "x" * 1024}},
        {"key": "b", "type": "noop", "after": ["a"]},
        {"key": "c", "type": "noop", "after": ["a"], "on_parent_failure": "run"},
        {"key": "d", "type": "noop", "after": ["b", "c"]},
    ],
}


async def test_submit_read_and_cancel_a_workflow(client, static):
    async with web(client, static) as http:
        # When a DAG is posted
        r = await post(http, "/api/workflows", DIAMOND)
        assert r.status_code == 201, r.text
        workflow = r.json()
        assert r.headers["location"] == f"/api/workflows/{workflow['id']}"
        assert workflow["transactions"] == 1
        assert [t["state"] for t in workflow["tasks"]] == ["queued", "waiting", "waiting", "waiting"]
        # Then it reads back by its id or a task's id
        for given in (workflow["id"], workflow["keys"]["d"].lower()):
            r = await http.get(f"/api/workflows/{given}")
            assert r.status_code == 200, r.text
            status = r.json()
            assert status["id"] == workflow["id"] and status["name"] == "diamond"
            assert status["states"] == {"queued": 1, "waiting": 3}
            assert status["tasks"][3]["parents"] == [workflow["keys"]["b"], workflow["keys"]["c"]]
        # and the waiting tasks are listed and counted like any state
        r = await http.get("/api/tasks", params={"state": "waiting"})
        assert sorted(t["id"] for t in r.json()["tasks"]) == sorted(
            workflow["keys"][k] for k in ("b", "c", "d")
        )
        r = await http.get("/api/overview")
        assert r.json()["states"]["waiting"] == 3
        assert r.json()["queues"][0]["waiting"] == 3
        # When it is cancelled
        r = await post(http, f"/api/workflows/{workflow['id']}/cancel", {"reason": "changed my mind"})
        assert r.status_code == 200, r.text
        assert sorted(r.json()["cancelled"]) == sorted(t["id"] for t in workflow["tasks"])
        assert r.json()["states"] == {"cancelled": 4}
        task = (await http.get(f"/api/tasks/{workflow['keys']['d']}")).json()
        assert task["state"] == "cancelled" and task["error"] == "changed my mind"
        assert task["workflow"] == workflow["id"]


async def test_submit_a_task_with_parents_over_rest(client, static):
    async with web(client, static) as http:
        parent = (await post(http, "/api/tasks", {"type": "noop"})).json()
        r = await post(
            http, "/api/tasks", {"type": "noop", "depends_on": [parent["id"]], "on_parent_failure": "run"}
        )
        assert r.status_code == 201, r.text
        child = r.json()
        assert child["state"] == "waiting"
        assert child["depends_on"] == [parent["id"]] and child["on_parent_failure"] == "run"
        # an unknown parent: 404, nothing written
        assert "not found" in err(
            await post(http, "/api/tasks", {"type": "noop", "depends_on": [MISSING]}), 404
        )
        assert "depends_on" in err(await post(http, "/api/tasks", {"type": "noop", "depends_on": "x"}), 422)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 422, "tasks must be"),
        ({"tasks": [{"type": "noop", "after": ["nope"]}]}, 422, "tasks[0]"),
        ({"tasks": [{"type": "noop", "after": [MISSING]}]}, 404, "not found"),
        ([1, 2], 422, "JSON object"),
    ],
)
async def test_a_bad_workflow_is_refused(client, static, body, status, message):
    async with web(client, static) as http:
        assert message in err(await post(http, "/api/workflows", body), status)
        assert (await http.get("/api/tasks")).json()["tasks"] == []


async def test_unknown_workflows_are_404_and_writes_respect_read_only(client, static):
    async with web(client, static) as http:
        assert "not found" in err(await http.get(f"/api/workflows/{MISSING}"), 404)
        assert "not found" in err(await post(http, f"/api/workflows/{MISSING}/cancel"), 404)
        assert "unknown field" in err(await post(http, f"/api/workflows/{MISSING}/cancel", {"x": 1}), 422)
        # a write without the CSRF header is refused before it reaches the route
        r = await http.post("/api/workflows", content=orjson.dumps(DIAMOND))
        assert r.status_code in (400, 403)
    async with web(client, static, read_only=True) as http:
        err(await post(http, "/api/workflows", DIAMOND), 403)
        assert (await http.get("/api/tasks")).json()["tasks"] == []


async def test_a_posted_workflow_runs_through(client, cluster, static):
    await cluster.scheduler()
    await cluster.worker()
    async with web(client, static) as http:
        workflow = (await post(http, "/api/workflows", DIAMOND)).json()
        done = await client.wait(workflow["keys"]["d"], timeout_s=GUARD_S)
        assert done.state.value == "succeeded"
        status = (await http.get(f"/api/workflows/{workflow['id']}")).json()
        assert status["finished"] and status["states"] == {"succeeded": 4}
