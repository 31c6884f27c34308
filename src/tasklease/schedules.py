"""Cron schedules: the expression (:class:`CronExpr`), the stored schedule (:class:`Schedule`), client ops.

A schedule lives at ``/{ns}/cron/{name}`` (keys.py; names follow the queue
name rules) as one JSON value: its definition (the cron expression, its time
zone, the task to submit in :func:`tasklease.spec.spec_from_dict` form, the
overlap and catch-up policies, paused or not) and its firing state (the last
tick the leader dealt with, the last task it fired, how many ticks it fired
and skipped). The leading scheduler fires it (cron.py): each tick is ONE
transaction that records the tick in this key and enqueues the task, guarded
by the key's mod revision and the leadership fence (docs/schedules.md).

Expressions. Standard 5-field cron (``minute hour day-of-month month
day-of-week``, with names, ranges, steps, lists, ``L``, ``#``, and the macros
``@hourly``, ``@daily``, ``@weekly``, ``@monthly``, ``@yearly``), or 6 fields
with the SECONDS FIRST (``second minute hour day-of-month month
day-of-week``, the Quartz and Spring convention). Parsing and the calendar
are croniter's (a maintained library); this module only counts the fields
(5 or 6) and adds one rule about repeated local times (below). Ticks are
whole epoch seconds, computed in the schedule's IANA time zone (zoneinfo;
default UTC).

Daylight saving time. croniter computes the ticks on the local wall clock:

- Spring forward (a local hour is skipped): a tick inside the gap fires once,
  at the first instant after it (Berlin, 2026-03-29: ``30 2 * * *`` fires at
  03:00 CEST); ticks on either side are unchanged.
- Fall back (a local hour happens twice): an expression with a wildcard in
  its second, minute or hour field runs on real time (``0 * * * *`` fires at
  02:00 CEST and again at 02:00 CET, one hour apart); an expression at fixed
  times fires once, at the first occurrence (``30 2 * * *`` at 02:30 CEST,
  not again at 02:30 CET). That second rule is ours, on top of croniter
  (which would fire both): it is what Debian's cron does, and what a daily job
  at 02:30 is expected to do.

Client ops (one round trip each unless said): :func:`add` (1 transaction:
created if absent; ``replace`` reads and rewrites, keeping the firing
state), :func:`get`, :func:`list_schedules` (paged range), :func:`pause`,
:func:`resume` (read + transaction on the mod revision, repeated on a race
with the leader), :func:`remove` (1 delete).

May import: codec, errors, keys, models, retry, spec, store.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from tasklease import codec
from tasklease.errors import (
    ConflictError,
    CorruptRecord,
    InvalidOption,
    ScheduleExists,
    ScheduleNotFound,
    ValidationError,
)
from tasklease.keys import Keyspace, check_name, prefix_end
from tasklease.spec import TaskSpec, spec_from_dict
from tasklease.store import KV, Compare, KVStore, Put

MAX_EXPR_CHARS = 200
MAX_TZ_CHARS = 64
MAX_SCHEDULE_BYTES = 256 * 1024
"""A schedule's value (its task's payload included): a fired tick writes it beside the task's record."""
MAX_NEXT = 1000
"""Most fire times :func:`next_times` computes in one call."""
MAX_CONFLICT_RETRIES = 50
SCHEMA = 1

