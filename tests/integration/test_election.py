"""Scheduler election against a real etcd: one live process per id, no lease revoked that is not ours.

A candidate registers its id under its own lease before campaigning; a second
live candidate with the same id is refused (after waiting for the first one's
lease, in case it is a crashed process). A leader key under our id but another
lease is a crashed predecessor's: waited out, never revoked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from tasklease.election import DuplicateCandidate, Election
from tasklease.errors import ValidationError
from tasklease.keys import Keyspace
from tasklease.store import Compare, Put, Store, StoreConfig

TTL = 2
HANG_GUARD_S = 60


class RevokeRecordingStore(Store):
    """The real store, noting every lease it is asked to revoke."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.revoked: list[int] = []

    async def revoke(self, lease_id: int) -> None:
        self.revoked.append(lease_id)
        await super().revoke(lease_id)


async def leader_of(election: Election) -> str | None:
    """The id in the leader key (what leads now, as every process sees it)."""
    kv, _ = await election.store.get(election.keys.leader)
    return kv.value.decode() if kv else None


@pytest.fixture
async def recording(store_config: StoreConfig) -> AsyncIterator[RevokeRecordingStore]:
    async with RevokeRecordingStore(store_config) as s:
        yield s


@pytest.fixture
async def other_store(store_config: StoreConfig) -> AsyncIterator[Store]:
    async with Store(store_config) as s:
        yield s


async def lease_alive(store: Store, lease: int) -> bool:
    try:
        return await store.keepalive(lease) > 0
    except Exception:
        return False


async def test_a_second_candidate_with_the_same_id_is_refused_and_the_leader_keeps_leading(
    store: Store, recording: RevokeRecordingStore, keyspace: Keyspace
):
    # Given a leader with id s1
    first = Election(store, keyspace, "s1", ttl_s=TTL)
    token = await first.campaign()
    assert first.session is not None
    lease = first.session.lease_id
    try:
        # When a second live candidate campaigns with the same id
        second = Election(recording, keyspace, "s1", ttl_s=TTL)
        async with asyncio.timeout(HANG_GUARD_S):
            with pytest.raises(DuplicateCandidate) as info:
                await second.campaign()
        # Then it is refused with a clear error (a user error: exit 2 on the command line) ...
        assert isinstance(info.value, ValidationError)
        assert "another scheduler is running with id 's1'" in str(info.value)
        assert second.session is None and second.token == 0
        # ... it revoked no lease but its own, and the leader still leads, unchanged
        assert lease not in recording.revoked
        kv, _ = await store.get(keyspace.leader)
        assert kv is not None and kv.create_revision == token and kv.lease == lease
        assert not first.session.lost.is_set()
        assert await lease_alive(store, lease)
        registration, _ = await store.get(keyspace.scheduler("s1"))
        assert registration is not None and registration.lease == lease
        assert orjson.loads(registration.value)["instance"] == first.instance
    finally:
        await first.resign()
    # And once the first one is gone, the id is free again
    again = Election(recording, keyspace, "s1", ttl_s=TTL)
    async with asyncio.timeout(HANG_GUARD_S):
        assert await again.campaign() > token
    await again.resign()


async def test_a_standby_with_a_distinct_id_waits_and_takes_over_on_resign(
    store: Store, other_store: Store, keyspace: Keyspace
):
    leader = Election(store, keyspace, "s1", ttl_s=TTL)
    token = await leader.campaign()
    standby = Election(other_store, keyspace, "s2", ttl_s=TTL)
    campaign = asyncio.create_task(standby.campaign())
    # the standby is registered, and not leading
    async with asyncio.timeout(HANG_GUARD_S):
        while (await store.get(keyspace.scheduler("s2")))[0] is None:
            await asyncio.sleep(0.05)
    assert not campaign.done()
    await leader.resign()
    async with asyncio.timeout(HANG_GUARD_S):
        assert await campaign > token
    assert await leader_of(standby) == "s2"
    await standby.resign()


