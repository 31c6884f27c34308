"""B4: smooth weighted round robin (as in nginx): picks proportional to weight, evenly spread."""

from __future__ import annotations

from collections.abc import Sequence

from tasklease.balancers.base import NodeView


class Weighted:
    """Smooth weighted round robin.

    Each pick adds every candidate's weight to its running score, picks the highest
    and subtracts the total from it. Over any run of picks among a stable set, each
    worker gets its weight's share, never more than one pick ahead of it.
    """

    name = "weighted"

    def __init__(self) -> None:
        # worker id -> current score; touched only by the scheduler's task.
        self._current: dict[str, float] = {}

    def choose(self, candidates: Sequence[NodeView]) -> NodeView:
        """Return the candidate whose turn it is by weight."""
        ids = {n.id for n in candidates}
        for stale in [k for k in self._current if k not in ids]:
            del self._current[stale]
        total = 0.0
        best: NodeView | None = None
        for node in sorted(candidates, key=lambda n: n.id):
            score = self._current.get(node.id, 0.0) + node.weight
            self._current[node.id] = score
            total += node.weight
            if best is None or score > self._current[best.id]:
                best = node
        assert best is not None
        self._current[best.id] -= total
        return best
