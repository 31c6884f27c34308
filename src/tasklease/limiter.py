"""Rate and concurrency limits at assignment: the leader's side of limits.py.

Owns, while this scheduler leads: one :class:`TokenBucket` per rate limit, the
picks of committed batches the watch has not delivered yet (they count against
concurrency limits), and the time the assigner must look again at a group held
back by a rate. Everything is touched by the assignment loop and by the watch's
callback (:meth:`Mirror.subscribe`), on one event loop.

Admission. A queued task is limited by its type's limit and its queue's limit
(either may be absent). It may start when, for each of them, the running
tasks of that type (or queue) are fewer than its concurrency, and its bucket
holds a token; starting takes a token from each bucket. Running tasks are the
mirror's running entries (each carries its queue ``q`` and type ``ty``,
counted by ``ClusterView``), plus the picks of batches committed but not yet
seen by the watch, plus the picks of the batch being planned. So the limits
are cluster-wide and exact: one leader decides every start.

The assigner asks a :class:`Gate` (one per batch) twice: ``blocked(queue,
route)`` when it gathers queue heads (a group held back is passed over whole,
like a paused queue, so it never fills a batch with heads that cannot go), and
``admit(queue, type)`` in :func:`~tasklease.assigner.plan_batch` for each pick
it is about to make (this one takes the tokens). A batch whose transaction
fails a compare gives its tokens back; one whose outcome is unknown (etcd did
not answer) keeps them spent and counts its picks as running for a while
(``UNCERTAIN_HOLD_S``), unless the watch shows them first.

Waking. A finished task deletes its running entry and assignment, which wakes
the assigner already; a limit's change wakes it (the callback); a group held
back by a rate wakes it when its next token is due (``Mirror.wake_later``,
one pending timer at a time).

Token state across leaderships. A bucket lives in the leader's memory only,
and every bucket STARTS EMPTY: when this scheduler starts leading, and when a
limit (or its rate) first appears. A new leader cannot know how many tokens
the old one spent just before it died; starting empty makes the sequence of
starts across a failover obey the same bound as one leader's: at most
``burst + rate * T`` starts in any window of T seconds (the old leader's
writes stop before the new one's begin: the fence). The price is that after a
failover (and after a new limit is set) the first task starts one token
interval later (``1 / rate``), never early. Concurrency needs no memory: it is
counted from the running index, which every leader mirrors. A reload of the
view (a compacted watch) keeps the buckets: same leadership.

May import: errors, keys, leader, limits, mirror, routing, store. Logs as
``tasklease.scheduler``.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass

from tasklease.errors import CorruptRecord
from tasklease.leader import LeaderContext, LeaderPart
from tasklease.limits import Limit, decode_limit
from tasklease.routing import Route
from tasklease.store import KV

log = logging.getLogger("tasklease.scheduler")

# A batch whose transaction may or may not have committed (etcd did not answer) counts as
# running for this long, unless the watch shows its picks first.
UNCERTAIN_HOLD_S = 5.0
# Float slack: a bucket refilled for exactly the time of one token holds one token.
_EPS = 1e-6
# A timer set for a token's due time fires this much later (never a hair early).
_WAKE_SLACK_S = 0.001


class TokenBucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` held. Pure (the caller gives the time).

    Args:
        rate: Tokens added per second (> 0).
        burst: Most tokens held (>= 1).
        now: The time (monotonic seconds) it starts at.
        tokens: Tokens at ``now`` (default 0: it starts empty; see the module docstring).
    """

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: int, now: float, tokens: float = 0.0) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = min(float(burst), tokens)
        self.at = now

    def refill(self, now: float) -> None:
        """Add the tokens earned since the last refill (a clock that goes back adds none)."""
        if now > self.at:
            self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
            self.at = now

    def ready(self, now: float) -> bool:
        """Whether a token is there to take at ``now``."""
        self.refill(now)
        return self.tokens >= 1.0 - _EPS

    def take(self) -> None:
        """Take one token (after :meth:`ready` said yes)."""
        self.tokens -= 1.0

    def give_back(self) -> None:
        """Return a token taken for a start that did not happen."""
        self.tokens = min(float(self.burst), self.tokens + 1.0)

    def wait_s(self, now: float) -> float:
        """Seconds from ``now`` until a token is there (0 if one is)."""
        self.refill(now)
        missing = 1.0 - self.tokens
        return 0.0 if missing <= _EPS else missing / self.rate

    def change(self, rate: float, burst: int, now: float) -> None:
        """Take a new rate and burst from ``now`` on, keeping the tokens held (at most the new burst)."""
        self.refill(now)
        self.rate = rate
        self.burst = burst
        self.tokens = min(self.tokens, float(burst))


