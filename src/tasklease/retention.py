"""Finished tasks expire by etcd lease, not by a cleanup loop that can fall behind (L4).

A task record that reaches a terminal state is written under a *retention
lease*. Leases are shared: all tasks with the same retention ``r`` that finish
in the same time bucket (``r / 100`` seconds long, at least 1 s) use one lease
of TTL ``r + 2 buckets``, so a record lives between ``r`` and ``r + 2 buckets``
after it finished, and etcd holds about a hundred such leases per retention,
whatever the task rate. The bucket's lease id is published at
``/{ns}/retention/{r}/{bucket}`` (itself under that lease) so that every
process finishing tasks in that bucket uses the same one; each process caches it.
"""

from __future__ import annotations

import contextlib
import logging

from tasklease.clock import Clock, SystemClock
from tasklease.errors import StoreError
from tasklease.keys import Keyspace
from tasklease.store import Compare, Get, KVStore, Put

log = logging.getLogger("tasklease.retention")

BUCKETS = 100


def bucket_seconds(retention_s: int) -> int:
    """Length of one time bucket for this retention."""
    return max(1, retention_s // BUCKETS)


class RetentionLeases:
    """Finds (or creates) the retention lease of the current bucket.

    Args:
        store: The connection.
        keys: The namespace.
        clock: Time source.
    """

    def __init__(self, store: KVStore, keys: Keyspace, clock: Clock | None = None) -> None:
        self.store = store
        self.keys = keys
        self.clock = clock or SystemClock()
        # (retention, bucket) -> lease id. Touched only on the event loop.
        self._cache: dict[tuple[int, int], int] = {}

    async def lease_for(self, retention_s: float) -> int:
        """The lease a record finishing now with this retention goes under."""
        r = max(1, round(retention_s))
        size = bucket_seconds(r)
        bucket = int(self.clock.now() // size)
        cached = self._cache.get((r, bucket))
        if cached is not None:
            return cached
        key = self.keys.retention(r, bucket)
        kv, _ = await self.store.get(key)
        if kv is not None:
            lease = int(kv.value)
        else:
            lease = await self.store.grant(r + 2 * size)
            result = await self.store.txn(
                [Compare.absent(key)], [Put(key, str(lease).encode(), lease=lease)], [Get(key)]
            )
            if not result.succeeded:
                with contextlib.suppress(StoreError):
                    await self.store.revoke(lease)
                lease = int(result.reads[0][0].value)
        self._cache = {k: v for k, v in self._cache.items() if k[1] >= bucket - 1}
        self._cache[(r, bucket)] = lease
        return lease

    def forget(self, lease: int) -> None:
        """Drop a lease that etcd no longer knows (e.g. after a restore)."""
        self._cache = {k: v for k, v in self._cache.items() if v != lease}
