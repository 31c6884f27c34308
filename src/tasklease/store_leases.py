"""The store's lease calls: grant, keep alive once, revoke.

Owns :class:`Leases`, to which :class:`~tasklease.store.Store` delegates
``grant``, ``keepalive`` and ``revoke``. Each is one etcd request (a
keep-alive is one message on a stream closed at once).

Imports: :mod:`tasklease.errors`, :mod:`tasklease.store_channel`.
"""

from __future__ import annotations

import contextlib

from tasklease.errors import StoreLeaseNotFound
from tasklease.store_channel import Channel


class Leases:
    """Lease requests over one channel.

    Args:
        channel: The store's channel.
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    async def grant(self, ttl_s: int) -> int:
        """Grant a lease.

        Returns:
            The lease id.
        """
        client = self.channel.svc()
        timeout_s = self.channel.config.timeout_s
        resp = await self.channel.call("lease grant", client.lease.grant(ttl_s, timeout=timeout_s))
        return int(resp.ID)

    async def keepalive(self, lease_id: int) -> int:
        """Refresh a lease once.

        Returns:
            The remaining TTL in seconds; 0 or less if the lease is gone.
        """
        client = self.channel.svc()

        async def once() -> int:
            stream = client.lease.keep_alive(lease_id)
            try:
                async for resp in stream:
                    return int(resp.TTL)
                return 0
            finally:
                stream.cancel()

        result: int = await self.channel.call("lease keep-alive", once())
        return result

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease, deleting every key under it. A lease already gone is fine."""
        client = self.channel.svc()
        timeout_s = self.channel.config.timeout_s
        with contextlib.suppress(StoreLeaseNotFound):
            await self.channel.call("lease revoke", client.lease.revoke(lease_id, timeout=timeout_s))
