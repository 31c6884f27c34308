"""Worker ids with real `tasklease worker` processes: a duplicate live id is refused
(exit 2, one line on stderr); a restart right after a SIGKILL registers once the old
lease has expired.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from faults.procs import Proc, Procs, process_env, until
from tasklease import codec
from tasklease.keys import Keyspace
from tasklease.store import Store


@pytest.fixture
def procs(tasklease_bin: str, cli_env: dict[str, str], tmp_path: Path) -> Iterator[Procs]:
    group = Procs(tasklease_bin, process_env(cli_env), tmp_path)
    yield group
    group.cleanup()


def worker_args(worker_id: str, ttl: int = 2) -> list[str]:
    return [
        "worker", "--id", worker_id, "--log-format", "text", "--import", "sample_tasks",
        "--lease-ttl", str(ttl), "--heartbeat", "0.5",
    ]  # fmt: skip


async def registered_by(store: Store, keys: Keyspace, worker_id: str, proc: Proc) -> dict | None:
    kv, _ = await store.get(keys.node(worker_id))
    if kv is None:
        return None
    node = codec.decode_obj(kv.key, kv.value)
    return node if node.get("pid") == proc.pid and kv.lease == node.get("lease") else None


async def test_a_second_process_with_the_same_id_is_refused(procs: Procs, store: Store, keyspace: Keyspace):
    # Given a live worker "dup"
    first = procs.spawn("first", *worker_args("dup"))
    await until(
        lambda: registered_by(store, keyspace, "dup", first),
        within_s=15,
        what="dup registered",
        log=first.tail,
    )
    node_before, _ = await store.get(keyspace.node("dup"))
    # When a second process starts with --id dup
    second = procs.spawn("second", *worker_args("dup"))
    # Then it exits 2 with one clear error line, and the first one is untouched
    code = await second.wait_exit(within_s=20)
    assert code == 2, second.why("expected exit 2")
    text = second.log_text()
    errors = [line for line in text.splitlines() if line.startswith("tasklease: error:")]
    assert len(errors) == 1, second.why("expected one error line")
    assert "worker id 'dup' is in use by another live worker" in errors[0]
    assert f"pid {first.pid}" in errors[0]
    assert "Traceback" not in text
    assert first.alive, first.why("the first worker died")
    node_after, _ = await store.get(keyspace.node("dup"))
    assert node_before is not None and node_after is not None
    assert node_after.create_revision == node_before.create_revision
    assert node_after.lease == node_before.lease


async def test_a_restart_right_after_a_sigkill_registers_once_the_old_lease_expires(
    procs: Procs, store: Store, keyspace: Keyspace
):
    # Given a worker "phoenix" (lease TTL 2 s) that is SIGKILLed
    first = procs.spawn("first", *worker_args("phoenix"))
    await until(
        lambda: registered_by(store, keyspace, "phoenix", first),
        within_s=15,
        what="phoenix registered",
        log=first.tail,
    )
    first.signal(signal.SIGKILL)
    await first.wait_exit(within_s=5)
    assert (await store.get(keyspace.node("phoenix")))[0] is not None, "the old record outlives the kill"
    # When it is restarted at once with the same id
    second = procs.spawn("second", *worker_args("phoenix"))
    # Then it registers (once the old lease has expired) and keeps running
    node = await until(
        lambda: registered_by(store, keyspace, "phoenix", second),
        within_s=20,
        what="the restarted phoenix registered",
        log=second.tail,
    )
    assert node["lease_ttl"] == 2
    assert second.alive, second.why("the restarted worker exited")
    assert "waiting up to" in second.log_text(), second.why("it should have waited for the old lease")
