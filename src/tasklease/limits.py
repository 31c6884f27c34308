"""Rate and concurrency limits per task type and per queue (``tasklease limit``): the model and the client's operations.

A limit is one key, ``/{ns}/limit/{kind}/{name}`` (``kind`` is ``type`` or
``queue``), JSON, no lease::

    {"rate": 1.6667, "rate_text": "100/min", "burst": 10, "concurrency": 5, "set_at": 1764...}

``rate`` is in tasks per second (``rate_text`` is how it was given, for
display); ``burst`` is how many tasks may start at once after a quiet spell
(the token bucket's size); ``concurrency`` is how many tasks of that type or
queue may run at once, cluster-wide. Either ``rate`` or ``concurrency`` may be
absent (not both). Setting a limit replaces the whole limit of that type or
queue (one put, no read-modify-write); removing it is one delete.

The leading scheduler enforces them at assignment (limiter.py): it mirrors
``limit/`` and sees a change by its watch, so a change applies at its next
assignment pass. A task is limited by its type's limit AND its queue's limit.

May import: codec, errors, keys, models, store.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from tasklease import codec
from tasklease.errors import CorruptRecord, InvalidOption
from tasklease.keys import Keyspace, check_name, prefix_end
from tasklease.models import check_type
from tasklease.store import KV, KVStore

KINDS = ("type", "queue")
# Most limits in a namespace: the leader checks each queued task against its type's and its
# queue's (two dict lookups), so their number costs memory only; the bound keeps a runaway
# script from filling etcd and the leader's mirror.
MAX_LIMITS = 10_000
MAX_RATE_PER_S = 1_000_000.0
MAX_BURST = 1_000_000
MAX_CONCURRENCY = 1_000_000
# The default burst: this much time's worth of tokens (at least 1). A bucket of one token loses
# the time the leader is late to take it (a busy machine, a batch in flight); 100 ms of slack
# keeps the rate from falling under the limit without allowing a noticeable burst.
DEFAULT_BURST_S = 0.1

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_CANONICAL = {1.0: "s", 60.0: "min", 3600.0: "h", 86400.0: "d"}
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*", re.IGNORECASE)


def parse_rate(text: str) -> tuple[float, str]:
    """Parse a rate: ``100/s``, ``100/min``, ``5000/h``, ``20000/d`` (also ``sec``, ``minute``, ``hour``, ``day``).

    Returns:
        ``(tasks per second, the rate written canonically, e.g. "100/min")``.

    Raises:
        InvalidOption: Not a rate, not > 0, or over a million per second.
    """
    m = _RATE.fullmatch(str(text))
    unit = _UNITS.get(m.group(2).lower()) if m else None
    if m is None or unit is None:
        raise InvalidOption(f"bad rate {str(text)[:40]!r}: use N/s, N/min, N/h or N/d (e.g. 100/min)")
    count = float(m.group(1))
    per_s = count / unit
    if not (math.isfinite(per_s) and per_s > 0):
        raise InvalidOption(f"a rate must be more than 0, got {text!r}")
    if per_s > MAX_RATE_PER_S:
        raise InvalidOption(f"a rate must be at most {MAX_RATE_PER_S:g}/s, got {text!r}")
    shown = m.group(1).lstrip("0") or "0"
    if shown.startswith("."):
        shown = "0" + shown
    return per_s, f"{shown}/{_CANONICAL[unit]}"


def default_burst(rate_per_s: float) -> int:
    """The burst when none is given: ``DEFAULT_BURST_S`` worth of tokens, at least 1."""
    return max(1, math.ceil(rate_per_s * DEFAULT_BURST_S - 1e-9))


def check_limit_name(kind: str, name: str) -> str:
    """Validate a limit's target: a task type (``[A-Za-z0-9_.:-]{1,128}``) or a queue name.

    Raises:
        InvalidOption: An unknown kind, or a bad type name.
        InvalidQueueName: A bad queue name.
    """
    if kind not in KINDS:
        raise InvalidOption(f"a limit applies to a type or a queue, not {str(kind)[:20]!r}")
    return check_type(name) if kind == "type" else check_name(name)


def _whole(value: object, what: str, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOption(f"{what} must be a whole number, got {value!r}")
    if not 1 <= value <= most:
        raise InvalidOption(f"{what} must be in 1..{most}, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class Limit:
    """The limit of one task type or queue, as stored.

    Attributes:
        kind: ``type`` or ``queue``.
        name: The task type or queue it limits.
        rate: Most task starts per second, on average (None: no rate limit).
        rate_text: ``rate`` as it was given, written canonically (``100/min``).
        burst: Most starts at once after a quiet spell (the token bucket's
            size; None when there is no rate).
        concurrency: Most tasks running at once, cluster-wide (None: no limit).
        set_at: When it was set (epoch seconds).
    """

    kind: str
    name: str
    rate: float | None = None
    rate_text: str | None = None
    burst: int | None = None
    concurrency: int | None = None
    set_at: float = 0.0

    def __post_init__(self) -> None:
        check_limit_name(self.kind, self.name)
        if self.rate is None and self.concurrency is None:
            raise InvalidOption("a limit needs a rate, a concurrency, or both")
        if self.rate is not None:
            if not (isinstance(self.rate, float | int) and math.isfinite(self.rate) and self.rate > 0):
                raise InvalidOption(f"a rate must be a number more than 0, got {self.rate!r}")
            if self.rate > MAX_RATE_PER_S:
                raise InvalidOption(f"a rate must be at most {MAX_RATE_PER_S:g}/s, got {self.rate!r}")
            _whole(self.burst, "burst", MAX_BURST)
        elif self.burst is not None:
            raise InvalidOption("a burst needs a rate")
        if self.concurrency is not None:
            _whole(self.concurrency, "concurrency", MAX_CONCURRENCY)

    def describe(self) -> str:
        """``rate 100/min (burst 10), concurrency 5`` (for messages)."""
        parts = []
        if self.rate is not None:
            parts.append(f"rate {self.rate_text or f'{self.rate:g}/s'} (burst {self.burst})")
        if self.concurrency is not None:
            parts.append(f"concurrency {self.concurrency}")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """JSON form (CLI ``--json``, REST)."""
        return {
            "kind": self.kind,
            "name": self.name,
            "rate": self.rate_text,
            "rate_per_s": self.rate,
            "burst": self.burst,
            "concurrency": self.concurrency,
            "set_at": self.set_at,
        }


def make_limit(
    kind: str,
    name: str,
    *,
    rate: str | None = None,
    burst: int | None = None,
    concurrency: int | None = None,
    now: float = 0.0,
) -> Limit:
    """A validated limit from what a user gives (CLI, Python, REST).

    Args:
        kind: ``type`` or ``queue``.
        name: The task type or queue.
        rate: ``N/s``, ``N/min``, ``N/h`` or ``N/d`` (None: no rate limit).
        burst: Most starts at once (needs a rate; default: 0.1 s worth, at least 1).
        concurrency: Most running at once (None: no limit).
        now: The time it is set.

    Raises:
        InvalidOption: Anything out of range, or neither a rate nor a concurrency.
        InvalidQueueName: A bad queue name.
    """
    if rate is not None and not isinstance(rate, str):
        raise InvalidOption(f"a rate is text like 100/min, got {rate!r}")
    per_s, text = parse_rate(rate) if rate is not None else (None, None)
    if per_s is not None and burst is None:
        burst = default_burst(per_s)
    return Limit(kind, name, per_s, text, burst, concurrency, now)


def encode_limit(limit: Limit) -> bytes:
    """The stored value of a limit."""
    d: dict[str, Any] = {"set_at": limit.set_at}
    if limit.rate is not None:
        d.update(rate=limit.rate, rate_text=limit.rate_text, burst=limit.burst)
    if limit.concurrency is not None:
        d["concurrency"] = limit.concurrency
    return codec.encode_obj(d)


def decode_limit(keys: Keyspace, kv: KV) -> Limit:
    """Decode a limit key.

    Raises:
        ValueError: The key is not a limit key.
        CorruptRecord: Its value is not a valid limit.
    """
    kind, name = keys.parse_limit(kv.key)
    d = codec.decode_obj(kv.key, kv.value)
    try:
        rate = d.get("rate")
        text = d.get("rate_text")
        return Limit(
            kind,
            name,
            float(rate) if rate is not None else None,
            str(text) if text is not None else None,
            d.get("burst"),
            d.get("concurrency"),
            float(d.get("set_at", 0.0)),
        )
    except (TypeError, ValueError) as exc:  # InvalidOption is a ValueError
        raise CorruptRecord(kv.key, f"bad limit: {exc}") from exc


async def set_limit(store: KVStore, keys: Keyspace, limit: Limit) -> Limit:
    """Store ``limit``, replacing the one of its type or queue: 1 put (+ 1 count and 1 read near the cap).

    Raises:
        InvalidOption: ``MAX_LIMITS`` limits exist already and this one is new.
    """
    key = keys.limit(limit.kind, check_limit_name(limit.kind, limit.name))
    head = await store.range(keys.limits, prefix_end(keys.limits), count_only=True)
    if head.count >= MAX_LIMITS:
        kv, _ = await store.get(key)
        if kv is None:
            raise InvalidOption(
                f"{head.count} limits exist already (at most {MAX_LIMITS}): remove some first"
            )
    await store.put(key, encode_limit(limit))
    return limit


async def remove_limit(store: KVStore, keys: Keyspace, kind: str, name: str) -> bool:
    """Remove the limit of a type or queue (1 delete); whether there was one."""
    return await store.delete(keys.limit(kind, check_limit_name(kind, name))) > 0


async def list_limits(store: KVStore, keys: Keyspace) -> list[Limit]:
    """Every limit, types first then queues, by name (pages of the ``limit/`` range; unreadable ones skipped)."""
    found: list[Limit] = []
    async for page in store.scan(keys.limits, prefix_end(keys.limits)):
        for kv in page.kvs:
            try:
                found.append(decode_limit(keys, kv))
            except (ValueError, CorruptRecord):
                continue
    return sorted(found, key=lambda x: (KINDS.index(x.kind), x.name))