@dataclass(slots=True)
class Rule:
    """One limit as the leader enforces it.

    Attributes:
        limit: The stored limit.
        mod_revision: Of its key (a put with the same revision changes nothing).
        bucket: Its token bucket (None without a rate).
    """

    limit: Limit
    mod_revision: int
    bucket: TokenBucket | None


RuleKey = tuple[str, str]
"""(kind, name): ``("type", "email")`` or ``("queue", "bulk")``."""


class Gate:
    """One batch's admission: the limits, the running counts and the batch's own picks.

    Built by :meth:`Limiter.gate`. After the batch's transaction: :meth:`commit`
    (it succeeded), :meth:`rollback` (a compare failed, or nothing was sent) or
    :meth:`uncertain` (etcd did not answer).
    """

    def __init__(self, limiter: Limiter, now: float) -> None:
        self._limiter = limiter
        self._rules = limiter.rules
        self._now = now
        view = limiter.mirror.view
        self._running: dict[str, dict[str, int]] = {
            "queue": view.running_by_queue,
            "type": view.running_by_type,
        }
        # picks counted on top of the mirror's running entries: batches in flight and this one
        self._extra: dict[str, dict[str, int]] = {"queue": defaultdict(int), "type": defaultdict(int)}
        if any(r.limit.concurrency is not None for r in self._rules.values()):
            for queue, task_type in limiter.inflight():
                self._extra["queue"][queue] += 1
                self._extra["type"][task_type] += 1
        self.taken: list[tuple[str, str]] = []  # (queue, type) of the picks admitted
        self._buckets: list[TokenBucket] = []  # the buckets they took tokens from

    @property
    def active(self) -> bool:
        """Whether any limit exists (without one, every task is admitted)."""
        return bool(self._rules)

    def _open(self, key: RuleKey) -> bool:
        rule = self._rules.get(key)
        if rule is None:
            return True
        kind, name = key
        concurrency = rule.limit.concurrency
        if (
            concurrency is not None
            and self._running[kind].get(name, 0) + self._extra[kind][name] >= concurrency
        ):
            return False  # a finish (its running entry deleted) wakes the assigner
        bucket = rule.bucket
        if bucket is not None and not bucket.ready(self._now):
            self._limiter.wake_at(self._now + bucket.wait_s(self._now))
            return False
        return True

    def _admits(self, queue: str, task_type: str | None) -> bool:
        if not self._rules:
            return True
        return self._open(("queue", queue)) and (task_type is None or self._open(("type", task_type)))

    def blocked(self, queue: str, route: Route | None) -> bool:
        """Whether tasks of ``queue`` and ``route`` are held back now (takes nothing).

        A route None (a queue key of an older version) is judged by its queue's limit only.
        """
        return not self._admits(queue, None if route is None else route.type)

    def admit(self, queue: str, task_type: str) -> bool:
        """Whether a task of ``queue`` and ``task_type`` may start now; if so, count it and take its tokens."""
        if not self._admits(queue, task_type):
            return False
        if self._rules:
            for key in (("queue", queue), ("type", task_type)):
                rule = self._rules.get(key)
                if rule is None:
                    continue
                self._extra[key[0]][key[1]] += 1
                if rule.bucket is not None:
                    rule.bucket.take()
                    self._buckets.append(rule.bucket)
            self.taken.append((queue, task_type))
        return True

    def commit(self, revision: int) -> None:
        """The batch committed at ``revision``: its picks count as running until the watch shows them."""
        self._limiter.add_inflight(self.taken, revision, math.inf)
        self.taken, self._buckets = [], []

    def uncertain(self) -> None:
        """No answer from etcd: the tokens stay spent; the picks count as running for ``UNCERTAIN_HOLD_S``."""
        self._limiter.add_inflight(self.taken, math.inf, self._now + UNCERTAIN_HOLD_S)
        self.taken, self._buckets = [], []

    def rollback(self) -> None:
        """Nothing started: give the tokens back."""
        for bucket in self._buckets:
            bucket.give_back()
        self.taken, self._buckets = [], []


