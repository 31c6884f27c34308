"""The store tells etcd's refusals apart by type, against a real etcd."""

from __future__ import annotations

import pytest

from tasklease.errors import StoreError, StoreLeaseNotFound
from tasklease.keys import Keyspace
from tasklease.store import Compare, Put, Store


async def test_a_write_under_a_revoked_lease_raises_lease_not_found(store: Store, keyspace: Keyspace):
    # Given a lease that has been revoked
    lease = await store.grant(10)
    await store.revoke(lease)
    key = keyspace.task("X" * 26)

    # When a put and a transaction write under it
    # Then both raise StoreLeaseNotFound (a StoreError), and nothing is written
    with pytest.raises(StoreLeaseNotFound, match="lease not found"):
        await store.put(key, b"v", lease=lease)
    with pytest.raises(StoreLeaseNotFound) as err:
        await store.txn([Compare.absent(key)], [Put(key, b"v", lease=lease)])
    assert isinstance(err.value, StoreError)
    assert (await store.get(key))[0] is None


async def test_revoking_a_lease_that_is_gone_is_fine(store: Store):
    # Given a revoked lease
    lease = await store.grant(10)
    await store.revoke(lease)

    # When / Then revoking it again raises nothing
    await store.revoke(lease)
