"""A real etcd at its space quota (NOSPACE): submit says what to do, purge frees it, the recovery works.

Each test runs its own etcd started with ``--quota-backend-bytes=16777216``
(16 MiB) and fills it with large records until etcd refuses a write. etcdctl
comes from the directory of the etcd binary tasklease finds
(:func:`tasklease.etcd_server.find_etcd_binary`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tasklease.client import Client, TaskSpec
from tasklease.errors import StoreNoSpace
from tasklease.etcd_server import EtcdServer
from tasklease.keys import Keyspace, prefix_end
from tasklease.models import Task, TaskState
from tasklease.store import Store, StoreConfig

QUOTA_BYTES = 16 * 1024 * 1024
PAD = "x" * 400_000  # a record of about 400 KB: written twice while queued
REMEDY = ("tasklease purge", "etcdctl compact", "etcdctl defrag", "etcdctl alarm disarm")


@pytest.fixture
def small_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(data_dir=tmp_path / "data", extra_args=[f"--quota-backend-bytes={QUOTA_BYTES}"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcdctl(small_etcd: EtcdServer) -> Any:
    binary = Path(small_etcd.binary).parent / "etcdctl"
    path = str(binary) if binary.exists() else shutil.which("etcdctl")
    assert path, f"no etcdctl next to {small_etcd.binary}"

    def run(*args: str) -> str:
        out = subprocess.run(
            [path, "--endpoints", small_etcd.endpoint, *args], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    return run


@pytest.fixture
async def small(small_etcd: EtcdServer, namespace: str) -> AsyncIterator[Client]:
    client = await Client.connect(StoreConfig.from_text(small_etcd.endpoint), namespace=namespace)
    try:
        yield client
    finally:
        await client.close()


def cli(small_etcd: EtcdServer, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TASKLEASE_ETCD=small_etcd.endpoint, TASKLEASE_NAMESPACE=namespace)
    exe = Path(os.sys.executable).parent / "tasklease"  # type: ignore[attr-defined]
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=120)


async def fill(client: Client, *, finish: bool) -> tuple[list[Task], list[Task], StoreNoSpace]:
    """Write ~400 KB tasks (cancelled ones with ``finish``) until etcd refuses for space.

    Returns the tasks written, those left queued (a cancel refused), and the refusal.
    """
    written: list[Task] = []
    for i in range(200):
        task = None
        try:
            task = await client.submit("noop", {"i": i, "pad": PAD})
            written.append(await client.cancel(task.id) if finish else task)
        except StoreNoSpace as exc:
            return written, [task] if finish and task is not None else [], exc
    raise AssertionError("etcd never ran out of space")


async def task_keys(store: Store, keys: Keyspace) -> set[str]:
    result = await store.range(keys.tasks, prefix_end(keys.tasks), keys_only=True)
    return {kv.key for kv in result.kvs}


async def test_a_submit_into_a_full_etcd_names_the_remedy(small, small_etcd, namespace, etcdctl):
    # Given an etcd filled to its quota
    written, _, refused = await fill(small, finish=False)
    assert len(written) >= 10
    assert "NOSPACE" in etcdctl("alarm", "list")
    # Then the refused submit said what to do, in one line
    message = str(refused)
    assert message.startswith("etcd is out of space (NOSPACE")
    assert "the submit was refused, nothing written" in message
    assert all(step in message for step in REMEDY), message
    # ... a batch too
    with pytest.raises(StoreNoSpace, match=r"the batch was refused.*tasklease purge"):
        await small.submit_many([TaskSpec("noop"), TaskSpec("noop")])
    # ... and so does the command: exit 1, one line, no raw gRPC status
    out = cli(small_etcd, namespace, "submit", "noop")
    assert out.returncode == 1, out
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("tasklease: error: etcd is out of space (NOSPACE")
    assert all(step in out.stderr for step in REMEDY), out.stderr
    assert "RESOURCE_EXHAUSTED" not in out.stderr
    assert len(await task_keys(small.store, small.keys)) == len(written)


async def test_purge_frees_a_full_etcd_and_the_documented_recovery_works(
    small, small_etcd, namespace, etcdctl
):
    # Given a queued task, then an etcd filled to its quota with finished tasks
    waiting = await small.submit("noop", {"keep": True})
    finished, stuck, _ = await fill(small, finish=True)
    waiting_keys = {small.keys.task(t.id) for t in [waiting, *stuck]}
    assert len(finished) >= 5 and all(t.state is TaskState.CANCELLED for t in finished)
    assert "NOSPACE" in etcdctl("alarm", "list")
    assert cli(small_etcd, namespace, "submit", "noop").returncode == 1
    # When purge runs: a dry run first, then --yes (etcd refuses transactions: plain deletes)
    dry = cli(small_etcd, namespace, "purge", "--older-than", "0s")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(f"dry run: {len(finished)} finished tasks (")
    out = cli(small_etcd, namespace, "purge", "--older-than", "0s", "--yes", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["deleted"] == result["matched"] == len(finished)
    assert result["plain_deletes"] == len(finished)
    assert result["remaining"] == len(waiting_keys)
    assert await task_keys(small.store, small.keys) == waiting_keys
    # ... and the documented recovery: compact to purge's revision, defragment, disarm
    still_full = cli(small_etcd, namespace, "submit", "noop")
    assert still_full.returncode == 1 and "etcdctl alarm disarm" in still_full.stderr
    etcdctl("compact", str(result["revision"]))
    etcdctl("defrag")
    etcdctl("alarm", "disarm")
    assert "NOSPACE" not in etcdctl("alarm", "list")
    # Then submits work again, and the queued task was never touched
    again = cli(small_etcd, namespace, "submit", "noop")
    assert again.returncode == 0, again.stderr
    assert (await small.get(waiting.id)).state is TaskState.QUEUED
    status = json.loads(etcdctl("endpoint", "status", "--write-out", "json"))
    assert status[0]["Status"]["dbSize"] < QUOTA_BYTES // 2


class CompactingStore(Store):
    """The real store; compacts etcd to its current revision before the scan's second page."""

    pages_at_a_revision = 0

    async def range(self, prefix: str, end: str, **kwargs: Any) -> Any:
        if kwargs.get("revision"):
            self.pages_at_a_revision += 1
            if self.pages_at_a_revision == 1:
                _, now = await self.get(prefix)
                await self._svc().kv.compact(now, physical=True)
        return await super().range(prefix, end, **kwargs)


async def test_a_purge_whose_read_is_compacted_meanwhile_goes_on(small_etcd, keyspace):
    async with CompactingStore(StoreConfig.from_text(small_etcd.endpoint)) as store:
        client = Client(store, keyspace)
        try:
            tasks = (await client.submit_many(TaskSpec("noop", i) for i in range(100))).tasks
            for t in tasks:
                await client.cancel(t.id)
            # The scan's first page holds 64 records; etcd is compacted before the second
            result = await client.purge(0, dry_run=False)
        finally:
            await client.close()
        assert store.pages_at_a_revision >= 1
        assert (result.matched, result.deleted) == (100, 100)
        assert await task_keys(store, keyspace) == set()
