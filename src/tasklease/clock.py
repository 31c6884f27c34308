"""Time is injected: components take a :class:`Clock` instead of calling ``time``."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Where a component reads the time from."""

    def now(self) -> float:
        """Wall-clock time in seconds since the epoch (for records and deadlines)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds (for measuring durations)."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """Return ``time.time()``."""
        return time.time()

    def monotonic(self) -> float:
        """Return ``time.monotonic()``."""
        return time.monotonic()


class FakeClock:
    """A clock that only moves when told to (unit tests).

    Args:
        start: The initial wall-clock time.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 0.0

    def now(self) -> float:
        """Return the fake wall-clock time."""
        return self._now

    def monotonic(self) -> float:
        """Return the fake monotonic time."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        self._now += seconds
        self._mono += seconds
