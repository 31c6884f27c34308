"""Idempotent submit over the REST API: 201 for a new task, 200 (and Idempotent-Replayed) for a held key."""

from __future__ import annotations

import asyncio

import pytest

from integration.test_web_api import err, post, web
from tasklease import codec
from tasklease.models import TaskState

pytestmark = pytest.mark.timeout(120)

PAD = "x" * 2048


async def test_submit_with_a_held_key_is_200_with_the_existing_task(client, static, store, keyspace):
    async with web(client, static) as http:
        # Given a task submitted with a key held for an hour
        body = {"type": "noop", "payload": {"pad": PAD}, "idempotency_key": "order-7", "unique_for_s": 3600}
        first = await post(http, "/api/tasks", body)
        assert first.status_code == 201, first.text
        assert "idempotent-replayed" not in first.headers
        task = first.json()
        assert task["idempotency_key"] == "order-7"
        assert task["unique_until"] == pytest.approx(task["created_at"] + 3600)

        # When the same key is posted again (another payload), 20 times at once
        again = await asyncio.gather(
            *(post(http, "/api/tasks", {**body, "payload": {"i": i}}) for i in range(20))
        )

        # Then each answer is 200, the existing task, marked as replayed
        for r in again:
            assert r.status_code == 200, r.text
            assert r.headers["idempotent-replayed"] == "true"
            assert r.headers["location"] == f"/api/tasks/{task['id']}"
            assert r.json()["id"] == task["id"] and r.json()["payload"] == {"pad": PAD}
        kv, _ = await store.get(keyspace.unique("order-7"))
        assert kv is not None and codec.decode_obj(kv.key, kv.value)["id"] == task["id"]

        # and bad keys are one-line 422s
        assert "idempotency key" in err(
            await post(http, "/api/tasks", {"type": "noop", "idempotency_key": ""}), 422
        )
        assert "idempotency" in err(await post(http, "/api/tasks", {"type": "noop", "unique_for_s": 5}), 422)
        assert "idempotency_key" in err(
            await post(http, "/api/tasks", {"type": "noop", "idempotency_key": 5}), 422
        )


async def test_batch_says_which_tasks_are_new(client, static):
    async with web(client, static) as http:
        existing = await client.submit("noop", idempotency_key="b1")
        tasks = [
            {"type": "noop", "payload": {"pad": PAD}, "idempotency_key": key}
            for key in ("b0", "b1", "b2", "b0")
        ]
        r = await post(http, "/api/tasks/batch", {"tasks": tasks})
        assert r.status_code == 201, r.text
        got = r.json()["tasks"]
        assert [t["created"] for t in got] == [True, False, True, False]
        assert got[1]["id"] == existing.id and got[3]["id"] == got[0]["id"]
        assert (await client.get(got[2]["id"])).state is TaskState.QUEUED

        # When every key is held, the answer is 200 and nothing is new
        r = await post(http, "/api/tasks/batch", {"tasks": tasks[:2]})
        assert r.status_code == 200, r.text
        assert [(t["id"], t["created"]) for t in r.json()["tasks"]] == [
            (got[0]["id"], False),
            (existing.id, False),
        ]
