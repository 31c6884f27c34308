"""Reading the live worker list (node records under their workers' leases)."""

from __future__ import annotations

import logging
from typing import Any

from tasklease import codec
from tasklease.errors import CorruptRecord
from tasklease.keys import Keyspace, prefix_end
from tasklease.store import Store

log = logging.getLogger("tasklease.nodes")


async def list_nodes(store: Store, keys: Keyspace) -> list[dict[str, Any]]:
    """Every live worker's record, by id; corrupt records are skipped with an error log."""
    nodes = []
    async for page in store.scan(keys.nodes, prefix_end(keys.nodes)):
        for kv in page.kvs:
            try:
                nodes.append(codec.decode_obj(kv.key, kv.value))
            except CorruptRecord as exc:
                log.error("skipping corrupt node record: %s", exc)
    return nodes