OVERLAPS = ("allow", "skip")
CATCH_UPS = ("none", "one", "all")
DEFAULT_OVERLAP = "allow"
DEFAULT_CATCH_UP = "one"
_TZ_RE = re.compile(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*")
# A schedule's task is the same every tick: what names one task, or one moment, has no place in it.
_REFUSED_SPEC = {
    "task_id": "a task id (each tick gets its own)",
    "depends_on": "parents",
    "delay_s": "a delay (shift the cron expression instead)",
    "run_at": "a start time",
    "expires_at": "an expiry time (use expires_s: counted from each tick)",
    "idempotency_key": "an idempotency key (every tick would be deduplicated into one task)",
    "unique_for_s": "unique_for",
    "trace": "trace context (every tick would share one parent)",
}


# the expression -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CronExpr:
    """A cron expression in a time zone: its ticks, as whole epoch seconds.

    Args:
        expr: 5 fields, or 6 with the seconds first, or a macro (``@hourly``, ...).
        tz: An IANA time zone name (``Europe/Berlin``); default UTC.

    Raises:
        InvalidOption: A bad expression, an unknown zone, or an expression that
            never fires (``0 0 30 2 *``).
    """

    expr: str
    tz: str = "UTC"
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _seconds: bool = field(init=False, repr=False, compare=False)
    _fixed: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.expr, str) or not self.expr.strip() or len(self.expr) > MAX_EXPR_CHARS:
            raise InvalidOption(
                f"a cron expression is 1 to {MAX_EXPR_CHARS} characters, got {self.expr!r:.80}"
            )
        object.__setattr__(self, "_zone", zone(self.tz))
        text = " ".join(self.expr.split())
        fields = len(text.split(" "))
        if not (text.startswith("@") and fields == 1) and fields not in (5, 6):
            raise InvalidOption(
                f"cron expression {text!r:.80} has {fields} fields: use 5 (minute hour day month weekday) "
                "or 6 with the seconds first (second minute hour day month weekday)"
            )
        object.__setattr__(self, "expr", text)
        object.__setattr__(self, "_seconds", fields == 6)
        try:
            it = croniter(text, 0, second_at_beginning=True)
        except (CroniterError, ValueError, TypeError, KeyError, IndexError) as exc:
            raise InvalidOption(f"bad cron expression {text!r:.80}: {exc}"[:300]) from None
        # croniter's normalised fields: minute, hour, day, month, weekday[, second]
        parts = [str(p) for p in it.expressions]
        wild = [parts[0], parts[1]] + ([parts[5]] if len(parts) > 5 else [])
        object.__setattr__(self, "_fixed", not any("*" in p for p in wild))
        self.next_after(0.0)  # never fires: refused now, not at the first tick

    @property
    def zone(self) -> ZoneInfo:
        """The time zone."""
        return self._zone

    @property
    def has_seconds(self) -> bool:
        """Whether it has a seconds field (6 fields)."""
        return self._seconds

    def _iter(self, start: float) -> croniter:
        return croniter(self.expr, datetime.fromtimestamp(start, self._zone), second_at_beginning=True)

    def _repeated(self, tick: float) -> bool:
        """A fixed-time tick at the second occurrence of a repeated local time (fall back): not fired."""
        return self._fixed and datetime.fromtimestamp(tick, self._zone).fold == 1

    def next_after(self, t: float) -> float:
        """The first tick strictly after ``t``.

        Raises:
            InvalidOption: There is none (within croniter's 50 years).
        """
        it = self._iter(t)
        try:
            while True:
                tick = float(it.get_next(float))
                if not self._repeated(tick):
                    return tick
        except CroniterBadDateError:
            raise InvalidOption(f"cron expression {self.expr!r:.80} never fires") from None

    def latest(self, t: float) -> float | None:
        """The newest tick at or before ``t`` (None if there is none)."""
        it = self._iter(math.floor(t) + 1.0)  # ticks are whole seconds; get_prev is strict
        try:
            while True:
                tick = float(it.get_prev(float))
                if not self._repeated(tick):
                    return tick
        except CroniterBadDateError:
            return None

    def ticks(self, after: float, until: float, limit: int) -> list[float]:
        """The ticks ``t`` with ``after < t <= until``, ascending, at most ``limit``."""
        found: list[float] = []
        if limit <= 0:
            return found
        it = self._iter(after)
        try:
            while len(found) < limit:
                tick = float(it.get_next(float))
                if tick > until:
                    break
                if not self._repeated(tick):
                    found.append(tick)
        except CroniterBadDateError:
            pass
        return found

    def next_times(self, after: float, count: int) -> list[float]:
        """The next ``count`` ticks strictly after ``after`` (fewer if it stops firing)."""
        return self.ticks(after, math.inf, min(count, MAX_NEXT))


