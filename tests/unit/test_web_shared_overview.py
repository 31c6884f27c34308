"""SharedOverview: one count shared by concurrent requests, reused within its age (pure logic)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from tasklease.client import Client
from tasklease.web.api import SharedOverview


class Counts:
    """Stands in for the client: each overview() call takes a moment and is counted."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def overview(self) -> Any:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.fail:
            raise RuntimeError("etcd away")
        n = self.calls

        class View:
            def as_dict(self) -> dict[str, Any]:
                return {"n": n}

        return View()


async def test_concurrent_requests_share_one_count_and_reuse_it_while_fresh():
    counts = Counts()
    shared = SharedOverview(max_age_s=60)
    client = cast(Client, counts)
    results = await asyncio.gather(*(shared.get(client) for _ in range(20)))
    assert counts.calls == 1 and all(r == {"n": 1} for r in results)
    assert await shared.get(client) == {"n": 1} and counts.calls == 1
    # an action asks for a count made after it
    assert await shared.get(client, fresh=True) == {"n": 2}


async def test_an_old_count_is_counted_again_and_a_failure_reaches_every_waiter():
    counts = Counts()
    shared = SharedOverview(max_age_s=0)
    client = cast(Client, counts)
    await shared.get(client)
    await shared.get(client)
    assert counts.calls == 2
    counts.fail = True
    results = await asyncio.gather(*(shared.get(client) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    counts.fail = False
    assert (await shared.get(client))["n"] == counts.calls


@pytest.mark.parametrize("fresh", [False, True])
async def test_nothing_is_left_pending(fresh):
    shared = SharedOverview()
    await shared.get(cast(Client, Counts()), fresh=fresh)
    assert shared._pending is None
