"""A lease, kept alive, with a "lost" event.

Liveness is a lease: a worker exists iff its lease-bound node key exists. The
session refreshes the lease every ``heartbeat_s``; it declares the lease lost
when etcd says it expired, or when no refresh has succeeded for a whole TTL (at
that point etcd has expired it, or will before we could tell). A lost session
never comes back: the owner makes a new one.

``close()`` revokes the lease (a clean exit: every key under it vanishes at
once); ``orphan()`` stops refreshing without revoking (a crash, as seen from
etcd: the keys vanish when the TTL runs out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from tasklease.clock import Clock, SystemClock
from tasklease.errors import InvalidOption, StoreError
from tasklease.store import KVStore

log = logging.getLogger("tasklease.session")


class Session:
    """One etcd lease kept alive in the background.

    Args:
        store: The connection.
        ttl_s: Lease TTL in seconds (>= 2).
        heartbeat_s: Refresh interval (< ttl_s).
        on_beat: Called after each successful refresh (e.g. publish load);
            :attr:`refresh_s` is that refresh's latency.
        clock: Time source.
    """

    def __init__(
        self,
        store: KVStore,
        *,
        ttl_s: int = 10,
        heartbeat_s: float = 3.0,
        on_beat: Callable[[], Awaitable[None]] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if ttl_s < 2:
            raise InvalidOption("lease TTL must be >= 2 s")
        if not 0 < heartbeat_s < ttl_s:
            raise InvalidOption("heartbeat must be > 0 and shorter than the lease TTL")
        self.store = store
        self.ttl_s = ttl_s
        self.heartbeat_s = heartbeat_s
        self._on_beat = on_beat
        self._clock = clock or SystemClock()
        self.lease_id = 0
        # Set once, by the keep-alive task only.
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_ok = 0.0
        # How long the last answered keep-alive took (set by the keep-alive task only).
        self.refresh_s = 0.0

    async def start(self) -> int:
        """Grant the lease and start refreshing it.

        Returns:
            The lease id.
        """
        self.lease_id = await self.store.grant(self.ttl_s)
        self._last_ok = self._clock.monotonic()
        self._task = asyncio.create_task(self._keepalive(), name=f"lease-{self.lease_id:x}")
        return self.lease_id

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            sent = self._clock.monotonic()
            try:
                ttl = await self.store.keepalive(self.lease_id)
            except StoreError as exc:
                silent_for = self._clock.monotonic() - self._last_ok
                if silent_for >= self.ttl_s:
                    log.error("lease %x lost: no refresh for %.1f s (%s)", self.lease_id, silent_for, exc)
                    self.lost.set()
                    return
                log.warning("lease %x refresh failed: %s", self.lease_id, exc)
                continue
            if ttl <= 0:
                log.error("lease %x lost: etcd says it expired", self.lease_id)
                self.lost.set()
                return
            self._last_ok = self._clock.monotonic()
            self.refresh_s = self._last_ok - sent
            if self._on_beat is not None:
                try:
                    await self._on_beat()
                except StoreError as exc:
                    log.warning("heartbeat update failed: %s", exc)

    async def _stop_task(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def orphan(self) -> None:
        """Stop refreshing; the lease expires on its own."""
        await self._stop_task()

    async def close(self) -> None:
        """Stop refreshing and revoke the lease (its keys vanish now). Idempotent."""
        await self._stop_task()
        if self.lease_id and not self.lost.is_set():
            try:
                await self.store.revoke(self.lease_id)
            except StoreError as exc:
                log.warning("could not revoke lease %x: %s (it will expire)", self.lease_id, exc)
        self.lease_id = 0