async def test_a_stale_leader_key_under_our_id_is_waited_out_not_revoked(
    store: Store, recording: RevokeRecordingStore, keyspace: Keyspace
):
    # Given a leader key under our id, left by a crashed predecessor: its lease is
    # not refreshed by anyone (and it registered nothing, like an older version)
    dead = await store.grant(TTL)
    assert (
        await store.txn([Compare.absent(keyspace.leader)], [Put(keyspace.leader, b"s1", lease=dead)])
    ).succeeded
    # When a candidate with that id campaigns
    election = Election(recording, keyspace, "s1", ttl_s=TTL)
    async with asyncio.timeout(HANG_GUARD_S):
        token = await election.campaign()
    # Then it led only once that lease had expired by itself: it never revoked it
    assert dead not in recording.revoked
    assert not await lease_alive(store, dead)
    assert election.session is not None
    kv, _ = await store.get(keyspace.leader)
    assert kv is not None and kv.create_revision == token and kv.lease == election.session.lease_id
    await election.resign()


async def test_a_crashed_predecessors_registration_is_waited_out(
    store: Store, recording: RevokeRecordingStore, keyspace: Keyspace
):
    # Given a predecessor with our id that crashed while leading: its registration
    # and its leader key are under its lease, which nobody refreshes any more
    dead = await store.grant(TTL)
    info = orjson.dumps({"id": "s1", "host": "gone", "pid": 1, "ttl": TTL, "instance": "dead"})
    await store.put(keyspace.scheduler("s1"), info, lease=dead)
    await store.put(keyspace.leader, b"s1", lease=dead)
    # When the restarted candidate campaigns
    election = Election(recording, keyspace, "s1", ttl_s=TTL)
    async with asyncio.timeout(HANG_GUARD_S):
        token = await election.campaign()
    # Then it registered and leads once the dead lease expired, without revoking it
    assert dead not in recording.revoked
    assert election.session is not None
    registration, _ = await store.get(keyspace.scheduler("s1"))
    assert registration is not None and registration.lease == election.session.lease_id
    kv, _ = await store.get(keyspace.leader)
    assert kv is not None and kv.create_revision == token
    await election.resign()


async def test_our_own_lease_given_up_for_lost_is_revoked_to_lead_again(
    recording: RevokeRecordingStore, keyspace: Keyspace
):
    # Given a leader whose session it gave up for lost while etcd kept the lease
    # (etcd away longer than the TTL, then back with the lease renewed)
    election = Election(recording, keyspace, "s1", ttl_s=TTL)
    first = await election.campaign()
    assert election.session is not None
    old = election.session.lease_id
    await election.session.orphan()
    election.session.lost.set()
    await recording.keepalive(old)
    # When it campaigns again
    async with asyncio.timeout(HANG_GUARD_S):
        token = await election.campaign()
    # Then it revoked that lease (it held it) and leads under its new one
    assert recording.revoked == [old]
    assert token > first
    assert election.session is not None and election.session.lease_id != old
    await election.resign()


async def test_a_scheduler_whose_id_was_taken_while_its_session_was_lost_stops_for_good(
    store: Store, other_store: Store, keyspace: Keyspace
):
    from tasklease.scheduler import Scheduler, SchedulerConfig

    # Given a leading scheduler with id "dup"
    scheduler = Scheduler(store, keyspace, SchedulerConfig(scheduler_id="dup", lease_ttl_s=TTL))
    await scheduler.start()
    intruder = Election(other_store, keyspace, "dup", ttl_s=TTL)
    try:
        await asyncio.wait_for(scheduler.leading.wait(), HANG_GUARD_S)
        assert scheduler.election.session is not None

        # When its lease ends (etcd revoked it) and another live process registers the same id
        await store.revoke(scheduler.election.session.lease_id)
        await intruder.register()

        # Then the scheduler does not fight over the id forever: it stops, saying why
        await asyncio.wait_for(scheduler.stopped.wait(), HANG_GUARD_S)
        assert isinstance(scheduler.fatal, DuplicateCandidate)
        assert not scheduler.leading.is_set()
        # and the intruder's registration was left alone
        kv, _ = await store.get(keyspace.scheduler("dup"))
        assert kv is not None and intruder.session is not None and kv.lease == intruder.session.lease_id
    finally:
        await scheduler.stop()
        if intruder.session is not None:
            await intruder.session.close()
