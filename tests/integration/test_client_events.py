"""The client's events (events.py), seen through a RecordingHook, against a real etcd.

Submitted for every task once its transaction landed (alone, in a group commit,
in each part of a batch), Cancelled and Reprioritised once the change landed;
nothing for what was refused. A hook that raises never fails the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from faults.procs import until
from tasklease.client import Client, TaskSpec
from tasklease.errors import InvalidOption, QuotaExceeded
from tasklease.events import (
    Cancelled,
    Event,
    Hooks,
    LoggingHook,
    RecordingHook,
    Reprioritised,
    Submitted,
)
from tasklease.keys import Keyspace
from tasklease.models import Outcome, TaskState
from tasklease.quotas import Quota
from tasklease.store import Store, StoreConfig

PAYLOAD = "x" * 4500  # a realistic payload: 4.5 KB


class CountingStore(Store):
    """The real store, counting its transactions."""

    txns = 0

    async def txn(self, *args: Any, **kwargs: Any) -> Any:
        self.txns += 1
        return await super().txn(*args, **kwargs)


class RaisingHook:
    """A broken hook: raises on every event."""

    def __init__(self) -> None:
        self.calls = 0

    def on_event(self, event: Event) -> None:
        self.calls += 1
        raise RuntimeError("hook bug")


@pytest.fixture
def recorder() -> RecordingHook:
    return RecordingHook()


@pytest.fixture
async def watched(store: Store, keyspace: Keyspace, recorder: RecordingHook) -> AsyncIterator[Client]:
    """A client whose only hook is the recorder."""
    c = Client(store, keyspace, hooks=[recorder])
    yield c
    await c.close()


def submitted_ids(recorder: RecordingHook) -> list[str]:
    return [e.task.id for e in recorder.of(Submitted) if isinstance(e, Submitted)]


# Submitted --------------------------------------------------------------------------------
async def test_a_submit_emits_submitted_with_the_stored_task(watched: Client, recorder: RecordingHook):
    # When a task is submitted
    task = await watched.submit("noop", {"pad": PAYLOAD}, queue="q1", priority=2)
    # Then exactly one Submitted names it, from the client, with the record as stored
    [event] = recorder.events
    assert isinstance(event, Submitted)
    assert event.task == task == await watched.get(task.id)
    assert (event.component, event.source, event.attempt, event.worker) == ("client", "", None, None)
    assert event.task_id == task.id and event.task.state is TaskState.QUEUED


async def test_every_task_of_a_batch_emits_submitted_in_order(watched: Client, recorder: RecordingHook):
    # When 150 tasks of 4.5 KB are submitted as one batch (several transactions)
    batch = await watched.submit_many(TaskSpec("noop", {"pad": PAYLOAD, "i": i}) for i in range(150))
    assert batch.transactions == 3
    # Then each task has one Submitted, in the order given
    assert submitted_ids(recorder) == [t.id for t in batch.tasks]
    assert recorder.kinds() == ["Submitted"] * 150


async def test_concurrent_submits_of_a_group_commit_each_emit_submitted(
    store_config: StoreConfig, keyspace: Keyspace, recorder: RecordingHook
):
    # Given a client on a store that counts its transactions
    async with CountingStore(store_config) as counting:
        client = Client(counting, keyspace, hooks=[recorder])
        try:
            # When 50 submits run concurrently (grouped into shared transactions)
            async with asyncio.timeout(60):
                tasks = await asyncio.gather(
                    *(client.submit("noop", {"pad": PAYLOAD, "i": i}) for i in range(50))
                )
        finally:
            await client.close()
    # Then they were grouped, and each task has exactly one Submitted
    assert counting.txns < 50
    assert sorted(submitted_ids(recorder)) == sorted(t.id for t in tasks)
    assert len(recorder.events) == 50


async def test_a_duplicate_id_in_a_group_emits_submitted_once(watched: Client, recorder: RecordingHook):
    # Given one explicit id, submitted twice concurrently (one group, sent again one by one)
    task_id = "01J00000000000000000000001"
    results = await asyncio.gather(
        watched.submit("noop", 1, task_id=task_id),
        watched.submit("noop", 2, task_id=task_id),
        return_exceptions=True,
    )
    # Then one is stored, the other refused, and only the stored one was announced
    stored = [r for r in results if not isinstance(r, BaseException)]
    assert len(stored) == 1 and sum(isinstance(r, InvalidOption) for r in results) == 1, results
    assert [e.task for e in recorder.of(Submitted) if isinstance(e, Submitted)] == stored


async def test_a_refused_submit_emits_nothing(watched: Client, recorder: RecordingHook):
    # Given a stored task and a quota of 2 waiting tasks
    first = await watched.submit("noop", 1)
    await watched.set_quota(Quota(max_queued=2))
    recorder.events.clear()
    # When its id is submitted again (refused), a batch is over the quota (refused),
    # and an invalid task is submitted (refused before anything is written)
    with pytest.raises(InvalidOption):
        await watched.submit("noop", 2, task_id=first.id)
    with pytest.raises(QuotaExceeded):
        await watched.submit_many(TaskSpec("noop", i) for i in range(2))
    with pytest.raises(InvalidOption):
        await watched.submit("noop", task_id="not-an-id")
    # Then no event was emitted
    assert recorder.events == []
    # ... and one that fits is announced
    second = await watched.submit("noop", 3)
    assert submitted_ids(recorder) == [second.id]


async def test_a_raising_hook_never_fails_a_submit(
    store: Store, keyspace: Keyspace, recorder: RecordingHook, caplog
):
    # Given a client whose first hook raises
    broken = RaisingHook()
    async with Client(store, keyspace, hooks=[broken, recorder]) as client:
        # When tasks are submitted, alone and in a batch
        with caplog.at_level(logging.ERROR, logger="tasklease.events"):
            task = await client.submit("noop", 1)
            batch = await client.submit_many(TaskSpec("noop", i) for i in range(3))
        # Then every submit succeeded, the next hook saw every event, and the error was logged once
        assert (await client.get(task.id)).state is TaskState.QUEUED
    assert submitted_ids(recorder) == [task.id, *(t.id for t in batch.tasks)]
    assert broken.calls == 4
    assert len([r for r in caplog.records if "hook RaisingHook raised on Submitted" in r.getMessage()]) == 1


async def test_the_submitted_debug_line_is_the_logging_hooks_and_written_once(
    store: Store, keyspace: Keyspace, caplog
):
    # Given a client with the default hooks (logging only)
    async with Client(store, keyspace) as client:
        assert [type(h) for h in client.hooks.hooks] == [LoggingHook]
        # When a task is submitted
        with caplog.at_level(logging.DEBUG, logger="tasklease.client"):
            task = await client.submit("noop", 1)
    # Then one "submitted" debug line of tasklease.client names it
    lines = [r for r in caplog.records if r.name == "tasklease.client" and r.getMessage() == "submitted"]
    assert len(lines) == 1
    assert lines[0].levelno == logging.DEBUG
    assert lines[0].__dict__["task_id"] == task.id


async def test_connect_takes_hooks(store_config: StoreConfig, namespace: str, recorder: RecordingHook):
    client = await Client.connect(store_config, namespace=namespace, hooks=Hooks([recorder]))
    async with client:
        task = await client.submit("noop")
    assert submitted_ids(recorder) == [task.id]


# Cancelled, Reprioritised -------------------------------------------------------------------
async def test_cancelling_a_queued_task_emits_cancelled_without_an_outcome(
    watched: Client, recorder: RecordingHook
):
    # Given a queued task
    task = await watched.submit("noop", {"pad": PAYLOAD})
    # When it is cancelled
    cancelled = await watched.cancel(task.id)
    # Then Cancelled carries the cancelled record, and no attempt ended
    assert recorder.kinds(task.id) == ["Submitted", "Cancelled"]
    event = recorder.events[-1]
    assert isinstance(event, Cancelled)
    assert event.task == cancelled and event.task.state is TaskState.CANCELLED
    assert (event.outcome, event.attempt, event.worker) == (None, None, None)
    assert event.error == "cancelled by request"


async def test_cancelling_a_running_task_emits_cancelled_with_its_attempt(
    watched: Client, recorder: RecordingHook, cluster, tmp_path: Path
):
    # Given a task that runs on worker w0 until a gate file appears
    await cluster.scheduler()
    await cluster.worker(worker_id="w0")
    gate = tmp_path / "gate"
    task = await watched.submit("wait_for_file", {"path": str(gate), "within_s": 60})

    async def running() -> bool:
        return (await watched.get(task.id)).state is TaskState.RUNNING

    await until(running, within_s=30, what="the task running")
    # When it is cancelled
    cancelled = await watched.cancel(task.id)
    gate.touch()
    # Then Cancelled names its attempt, its worker and the outcome cancelled
    event = recorder.events[-1]
    assert isinstance(event, Cancelled)
    assert event.task == cancelled
    assert (event.outcome, event.attempt, event.worker) == (Outcome.CANCELLED, 1, "w0")
    assert (await watched.wait(task.id, timeout_s=10)).state is TaskState.CANCELLED


async def test_a_priority_change_emits_reprioritised_once(watched: Client, recorder: RecordingHook):
    # Given a queued task of priority 1
    task = await watched.submit("noop", {"pad": PAYLOAD}, priority=1)
    # When its priority changes to 3, then to 3 again (no change)
    changed = await watched.set_priority(task.id, 3)
    await watched.set_priority(task.id, 3)
    # Then one Reprioritised carries the new record
    assert recorder.kinds(task.id) == ["Submitted", "Reprioritised"]
    event = recorder.events[-1]
    assert isinstance(event, Reprioritised)
    assert event.task == changed and event.task.priority == 3
