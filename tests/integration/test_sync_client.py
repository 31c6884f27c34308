"""The blocking facade (for WSGI apps and scripts) over the async client."""

from __future__ import annotations

import asyncio

import pytest

from tasklease import StoreConfig, SyncClient, TaskSpec
from tasklease.errors import InvalidTransition, TaskFailed, TaskNotFound, WaitTimeout
from tasklease.models import TaskState


def test_sync_client_does_what_the_async_one_does(etcd_endpoint, namespace):
    with SyncClient(StoreConfig.from_text(etcd_endpoint), namespace=namespace) as client:
        task = client.submit("noop", {"x": 1}, priority=2)
        assert client.get(task.id).payload == {"x": 1}
        assert client.get(task.id.lower()).id == task.id  # ids are read case-insensitively
        batch = client.submit_many(TaskSpec("noop", {"i": i}) for i in range(3))
        assert batch.transactions == 1
        assert [t.id for t in client.list(state=TaskState.QUEUED, queue="default")] == [
            task.id,
            *(t.id for t in batch.tasks),
        ]
        assert client.set_priority(task.id, 0).priority == 0
        with pytest.raises(WaitTimeout):
            client.wait(task.id, timeout_s=0.2)
        client.cancel(task.id)
        assert client.wait(task.id, timeout_s=5).state is TaskState.CANCELLED
        with pytest.raises(TaskFailed):
            client.result(task.id, timeout_s=5)
        with pytest.raises(InvalidTransition):
            client.cancel(task.id)
        with pytest.raises(TaskNotFound):
            client.get("01J00000000000000000000000")
    client.close()  # idempotent


def test_close_ends_what_is_left_on_its_loop(etcd_endpoint, namespace):
    # gRPC leaves a task that waits for a cancelled stream's status (the quota watch, the
    # result watch); a background loop closed with it pending printed "Task was destroyed
    # but it is pending!" on the application's stderr (1 script in 12 here). Close now
    # cancels what is left and lets it end, as asyncio.run does.
    client = SyncClient(StoreConfig.from_text(etcd_endpoint), namespace=namespace)
    client.submit("noop", {"i": 1})

    async def leave_a_task() -> asyncio.Task[bool]:
        return asyncio.get_running_loop().create_task(asyncio.Event().wait())

    leftover = asyncio.run_coroutine_threadsafe(leave_a_task(), client._loop).result()
    client.close()
    assert leftover.cancelled()
