"""Task ids and queue sequence numbers.

Both come from one hybrid clock per process: microseconds since the epoch, but
never less than the previous value plus one. Ids and sequences therefore grow
strictly within a process even if the wall clock steps back, and across
processes they follow the wall clock (FIFO up to clock skew between submitters).
"""

from __future__ import annotations

import os
import threading

from tasklease.clock import Clock, SystemClock

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_LENGTH = 26


class IdGenerator:
    """Makes sortable task ids (ULID layout) and monotonic queue sequences.

    Thread-safe: the sync client facade may call it from other threads.

    Args:
        clock: Where the time comes from.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        # Guarded by _lock: the last microsecond value handed out.
        self._last_us = 0

    def sequence(self) -> int:
        """Return the next hybrid-clock value in microseconds (strictly increasing)."""
        now_us = int(self._clock.now() * 1_000_000)
        with self._lock:
            self._last_us = max(now_us, self._last_us + 1)
            return self._last_us

    def task_id(self) -> str:
        """Return a new 26-character id: 48 bits of milliseconds, 10 of microseconds, 70 random.

        Ids made by one generator sort in the order they were made.
        """
        seq_us = self.sequence()
        value = ((seq_us // 1000) << 80) | ((seq_us % 1000) << 70) | int.from_bytes(os.urandom(9), "big") >> 2
        chars = []
        for _ in range(ID_LENGTH):
            chars.append(_CROCKFORD[value & 31])
            value >>= 5
        return "".join(reversed(chars))


def is_task_id(text: str) -> bool:
    """Whether ``text`` has the shape of a task id."""
    return len(text) == ID_LENGTH and all(c in _CROCKFORD for c in text)
