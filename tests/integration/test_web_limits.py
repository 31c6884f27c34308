"""The REST routes of limits (``/api/limits``), over real HTTP against a real etcd.

The server is ``tasklease web``'s own (web.server.serve on a free 127.0.0.1
port, in this test's event loop), as in test_web_api.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from integration.test_web_api import web
from tasklease.client import Client

pytestmark = pytest.mark.timeout(120)

GUARD_S = 60  # a hang guard only
WRITE = {"Content-Type": "application/json", "X-Tasklease-Request": "1"}


async def send(
    http: httpx.AsyncClient, method: str, path: str, body: Any = None, **headers: str
) -> httpx.Response:
    """A write as the dashboard sends it (JSON, the CSRF header)."""
    content = b"" if body is None else orjson.dumps(body)
    return await http.request(method, path, content=content, headers={**WRITE, **headers})


def err(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"], body
    return str(body["error"])


async def test_limits_are_put_listed_and_deleted(client: Client, static: Path):
    async with web(client, static) as http:
        # Given no limits
        assert (await http.get("/api/limits")).json() == []
        # When a type's and a queue's limits are put
        r = await send(
            http, "PUT", "/api/limits/type/email", {"rate": "100/min", "burst": 10, "concurrency": 5}
        )
        assert r.status_code == 200, r.text
        email = r.json()
        assert email["kind"] == "type" and email["name"] == "email"
        assert (email["rate"], email["burst"], email["concurrency"]) == ("100/min", 10, 5)
        assert abs(email["rate_per_s"] - 100 / 60) < 1e-9 and email["set_at"] > 0
        r = await send(http, "PUT", "/api/limits/queue/bulk", {"concurrency": 2})
        assert r.status_code == 200, r.text
        # Then the list shows both, types first, and the client sees the same
        listed = (await http.get("/api/limits")).json()
        assert [(x["kind"], x["name"]) for x in listed] == [("type", "email"), ("queue", "bulk")]
        assert [x.as_dict() for x in await client.limits()] == listed
        # When a limit is put again, it is replaced as a whole
        r = await send(http, "PUT", "/api/limits/type/email", {"rate": "20/s"})
        assert (r.json()["rate"], r.json()["burst"], r.json()["concurrency"]) == ("20/s", 2, None)
        # When one is deleted (twice)
        r = await send(http, "DELETE", "/api/limits/type/email")
        assert r.status_code == 200 and r.json() == {"kind": "type", "name": "email", "removed": True}
        r = await send(http, "DELETE", "/api/limits/type/email")
        assert r.json()["removed"] is False
        assert [x["name"] for x in (await http.get("/api/limits")).json()] == ["bulk"]


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/api/limits/type/email", {"rate": "100/fortnight"}, "bad rate"),
        ("/api/limits/type/email", {"rate": 100}, "text like"),
        ("/api/limits/type/email", {}, "a rate, a concurrency"),
        ("/api/limits/type/email", {"burst": 2, "concurrency": 1}, "burst needs a rate"),
        ("/api/limits/type/email", {"concurrency": 0}, "concurrency"),
        ("/api/limits/type/email", {"concurrency": "5"}, "whole number"),
        ("/api/limits/type/email", {"rate": "1/s", "burst": True}, "whole number"),
        ("/api/limits/type/email", {"concurrency": 1, "ttl": 5}, "unknown field"),
        ("/api/limits/worker/w1", {"concurrency": 1}, "type or a queue"),
        ("/api/limits/queue/a%20b", {"concurrency": 1}, "queue"),
        ("/api/limits/type/bad%20type", {"concurrency": 1}, "type"),
    ],
)
async def test_a_bad_limit_is_a_422_and_nothing_is_written(client: Client, static: Path, path, body, needle):
    async with web(client, static) as http:
        assert needle in err(await send(http, "PUT", path, body), 422)
        assert await client.limits() == []


async def test_limit_writes_need_the_request_header_json_and_a_writable_dashboard(
    client: Client, static: Path
):
    body = orjson.dumps({"concurrency": 1})
    async with web(client, static) as http:
        r = await http.put(
            "/api/limits/type/email", content=body, headers={"Content-Type": "application/json"}
        )
        assert "cross-site" in err(r, 403)
        r = await http.put("/api/limits/type/email", content=body, headers={"X-Tasklease-Request": "1"})
        assert "Content-Type" in err(r, 400)
        r = await http.delete("/api/limits/type/email")
        assert "cross-site" in err(r, 403)
        r = await http.put("/api/limits/type/email", content=b"[[[", headers=WRITE)
        assert "bad JSON" in err(r, 400)
    assert await client.limits() == []
    await client.set_limit("type", "email", concurrency=1)
    async with web(client, static, read_only=True) as http:
        assert "read-only" in err(await send(http, "PUT", "/api/limits/type/email", {"concurrency": 9}), 403)
        assert "read-only" in err(await send(http, "DELETE", "/api/limits/type/email"), 403)
        assert [x["concurrency"] for x in (await http.get("/api/limits")).json()] == [1]
