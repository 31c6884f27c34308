"""``purge`` (purge.py, ``Client.purge``, ``tasklease purge``) against a real etcd.

Finished tasks come from the real paths: a scheduler and a worker run them to
``succeeded`` or ``failed``, ``cancel`` ends others. The age filter uses a
client with a :class:`FakeClock` (no sleeping). The NOSPACE behaviour against a
full etcd is in test_nospace.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import pytest

from faultstore import FaultyStore
from tasklease.client import Client, TaskSpec
from tasklease.clock import FakeClock
from tasklease.errors import InvalidOption, InvalidState, StoreNoSpace
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Task, TaskState
from tasklease.purge import DELETES_PER_TXN
from tasklease.store import KV, Delete, Op, Store, StoreConfig

HANG_GUARD_S = 60


async def task_keys(store: Store, keys: Keyspace) -> set[str]:
    result = await store.range(keys.tasks, prefix_end(keys.tasks), keys_only=True)
    return {kv.key for kv in result.kvs}


async def record_bytes(store: Store, keys: Keyspace, tasks: Sequence[Task]) -> int:
    sizes = [len(cast(KV, (await store.get(keys.task(t.id)))[0]).value) for t in tasks]
    return sum(sizes)


async def cancelled(client: Client, n: int, **options: Any) -> list[Task]:
    tasks = (await client.submit_many(TaskSpec("noop", {"i": i}, **options) for i in range(n))).tasks
    return [await client.cancel(t.id) for t in tasks]


@pytest.fixture
async def finished(client: Client, cluster: Any) -> dict[str, list[Task]]:
    """Tasks in every state: 2 succeeded, 1 failed, 2 cancelled (one in queue "other"), 1 queued.

    The worker serves the queue "default" only: tasks of other queues wait.
    """
    await cluster.scheduler()
    await cluster.worker(queues=("default",))
    ok = [await client.submit("noop", i) for i in range(2)]
    bad = [await client.submit("fail")]
    async with asyncio.timeout(HANG_GUARD_S):
        done = [await client.wait(t.id) for t in (*ok, *bad)]
    assert [t.state for t in done] == [TaskState.SUCCEEDED] * 2 + [TaskState.FAILED]
    gone = [await client.cancel((await client.submit("noop", queue=q)).id) for q in ("held", "other")]
    waiting = [await client.submit("noop", queue="nobody-serves-this")]
    return {"succeeded": done[:2], "failed": done[2:], "cancelled": gone, "queued": waiting}


async def test_a_dry_run_counts_what_would_go_and_deletes_nothing(client, finished, store, keyspace):
    before = await task_keys(store, keyspace)
    result = await client.purge(0)
    ended = [*finished["succeeded"], *finished["failed"], *finished["cancelled"]]
    assert result.dry_run
    assert (result.matched, result.deleted, result.transactions) == (5, 0, 0)
    assert result.matched_bytes == await record_bytes(store, keyspace, ended)
    assert result.states == ("succeeded", "failed", "cancelled")
    assert await task_keys(store, keyspace) == before


async def test_purge_deletes_finished_tasks_by_state_and_queue_and_nothing_else(
    client, finished, store, keyspace
):
    # Only failed ones
    result = await client.purge(0, states=["failed"], dry_run=False)
    assert (result.matched, result.deleted, result.kept) == (1, 1, 0)
    assert keyspace.task(finished["failed"][0].id) not in await task_keys(store, keyspace)
    # Only the queue "other"
    result = await client.purge(0, queue="other", dry_run=False)
    assert result.deleted == 1
    # Then everything finished: what waits is never touched
    result = await client.purge(0, dry_run=False)
    assert result.deleted == 3 and result.transactions == 1
    assert result.deleted_bytes == result.matched_bytes > 0
    assert await task_keys(store, keyspace) == {keyspace.task(finished["queued"][0].id)}
    assert result.remaining == 1
    assert (await client.get(finished["queued"][0].id)).state is TaskState.QUEUED
    assert (await client.purge(0, dry_run=False)).matched == 0


async def test_the_age_counts_from_when_the_task_finished(store, keyspace):
    clock = FakeClock(time.time())
    client = Client(store, keyspace, clock=clock)
    try:
        old = await cancelled(client, 3)
        clock.advance(3600)
        new = await cancelled(client, 2)
        clock.advance(60)
        # Finished 61 min and 1 min ago: "older than 30 min" takes the first three only
        assert (await client.purge(30 * 60)).matched == 3
        assert (await client.purge(2 * 3600)).matched == 0
        result = await client.purge(30 * 60, dry_run=False)
        assert result.deleted == 3
        left = await task_keys(store, keyspace)
        assert left == {keyspace.task(t.id) for t in new}
        assert not left & {keyspace.task(t.id) for t in old}
    finally:
        await client.close()


class RecordingStore(Store):
    """The real store; records the transactions sent, and can change a record just before a delete."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deletes_per_txn: list[int] = []
        self.touch_before_delete: str | None = None

    async def txn(self, compares: Any, success: Sequence[Op], failure: Any = (), **kwargs: Any) -> Any:
        if success and all(isinstance(op, Delete) for op in success):  # purge's (a cancel also puts)
            self.deletes_per_txn.append(len(success))
            if self.touch_before_delete is not None:
                key, self.touch_before_delete = self.touch_before_delete, None
                kv, _ = await self.get(key)
                await self.put(key, cast(KV, kv).value)  # same record, new mod revision
        return await super().txn(compares, success, failure, **kwargs)


