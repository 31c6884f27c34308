"""The REST API of ``tasklease web``, over real HTTP against a real etcd.

Each test serves the app the way ``tasklease web`` does (web.server.serve: one
client, one EventFeed, uvicorn on a free 127.0.0.1 port, in this test's event
loop) and talks to it with httpx. A real scheduler and worker run where an
outcome is needed. The dashboard's files are a placeholder directory here
(tmp), except in the test of the package's own files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.routing import Route

from faultstore import FaultyStore
from integration.conftest import INDEX
from ssetools import Blocks, SSEMessage, SSEReader
from tasklease.client import Client
from tasklease.errors import StoreNoSpace, StoreUnavailable
from tasklease.httpserver import HttpAddress
from tasklease.keys import Keyspace
from tasklease.models import TaskState
from tasklease.quotas import Quota
from tasklease.store import StoreConfig
from tasklease.web.app import package_static, routes
from tasklease.web.security import CSP, WebConfig
from tasklease.web.server import bind, serve, url_of

pytestmark = pytest.mark.timeout(120)

GUARD_S = 60  # a hang guard only: nothing here is timed
TOKEN = "test-token-0123456789abcdef"
WRITE = {"Content-Type": "application/json", "X-Tasklease-Request": "1"}
MISSING = "0" * 26  # a well-formed id no task has


@contextlib.asynccontextmanager
async def serving(client: Client, static: Any = None, **options: Any) -> AsyncIterator[str]:
    """``tasklease web`` in-process on a free port: its base URL while inside."""
    config = WebConfig(address=HttpAddress("127.0.0.1", 0), **options)
    sock = bind(config.address)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(client, config, sock, stop=stop, ready=ready, static=static))
    try:
        async with asyncio.timeout(GUARD_S):
            waiting = asyncio.create_task(ready.wait())
            await asyncio.wait({waiting, task}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
        if task.done():
            task.result()
        yield url_of(sock, "127.0.0.1")
    finally:
        stop.set()
        async with asyncio.timeout(GUARD_S):
            await task
        sock.close()


@contextlib.asynccontextmanager
async def web(client: Client, static: Any = None, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of a server started by :func:`serving`."""
    async with (
        serving(client, static, **options) as url,
        httpx.AsyncClient(base_url=url, timeout=GUARD_S) as http,
    ):
        yield http


async def post(http: httpx.AsyncClient, path: str, body: Any = None, **headers: str) -> httpx.Response:
    """A write as the dashboard sends it (JSON, the CSRF header)."""
    content = b"" if body is None else orjson.dumps(body)
    return await http.post(path, content=content, headers={**WRITE, **headers})


async def raw_get(http: httpx.AsyncClient, target: str) -> tuple[int, bytes]:
    """GET ``target`` exactly as written (httpx would remove dot segments): the status and the raw answer."""
    host, port = http.base_url.host, http.base_url.port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(GUARD_S):
            raw = await reader.read()
    finally:
        writer.close()
    return int(raw.split(b" ", 2)[1]), raw


