"""A real `tasklease web` process: served, SIGKILLed with a stream open, restarted, resumed, stopped.

1. It serves ``/api/config``; an event stream shows a task submitted through
   the API.
2. It is SIGKILLed while that stream is open (the stream breaks). Tasks are
   submitted and cancelled while it is down.
3. A new process on the same port: a stream resumed with the last
   ``Last-Event-ID`` the client had gets every revision that wrote a task
   record meanwhile (checked against etcd's own history), and nothing from
   before it: the catch-up watch of the new process loses nothing.
4. SIGTERM ends the open stream and the process exits 0.

Every wait has a deadline; the log tails are in the assertion messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from faults.procs import Proc, Procs, process_env, until
from ssetools import Blocks, SSEMessage, SSEReader
from tasklease.client import Client
from tasklease.etcd_server import free_port
from tasklease.keys import Keyspace, prefix_end
from tasklease.store import Store

pytestmark = pytest.mark.timeout(240)

START_S = 30.0  # a process start (Python, gRPC, imports) on a loaded 2-core machine
GUARD_S = 60.0
WRITE = {"Content-Type": "application/json", "X-Tasklease-Request": "1"}


@pytest.fixture
def procs(tasklease_bin: str, cli_env: dict[str, str], tmp_path: Path) -> Iterator[Procs]:
    group = Procs(tasklease_bin, process_env(cli_env), tmp_path)
    try:
        yield group
    finally:
        group.cleanup()


async def started(proc: Proc, base: str) -> None:
    """Wait until the process logs its URL and answers ``/api/config``."""
    await proc.wait_log("dashboard and API at", START_S)

    async def answers() -> bool:
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                return (await http.get(f"{base}/api/config")).status_code == 200
        except httpx.TransportError:
            return False

    await until(answers, within_s=START_S, what="GET /api/config", log=proc.tail)


@contextlib.asynccontextmanager
async def stream(http: httpx.AsyncClient, last_event_id: int | None = None) -> AsyncIterator[SSEReader]:
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    async with http.stream("GET", "/api/events", headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        reader = SSEReader(aiter(Blocks(r.aiter_raw())))
        assert (await reader.next()).retry == 2000
        yield reader


async def until_revision(reader: SSEReader, revision: int) -> list[SSEMessage]:
    got: list[SSEMessage] = []
    async with asyncio.timeout(GUARD_S):
        while not got or got[-1].revision < revision:
            got.append(await reader.next_message())
    return got


async def task_revisions(store: Store, keys: Keyspace, after: int, until_rev: int) -> dict[int, set[str]]:
    """etcd's history: the revisions in ``(after, until_rev]`` that wrote task records, and which."""
    found: dict[int, set[str]] = {}
    async with (
        asyncio.timeout(GUARD_S),
        contextlib.aclosing(store.watch(keys.leader, prefix_end(keys.tasks), after + 1)) as watch,
    ):
        async for events in watch:
            for event in events:
                rev = event.kv.mod_revision
                if rev <= until_rev and event.kv.key.startswith(keys.tasks):
                    found.setdefault(rev, set()).add(keys.task_id_of(event.kv.key))
            if events[-1].kv.mod_revision >= until_rev:
                return found
    raise AssertionError("the watch ended")


def tasks_in(msgs: list[SSEMessage]) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for m in msgs:
        if m.event != "changes":
            continue
        ids = {c["id"] for c in m.json["changes"] if c["kind"] in ("task", "task_gone")}
        if ids:
            out[m.revision] = ids
    return out


async def test_a_restarted_web_process_resumes_streams_without_losing_anything(
    procs: Procs, client: Client, store: Store, keyspace: Keyspace
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    first = procs.spawn("web-1", "web", "--http", f"127.0.0.1:{port}", "--log-format", "text")
    await started(first, base)
    async with httpx.AsyncClient(base_url=base, timeout=GUARD_S) as http:
        config = (await http.get("/api/config")).json()
        assert config["namespace"] == keyspace.namespace and config["read_only"] is False

        # 1. live: a task submitted through the API shows on the stream
        last = 0
        with pytest.raises(httpx.TransportError):  # 2. the stream breaks when the process is killed
            async with stream(http) as reader:
                r = await http.post(
                    "/api/tasks", content=orjson.dumps({"type": "noop", "queue": "web"}), headers=WRITE
                )
                assert r.status_code == 201, r.text
                submitted = r.json()["id"]
                while True:
                    async with asyncio.timeout(GUARD_S):
                        msg = await reader.next_message()
                    last = msg.revision
                    if submitted in tasks_in([msg]).get(msg.revision, set()):
                        break
                first.signal(signal.SIGKILL)
                await first.wait_exit(GUARD_S)
                async with asyncio.timeout(GUARD_S):
                    while True:
                        msg = await reader.next_message()  # nothing more can come: raises
                        last = msg.revision
        assert last > 0

        # while it is down
        missed = [await client.submit("noop", {"i": i}, queue="web") for i in range(5)]
        await client.cancel(missed[0].id, "while the dashboard was down")
        await client.set_priority(missed[1].id, 3)
        kv, _ = await store.get(keyspace.task(missed[1].id))
        assert kv is not None
        now = kv.mod_revision  # the last write

        # 3. a new process; the client resumes from its last id
        second = procs.spawn("web-2", "web", "--http", f"127.0.0.1:{port}", "--log-format", "text")
        await started(second, base)
        async with stream(http, last) as reader:
            got = await until_revision(reader, now)
            assert all(m.revision > last for m in got), [m.revision for m in got]
            history = await task_revisions(store, keyspace, last, now)
            assert tasks_in(got) == history, procs.why("the resumed stream differs from etcd's history")
            assert {t.id for t in missed} <= set().union(*history.values())
            states = {c["id"]: c["state"] for m in got for c in m.json["changes"] if c["kind"] == "task"}
            assert states[missed[0].id] == "cancelled"

            # 4. SIGTERM: the open stream ends, the process exits 0
            second.signal(signal.SIGTERM)
            ended: list[Any] = []
            with contextlib.suppress(httpx.TransportError, StopAsyncIteration):
                async with asyncio.timeout(GUARD_S):
                    while True:
                        ended.append(await reader.next())
        assert await second.wait_exit(GUARD_S) == 0, second.why("web did not exit 0 on SIGTERM")
        assert "stopping" in second.log_text()


async def test_behind_a_tls_proxy_writes_pass_with_the_forwarded_scheme(procs: Procs, client: Client) -> None:
    """A dashboard behind an HTTPS proxy: the browser's Origin is https://; uvicorn takes the scheme
    from X-Forwarded-Proto when the proxy's address is in FORWARDED_ALLOW_IPS (loopback by
    default), so the CSRF check passes; without it the same write is refused (docs/deploy.md)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = procs.spawn("web-proxy", "web", "--http", f"127.0.0.1:{port}", "--log-format", "text")
    await started(proc, base)
    origin = {"Origin": f"https://127.0.0.1:{port}", **WRITE}
    async with httpx.AsyncClient(base_url=base, timeout=GUARD_S) as http:
        r = await http.post("/api/queues/proxied/pause", content=b"{}", headers=origin)
        assert (r.status_code, r.json()) == (403, {"error": "cross-site request refused"})
        r = await http.post(
            "/api/queues/proxied/pause", content=b"{}", headers={**origin, "X-Forwarded-Proto": "https"}
        )
        assert r.status_code == 200, r.text
    assert "proxied" in await client.paused()