@pytest.fixture
async def recording(store_config: StoreConfig) -> AsyncIterator[RecordingStore]:
    async with RecordingStore(store_config) as s:
        yield s


async def test_deletes_go_in_transactions_of_at_most_64(recording, keyspace, store):
    client = Client(recording, keyspace)
    try:
        await cancelled(client, 150)
        result = await client.purge(0, dry_run=False)
    finally:
        await client.close()
    assert result.deleted == 150 and result.transactions == 3
    # each record goes with its finished-index entry (two deletes per record)
    assert recording.deletes_per_txn == [
        2 * n for n in (DELETES_PER_TXN, DELETES_PER_TXN, 150 - 2 * DELETES_PER_TXN)
    ]
    assert await task_keys(store, keyspace) == set()
    index = await store.range(keyspace.finished, prefix_end(keyspace.finished), count_only=True)
    assert index.count == 0


async def test_a_record_that_changed_after_it_was_read_is_kept(recording, keyspace, store):
    client = Client(recording, keyspace)
    try:
        tasks = await cancelled(client, 5)
        # Given a record rewritten between purge's read and its delete transaction
        victim = keyspace.task(tasks[2].id)
        recording.touch_before_delete = victim
        result = await client.purge(0, dry_run=False)
    finally:
        await client.close()
    # Then the group's transaction failed, the others were deleted one by one, the changed one kept
    assert (result.matched, result.deleted, result.kept) == (5, 4, 1)
    assert recording.deletes_per_txn == [10, 2, 2, 2, 2, 2]  # each with its finished-index entry
    assert result.transactions == 4
    assert await task_keys(store, keyspace) == {victim}


async def test_when_etcd_refuses_transactions_for_space_purge_sends_plain_deletes(
    store_config: StoreConfig, keyspace, store
):
    async with FaultyStore(store_config) as faulty:
        client = Client(faulty, keyspace)
        try:
            tasks = await cancelled(client, 70)
            await client.submit("noop")  # waiting: never deleted
            faulty.fail(
                "txn",
                lambda: StoreNoSpace("etcd is out of space (txn refused: mvcc: database space exceeded)"),
                times=10_000,
                when=lambda _c, success, _f: any(isinstance(op, Delete) for op in success),
            )
            result = await client.purge(0, dry_run=False)
        finally:
            await client.close()
    assert (result.deleted, result.plain_deletes, result.transactions) == (70, 70, 0)
    assert not await task_keys(store, keyspace) & {keyspace.task(t.id) for t in tasks}
    assert result.remaining == 1


