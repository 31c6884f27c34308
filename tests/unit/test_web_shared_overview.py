"""SharedOverview: never older than the feed's changes, one count at a time, shared (pure logic)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from tasklease.client import Client
from tasklease.web.api import SharedOverview


class Counts:
    """Stands in for the client: each overview() call takes a moment and is counted."""

    def __init__(self) -> None:
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self.fail = False

    async def overview(self) -> Any:
        self.calls += 1
        n = self.calls
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(0.01)
        finally:
            self.running -= 1
        if self.fail:
            raise RuntimeError("etcd away")

        class View:
            def as_dict(self) -> dict[str, Any]:
                return {"n": n}

        return View()


async def test_concurrent_requests_share_one_count_and_reuse_it_while_nothing_changed():
    counts, revision = Counts(), {"now": 5}
    shared = SharedOverview(min_interval_s=0)
    client = cast(Client, counts)

    def feed() -> int:
        return revision["now"]

    results = await asyncio.gather(*(shared.get(client, feed) for _ in range(20)))
    assert counts.calls == 1 and all(r == {"n": 1} for r in results)
    assert await shared.get(client, feed) == {"n": 1} and counts.calls == 1
    # an action asks for a count made after it
    assert await shared.get(client, feed, fresh=True) == {"n": 2}


async def test_a_change_the_feed_saw_is_never_answered_with_an_older_count():
    counts, revision = Counts(), {"now": 1}
    shared = SharedOverview(min_interval_s=0.05)
    client = cast(Client, counts)

    def feed() -> int:
        return revision["now"]

    first = await shared.get(client, feed)
    revision["now"] = 2  # a task finished: the last count did not see it
    second = await shared.get(client, feed)
    assert second != first and counts.calls == 2

    # while changes keep coming, requests wait for a newer count, never two at once
    async def change_and_ask(i: int) -> dict[str, Any]:
        revision["now"] = 10 + i
        return await shared.get(client, feed)

    answers = await asyncio.gather(*(change_and_ask(i) for i in range(10)))
    assert counts.most_at_once == 1
    assert all(a["n"] > second["n"] for a in answers)
    assert (await shared.get(client, feed))["n"] == counts.calls  # the last one saw revision 19


async def test_a_failure_reaches_every_waiter_and_the_next_request_counts_again():
    counts, revision = Counts(), {"now": 1}
    shared = SharedOverview(min_interval_s=0)
    client = cast(Client, counts)
    counts.fail = True
    results = await asyncio.gather(
        *(shared.get(client, lambda: revision["now"]) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results) and counts.calls == 1
    counts.fail = False
    assert (await shared.get(client, lambda: revision["now"]))["n"] == 2
    assert shared._pending is None
