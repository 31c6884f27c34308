"""A fault-injecting store: the real :class:`Store` (a real etcd behind it) that fails chosen calls.

Not a mock of etcd: every call that is not chosen goes to etcd as usual. A
fault names the method (``txn``, ``range``, ``get``, ``put``, ``delete``,
``grant``, ``keepalive``), the error to raise, how many times, and optionally a
predicate over the call's arguments (e.g. "a transaction that writes a key
under ``/ns/assign/``"). Faults are raised *before* the request is sent, like
etcd refusing it (auth, permission, too large, NOSPACE), so nothing is written.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tasklease.store import KVStore, Put, Store


@dataclass
class Fault:
    method: str
    error: Callable[[], BaseException]
    times: int = 1
    when: Callable[..., bool] | None = None
    fired: int = 0


class FaultyStore(Store):
    """A real store whose chosen calls fail; see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.faults: list[Fault] = []

    def fail(
        self,
        method: str,
        error: Callable[[], BaseException],
        *,
        times: int = 1,
        when: Callable[..., bool] | None = None,
    ) -> Fault:
        """Make the next ``times`` calls of ``method`` (matching ``when``) raise ``error()``."""
        fault = Fault(method, error, times, when)
        self.faults.append(fault)
        return fault

    def _check(self, method: str, *args: Any, **kwargs: Any) -> None:
        for fault in self.faults:
            if fault.method != method or fault.fired >= fault.times:
                continue
            if fault.when is not None and not fault.when(*args, **kwargs):
                continue
            fault.fired += 1
            raise fault.error()

    async def txn(self, compares: Any, success: Any, failure: Any = (), **kwargs: Any) -> Any:
        self._check("txn", compares, success, failure)
        return await super().txn(compares, success, failure, **kwargs)

    async def range(self, prefix: str, end: str, **kwargs: Any) -> Any:
        self._check("range", prefix, end, **kwargs)
        return await super().range(prefix, end, **kwargs)

    async def get(self, key: str) -> Any:
        self._check("get", key)
        return await super().get(key)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        self._check("put", key, value, lease)
        return await super().put(key, value, lease)

    async def delete(self, key: str, range_end: str | None = None) -> int:
        self._check("delete", key, range_end)
        return await super().delete(key, range_end)

    async def status(self) -> Any:
        self._check("status")
        return await super().status()

    async def grant(self, ttl_s: int) -> int:
        self._check("grant", ttl_s)
        return await super().grant(ttl_s)

    async def keepalive(self, lease_id: int) -> int:
        self._check("keepalive", lease_id)
        return await super().keepalive(lease_id)

    async def watch(self, prefix: str, end: str, start_revision: int, **kwargs: Any) -> Any:
        """Raises the fault when the stream is first read (like an error on the first response)."""
        self._check("watch", prefix, end, start_revision)
        async for events in super().watch(prefix, end, start_revision, **kwargs):
            yield events


def _is_a_kvstore(store: FaultyStore) -> KVStore:
    return store  # mypy checks here that a FaultyStore satisfies the KVStore protocol


def writes_under(prefix: str) -> Callable[..., bool]:
    """A ``when`` for ``txn`` faults: the success branch puts a key under ``prefix``."""

    def when(compares: Any, success: Any, failure: Any = ()) -> bool:
        return any(isinstance(op, Put) and op.key.startswith(prefix) for op in success)

    return when


class CountingObserver:
    """A store observer (``Store(config, observer=...)``) that counts requests by operation."""

    def __init__(self) -> None:
        self.requests: collections.Counter[str] = collections.Counter()

    def request(self, operation: str, seconds: float, error_kind: str | None) -> None:
        self.requests[operation] += 1

    def watch_restarted(self) -> None:
        pass