async def test_undecodable_records_are_counted_and_left_alone(client, store, keyspace):
    await cancelled(client, 2)
    await store.put(keyspace.task("0" * 26), b"{broken")
    result = await client.purge(0, dry_run=False)
    assert (result.deleted, result.corrupt) == (2, 1)
    assert await task_keys(store, keyspace) == {keyspace.task("0" * 26)}


async def test_bad_arguments_are_refused(client):
    for states in (["queued"], ["running"], ["pending"], []):
        with pytest.raises(InvalidOption):
            await client.purge(0, states=states)
    with pytest.raises(InvalidState):
        await client.purge(0, states=["done"])
    for age in (-1, float("nan"), float("inf"), True, "7d"):
        with pytest.raises(InvalidOption):
            await client.purge(age)
    with pytest.raises(ValueError):
        await client.purge(0, queue="a/b")


# command line ---------------------------------------------------------------------------
def tl(bin_: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_, *args], env=env, capture_output=True, text=True, timeout=60)


async def test_purge_command_dry_run_then_yes(tasklease_bin, cli_env, client, store, keyspace):
    gone = await cancelled(client, 2)
    await cancelled(client, 1, queue="keep")
    waiting = await client.submit("noop")
    size = await record_bytes(store, keyspace, gone)
    # A dry run by default
    out = await asyncio.to_thread(
        tl, tasklease_bin, cli_env, "purge", "--older-than", "0s", "--queue", "default"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("dry run: 2 finished tasks (")
    assert "(succeeded, failed, cancelled; queue default; finished 0s ago or more)" in out.stdout
    assert "run again with --yes" in out.stdout
    assert len(await task_keys(store, keyspace)) == 4
    # --json
    out = await asyncio.to_thread(
        tl, tasklease_bin, cli_env, "purge", "--older-than", "1d", "--state", "cancelled,failed", "--json"
    )
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert (shown["dry_run"], shown["matched"], shown["states"]) == (True, 0, ["cancelled", "failed"])
    # --yes deletes, and says how to give the space back
    out = await asyncio.to_thread(
        tl, tasklease_bin, cli_env, "purge", "--older-than", "0s", "--queue", "default", "--yes", "--json"
    )
    shown = json.loads(out.stdout)
    assert (shown["dry_run"], shown["deleted"], shown["deleted_bytes"]) == (False, 2, size)
    assert len(await task_keys(store, keyspace)) == 2
    out = await asyncio.to_thread(tl, tasklease_bin, cli_env, "purge", "--older-than", "0s", "--yes")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("deleted 1 finished tasks (")
    assert "1 task records remain" in lines[0]
    assert lines[1].startswith("etcd gives the space back once compacted and defragmented: etcdctl compact ")
    assert "etcdctl defrag" in lines[1] and "etcdctl alarm disarm" in lines[1]
    assert await task_keys(store, keyspace) == {keyspace.task(waiting.id)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["purge"], "--older-than"),
        (["purge", "--older-than", "7x"], "bad duration"),
        (["purge", "--older-than=-1d"], "bad duration"),
        (["purge", "--older-than", "nan"], "bad duration"),
        (["purge", "--older-than", "1d", "--state", "queued"], "purge deletes finished tasks only"),
        (["purge", "--older-than", "1d", "--state", "done"], "unknown state"),
        (["purge", "--older-than", "1d", "--queue", "a/b"], "invalid queue name"),
    ],
)
def test_bad_purge_options_exit_2(tasklease_bin, cli_env, args, message):
    out = tl(tasklease_bin, cli_env, *args)
    assert out.returncode == 2, out
    assert message in out.stderr and out.stderr.count("\n") == 1