def zone(name: object) -> ZoneInfo:
    """The IANA time zone ``name``.

    Raises:
        InvalidOption: Not a zone name, or unknown.
    """
    if not isinstance(name, str) or len(name) > MAX_TZ_CHARS or _TZ_RE.fullmatch(name) is None:
        raise InvalidOption(f"bad time zone {name!r:.80}: use an IANA name such as UTC or Europe/Berlin")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidOption(
            f"unknown time zone {name!r}: use an IANA name such as UTC or Europe/Berlin"
        ) from None


# the task spec ---------------------------------------------------------------------------------
def check_task(spec: TaskSpec) -> TaskSpec:
    """A schedule's task: refused if it names one task or one moment (task id, parents, start...).

    Raises:
        InvalidOption: It has one of them.
    """
    for name, what in _REFUSED_SPEC.items():
        value = getattr(spec, name)
        if value is not None and value not in ((), []):
            raise InvalidOption(f"a schedule's task cannot have {what}")
    return spec


def with_retention(spec: TaskSpec, retention_s: float) -> TaskSpec:
    """``spec`` with ``retention_s`` (the namespace's default when the schedule was added)."""
    return replace(spec, retention_s=retention_s)


def spec_to_dict(spec: TaskSpec) -> dict[str, Any]:
    """A schedule's task in :func:`tasklease.spec.spec_from_dict` form (what the key stores)."""
    d: dict[str, Any] = {
        "type": spec.type,
        "payload": spec.payload,
        "queue": spec.queue,
        "priority": spec.priority,
        "timeout_s": spec.timeout_s,
        "retries": spec.retry.max_retries,
        "backoff_s": spec.retry.backoff_s,
        "backoff_max_s": spec.retry.backoff_max_s,
        "max_losses": spec.retry.max_losses,
    }
    if spec.retention_s is not None:
        d["retention_s"] = spec.retention_s
    if spec.requires:
        pairs = spec.requires.items() if hasattr(spec.requires, "items") else spec.requires
        d["requires"] = {str(k): str(v) for k, v in pairs}
    if spec.expires_s is not None:
        d["expires_s"] = spec.expires_s
    return d


