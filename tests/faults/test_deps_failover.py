"""Dependencies across a leader failover: real `tasklease` processes against the real etcd, really killed.

The leading scheduler is frozen (SIGSTOP) before a parent finishes, so it never
sees the finish, then SIGKILLed; the standby takes over and must release the
waiting children from its first look at every waiting task (release.py,
"Failover"): each runs, exactly once. A parent cancelled while nobody leads
cascades to its children the same way.

Every wait has a deadline and polls at ~50 ms; every process logs to a file in
tmp_path, and the tails of all of them are part of every assertion message.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from faults.procs import Proc, Procs, process_env, until
from tasklease import codec
from tasklease.client import Client, TaskSpec
from tasklease.errors import WaitTimeout
from tasklease.keys import Keyspace
from tasklease.models import Outcome, Task, TaskState
from tasklease.store import KV, Store

TTL = 2  # lease TTL of every scheduler and worker
START_S = 30.0  # a process start on a loaded 2-core machine

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def procs(tasklease_bin: str, cli_env: dict[str, str], tmp_path: Path) -> Iterator[Procs]:
    group = Procs(tasklease_bin, process_env(cli_env), tmp_path)
    try:
        yield group
    finally:
        group.cleanup()


async def leader_kv(store: Store, keys: Keyspace) -> KV | None:
    kv, _ = await store.get(keys.leader)
    return kv


async def wait_leader(store: Store, keys: Keyspace, procs: Procs, among: set[str], within_s: float) -> KV:
    async def probe() -> KV | None:
        kv = await leader_kv(store, keys)
        return kv if kv is not None and kv.value.decode() in among else None

    return await until(probe, within_s=within_s, what=f"a leader among {sorted(among)}", log=procs.tails)


async def wait_registered(store: Store, keys: Keyspace, worker: Proc) -> None:
    async def probe() -> bool:
        if not worker.alive:
            raise AssertionError(worker.why("worker exited before registering"))
        kv, _ = await store.get(keys.node(worker.name))
        return kv is not None and codec.decode_obj(kv.key, kv.value).get("pid") == worker.pid

    await until(probe, within_s=START_S, what=f"{worker.name}'s node record", log=worker.tail)


async def wait_state(client: Client, task_id: str, state: TaskState, procs: Procs) -> Task:
    async def probe() -> Task | None:
        task = await client.get(task_id)
        return task if task.state is state else None

    return await until(probe, within_s=60, what=f"task {task_id} {state.value}", log=procs.tails)


async def final(client: Client, task_id: str, procs: Procs) -> Task:
    try:
        return await client.wait(task_id, timeout_s=60)
    except WaitTimeout:
        raise AssertionError(procs.why(f"task {task_id} not finished: {await client.get(task_id)}")) from None


async def test_leader_killed_between_a_parents_finish_and_the_release_children_run_once(
    procs: Procs, store: Store, keyspace: Keyspace, client: Client, tmp_path: Path
) -> None:
    # Given two schedulers (one leads) and a worker
    started = [procs.scheduler(i, lease_ttl=TTL) for i in ("s1", "s2")]
    kv = await wait_leader(store, keyspace, procs, {"s1", "s2"}, START_S)
    leader = procs[kv.value.decode()]
    (standby,) = [p for p in started if p is not leader]
    await standby.wait_log(f"standing by: {leader.name} leads", START_S)
    await leader.wait_log("leading:", START_S)
    worker = procs.worker("w1", lease_ttl=TTL)
    await wait_registered(store, keyspace, worker)
    # and a parent held running by a gate, with a chain and a fan-out after it; and a parent
    # that no worker serves (queue "idle"), with children of its own
    gate = tmp_path / "gate"
    parent = await client.submit("wait_for_file", {"path": str(gate)})
    wf = client.workflow(name="failover")
    children = wf.group([TaskSpec("noop", {"i": i, "pad": "x" * 1024}) for i in range(5)], after=[parent.id])
    grandchild = wf.add("noop", {"last": True}, after=children)
    idle_parent = wf.add("noop", queue="idle")
    doomed = wf.group([TaskSpec("noop", {"d": i}) for i in range(3)], after=[idle_parent])
    await wf.submit()
    await wait_state(client, parent.id, TaskState.RUNNING, procs)

    # When the leader is frozen, the parent finishes and the idle one is cancelled (nobody leads
    # to see either), and the frozen leader is then killed
    leader.signal(signal.SIGSTOP)
    gate.write_text("open")
    done_parent = await wait_state(client, parent.id, TaskState.SUCCEEDED, procs)
    await client.cancel(idle_parent.id, "the idle queue is gone")
    states = [(await client.get(c.id)).state for c in (*children, *doomed)]
    assert set(states) == {TaskState.WAITING}, procs.why(f"released before the kill: {states}")
    leader.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    await wait_leader(store, keyspace, procs, {standby.name}, within_s=TTL + 15)

    # Then the new leader releases every child: each runs exactly once, after its parent
    finals = [await final(client, c.id, procs) for c in (*children, grandchild)]
    print(f"[measure] leader SIGKILL -> last child finished: {time.monotonic() - killed_at:.3f} s")
    for task in finals:
        assert task.state is TaskState.SUCCEEDED, procs.why(f"{task.id} ended {task.state}: {task.error}")
        assert [a.outcome for a in task.attempts] == [Outcome.SUCCEEDED], procs.why(f"{task.attempts}")
    parent_end = done_parent.attempts[-1].finished_at
    assert parent_end is not None
    assert all(t.attempts[0].started_at >= parent_end for t in finals[:-1])
    last_child = max(t.attempts[0].finished_at or 0 for t in finals[:-1])
    assert finals[-1].attempts[0].started_at >= last_child
    # and the cancelled parent's children are cancelled, naming it, without an attempt
    for task in [await final(client, d.id, procs) for d in doomed]:
        assert task.state is TaskState.CANCELLED and task.attempts == ()
        assert task.error == f"parent {idle_parent.id} cancelled: the idle queue is gone"
    assert await leader.wait_exit(5) == -signal.SIGKILL
    assert standby.alive, standby.why("the new leader died")
    assert (await client.stats())["states"]["waiting"] == 0