class Limiter(LeaderPart):
    """The limits as the leader enforces them; owned by the assigner (see the module docstring).

    Args:
        ctx: What the leader's parts share.
    """

    def __init__(self, ctx: LeaderContext) -> None:
        super().__init__(ctx)
        # (kind, name) -> rule: read from the view's ``limit/`` map when a leadership or a
        # reload starts, then kept up to date by the watch's callback
        self.rules: dict[RuleKey, Rule] = {}
        self._token = 0  # the leadership (election token) the buckets belong to
        self._generation = -1  # the mirror's view the rules were read from
        # (commit revision, monotonic expiry, queue, type) of picks the watch has not shown yet
        self._inflight: list[tuple[float, float, str, str]] = []
        self._next_token = math.inf  # earliest token due for a group held back (monotonic)
        self._wake_pending = 0.0  # monotonic time of the wake already asked for
        self.mirror.subscribe((self.keys.limits,), self._changed)

    def reset(self) -> None:
        """Forget the batches in flight (the mirror starts over: a new leadership or a reload)."""
        self._inflight = []

    # the rules ---------------------------------------------------------------------------------
    def _sync(self) -> None:
        """Start over at a new leadership (empty buckets); read the view again after a reload."""
        token = self.election.token
        if token != self._token:
            self.rules = {}
            self._token = token
            self._generation = -1
        if self.mirror.generation != self._generation:
            self._generation = self.mirror.generation
            kvs = self.mirror.view.plain.get(self.keys.limits, {})
            for kv in kvs.values():
                self._apply(kv, deleted=False)
            for key in [k for k in self.rules if self.keys.limit(*k) not in kvs]:
                del self.rules[key]

    def _changed(self, kv: KV, deleted: bool) -> None:
        """The watch's callback for ``limit/``: apply the change now, wake the assigner."""
        if self.election.token == self._token and self.mirror.generation == self._generation:
            self._apply(kv, deleted)
        # else: the next gate reads the view afresh (it holds this change already)
        self.mirror.wake.set()

    def _apply(self, kv: KV, deleted: bool) -> None:
        try:
            key = self.keys.parse_limit(kv.key)
        except ValueError as exc:
            if not deleted:
                log.error("ignoring malformed limit key: %s", exc, extra=self._ctx())
            return
        if deleted:
            self.rules.pop(key, None)
            return
        old = self.rules.get(key)
        if old is not None and old.mod_revision == kv.mod_revision:
            return
        try:
            limit = decode_limit(self.keys, kv)
        except (CorruptRecord, ValueError) as exc:
            log.error("ignoring a limit that cannot be read: %s", exc, extra=self._ctx())
            self.rules.pop(key, None)
            return
        now = self.clock.monotonic()
        bucket = old.bucket if old is not None else None
        if limit.rate is None or limit.burst is None:
            bucket = None
        elif bucket is None:
            bucket = TokenBucket(limit.rate, limit.burst, now)  # empty: see the module docstring
        else:
            bucket.change(limit.rate, limit.burst, now)
        self.rules[key] = Rule(limit, kv.mod_revision, bucket)
        log.info("limit of %s %s: %s", key[0], key[1], limit.describe(), extra=self._ctx())

    def _ctx(self) -> dict[str, str]:
        return {"component": "scheduler", "scheduler": self.id}

    # batches -----------------------------------------------------------------------------------
    def gate(self) -> Gate:
        """The admission of one batch, now."""
        self._sync()
        return Gate(self, self.clock.monotonic())

    def inflight(self) -> list[tuple[str, str]]:
        """(queue, type) of the picks committed (or maybe committed) that the watch has not shown yet."""
        self._prune()
        return [(q, t) for _, _, q, t in self._inflight]

    def add_inflight(self, picks: list[tuple[str, str]], revision: float, expiry: float) -> None:
        """Count ``picks`` as running until the view reaches ``revision`` or the clock ``expiry``."""
        self._prune()  # also when no concurrency limit reads them: the list stays a few batches long
        if picks and revision > self.mirror.view.revision:
            self._inflight += [(revision, expiry, q, t) for q, t in picks]

    def _prune(self) -> None:
        revision = self.mirror.view.revision
        mono = self.clock.monotonic()
        self._inflight = [f for f in self._inflight if f[0] > revision and f[1] > mono]

    # waking ------------------------------------------------------------------------------------
    def wake_at(self, at: float) -> None:
        """A held-back group's next token is due at ``at`` (monotonic): look again then."""
        self._next_token = min(self._next_token, at)

    def schedule_wake(self) -> None:
        """After an assignment pass: wake the assigner when the earliest token it waits for is due."""
        at, self._next_token = self._next_token, math.inf
        if at == math.inf:
            return
        mono = self.clock.monotonic()
        due = at + _WAKE_SLACK_S
        if mono < self._wake_pending <= due:
            return  # a wake at or before then is pending already
        self._wake_pending = due
        self.mirror.wake_later(max(0.0, at - mono) + _WAKE_SLACK_S)