def err(response: httpx.Response, status: int) -> str:
    """The one-line error of a JSON error answer with ``status``."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) >= {"error"} and isinstance(body["error"], str) and "\n" not in body["error"], body
    return body["error"]


def assert_security_headers(response: httpx.Response, api: bool) -> None:
    h = response.headers
    assert h["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP and "object-src 'none'" in CSP
    assert h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "no-referrer"
    assert h["x-frame-options"] == "DENY"
    if api:
        assert h["cache-control"] == "no-store"
    assert "server" not in h


@contextlib.asynccontextmanager
async def events(http: httpx.AsyncClient, **params: Any) -> AsyncIterator[SSEReader]:
    headers = {}
    if "last_event_id_header" in params:
        headers["Last-Event-ID"] = str(params.pop("last_event_id_header"))
    async with http.stream("GET", "/api/events", params=params, headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-store"
        reader = SSEReader(aiter(Blocks(r.aiter_raw())))
        first = await reader.next()
        assert first.retry == 2000
        yield reader


async def messages_until(reader: SSEReader, done: Any) -> list[SSEMessage]:
    """Messages until ``done(all so far)`` is true."""
    got: list[SSEMessage] = []
    async with asyncio.timeout(GUARD_S):
        while not got or not done(got):
            got.append(await reader.next_message())
    return got


def task_ids(msgs: list[SSEMessage]) -> set[str]:
    return {c["id"] for m in msgs if m.event == "changes" for c in m.json["changes"] if c["kind"] == "task"}


# config, pages, headers ------------------------------------------------------------------
async def test_config_and_security_headers(client, static):
    async with web(client, static) as http:
        r = await http.get("/api/config")
        assert r.status_code == 200
        assert r.json() == {
            "read_only": False,
            "namespace": client.keys.namespace,
            "version": r.json()["version"],
            "auth": False,
        }
        assert r.json()["version"]
        assert_security_headers(r, api=True)
        for path in ("/", "/ui/tasks/ABC", "/static/app.js", "/nowhere"):
            assert_security_headers(await http.get(path), api=False)
        assert_security_headers(await http.get("/api/nowhere"), api=True)


async def test_pages_serve_index_and_static_files_only(client, static):
    async with web(client, static) as http:
        for path in ("/", "/ui/tasks", "/ui/queues/default/x"):
            r = await http.get(path)
            assert r.status_code == 200 and r.content == INDEX, path
            assert r.headers["content-type"] == "text/html; charset=utf-8"
        r = await http.get("/static/app.js")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
        r = await http.get("/static/sub/style.css")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
        assert (await http.head("/static/app.js")).status_code == 200
        for bad in (
            "/static/.hidden",
            "/static/../outside.txt",
            "/static/%2e%2e/outside.txt",
            "/static/sub/../../outside.txt",
            "/static/",
            "/static/missing.js",
            "/static/sub",
        ):
            r = await http.get(bad)
            assert r.status_code == 404, (bad, r.status_code, r.text)
            assert b"outside" not in r.content and b"secret" not in r.content
        r = await http.get("/elsewhere")
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/plain")
        # as sent, not normalised by a client: dot segments never leave the static directory
        for bad in ("/static/../outside.txt", "/static/sub/../../outside.txt", "/static/%2e%2e/outside.txt"):
            status, raw = await raw_get(http, bad)
            assert status == 404 and b"outside" not in raw, (bad, raw[:200])


async def test_the_packages_own_files_are_served(client):
    root = package_static()
    names = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    async with web(client) as http:
        for name in names:
            r = await http.get(f"/static/{name}")
            assert r.status_code == 200 and r.content == root.joinpath(name).read_bytes(), name
        r = await http.get("/")
        if "index.html" in names:
            assert r.status_code == 200 and r.content == root.joinpath("index.html").read_bytes()
        else:  # the dashboard's files are not there: a plain 404, not a crash
            assert r.status_code == 404


async def test_unknown_api_paths_and_methods_answer_json(client, static):
    async with web(client, static) as http:
        assert "no such API path" in err(await http.get("/api/nope"), 404)
        assert "not allowed" in err(await http.delete("/api/tasks", headers=WRITE), 405)
        assert "not allowed" in err(await post(http, "/api/config"), 405)


# tasks ----------------------------------------------------------------------------------
async def test_submit_get_and_list(client, static):
    async with web(client, static) as http:
        r = await post(
            http,
            "/api/tasks",
            {
                "type": "noop",
                "payload": {"x": 1},
                "queue": "q1",
                "priority": 2,
                "retries": 1,
                "timeout_s": 10,
            },
        )
        assert r.status_code == 201, r.text
        task = r.json()
        assert task["state"] == "queued" and task["queue"] == "q1" and task["priority"] == 2
        assert task["payload"] == {"x": 1} and task["retry"]["max_retries"] == 1
        assert r.headers["location"] == f"/api/tasks/{task['id']}"

        got = await http.get(f"/api/tasks/{task['id']}")
        assert got.status_code == 200 and got.json()["id"] == task["id"]
        assert (await http.get(f"/api/tasks/{task['id'].lower()}")).status_code == 200  # case-insensitive

        ids = [task["id"]]
        for i in range(4):
            ids.append(
                (await post(http, "/api/tasks", {"type": "noop", "queue": "q1", "payload": i})).json()["id"]
            )
        page = (await http.get("/api/tasks", params={"state": "queued", "queue": "q1", "limit": 2})).json()
        assert len(page["tasks"]) == 2 and page["cursor"]
        summary = page["tasks"][0]
        assert set(summary) >= {"id", "type", "queue", "state", "priority", "attempts", "worker", "error"}
        assert "payload" not in summary
        seen = [t["id"] for t in page["tasks"]]
        while page["cursor"]:
            page = (
                await http.get(
                    "/api/tasks",
                    params={"state": "queued", "queue": "q1", "limit": 2, "cursor": page["cursor"]},
                )
            ).json()
            seen += [t["id"] for t in page["tasks"]]
        assert sorted(seen) == sorted(ids)
        assert seen[0] == ids[0]  # priority 2 first (dequeue order)
        typed = (await http.get("/api/tasks", params={"type": "noop", "limit": 100})).json()
        assert {t["id"] for t in typed["tasks"]} == set(ids)
        assert (await http.get("/api/tasks", params={"type": "other"})).json()["tasks"] == []


async def test_bad_query_parameters_are_400(client, static):
    async with web(client, static) as http:
        for params in (
            {"state": "sleeping"},
            {"limit": "0"},
            {"limit": "1001"},
            {"limit": "ten"},
            {"queue": "bad queue"},
            {"type": "bad type!"},
            {"since": "yesterday"},
            {"since": "nan"},
        ):
            assert err(await http.get("/api/tasks", params=params), 400), params
        assert err(await http.get("/api/stats", params={"window": "-1"}), 400)
        assert err(await http.get(f"/api/tasks/{MISSING}/wait", params={"timeout": "61"}), 400)
        assert err(await http.get(f"/api/tasks/{MISSING}/wait", params={"timeout": "0"}), 400)
        assert err(await http.get("/api/events", headers={"Last-Event-ID": "x1"}), 400)
        assert err(await http.get("/api/events", params={"last_event_id": "-5"}), 400)


async def test_not_found_is_404(client, static):
    async with web(client, static) as http:
        assert MISSING in err(await http.get(f"/api/tasks/{MISSING}"), 404)
        assert "malformed" in err(await http.get("/api/tasks/not-an-id"), 404)
        assert err(await http.get(f"/api/tasks/{MISSING}/wait", params={"timeout": "1"}), 404)
        assert err(await post(http, f"/api/tasks/{MISSING}/cancel"), 404)
        assert err(await post(http, f"/api/tasks/{MISSING}/priority", {"priority": 1}), 404)
        assert err(await post(http, f"/api/tasks/{MISSING}/rerun"), 404)
        assert err(await post(http, "/api/workers/nobody/drain"), 404)


async def test_bad_bodies(client, static):
    async with web(client, static) as http:
        assert "bad JSON" in err(await http.post("/api/tasks", content=b"{nope", headers=WRITE), 400)
        assert err(await http.post("/api/tasks", content=b"", headers=WRITE), 422)  # no spec
        assert err(await post(http, "/api/tasks", [1, 2]), 422)
        assert err(await post(http, "/api/tasks", {"payload": 1}), 422)  # no type
        assert err(await post(http, "/api/tasks", {"type": "noop", "priority": 7}), 422)
        assert err(await post(http, "/api/tasks", {"type": "noop", "queue": "no spaces"}), 422)
        assert err(await post(http, "/api/tasks", {"type": "noop", "colour": "red"}), 422)
        assert err(await post(http, "/api/tasks", {"type": "noop", "timeout_s": "soon"}), 422)
        assert err(await post(http, "/api/tasks/batch", {"tasks": []}), 422)
        assert err(await post(http, "/api/tasks/batch", {"tasks": "noop"}), 422)
        assert err(await post(http, "/api/tasks/batch", {"tasks": [{"type": "noop"}], "extra": 1}), 422)
        many = {"tasks": [{"type": "noop"}] * 1001}
        assert "1000" in err(await post(http, "/api/tasks/batch", many), 422)
        bad = err(
            await post(
                http, "/api/tasks/batch", {"tasks": [{"type": "noop"}, {"type": "noop", "priority": 9}]}
            ),
            422,
        )
        assert bad.startswith("tasks[1]: "), bad
        # nothing of a refused batch was written
        assert (await http.get("/api/tasks", params={"limit": 10})).json()["tasks"] == []


async def test_body_over_the_limit_is_413_and_reading_stops(client, static):
    async with web(client, static, max_body=2048) as http:
        big = {"type": "noop", "payload": "x" * 4096}
        assert "limit of 2048" in err(await post(http, "/api/tasks", big), 413)

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
            for _ in range(64):
                yield b" " * 1024

        r = await http.post("/api/tasks/batch", content=chunked(), headers=WRITE)
        assert "limit" in err(r, 413)
        ok = await post(http, "/api/tasks", {"type": "noop", "payload": "x" * 1000})
        assert ok.status_code == 201


async def test_batch(client, static):
    async with web(client, static) as http:
        r = await post(
            http, "/api/tasks/batch", {"tasks": [{"type": "noop", "payload": i} for i in range(150)]}
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert len(body["tasks"]) == 150 and body["transactions"] >= 3
        got = await client.get(body["tasks"][149]["id"])
        assert got.payload == 149 and got.state is TaskState.QUEUED


async def test_quota_is_429(client, static):
    await client.set_quota(Quota(max_queued=0))
    async with web(client, static) as http:
        assert "quota" in err(await post(http, "/api/tasks", {"type": "noop"}), 429).lower()
        assert err(await post(http, "/api/tasks/batch", {"tasks": [{"type": "noop"}]}), 429)


async def test_etcd_failures_are_503(store_config: StoreConfig, keyspace: Keyspace, static):
    store = FaultyStore(store_config)
    await store.connect()
    client = Client(store, keyspace)
    try:
        async with web(client, static) as http:
            # (a task is read with one transaction: its record and its running entry)
            store.fail("txn", lambda: StoreUnavailable("etcd did not answer"))
            assert "etcd did not answer" in err(await http.get(f"/api/tasks/{MISSING}"), 503)
            store.fail("txn", lambda: StoreNoSpace("etcd is out of space"))
            assert "out of space" in err(await post(http, "/api/tasks", {"type": "noop"}), 503)
            assert (
                await http.get(f"/api/tasks/{MISSING}")
            ).status_code == 404  # only the chosen calls failed
    finally:
        await client.close()
        await store.close()


async def test_probes_need_no_token_and_tell_etcd_trouble(
    store_config: StoreConfig, keyspace: Keyspace, static
):
    """/healthz and /readyz answer without the token (a container's probe has none), and nothing else does."""
    store = FaultyStore(store_config)
    await store.connect()
    client = Client(store, keyspace)
    try:
        async with web(client, static, token=TOKEN) as http:
            r = await http.get("/healthz")
            assert (r.status_code, r.json()) == (200, {"status": "ok"})
            assert_security_headers(r, api=False)
            r = await http.get("/readyz")
            assert (r.status_code, r.json()) == (200, {"status": "ready", "reason": "serving"})
            store.fail("status", lambda: StoreUnavailable("etcd did not answer"))
            r = await http.get("/readyz")
            assert r.status_code == 503 and r.json()["status"] == "not ready"
            assert r.json()["reason"].startswith("etcd unreachable: StoreUnavailable: etcd did not answer")
            assert (await http.get("/readyz")).status_code == 200  # the fault was one call
            # the probes' paths only, and only to read
            assert (await http.get("/healthz/x")).status_code == 401
            assert (await http.get("/api/config")).status_code == 401
            r = await http.post("/healthz", headers={"X-Tasklease-Request": "1"})
            assert r.status_code == 401
    finally:
        await client.close()
        await store.close()


# actions --------------------------------------------------------------------------------
async def test_cancel_and_priority(client, static):
    async with web(client, static) as http:
        task = (await post(http, "/api/tasks", {"type": "noop", "queue": "idle"})).json()
        r = await post(http, f"/api/tasks/{task['id']}/priority", {"priority": 3})
        assert r.status_code == 200 and r.json()["priority"] == 3
        assert err(await post(http, f"/api/tasks/{task['id']}/priority", {"priority": 4}), 422)
        assert err(await post(http, f"/api/tasks/{task['id']}/priority", {"priority": True}), 422)
        assert err(await post(http, f"/api/tasks/{task['id']}/priority", {}), 422)
        assert err(await post(http, f"/api/tasks/{task['id']}/cancel", {"reason": 5}), 422)
        r = await post(http, f"/api/tasks/{task['id']}/cancel", {"reason": "not needed"})
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        assert "not needed" in (r.json()["error"] or "")
        assert "cancel" in err(await post(http, f"/api/tasks/{task['id']}/cancel"), 409)
        assert err(await post(http, f"/api/tasks/{task['id']}/priority", {"priority": 1}), 409)


async def test_wait_rerun_with_a_real_cluster(client, cluster, static):
    await cluster.worker()
    await cluster.scheduler()
    async with web(client, static) as http:
        ok = (await post(http, "/api/tasks", {"type": "add", "payload": {"a": 1, "b": 2}})).json()
        r = await http.get(f"/api/tasks/{ok['id']}/wait", params={"timeout": "60"})
        assert r.status_code == 200 and r.json()["state"] == "succeeded" and r.json()["result"] == 3

        idle = (await post(http, "/api/tasks", {"type": "noop", "queue": "nobody-serves-it"})).json()
        r = await http.get(f"/api/tasks/{idle['id']}/wait", params={"timeout": "0.2"})
        assert r.status_code == 202 and r.json()["state"] == "queued"

        assert err(await post(http, f"/api/tasks/{ok['id']}/rerun"), 409)  # succeeded: not re-runnable
        assert err(await post(http, f"/api/tasks/{idle['id']}/rerun"), 409)  # queued
        failed = (await post(http, "/api/tasks", {"type": "fail_permanently"})).json()
        r = await http.get(f"/api/tasks/{failed['id']}/wait", params={"timeout": "60"})
        assert r.json()["state"] == "failed"
        r = await post(http, f"/api/tasks/{failed['id']}/rerun")
        assert r.status_code == 201, r.text
        again = r.json()
        assert (
            again["id"] != failed["id"] and again["rerun_of"] == failed["id"] and again["state"] == "queued"
        )
        assert r.headers["location"] == f"/api/tasks/{again['id']}"
        old = (await http.get(f"/api/tasks/{failed['id']}")).json()
        assert old["reruns"] == [again["id"]]


async def test_queues_pause_and_resume(client, cluster, static):
    async with web(client, static) as http:
        await post(http, "/api/tasks", {"type": "noop", "queue": "emails", "priority": 3})
        r = await post(http, "/api/queues/emails/pause", {"reason": "maintenance"})
        assert r.status_code == 200, r.text
        q = r.json()
        assert q["name"] == "emails" and q["paused"] is True and q["paused_reason"] == "maintenance"
        assert q["paused_at"] and q["queued"] == 1 and q["depth"]["3"] == 1
        listed = {x["name"]: x for x in (await http.get("/api/queues")).json()}
        assert listed["emails"]["paused"] is True
        overview = (await http.get("/api/overview")).json()
        assert {"revision", "states", "queues", "workers", "throughput", "latest_failures", "leader"} <= set(
            overview
        )

        # a paused queue gets nothing assigned; resumed, its task runs
        await cluster.worker(queues=("emails",))
        await cluster.scheduler()
        r = await post(http, "/api/queues/emails/resume")
        assert r.status_code == 200 and r.json()["paused"] is False
        assert err(await post(http, "/api/queues/bad name/pause"), 422)
        # a queue that holds nothing can be paused too
        r = await post(http, "/api/queues/empty/pause")
        assert r.status_code == 200 and r.json()["paused"] is True and r.json()["queued"] == 0
        listed = {x["name"]: x for x in (await http.get("/api/queues")).json()}
        assert listed["empty"]["paused"] is True and listed["emails"]["paused"] is False


async def test_workers_and_drain(client, cluster, static, tmp_path):
    gate = tmp_path / "gate"
    worker = await cluster.worker(worker_id="w-drain", queues=("slow",))
    await cluster.scheduler()
    async with web(client, static) as http:
        task = (
            await post(
                http,
                "/api/tasks",
                {
                    "type": "wait_for_file",
                    "queue": "slow",
                    "payload": {"path": str(gate), "within_s": GUARD_S},
                },
            )
        ).json()

        async def assigned() -> dict[str, Any]:
            async with asyncio.timeout(GUARD_S):
                while True:
                    workers = (await http.get("/api/workers")).json()
                    if workers and workers[0]["tasks"]:
                        return workers[0]
                    await asyncio.sleep(0.05)

        w = await assigned()
        assert w["id"] == "w-drain" and w["tasks"] == [task["id"]] and w["draining"] is False
        assert w["free"] == w["capacity"] - w["assigned"] and w["heartbeat_age_s"] >= 0
        assert {"host", "pid", "queues", "cpu", "memory", "tags", "types", "version", "completed"} <= set(w)
        r = await post(http, "/api/workers/w-drain/drain")
        assert r.status_code == 202 and r.json() == {"id": "w-drain", "draining": True}

        async def draining() -> bool:
            async with asyncio.timeout(GUARD_S):
                while True:
                    workers = (await http.get("/api/workers")).json()
                    if workers and workers[0]["draining"]:
                        return True
                    await asyncio.sleep(0.05)

        assert await draining()  # it finishes its running task first
        gate.write_text("open")
        async with asyncio.timeout(GUARD_S):
            await worker.wait_stopped()
        assert (await client.get(task["id"])).state is TaskState.SUCCEEDED
        assert (await http.get("/api/workers")).json() == []
        assert err(await post(http, "/api/workers/w-drain/drain"), 404)


async def test_stats(client, static):
    async with web(client, static) as http:
        await post(http, "/api/tasks", {"type": "noop"})
        r = await http.get("/api/stats", params={"window": "30"})
        assert (
            r.status_code == 200
            and r.json()["states"]["queued"] == 1
            and r.json()["throughput"]["window_s"] == 30
        )


# events -------------------------------------------------------------------------------------
async def test_events_stream_and_resume_by_last_event_id(client, static):
    async with web(client, static) as http:
        async with events(http) as reader:
            first = (await post(http, "/api/tasks", {"type": "noop", "queue": "ev"})).json()["id"]
            got = await messages_until(reader, lambda ms: first in task_ids(ms))
            last = got[-1].revision
        # while nobody listens
        missed = [
            (await post(http, "/api/tasks", {"type": "noop", "queue": "ev"})).json()["id"] for _ in range(3)
        ]
        await post(http, f"/api/tasks/{missed[0]}/cancel")
        for how in ({"last_event_id_header": last}, {"last_event_id": last}):
            async with events(http, **how) as reader:
                got = await messages_until(
                    reader,
                    lambda ms: (
                        set(missed) <= task_ids(ms)
                        and any(c.get("state") == "cancelled" for m in ms for c in m.json["changes"])
                    ),
                )
                assert all(m.revision > last for m in got), how
                assert first not in task_ids(got)


# the guard ---------------------------------------------------------------------------------------
async def test_writes_need_the_csrf_header_a_json_type_and_the_same_origin(client, static):
    async with web(client, static) as http:
        body = orjson.dumps({"type": "noop"})
        origin = str(http.base_url).rstrip("/")
        cases = [
            ({"Content-Type": "application/json"}, 403),  # no X-Tasklease-Request
            ({**WRITE, "X-Tasklease-Request": "0"}, 403),
            ({**WRITE, "Origin": "http://evil.example"}, 403),
            ({**WRITE, "Origin": "null"}, 403),
            ({**WRITE, "Origin": origin.replace("127.0.0.1", "localhost")}, 403),
            ({**WRITE, "Sec-Fetch-Site": "cross-site"}, 403),
            ({**WRITE, "Sec-Fetch-Site": "same-site"}, 403),
            ({"X-Tasklease-Request": "1", "Content-Type": "text/plain"}, 400),
            ({"X-Tasklease-Request": "1", "Content-Type": "application/x-www-form-urlencoded"}, 400),
            ({"X-Tasklease-Request": "1"}, 400),
        ]
        for headers, status in cases:
            message = err(await http.post("/api/tasks", content=body, headers=headers), status)
            assert ("cross-site" in message) if status == 403 else ("Content-Type" in message), (
                headers,
                message,
            )
        assert (await http.get("/api/tasks")).json()["tasks"] == []  # nothing was written
        for headers in (
            {**WRITE, "Origin": origin},
            {**WRITE, "Sec-Fetch-Site": "same-origin"},
            {**WRITE, "Sec-Fetch-Site": "none"},
            {**WRITE, "Content-Type": "application/json; charset=utf-8"},
        ):
            assert (await http.post("/api/tasks", content=body, headers=headers)).status_code == 201, headers


async def test_read_only_refuses_every_write(client, static):
    async with web(client, static, read_only=True) as http:
        assert (await http.get("/api/config")).json()["read_only"] is True
        task = await client.submit("noop")
        for path, body in (
            ("/api/tasks", {"type": "noop"}),
            ("/api/tasks/batch", {"tasks": [{"type": "noop"}]}),
            (f"/api/tasks/{task.id}/cancel", {}),
            (f"/api/tasks/{task.id}/priority", {"priority": 3}),
            (f"/api/tasks/{task.id}/rerun", {}),
            ("/api/queues/default/pause", {}),
            ("/api/queues/default/resume", {}),
            ("/api/workers/w/drain", {}),
        ):
            assert err(await post(http, path, body), 403) == "read-only dashboard", path
        assert (await client.get(task.id)).priority == 1 and (
            await client.get(task.id)
        ).state is TaskState.QUEUED
        assert (await http.get(f"/api/tasks/{task.id}")).status_code == 200


async def test_the_token_bearer_and_cookie(client, static):
    async with web(client, static, token=TOKEN) as http:
        assert (await http.get("/api/config", headers={"Authorization": f"Bearer {TOKEN}"})).json()[
            "auth"
        ] is True
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            r = await http.get("/api/config", headers=headers)
            assert "token" in err(r, 401) and r.headers["www-authenticate"] == "Bearer"
            assert_security_headers(r, api=True)
        for path in ("/", "/ui/x", "/static/app.js"):
            r = await http.get(path)
            assert r.status_code == 401 and r.headers["content-type"].startswith("text/plain"), path
            assert INDEX not in r.content
        assert (await http.get("/", params={"token": "wrong"})).status_code == 401
        assert "set-cookie" not in (await http.get("/", params={"token": "wrong"})).headers
        assert err(await http.get("/api/config", params={"token": TOKEN}), 401)  # no token in API URLs

        r = await http.get("/ui/tasks", params={"token": TOKEN})
        assert r.status_code == 303 and r.headers["location"] == "/ui/tasks"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"tasklease_token={TOKEN};")
        for attribute in ("HttpOnly", "SameSite=Strict", "Path=/"):
            assert attribute in cookie
        http.cookies.clear()  # sent explicitly below
        jar = {"Cookie": f"tasklease_token={TOKEN}"}
        assert (await http.get("/", headers=jar)).content == INDEX
        assert (await http.get("/api/config", headers=jar)).status_code == 200
        async with http.stream("GET", "/api/events", headers=jar) as stream:
            assert stream.status_code == 200
        assert (await http.get("/api/config", headers={"Cookie": "tasklease_token=nope"})).status_code == 401
        assert (
            await http.get("/api/config", headers={"Cookie": "other=1; tasklease_token"})
        ).status_code == 401
        # the token does not lift the CSRF check
        r = await http.post(
            "/api/tasks", content=b'{"type":"noop"}', headers={**jar, "Content-Type": "application/json"}
        )
        assert err(r, 403)
        r = await post(http, "/api/tasks", {"type": "noop"}, Authorization=f"Bearer {TOKEN}")
        assert r.status_code == 201