# the schedule ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Schedule:
    """A cron schedule: its definition and its firing state, as stored at ``cron/{name}``.

    Attributes:
        name: Its name (``[A-Za-z0-9_.-]{1,64}``).
        cron: The cron expression (5 fields, or 6 with the seconds first).
        task: What each tick submits.
        tz: The IANA time zone the expression is read in.
        overlap: ``allow`` (default: a tick fires whatever the last task does)
            or ``skip`` (a tick whose previous task has not finished is skipped).
        catch_up: What happens to ticks missed while no leader could fire them
            (an outage, a pause): ``none`` (skipped; only a tick at most
            ``cron.ON_TIME_S`` late fires), ``one`` (default: the newest fires,
            the others are skipped) or ``all`` (each fires).
        paused: Paused schedules do not fire.
        created_at: When it was added (epoch seconds).
        updated_at: When its definition last changed.
        since: Its ticks are those after this (when it was added or replaced).
        last_tick: The newest tick the leader dealt with (fired or skipped).
        last_task: The id of the last task it fired.
        fired: Ticks fired.
        skipped: Ticks skipped (overlap, catch-up). After an outage of more
            than ``cron.CATCH_UP_BATCH`` ticks with catch-up ``none`` or
            ``one``, only that many are counted.
    """

    name: str
    cron: str
    task: TaskSpec
    tz: str = "UTC"
    overlap: str = DEFAULT_OVERLAP
    catch_up: str = DEFAULT_CATCH_UP
    paused: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    since: float = 0.0
    last_tick: float | None = None
    last_task: str | None = None
    fired: int = 0
    skipped: int = 0
    expr: CronExpr = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_name(self.name, "schedule")
        if self.overlap not in OVERLAPS:
            raise InvalidOption(f"overlap must be {' or '.join(OVERLAPS)}, got {self.overlap!r:.40}")
        if self.catch_up not in CATCH_UPS:
            raise InvalidOption(f"catch-up must be {', '.join(CATCH_UPS)}, got {self.catch_up!r:.40}")
        check_task(self.task)
        object.__setattr__(self, "expr", CronExpr(self.cron, self.tz))
        object.__setattr__(self, "cron", self.expr.expr)

    @property
    def cursor(self) -> float:
        """Ticks after this are still to be dealt with (the last tick, else ``since``)."""
        return self.since if self.last_tick is None else max(self.since, self.last_tick)

    def next_at(self) -> float | None:
        """When it fires next (None while paused)."""
        if self.paused:
            return None
        try:
            return self.expr.next_after(self.cursor)
        except InvalidOption:
            return None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of the API and ``--json`` (the stored form plus its name and next fire time)."""
        return {"name": self.name, **_stored(self), "next_at": self.next_at()}


def _stored(s: Schedule) -> dict[str, Any]:
    return {
        "cron": s.cron,
        "tz": s.tz,
        "task": spec_to_dict(s.task),
        "overlap": s.overlap,
        "catch_up": s.catch_up,
        "paused": s.paused,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "since": s.since,
        "last_tick": s.last_tick,
        "last_task": s.last_task,
        "fired": s.fired,
        "skipped": s.skipped,
    }


def encode(schedule: Schedule) -> bytes:
    """The value of ``cron/{name}``.

    Raises:
        PayloadTooLarge: Over ``MAX_SCHEDULE_BYTES`` (its task's payload, mostly).
    """
    data = codec.encode_obj({"v": SCHEMA, **_stored(schedule)})
    if len(data) > MAX_SCHEDULE_BYTES:
        from tasklease.errors import PayloadTooLarge

        raise PayloadTooLarge(f"schedule {schedule.name}", len(data), MAX_SCHEDULE_BYTES)
    return data


def _float(d: dict[str, Any], name: str, default: float | None) -> float | None:
    value = d.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} is not a number")
    return float(value)


def _int(d: dict[str, Any], name: str) -> int:
    value = d.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} is not a count")
    return value


def decode(keys: Keyspace, kv: KV) -> Schedule:
    """The schedule stored at ``kv``.

    Raises:
        CorruptRecord: Not a schedule of this version, or an invalid one.
        ValueError: The key is not a cron key.
    """
    name = keys.parse_cron(kv.key)
    d = codec.decode_obj(kv.key, kv.value)
    try:
        if d.get("v") != SCHEMA:
            raise ValueError(f"schema {d.get('v')!r} is not {SCHEMA}")
        last_task = d.get("last_task")
        return Schedule(
            name=name,
            cron=str(d["cron"]),
            task=spec_from_dict(d["task"]),
            tz=str(d.get("tz", "UTC")),
            overlap=str(d.get("overlap", DEFAULT_OVERLAP)),
            catch_up=str(d.get("catch_up", DEFAULT_CATCH_UP)),
            paused=d.get("paused") is True,
            created_at=_float(d, "created_at", 0.0) or 0.0,
            updated_at=_float(d, "updated_at", 0.0) or 0.0,
            since=_float(d, "since", 0.0) or 0.0,
            last_tick=_float(d, "last_tick", None),
            last_task=last_task if isinstance(last_task, str) else None,
            fired=_int(d, "fired"),
            skipped=_int(d, "skipped"),
        )
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        raise CorruptRecord(kv.key, f"not a schedule: {exc}"[:300]) from None


# client ops --------------------------------------------------------------------------------------
async def read(store: KVStore, keys: Keyspace, name: str) -> tuple[Schedule, KV]:
    """The schedule ``name`` and its key as read.

    Raises:
        ScheduleNotFound: None with that name.
        CorruptRecord: It cannot be read.
    """
    kv, _ = await store.get(keys.cron(name))
    if kv is None:
        raise ScheduleNotFound(name)
    return decode(keys, kv), kv


async def add(
    store: KVStore, keys: Keyspace, schedule: Schedule, *, replace_existing: bool = False
) -> Schedule:
    """Store a new schedule (1 transaction: only if the name is free).

    With ``replace_existing``, an existing one is replaced (read + transaction
    on its mod revision, repeated on a race): the definition is the new one;
    the firing state (last tick, last task, counts) and ``created_at`` are
    kept; ``since`` becomes the later of the new one and the last tick, so no
    tick is fired twice.

    Raises:
        ScheduleExists: The name is taken (and not ``replace_existing``).
        PayloadTooLarge: The schedule is over ``MAX_SCHEDULE_BYTES``.
        ConflictError: It kept changing under 50 attempts.
    """
    key = keys.cron(schedule.name)
    data = encode(schedule)
    result = await store.txn([Compare.absent(key)], [Put(key, data)])
    if result.succeeded:
        return schedule
    if not replace_existing:
        raise ScheduleExists(schedule.name)

    def merged(old: Schedule) -> Schedule:
        return replace(
            schedule,
            created_at=old.created_at,
            since=max(schedule.since, old.cursor),
            last_tick=old.last_tick,
            last_task=old.last_task,
            fired=old.fired,
            skipped=old.skipped,
        )

    return await _change(store, keys, schedule.name, merged, absent_ok=True, new=schedule)


async def _change(
    store: KVStore,
    keys: Keyspace,
    name: str,
    change: Any,
    *,
    absent_ok: bool = False,
    new: Schedule | None = None,
) -> Schedule:
    """Read-modify-write of one schedule, compared on its mod revision, repeated on a race (the leader fires)."""
    key = keys.cron(name)
    for _ in range(MAX_CONFLICT_RETRIES):
        kv, _rev = await store.get(key)
        if kv is None:
            if not absent_ok or new is None:
                raise ScheduleNotFound(name)
            result = await store.txn([Compare.absent(key)], [Put(key, encode(new))])
            if result.succeeded:
                return new
            continue
        try:
            old = decode(keys, kv)
        except CorruptRecord:
            if new is None:
                raise
            old = new  # an unreadable schedule is replaced as new
        changed: Schedule = change(old)
        result = await store.txn([Compare.unchanged(kv)], [Put(key, encode(changed))])
        if result.succeeded:
            return changed
    raise ConflictError(f"schedule {name!r} kept changing: not changed")


async def set_paused(store: KVStore, keys: Keyspace, name: str, paused: bool, now: float) -> Schedule:
    """Pause or resume ``name`` (read + transaction). Resuming lets catch-up decide about the missed ticks.

    Raises:
        ScheduleNotFound: None with that name.
    """
    check_name(name, "schedule")
    return await _change(store, keys, name, lambda old: replace(old, paused=paused, updated_at=now))


async def remove(store: KVStore, keys: Keyspace, name: str) -> bool:
    """Delete ``name`` (1 delete); whether it existed. Its tasks already fired are not touched."""
    check_name(name, "schedule")
    return await store.delete(keys.cron(name)) > 0


async def list_schedules(store: KVStore, keys: Keyspace) -> list[Schedule]:
    """Every schedule, by name (paged range; one that cannot be read is left out)."""
    found: list[Schedule] = []
    async for page in store.scan(keys.crons, prefix_end(keys.crons)):
        for kv in page.kvs:
            try:
                found.append(decode(keys, kv))
            except (CorruptRecord, ValueError):
                continue
    return found
