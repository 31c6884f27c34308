"""B3: least load.

The score of a worker is::

    0.6 * assigned / capacity  +  0.25 * cpu / 100  +  0.15 * memory / 100

Task slots dominate because they are exact and current (the scheduler counts
its own assignments); CPU and memory come from the last heartbeat (up to one
heartbeat old) and break ties between equally busy workers, e.g. on hosts
shared with other work. Ties on the score go to the lowest id.
"""

from __future__ import annotations

from collections.abc import Sequence

from tasklease.balancers.base import NodeView

SLOT_WEIGHT = 0.6
CPU_WEIGHT = 0.25
MEMORY_WEIGHT = 0.15


def load_score(node: NodeView) -> float:
    """The documented load score (lower is less loaded)."""
    slots = node.assigned / node.capacity if node.capacity else 1.0
    return SLOT_WEIGHT * slots + CPU_WEIGHT * node.cpu / 100 + MEMORY_WEIGHT * node.memory / 100


class LeastLoad:
    """Picks the candidate with the lowest :func:`load_score`."""

    name = "least_load"

    def choose(self, candidates: Sequence[NodeView]) -> NodeView:
        """Return the least loaded candidate."""
        return min(candidates, key=lambda n: (load_score(n), n.id))