async def test_a_foreign_host_header_is_refused_on_loopback(client, static):
    async with web(client, static) as http:
        for host in ("evil.example", "evil.example:8080", "10.0.0.1", "127.0.0.1.evil.example"):
            r = await http.get("/api/config", headers={"Host": host})
            assert "Host" in err(r, 400), host
        for host in ("localhost", "localhost:1234", "127.0.0.1", "[::1]:80", "app.localhost"):
            assert (await http.get("/api/config", headers={"Host": host})).status_code == 200, host


# OpenAPI ----------------------------------------------------------------------------------
async def test_openapi_documents_every_route_and_only_routes(client, static):
    async with web(client, static) as http:
        r = await http.get("/api/openapi.json")
        assert r.status_code == 200
        doc = r.json()
        assert doc["openapi"].startswith("3.1")
        documented = {(p, m.upper()) for p, ops in doc["paths"].items() for m in ops}
        served = {
            (route.path, method)
            for route in routes()
            if isinstance(route, Route) and route.path.startswith("/api")
            for method in route.methods or ()
            if method != "HEAD"
        }
        assert documented == served
        for path, ops in doc["paths"].items():
            for op in ops.values():
                assert op["summary"] and op["responses"], path
                for ref in _refs(op):
                    assert _resolve(doc, ref) is not None, (path, ref)
        # every documented path is answered by its route (not "no such API path")
        concrete = {"{id}": MISSING, "{name}": "docs-queue", "{kind}": "queue"}
        for path, method in sorted(documented):
            url = path
            for k, v in concrete.items():
                url = url.replace(k, v)
            if path == "/api/workers/{id}/drain":
                url = url.replace(MISSING, "nobody")
            if path == "/api/events":
                async with http.stream("GET", url) as stream:
                    assert stream.status_code == 200
                continue
            if method == "GET":
                resp = await http.get(url, params={"timeout": "0.1"} if url.endswith("/wait") else None)
            elif method == "DELETE":
                resp = await http.delete(url, headers=WRITE)
            else:
                body = (
                    {"tasks": [{"type": "noop"}]}
                    if url.endswith("batch")
                    else (
                        {"type": "noop"}
                        if url == "/api/tasks"
                        else ({"priority": 1} if url.endswith("priority") else {})
                    )
                )
                if method == "PUT" and path.startswith("/api/limits/"):
                    body = {"concurrency": 1}
                resp = await http.request(method, url, content=orjson.dumps(body), headers=WRITE)
            assert resp.status_code != 405
            if resp.status_code == 404:
                assert "no such API path" not in resp.json()["error"], (method, path)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return node


