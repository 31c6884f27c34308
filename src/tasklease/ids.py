"""Task ids and queue sequence numbers.

Both come from one hybrid clock per process: microseconds since the epoch, but
never less than the previous value plus one. Ids and sequences therefore grow
strictly within a process even if the wall clock steps back, and across
processes they follow the wall clock (FIFO up to clock skew between submitters).

Ids are written in Crockford base32, upper case. Input is read the Crockford
way (:func:`parse_task_id`): case-insensitively, with ``I``/``L`` read as ``1``
and ``O`` as ``0``; anything else of the wrong shape is a malformed id.

Process ids (:func:`default_process_id`) name a worker or a scheduler:
``{prefix}-{host}-{pid}-{64 random bits}``, unique across hosts and restarts.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading

from tasklease.clock import Clock, SystemClock
from tasklease.errors import MalformedTaskId as MalformedTaskId  # noqa: PLC0414 (moved to errors.py; re-exported here)

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_SET = frozenset(_CROCKFORD)
# Crockford's decoding: case-insensitive, I and L read as 1, O as 0.
_READ_AS = str.maketrans("ILO", "110")
ID_LENGTH = 26
# Process ids must match keys.NAME_RE ([A-Za-z0-9_.-]{1,64}).
MAX_PROCESS_ID = 64
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


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
    """Whether ``text`` has the exact (canonical, upper-case) shape of a task id."""
    return isinstance(text, str) and len(text) == ID_LENGTH and all(c in _CROCKFORD_SET for c in text)


def parse_task_id(text: str) -> str:
    """Read a task id typed by someone: the canonical id it denotes.

    Case-insensitive; ``I`` and ``L`` read as ``1``, ``O`` as ``0`` (Crockford);
    surrounding white space is ignored.

    Raises:
        MalformedTaskId: Not a task id (wrong length or character).
    """
    if not isinstance(text, str):
        raise MalformedTaskId(repr(text))
    canonical = text.strip().upper().translate(_READ_AS)
    if not is_task_id(canonical):
        raise MalformedTaskId(text)
    return canonical


def default_process_id(prefix: str) -> str:
    """A process id unique across hosts and restarts: ``{prefix}-{host}-{pid}-{16 hex}``.

    64 random bits make a collision between two processes negligible even if
    the host name and pid repeat (containers often run as pid 1 on hosts of
    one name). The host name is cleaned and shortened so that the whole id
    matches ``[A-Za-z0-9_.-]{1,64}``.

    Args:
        prefix: What the process is (e.g. ``sched``); 1 to 20 name characters.
    """
    if not 1 <= len(prefix) <= 20 or not set(prefix) <= _NAME_CHARS:
        raise ValueError(f"bad process id prefix {prefix!r}")
    pid = str(os.getpid())
    suffix = secrets.token_hex(8)
    room = MAX_PROCESS_ID - len(prefix) - len(pid) - len(suffix) - 3
    host = "".join(c if c in _NAME_CHARS else "-" for c in socket.gethostname()) or "host"
    return f"{prefix}-{host[: max(1, room)]}-{pid}-{suffix}"[-MAX_PROCESS_ID:]
