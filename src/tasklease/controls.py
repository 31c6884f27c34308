"""Operator controls stored in etcd: paused queues and drain requests (``tasklease pause/resume/drain``).

- **Pause** (``/{ns}/paused/{queue}``, JSON ``{"at": ..., "reason": ...}``, no
  lease): while the key exists the leading scheduler assigns nothing from that
  queue (it mirrors ``paused/``, see mirror.py); running tasks go on, submits
  still queue. Resuming deletes the key, which wakes the assigner.
- **Drain** (``/{ns}/drain/{worker}``, JSON ``{"at": ...}``): written under the
  worker's own lease, only if the worker's node record is the one just read
  (one transaction: compare its create revision), so a request never outlives
  the worker it was meant for. The worker watches its key and stops as on
  SIGTERM (membership.py).

Each is one single-key write (plus, for a drain, the read of the node record).
May import: codec, errors, keys, store, nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tasklease import codec
from tasklease.errors import CorruptRecord, StoreLeaseNotFound, WatchCompacted, WorkerNotFound
from tasklease.keys import Keyspace, check_name, prefix_end
from tasklease.store import KV, Compare, KVStore, Put

MAX_REASON_CHARS = 200


@dataclass(frozen=True, slots=True)
class Pause:
    """A paused queue.

    Attributes:
        queue: The queue.
        at: When it was paused (epoch seconds).
        reason: Why, as the operator said (at most 200 characters; untrusted text).
    """

    queue: str
    at: float
    reason: str = ""

    def as_dict(self) -> dict[str, object]:
        """JSON form."""
        return {"queue": self.queue, "at": self.at, "reason": self.reason}


def parse_pause(keys: Keyspace, kv: KV) -> Pause:
    """Decode a pause key; a value that cannot be read still pauses (time 0, no reason).

    Raises:
        ValueError: The key is not a pause key.
    """
    queue = keys.parse_paused(kv.key)
    try:
        d = codec.decode_obj(kv.key, kv.value)
        at = float(d.get("at", 0.0))
        reason = str(d.get("reason", ""))[:MAX_REASON_CHARS]
    except (CorruptRecord, TypeError, ValueError):
        return Pause(queue, 0.0)
    return Pause(queue, at if math.isfinite(at) else 0.0, reason)


async def pause(store: KVStore, keys: Keyspace, queue: str, now: float, reason: str = "") -> Pause:
    """Pause ``queue`` (again: the time and reason are replaced). One put.

    Raises:
        InvalidQueueName: A bad queue name.
    """
    check_name(queue)
    p = Pause(queue, now, str(reason)[:MAX_REASON_CHARS])
    await store.put(keys.paused(queue), codec.encode_obj({"at": p.at, "reason": p.reason}))
    return p


async def resume(store: KVStore, keys: Keyspace, queue: str) -> bool:
    """Resume ``queue``; whether it was paused. One delete."""
    check_name(queue)
    return await store.delete(keys.paused(queue)) > 0


async def paused(store: KVStore, keys: Keyspace) -> dict[str, Pause]:
    """The paused queues, by name (one range: a pause key per paused queue, small values)."""
    found: dict[str, Pause] = {}
    async for page in store.scan(keys.pauses, prefix_end(keys.pauses)):
        for kv in page.kvs:
            try:
                p = parse_pause(keys, kv)
            except ValueError:
                continue
            found[p.queue] = p
    return found


async def request_drain(store: KVStore, keys: Keyspace, worker_id: str, now: float) -> None:
    """Ask a live worker to drain: 1 read of its node record + 1 transaction.

    Raises:
        WorkerNotFound: No live worker with that id (or it went away meanwhile).
        InvalidOption: Not a worker id.
    """
    check_name(worker_id, "worker")
    node_key = keys.node(worker_id)
    kv, _ = await store.get(node_key)
    if kv is None or not kv.lease:
        raise WorkerNotFound(worker_id)
    try:
        result = await store.txn(
            [Compare(node_key, "create", "=", kv.create_revision)],
            [Put(keys.drain(worker_id), codec.encode_obj({"at": now}), lease=kv.lease)],
        )
    except StoreLeaseNotFound:
        raise WorkerNotFound(worker_id) from None
    if not result.succeeded:
        raise WorkerNotFound(worker_id)


async def wait_for_drain(store: KVStore, keys: Keyspace, worker_id: str) -> None:
    """Return once a drain of ``worker_id`` is requested: 1 read, then a watch of its one key.

    A watch that must start over (compacted) reads the key again.

    Raises:
        StoreError: etcd failed for good (the caller goes on without remote drain).
    """
    key = keys.drain(worker_id)
    while True:
        kv, revision = await store.get(key)
        if kv is not None:
            return
        try:
            async for events in store.watch(key, key + "\0", revision + 1):
                if any(ev.type != "delete" for ev in events):
                    return
        except WatchCompacted:
            continue