# the command's refusals (no etcd needed) -------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--http", "0.0.0.0:0"], {}, "needs a token"),
        (["--http", "10.1.2.3:8080"], {}, "needs a token"),
        ([], {"TASKLEASE_WEB": "0.0.0.0:0"}, "needs a token"),
        (["--http", "0.0.0.0:0", "--token", "short"], {}, "16..512"),
        ([], {"TASKLEASE_WEB": "nonsense:port"}, "TASKLEASE_WEB"),
        ([], {"TASKLEASE_WEB_TOKEN": "has spaces in it, sorry!!"}, "16..512"),
        (["--max-body", "100"], {}, "max-body"),
    ],
)
def test_the_command_refuses_unsafe_or_bad_options_with_exit_2(tasklease_bin, args, env, needle):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TASKLEASE_WEB")}
    out = subprocess.run(
        [tasklease_bin, "web", *args], env={**environ, **env}, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tasklease: error:") and needle in lines[0], out.stderr


def test_the_command_refuses_an_address_in_use(tasklease_bin, cli_env):
    sock = bind(HttpAddress("127.0.0.1", 0))
    try:
        port = sock.getsockname()[1]
        out = subprocess.run(
            [tasklease_bin, "web", "--http", f"127.0.0.1:{port}"],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        sock.close()
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "cannot listen" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
