"""groupcommit.py: items that arrive while a write is in flight go out together, bounded by count and bytes."""

from __future__ import annotations

import asyncio

import pytest

from tasklease.groupcommit import GroupCommit, GroupLeftUnsettled, Pending, first_group_len


def test_first_group_len_takes_the_first_item_always_then_within_count_and_bytes():
    assert first_group_len([10, 10, 10], max_items=2, max_bytes=100) == 2
    assert first_group_len([60, 30, 20], max_items=10, max_bytes=100) == 2
    assert first_group_len([500, 1], max_items=10, max_bytes=100) == 1  # alone: its own txn says
    assert first_group_len([], max_items=10, max_bytes=100) == 1
    assert first_group_len([1] * 100, max_items=64, max_bytes=10**6) == 64


async def test_concurrent_items_share_a_write_and_each_caller_gets_its_own_answer():
    groups: list[list[int]] = []
    gate = asyncio.Event()

    async def write(group: list[Pending[int, str]]) -> None:
        groups.append([p.item for p in group])
        if len(groups) == 1:
            await gate.wait()  # the first write is in flight while the others arrive
        for p in group:
            p.settle(f"ok {p.item}")

    gc: GroupCommit[int, str] = GroupCommit(write, cost=lambda i: 10, max_items=3, max_bytes=1000, name="t")
    first = asyncio.create_task(gc.submit(0))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(gc.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    gate.set()
    assert await first == "ok 0"
    assert await asyncio.gather(*rest) == [f"ok {i}" for i in range(1, 6)]
    assert groups == [[0], [1, 2, 3], [4, 5]]
    await gc.drain()


async def test_a_writer_error_reaches_its_group_only_and_later_groups_still_go():
    async def write(group: list[Pending[int, int]]) -> None:
        if group[0].item == 0:
            raise OSError("etcd away")
        for p in group:
            p.settle(p.item)

    gc: GroupCommit[int, int] = GroupCommit(write, cost=lambda i: 1, max_items=1, max_bytes=10, name="t")
    results = await asyncio.gather(gc.submit(0), gc.submit(1), return_exceptions=True)
    assert isinstance(results[0], OSError) and results[1] == 1


async def test_an_item_left_unanswered_gets_an_error_instead_of_hanging():
    async def write(group: list[Pending[int, int]]) -> None:
        return None

    gc: GroupCommit[int, int] = GroupCommit(write, cost=lambda i: 1, max_items=5, max_bytes=10, name="t")
    with pytest.raises(GroupLeftUnsettled):
        await asyncio.wait_for(gc.submit(1), 5)


async def test_cancelling_the_flusher_cancels_every_waiting_caller():
    started = asyncio.Event()

    async def write(group: list[Pending[int, int]]) -> None:
        started.set()
        await asyncio.sleep(3600)

    gc: GroupCommit[int, int] = GroupCommit(write, cost=lambda i: 1, max_items=1, max_bytes=10, name="t")
    callers = [asyncio.create_task(gc.submit(i)) for i in range(3)]
    await started.wait()
    assert gc._flusher is not None
    gc._flusher.cancel()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert gc.waiting == 0
