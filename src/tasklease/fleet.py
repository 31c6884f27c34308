"""The fleet as a client sees it: which live workers may run what, and what waits for none.

Read-only helpers for ``submit`` (warn when no live worker runs a type),
``stats`` and ``nodes`` (say which types and constraints have queued tasks but
no eligible worker). Liveness here is the node record's presence and its
``draining`` flag (a client does not watch heartbeats like the scheduler).

Costs: :func:`eligible_workers` reads the node records (one paged range);
:func:`waiting_without_worker` also reads every queue key *without values* (the
route is in the key), about 100 bytes per queued task.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from tasklease.keys import Keyspace, prefix_end
from tasklease.nodes import NodeRecord, list_nodes
from tasklease.routing import Route, eligible, parse_route
from tasklease.store import KVStore


def takes(node: NodeRecord, queue: str, route: Route) -> bool:
    """Whether a node record's worker serves ``queue`` and may run ``route``."""
    return not node.draining and queue in node.queues and eligible(node.types, node.tags, route)


async def eligible_workers(store: KVStore, keys: Keyspace, queue: str, route: Route) -> list[str]:
    """Ids of the live workers that may run a task of ``route`` in ``queue``."""
    return [n.id for n in await list_nodes(store, keys) if takes(n, queue, route)]


@dataclass(frozen=True, slots=True)
class Waiting:
    """Queued tasks that no live worker may run.

    Attributes:
        queue: Their queue.
        route: Their type and required tags.
        queued: How many.
    """

    queue: str
    route: Route
    queued: int

    def as_dict(self) -> dict[str, Any]:
        """JSON form (``stats --json``)."""
        return {
            "queue": self.queue,
            "type": self.route.type,
            "requires": dict(self.route.requires),
            "queued": self.queued,
        }


async def waiting_without_worker(store: KVStore, keys: Keyspace) -> list[Waiting]:
    """Every (queue, type, required tags) with queued tasks and no eligible live worker."""
    groups: Counter[tuple[str, str]] = Counter()
    async for page in store.scan(keys.queues, prefix_end(keys.queues), keys_only=True):
        for kv in page.kvs:
            try:
                entry = keys.parse_queue_entry(kv.key)
            except (ValueError, TypeError):
                continue
            if entry.route:  # keys of older versions carry no route: not counted
                groups[(entry.queue, entry.route)] += 1
    if not groups:
        return []
    nodes = await list_nodes(store, keys)
    result = []
    for (queue, text), count in sorted(groups.items()):
        try:
            route = parse_route(text)
        except ValueError:
            continue
        if not any(takes(n, queue, route) for n in nodes):
            result.append(Waiting(queue, route, count))
    return result
