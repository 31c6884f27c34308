"""B1: round robin in worker-id order; exactly even while the set of workers is stable."""

from __future__ import annotations

from collections.abc import Sequence

from tasklease.balancers.base import NodeView


class RoundRobin:
    """Picks the first candidate whose id comes after the last one picked (wrapping)."""

    name = "round_robin"

    def __init__(self) -> None:
        self._last: str | None = None

    def choose(self, candidates: Sequence[NodeView]) -> NodeView:
        """Return the next candidate after the previous pick, in id order."""
        ordered = sorted(candidates, key=lambda n: n.id)
        pick = ordered[0]
        if self._last is not None:
            pick = next((n for n in ordered if n.id > self._last), ordered[0])
        self._last = pick.id
        return pick
