"""Worker ids are exclusive: one live worker per id (Worker objects against a real etcd).

Registration creates ``node/{id}`` only if it is absent. A record held under
another live lease refuses the newcomer (``WorkerIdInUse``); one left by a
crashed worker is waited for until its lease expires; one under an earlier
lease of the same worker is taken back at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest

from faults.procs import until
from faultstore import FaultyStore
from tasklease import codec
from tasklease.errors import ConflictError, InvalidOption, StoreUnavailable
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace
from tasklease.queue import assign_next
from tasklease.store import Store, StoreConfig
from tasklease.worker import Worker, WorkerConfig, WorkerIdInUse


@pytest.fixture
async def make_worker(keyspace: Keyspace) -> AsyncIterator[Callable]:
    workers: list[Worker] = []

    def make(store: Store, worker_id: str, **config) -> Worker:
        config.setdefault("lease_ttl_s", 2)
        config.setdefault("heartbeat_s", 0.3)
        worker = Worker(store, keyspace, builtin_registry(), WorkerConfig(worker_id=worker_id, **config))
        workers.append(worker)
        return worker

    yield make
    for w in workers:
        await w.kill()


async def test_a_second_live_worker_with_the_same_id_is_refused(store, keyspace, make_worker):
    # Given a live worker "dup"
    first = make_worker(store, "dup")
    await first.start()
    node, _ = await store.get(keyspace.node("dup"))
    assert node is not None and node.lease == first.lease_id
    # When another worker starts with the same id
    second = make_worker(store, "dup")
    with pytest.raises(WorkerIdInUse) as err:
        await second.start()
    # Then it is refused with a clear one-line error (a usage error: exit 2 from the CLI)
    message = str(err.value)
    assert "\n" not in message
    assert "worker id 'dup' is in use by another live worker" in message
    assert f"lease {first.lease_id:x}" in message
    assert isinstance(err.value, InvalidOption) and isinstance(err.value, ConflictError)
    # and the first one is untouched: same record, same lease, still serving
    after, _ = await store.get(keyspace.node("dup"))
    assert after is not None and after.create_revision == node.create_revision
    assert after.lease == first.lease_id
    assert second.lease_id == 0
    await second.stop()  # harmless after a refused start


async def test_a_restart_after_a_crash_waits_for_the_old_lease_to_expire(
    store, keyspace, make_worker, client
):
    # Given a worker that crashed: its lease is no longer refreshed, nor revoked
    crashed = make_worker(store, "phoenix")
    await crashed.start()
    old_lease = crashed.lease_id
    await crashed._shutdown(revoke=False)  # what a SIGKILL leaves behind
    assert (await store.get(keyspace.node("phoenix")))[0] is not None
    # When it is started again at once under the same id
    again = make_worker(store, "phoenix")
    await again.start()
    # Then it registered once the old lease expired, and serves
    node, _ = await store.get(keyspace.node("phoenix"))
    assert node is not None and node.lease == again.lease_id != old_lease
    assert codec.decode_obj(node.key, node.value)["lease_ttl"] == 2
    task = await client.submit("noop", "hi")
    await assign_next(store, keyspace, "default", again.id, again.lease_id, time.time())
    assert (await client.wait(task.id, timeout_s=10)).result == "hi"


class LostAnswers(FaultyStore):
    """A FaultyStore that loses the answers of the keep-alives of one lease (etcd
    refreshes it, the worker never hears so) and fails the next revokes."""

    lose_answers_of = 0
    failing_revokes = 0

    async def keepalive(self, lease_id: int) -> int:
        ttl = await super().keepalive(lease_id)
        if lease_id == self.lose_answers_of:
            raise StoreUnavailable("simulated: the answer was lost")
        return ttl

    async def revoke(self, lease_id: int) -> None:
        if self.failing_revokes > 0:
            self.failing_revokes -= 1
            raise StoreUnavailable("simulated: no answer")
        await super().revoke(lease_id)


async def test_re_registration_after_a_lost_lease_takes_its_own_record_back(
    store_config: StoreConfig, keyspace, make_worker, caplog
):
    caplog.set_level(logging.INFO, logger="tasklease.worker")
    async with LostAnswers(store_config) as lossy:
        # Given a worker that declares its lease lost while etcd still keeps it
        # (and its node record), and cannot revoke it at first
        worker = make_worker(lossy, "selfish")
        await worker.start()
        old_lease = worker.lease_id
        lossy.failing_revokes = 1
        lossy.lose_answers_of = old_lease

        # Then it registers again under a new lease: the record under its own
        # earlier lease is taken back (revoked), not waited for as another worker's
        async def registered_again():
            kv, _ = await lossy.get(keyspace.node("selfish"))
            return kv if kv is not None and kv.lease not in (0, old_lease) else None

        kv = await until(registered_again, within_s=20, what="a node record under a new lease")
        assert kv.lease == worker.lease_id
        assert "revoking an earlier lease of this worker" in caplog.text
        assert "registered by another worker" not in caplog.text
        await worker.kill()


async def test_a_worker_whose_id_is_taken_over_stops(store, keyspace, make_worker):
    # Given a live worker whose node record is deleted by hand, and another
    # worker that registers the free id before the first one's next heartbeat
    first = make_worker(store, "taken", lease_ttl_s=10, heartbeat_s=3)
    await first.start()
    await store.delete(keyspace.node("taken"))
    intruder = make_worker(store, "taken")
    await intruder.start()
    # Then the first one notices at its next heartbeat and stops, never overwriting the record
    await until(first._stopped.is_set, within_s=15, what="the first worker to stop")
    node, _ = await store.get(keyspace.node("taken"))
    assert node is not None and node.lease == intruder.lease_id
    assert codec.decode_obj(node.key, node.value)["lease"] == intruder.lease_id
