"""B2: uniformly random."""

from __future__ import annotations

import random as _random
from collections.abc import Sequence

from tasklease.balancers.base import NodeView


class RandomBalancer:
    """Picks a candidate uniformly at random.

    Args:
        rng: Randomness (seeded in tests).
    """

    name = "random"

    def __init__(self, rng: _random.Random | None = None) -> None:
        self._rng = rng or _random.Random()

    def choose(self, candidates: Sequence[NodeView]) -> NodeView:
        """Return a random candidate."""
        return self._rng.choice(list(candidates))
