"""Scheduler leadership: one etcd key under a lease, with a fencing revision.

Campaign: ``if create(leader) = 0 then put leader = id (under our lease)``.
The winner's token is the key's create revision; every write the leader makes
compares ``create(leader) = token``, so once it is deposed (lease expired,
resigned, key deleted) its writes fail, even if it has not noticed yet.
Losers watch the key from the revision of their failed attempt and campaign
again when it is deleted. Resigning deletes the key (compared on the token)
and revokes the lease, so a standby takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tasklease.clock import Clock
from tasklease.errors import StoreError, WatchCompacted
from tasklease.keys import Keyspace
from tasklease.session import Session
from tasklease.store import Compare, Delete, Get, Put, Store

log = logging.getLogger("tasklease.election")


class Election:
    """Campaign for, hold, observe and resign the leadership of one namespace.

    Args:
        store: The etcd connection.
        keys: The namespace.
        candidate: This candidate's id (stored as the key's value).
        ttl_s: Lease TTL: how long a crashed leader blocks a take-over.
        clock: Time source.
    """

    def __init__(
        self, store: Store, keys: Keyspace, candidate: str, *, ttl_s: int = 10, clock: Clock | None = None
    ) -> None:
        self.store = store
        self.keys = keys
        self.candidate = candidate
        self.ttl_s = ttl_s
        self._clock = clock
        self.session: Session | None = None
        self.token = 0

    def fence(self) -> Compare:
        """The compare every leader write carries."""
        return Compare.created_at(self.keys.leader, self.token)

    async def campaign(self) -> int:
        """Block until this candidate leads.

        Returns:
            The fencing token (the leader key's create revision).
        """
        while True:
            if self.session is None or self.session.lost.is_set():
                if self.session is not None:
                    await self.session.orphan()
                self.session = Session(
                    self.store, ttl_s=self.ttl_s, heartbeat_s=max(0.5, self.ttl_s / 3), clock=self._clock
                )
                await self.session.start()
            result = await self.store.txn(
                [Compare.absent(self.keys.leader)],
                [Put(self.keys.leader, self.candidate.encode(), lease=self.session.lease_id)],
                [Get(self.keys.leader)],
            )
            if result.succeeded:
                self.token = result.revision
                log.info("elected leader", extra={"component": "scheduler", "token": self.token})
                return self.token
            holder = result.reads[0][0] if result.reads and result.reads[0] else None
            if holder is not None and holder.lease == self.session.lease_id:
                # Our own earlier put landed although its answer was lost.
                self.token = holder.create_revision
                return self.token
            if holder is not None and holder.value.decode() == self.candidate:
                # Our own key under a lease we gave up for lost (etcd was away
                # longer than its TTL and restarted it): revoke it, campaign again.
                log.info("revoking our abandoned leadership lease", extra={"component": "scheduler"})
                with contextlib.suppress(StoreError):
                    await self.store.revoke(holder.lease)
                continue
            log.info(
                "standing by: %s leads",
                holder.value.decode() if holder else "?",
                extra={"component": "scheduler"},
            )
            await self._wait_for_vacancy(result.revision)

    async def _wait_for_vacancy(self, revision: int) -> None:
        key = self.keys.leader
        assert self.session is not None
        lost = asyncio.create_task(self.session.lost.wait())
        watch = asyncio.create_task(self._watch_delete(key, revision + 1))
        try:
            await asyncio.wait({lost, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (lost, watch):
                t.cancel()
            await asyncio.gather(lost, watch, return_exceptions=True)
        if watch.done() and not watch.cancelled() and (exc := watch.exception()) is not None:
            raise exc

    async def _watch_delete(self, key: str, revision: int) -> None:
        try:
            async for events in self.store.watch(key, key + "\0", revision):
                if any(ev.type == "delete" for ev in events):
                    return
        except WatchCompacted:
            return  # campaign again: the txn tells the truth

    async def lost(self) -> None:
        """Return once this leader is deposed (lease lost or leader key gone or replaced)."""
        assert self.session is not None
        key = self.keys.leader
        lost = asyncio.create_task(self.session.lost.wait())
        watch = asyncio.create_task(self._watch_replaced(key))
        try:
            await asyncio.wait({lost, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (lost, watch):
                t.cancel()
            await asyncio.gather(lost, watch, return_exceptions=True)

    async def _watch_replaced(self, key: str) -> None:
        kv, revision = await self.store.get(key)
        if kv is None or kv.create_revision != self.token:
            return
        try:
            async for events in self.store.watch(key, key + "\0", revision + 1):
                for ev in events:
                    if ev.type == "delete" or ev.kv.create_revision != self.token:
                        return
        except WatchCompacted:
            return

    async def resign(self) -> None:
        """Give up leadership now (a standby takes over at once). Idempotent."""
        if self.token:
            with contextlib.suppress(StoreError):
                await self.store.txn([self.fence()], [Delete(self.keys.leader)])
            self.token = 0
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def leader(self) -> str | None:
        """The current leader's id, if any."""
        kv, _ = await self.store.get(self.keys.leader)
        return kv.value.decode() if kv else None
