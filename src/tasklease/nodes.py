"""The node record (``node/{worker}``): its one type, its one parser, and the live worker list.

A worker writes its record at start and at every heartbeat, under its lease
(:meth:`tasklease.worker.Worker.node_record`). The scheduler's mirror, the
fleet checks (``submit``, ``stats``, ``nodes``) and ``tasklease nodes`` read it
with :func:`parse_node`, so every reader accepts and refuses the same records.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tasklease import codec
from tasklease.errors import CorruptRecord
from tasklease.keys import Keyspace, prefix_end
from tasklease.store import KVStore

log = logging.getLogger("tasklease.nodes")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRecord:
    """What a worker publishes about itself at ``node/{id}`` (JSON, in this field order).

    Attributes:
        id: Worker id.
        host: Host name.
        pid: Process id.
        queues: The queues it serves.
        capacity: Most tasks at once (its concurrency).
        running: Tasks executing now.
        assigned: Tasks assigned to it now (executing or about to).
        cpu: CPU % (0..100) at its last heartbeat.
        memory: Memory % (0..100) at its last heartbeat.
        weight: Relative capacity (the weighted balancer).
        tags: Its labels (``--tags``), matched against the tags a task requires.
        types: The task types it runs.
        version: Its tasklease version.
        started_at: When it started (epoch seconds).
        heartbeat_at: When it wrote this record (epoch seconds).
        lease: Its etcd lease (the record is written under it).
        lease_ttl: That lease's TTL in seconds.
        draining: It is stopping: it takes no new task.
        completed: Tasks it has finished since it started.
    """

    id: str
    host: str = ""
    pid: int = 0
    queues: tuple[str, ...]
    capacity: int
    running: int = 0
    assigned: int = 0
    cpu: float = 0.0
    memory: float = 0.0
    weight: float = 1.0
    tags: Mapping[str, str] = field(default_factory=dict)
    types: tuple[str, ...] = ()
    version: str = ""
    started_at: float | None = None
    heartbeat_at: float | None = None
    lease: int = 0
    lease_ttl: float = 10.0
    draining: bool = False
    completed: int = 0

    def to_json(self) -> dict[str, Any]:
        """The JSON object a worker writes (every field, in declaration order)."""
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "queues": list(self.queues),
            "capacity": self.capacity,
            "running": self.running,
            "assigned": self.assigned,
            "cpu": self.cpu,
            "memory": self.memory,
            "weight": self.weight,
            "tags": dict(self.tags),
            "types": list(self.types),
            "version": self.version,
            "started_at": self.started_at,
            "heartbeat_at": self.heartbeat_at,
            "lease": self.lease,
            "lease_ttl": self.lease_ttl,
            "draining": self.draining,
            "completed": self.completed,
        }

    def encode(self) -> bytes:
        """The bytes written at ``node/{id}``."""
        return codec.encode_obj(self.to_json())


def parse_node(key: str, data: bytes) -> NodeRecord:
    """Parse the node record stored at ``key``.

    ``capacity`` and ``queues`` (a list of names) are required; ``tags`` must be
    an object (missing or empty: ``{}``; its values are read as text) and
    ``lease_ttl`` finite (missing or 0: 10). Missing fields take their defaults
    (cpu and memory 0, weight 1, no types, not draining). A record without an
    ``id`` takes the last part of its key. Fields no reader checks (host, pid,
    version, times, counters) fall back to their defaults when of the wrong type.

    Raises:
        CorruptRecord: Not a JSON object, or a field above missing or of the wrong type.
    """
    d = codec.decode_obj(key, data)
    try:
        queues = d["queues"]
        if not isinstance(queues, list | tuple) or not all(isinstance(q, str) for q in queues):
            raise ValueError(f"queues must be a list of names, got {queues!r}")
        tags = d.get("tags") or {}
        if not isinstance(tags, dict):
            raise ValueError(f"tags must be an object, got {tags!r}")
        lease_ttl = _number(d.get("lease_ttl") or 10.0)
        if not math.isfinite(lease_ttl):
            raise ValueError(f"lease_ttl must be finite, got {lease_ttl!r}")
        return NodeRecord(
            id=str(d["id"]) if "id" in d else key.rpartition("/")[2],
            host=_text(d, "host"),
            pid=_count(d, "pid"),
            queues=tuple(queues),
            capacity=_whole(d["capacity"]),
            running=_count(d, "running"),
            assigned=_count(d, "assigned"),
            cpu=_number(d.get("cpu", 0.0)),
            memory=_number(d.get("memory", 0.0)),
            weight=_number(d.get("weight", 1.0)),
            tags={str(k): str(v) for k, v in tags.items()},
            types=tuple(str(t) for t in d.get("types") or ()),
            version=_text(d, "version"),
            started_at=_time(d, "started_at"),
            heartbeat_at=_time(d, "heartbeat_at"),
            lease=_count(d, "lease"),
            lease_ttl=lease_ttl,
            draining=bool(d.get("draining")),
            completed=_count(d, "completed"),
        )
    except KeyError as exc:
        raise CorruptRecord(key, f"no {exc.args[0]!r} in the node record") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise CorruptRecord(key, f"bad node record: {exc}") from None


def _number(value: Any) -> float:
    """A number as written (an int stays an int: the JSON reads back the same), else ``float(value)``."""
    if type(value) in (int, float):
        number: float = value
        return number
    return float(value)


def _whole(value: Any) -> int:
    """A whole number as written, else ``int(value)``."""
    if type(value) is int:
        whole: int = value
        return whole
    return int(value)


# Fields no reader checks: their value if of the right type, else the default.
def _text(d: Mapping[str, Any], name: str) -> str:
    value = d.get(name)
    return value if isinstance(value, str) else ""


def _count(d: Mapping[str, Any], name: str) -> int:
    value = d.get(name)
    return _whole(value) if type(value) is int else 0


def _time(d: Mapping[str, Any], name: str) -> float | None:
    value = d.get(name)
    return _number(value) if type(value) in (int, float) else None


async def list_nodes(store: KVStore, keys: Keyspace) -> list[NodeRecord]:
    """Every live worker's record, by id; corrupt records are skipped with an error log."""
    nodes = []
    async for page in store.scan(keys.nodes, prefix_end(keys.nodes)):
        for kv in page.kvs:
            try:
                nodes.append(parse_node(kv.key, kv.value))
            except CorruptRecord as exc:
                log.error("skipping corrupt node record: %s", exc)
    return nodes
