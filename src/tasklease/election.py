"""Scheduler leadership: one etcd key under a lease, with a fencing revision.

Registration. Each candidate first registers its id: ``if create(scheduler/{id})
= 0 then put scheduler/{id} = {host, pid, ttl, instance}`` under its own lease
(the same lease its leadership will use). Two live processes can therefore
never campaign under one id. A key found there under a lease this candidate
never held belongs to another process: a live one with the same id, or one that
crashed and whose lease has not expired yet. The candidate waits for the key to
go (up to one and a half times that process's TTL, plus a second); if it is
still there, the id is taken and :class:`DuplicateCandidate` is raised.

Campaign: ``if create(leader) = 0 then put leader = id (under our lease)``.
The winner's token is the key's create revision; every write the leader makes
compares ``create(leader) = token``, so once it is deposed (lease expired,
resigned, key deleted) its writes fail, even if it has not noticed yet.
Losers watch the key from the revision of their failed attempt and campaign
again when it is deleted. Resigning deletes the key (compared on the token)
and revokes the lease, so a standby takes over at once.

A candidate never revokes a lease it does not hold. The one lease it may
revoke besides its current one is a lease it held itself and gave up for lost
(etcd was away longer than the TTL, then came back with the lease alive): its
old keys would otherwise block it until they expire. A leader key under the
candidate's own id but another lease (a crashed predecessor with the same id)
is waited out like any other leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections import deque

import orjson

from tasklease.clock import Clock
from tasklease.errors import DuplicateCandidate as DuplicateCandidate  # noqa: PLC0414 (moved to errors.py; re-exported here)
from tasklease.errors import StoreError, WatchCompacted
from tasklease.keys import Keyspace
from tasklease.session import Session
from tasklease.store import KV, Compare, Delete, Get, KVStore, Put

log = logging.getLogger("tasklease.election")

# How long a candidate waits for another process's registration to expire, in
# units of that process's lease TTL (plus REGISTER_MARGIN_S): a lease that etcd
# renewed once (etcd renews leases when its own leader changes) still expires.
REGISTER_WAIT_TTLS = 1.5
REGISTER_MARGIN_S = 1.0
# Leases this candidate held before its current one (given up for lost).
HELD_LEASES_KEPT = 16


class Election:
    """Register, campaign for, hold, observe and resign the leadership of one namespace.

    Args:
        store: The etcd connection.
        keys: The namespace.
        candidate: This candidate's id (stored as the leader key's value).
        ttl_s: Lease TTL: how long a crashed leader blocks a take-over.
        clock: Time source.
    """

    def __init__(
        self, store: KVStore, keys: Keyspace, candidate: str, *, ttl_s: int = 10, clock: Clock | None = None
    ) -> None:
        self.store = store
        self.keys = keys
        self.candidate = candidate
        self.ttl_s = ttl_s
        self._clock = clock
        self.session: Session | None = None
        self.token = 0
        # Identifies this object in its registration (two processes may share host and pid
        # across restarts, never this).
        self.instance = secrets.token_hex(8)
        # Leases this candidate held and gave up for lost: the only others it may revoke.
        self._held: deque[int] = deque(maxlen=HELD_LEASES_KEPT)

    def fence(self) -> Compare:
        """The compare every leader write carries."""
        return Compare.created_at(self.keys.leader, self.token)

    # registration ----------------------------------------------------------------------
    async def register(self) -> None:
        """Start a session (if none is live) and register this candidate's id under it.

        :meth:`campaign` does it too; calling it first makes a duplicate id fail
        before anything else starts.

        Raises:
            DuplicateCandidate: Another live process is registered with this id.
            StoreError: etcd failed.
        """
        if self.session is not None and not self.session.lost.is_set():
            return
        if self.session is not None:
            await self.session.orphan()
            self._held.append(self.session.lease_id)
            self.session = None
        session = Session(
            self.store, ttl_s=self.ttl_s, heartbeat_s=max(0.5, self.ttl_s / 3), clock=self._clock
        )
        await session.start()
        try:
            await self._register(session.lease_id)
        except BaseException:
            await session.close()  # our registration (if it landed) goes with the lease
            raise
        self.session = session

    def _registration(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.candidate,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "ttl": self.ttl_s,
                "instance": self.instance,
            }
        )

    async def _register(self, lease: int) -> None:
        key = self.keys.scheduler(self.candidate)
        value = self._registration()
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            result = await self.store.txn([Compare.absent(key)], [Put(key, value, lease=lease)], [Get(key)])
            if result.succeeded:
                return
            holder = result.reads[0][0] if result.reads and result.reads[0] else None
            if holder is None:
                continue
            if holder.lease == lease:
                return  # our own put landed although its answer was lost
            if holder.lease in self._held:
                await self._revoke_our_old_lease(holder.lease)
                continue
            info = _holder_info(holder)
            ttl = info.get("ttl")
            wait_s = (ttl if isinstance(ttl, int) and ttl > 0 else self.ttl_s) * REGISTER_WAIT_TTLS
            if deadline is None:
                deadline = loop.time() + wait_s + REGISTER_MARGIN_S
                log.warning(
                    "scheduler id %s is registered by another process (%s); waiting up to %.0f s "
                    "for its lease to expire, in case it is gone",
                    self.candidate,
                    ", ".join(f"{k} {v}" for k, v in info.items() if k in ("host", "pid")) or "?",
                    deadline - loop.time(),
                    extra={"component": "scheduler"},
                )
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._deleted_within(key, result.revision + 1, remaining):
                raise DuplicateCandidate(self.candidate, info)

    async def _deleted_within(self, key: str, revision: int, timeout_s: float) -> bool:
        """Whether ``key`` is deleted (from ``revision`` on) within ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._watch_delete(key, revision)
        except TimeoutError:
            return False
        return True

    async def _revoke_our_old_lease(self, lease: int) -> None:
        # A lease we held and gave up for lost (etcd was away longer than its TTL
        # and kept it): ours to revoke, with every key we left under it.
        log.info("revoking our abandoned lease %x", lease, extra={"component": "scheduler"})
        with contextlib.suppress(StoreError):
            await self.store.revoke(lease)

    # campaign --------------------------------------------------------------------------
    async def campaign(self) -> int:
        """Block until this candidate leads.

        Returns:
            The fencing token (the leader key's create revision).

        Raises:
            DuplicateCandidate: Another live process is registered with this id.
            StoreError: etcd failed.
        """
        while True:
            await self.register()
            assert self.session is not None
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
            if holder is not None and holder.lease in self._held:
                await self._revoke_our_old_lease(holder.lease)
                continue
            name = holder.value.decode(errors="replace") if holder else "?"
            if name == self.candidate:
                # Our id, another lease: a crashed predecessor (we are registered, so it
                # is not alive). Never revoke a lease we do not hold: let it expire.
                log.info(
                    "standing by: a leader key under our id (lease %x) waits for its lease to expire",
                    holder.lease if holder else 0,
                    extra={"component": "scheduler"},
                )
            else:
                log.info("standing by: %s leads", name, extra={"component": "scheduler"})
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
            return  # look again: the next transaction tells the truth

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
        """Give up leadership now (a standby takes over at once) and the registration. Idempotent."""
        if self.token:
            with contextlib.suppress(StoreError):
                await self.store.txn([self.fence()], [Delete(self.keys.leader)])
            self.token = 0
        if self.session is not None:
            await self.session.close()
            self.session = None


def _holder_info(kv: KV) -> dict[str, object]:
    """What another process registered (empty if unreadable)."""
    try:
        value = orjson.loads(kv.value)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
