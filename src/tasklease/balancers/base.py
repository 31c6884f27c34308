"""The balancer protocol and the view of a worker it chooses among.

Contract: ``choose`` is synchronous, fast and never blocks; it is called by
the leading scheduler's single task only (no locking needed); it gets a
non-empty list of candidates that all serve the task's queue and all have free
capacity (the scheduler guarantees B6), and returns one of them. It may keep
state between calls (round robin position, smooth weights). It raises nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class NodeView:
    """A live worker as the scheduler sees it.

    Attributes:
        id: Worker id.
        capacity: Its concurrency.
        assigned: Tasks assigned to it now (including ones assigned in this batch).
        cpu: CPU % (0..100) from its last heartbeat.
        memory: Memory % (0..100) from its last heartbeat.
        weight: Relative capacity.
    """

    id: str
    capacity: int
    assigned: int = 0
    cpu: float = 0.0
    memory: float = 0.0
    weight: float = 1.0

    @property
    def free(self) -> int:
        """Slots left."""
        return max(0, self.capacity - self.assigned)


class Balancer(Protocol):
    """Chooses a worker for a task (see the module docstring for the contract)."""

    name: str

    def choose(self, candidates: Sequence[NodeView]) -> NodeView:
        """Return one of ``candidates`` (non-empty)."""
        ...
