"""The scheduler: elected leader, one watch, batch assignment, recovery.

This module owns the leadership loop (:class:`Scheduler`: campaign, take-over
load, watch, start/stop) and :class:`SchedulerConfig`. While it leads, the work
is done by the components it builds, one concept per module:

- mirror.py: :class:`~tasklease.mirror.ClusterView`, what the leader knows
  (pure bookkeeping), and the signals its changes raise;
- assigner.py: the assignment loop; its decision is the pure
  :func:`~tasklease.assigner.plan_batch`;
- recoverer.py: the timer loop, lost and overdue attempts, due retries, and
  the queued tasks that cannot go on (unassignable, unroutable).

May import: assigner, balancers, clock, election, errors, events, ids, keys,
mirror, recoverer, retention, store. ``ClusterView`` is re-exported here.

While it leads, the scheduler mirrors every key it needs with ONE watch over
the range ``[/{ns}/assign/, /{ns}/running/~)``, which holds (in key order)
assignments, delayed retries, the leader key, node records, queues, retention
leases and the running index, but not task records. It reads that range once
(at one revision R, page by page) and watches from R + 1, so nothing falls
between read and watch, and every change reaches it in revision order.

The take-over read is keys first: assignment and queue keys are read without
their values (both carry whole task records); values are read only for the
queue heads about to be assigned. The mirror keeps queue keys' values up to
``VALUE_BUDGET_BYTES`` in all: memory stays bounded however deep the queues
are; values it does not hold are read ahead, a page of up to ~4 MiB from the
first head that needs one, so a deep backlog costs one extra read per page of
tasks, never a read per batch or of the whole queue.

From the mirror it knows, without asking etcd:

- the live workers (node keys), their queues, capacity and load;
- how many tasks each worker holds (assignment keys), so it never exceeds a
  worker's free capacity (B6);
- the head of every queue (queue keys, in dequeue order);
- the running attempts (running index) and their deadlines;
- the delayed retries and when each is due.

A batch of up to ``batch_size`` tasks (and at most ``MAX_TXN_BYTES`` of
request) is ONE transaction when the heads' values are in the mirror (a queue
key's value is the record without its payload): queue keys deleted with
compares on their revisions and on the records', assignments written under the
workers' leases and running-index entries written (the records are not
rewritten: the entry holds the attempt), all guarded by the leadership fence.
A batch that fails a compare is retried once the watch has caught up; nothing
is ever half-assigned.

Errors. One bad task never stops the others: a record that cannot be decoded
is skipped (logged once), one that cannot be written in any transaction is
failed with the reason recorded, and a store error backs off and retries
without ending leadership (only losing the election does).

Clocks. Deadlines in the running index are wall-clock times written by the
leader that assigned the attempt. An attempt is ended as overdue only once its
deadline plus ``deadline_grace_s`` has passed on this scheduler's clock AND
this scheduler has itself watched it for its timeout plus the grace (monotonic
time): a leader whose clock runs ahead never ends a healthy attempt early; one
that took over may end a really overdue attempt up to one timeout late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tasklease.assigner import Assigner
from tasklease.balancers import Balancer, make_balancer
from tasklease.clock import Clock, SystemClock
from tasklease.cron import CronFirer
from tasklease.election import DuplicateCandidate, Election
from tasklease.errors import InvalidOption, StoreError, WatchCompacted
from tasklease.events import Event, Hook, Hooks, LeaderElected, LeaderResigned, as_hooks
from tasklease.expiry import Expirer
from tasklease.ids import IdGenerator, default_process_id
from tasklease.keys import Keyspace, check_name, prefix_end
from tasklease.leader import LeaderContext, LeaderLoop
from tasklease.mirror import ClusterView, Mirror
from tasklease.recoverer import Failer, Promoter, Recoverer
from tasklease.release import Releaser
from tasklease.retention import RetentionLeases
from tasklease.store import KV, KVStore

__all__ = ["ClusterView", "Scheduler", "SchedulerConfig", "default_scheduler_id"]

log = logging.getLogger("tasklease.scheduler")


def default_scheduler_id() -> str:
    """``sched-{host}-{pid}-{16 hex}``: unique across hosts, restarts and containers."""
    return default_process_id("sched")


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """How a scheduler behaves.

    Attributes:
        scheduler_id: Its id (stored in the leader key while it leads).
        balancer: round_robin, random, least_load or weighted.
        batch_size: Most tasks assigned per transaction.
        lease_ttl_s: Leadership lease TTL: how long a crashed leader blocks a take-over.
        deadline_grace_s: How long after a running task's deadline the scheduler
            ends the attempt itself if the worker has not reported.
        unroutable_after_s: Fail queued tasks that no live worker may run (no
            worker runs their type, or none has their required tags) once that
            has lasted this long; None (the default) waits for such a worker forever.
    """

    scheduler_id: str = field(default_factory=default_scheduler_id)
    balancer: str = "least_load"
    batch_size: int = 30
    lease_ttl_s: int = 10
    deadline_grace_s: float = 5.0
    unroutable_after_s: float | None = None

    def __post_init__(self) -> None:
        check_name(self.scheduler_id, "scheduler")
        make_balancer(self.balancer)
        if not 1 <= self.batch_size <= 30:
            # 4 ops per task in one transaction (and 2 reads on failure); etcd allows 128.
            raise InvalidOption("batch size must be in 1..30")
        if self.lease_ttl_s < 2:
            raise InvalidOption("lease TTL must be >= 2 s")
        if not (math.isfinite(self.deadline_grace_s) and self.deadline_grace_s >= 0):
            raise InvalidOption(f"deadline grace must be a finite number >= 0, got {self.deadline_grace_s}")
        after = self.unroutable_after_s
        if after is not None and not (math.isfinite(after) and after > 0):
            raise InvalidOption(f"unroutable-after must be a finite number > 0, got {after}")


class Scheduler:
    """Campaigns for leadership and, while it leads, assigns and repairs.

    Args:
        store: The etcd connection.
        keys: The namespace.
        config: Its settings.
        clock: Time source.
        hooks: Who sees its events (None: ``events.default_hooks()``, logging
            only): ``LeaderElected``, ``LeaderResigned``, ``Assigned``,
            ``Lost``, ``TimedOut``, ``Promoted``, ``Failed``, ``RecoveryRan``.
    """

    def __init__(
        self,
        store: KVStore,
        keys: Keyspace,
        config: SchedulerConfig | None = None,
        *,
        clock: Clock | None = None,
        hooks: Hooks | Iterable[Hook] | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.config = config or SchedulerConfig()
        self.clock = clock or SystemClock()
        self.id = self.config.scheduler_id
        self.hooks = as_hooks(hooks)
        self.balancer: Balancer = make_balancer(self.config.balancer)
        self.election = Election(store, keys, self.id, ttl_s=self.config.lease_ttl_s, clock=self.clock)
        self.retention = RetentionLeases(store, keys, self.clock)
        # Replaced (reset) and fed by the watch task; read by the assigner and the recoverer.
        self.mirror = Mirror(keys, self.clock)
        ctx = LeaderContext(
            store,
            keys,
            self.election,
            self.mirror,
            self.hooks,
            self.id,
            self.retention,
            IdGenerator(self.clock),
        )
        self.failer = Failer(ctx, unroutable_after_s=self.config.unroutable_after_s)
        self.promoter = Promoter(ctx, failer=self.failer)
        self.recoverer = Recoverer(
            ctx,
            failer=self.failer,
            promoter=self.promoter,
            deadline_grace_s=self.config.deadline_grace_s,
            rng=random.Random(),
        )
        self.assigner = Assigner(
            ctx,
            balancer=self.balancer,
            batch_size=self.config.batch_size,
            recoverer=self.recoverer,
            failer=self.failer,
        )
        # The leader's own loops beyond assigning and recovering (leader.LeaderLoop):
        # each capability adds its one line here.
        self.loops: list[LeaderLoop] = []
        self.loops.append(CronFirer(ctx))  # cron schedules (cron.py)
        self.loops.append(Releaser(ctx))  # dependencies: release.py
        self.loops.append(Expirer(ctx))  # W2: tasks not started by their expiry
        self._main: asyncio.Task[None] | None = None
        self._stopping = False
        self.leading = asyncio.Event()
        # Set when the scheduler gave up for good (``fatal`` says why): another live
        # process registered with the same id.
        self.stopped = asyncio.Event()
        self.fatal: DuplicateCandidate | None = None

    @property
    def view(self) -> ClusterView:
        """The leader's current mirror (empty while it does not lead)."""
        return self.mirror.view

    @property
    def assigned_total(self) -> int:
        """Tasks this scheduler assigned (all its leaderships)."""
        return self.assigner.assigned_total

    def readiness(self) -> tuple[bool, str]:
        """Whether it is watching, as leader or standby (``/readyz``; health.py checks etcd too).

        Ready: it runs and either leads with its mirror loaded (its watch is
        applying changes) or stands by under a live lease (registered, waiting
        for the leader key to go). Not ready: stopped, given up (its id is used
        by another live scheduler), loading its mirror after an election, or
        without a live lease (etcd was away longer than the TTL).

        Returns:
            ``(ready, reason)``, the reason one short line.
        """
        if self.fatal is not None:
            return False, f"stopped: {self.fatal}"
        if self._main is None or self._main.done():
            return False, "not running"
        if self.leading.is_set():
            revision = self.mirror.view.revision
            if not revision:
                return False, "leader, loading its mirror"
            return True, f"leader, watching from revision {revision}"
        session = self.election.session
        if session is None or session.lost.is_set():
            return False, "no live lease (registering, or the lease was lost)"
        return True, "standby, watching the leader key"

    def _ctx(self, **extra: Any) -> dict[str, Any]:
        return {"component": "scheduler", "scheduler": self.id, **extra}

    def _emit(self, event: Event) -> None:
        if self.hooks:
            self.hooks.emit(event)

    async def start(self) -> None:
        """Start campaigning (returns at once)."""
        self._main = asyncio.create_task(self._run(), name=f"scheduler-{self.id}")

    async def stop(self) -> None:
        """Resign at once (a standby takes over) and stop. Idempotent."""
        self._stopping = True
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
            self._main = None
        await self.election.resign()
        self.leading.clear()

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        try:
            await self._campaign_forever()
        except DuplicateCandidate as exc:
            # Another live process has our id: campaigning on would fight over the
            # registration forever. Stop; the CLI exits 2 with this message.
            log.error("%s; this scheduler stops", exc, extra=self._ctx())
            self.fatal = exc
        finally:
            self.stopped.set()

    async def _campaign_forever(self) -> None:
        backoff = 0.2
        while not self._stopping:
            try:
                token = await self.election.campaign()
                backoff = 0.2
                await self._hold(token)
                log.warning("leadership lost", extra=self._ctx())
            except (StoreError, OSError) as exc:
                log.warning(
                    "scheduler cannot reach etcd: %s; retrying in %.1f s", exc, backoff, extra=self._ctx()
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except DuplicateCandidate:
                raise
            except Exception:
                # A bug must not leave the cluster without a scheduler: resign so a
                # standby can lead, then campaign again.
                log.exception("scheduler error; resigning and starting over", extra=self._ctx())
                await self.election.resign()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _hold(self, token: int) -> None:
        """Lead with ``token`` until deposed; ``LeaderElected`` before, ``LeaderResigned`` after."""
        self.leading.set()
        self._emit(LeaderElected(at=self.clock.now(), component="scheduler", source=self.id, token=token))
        reason = "error"
        try:
            await self._lead()
            session = self.election.session
            reason = "lease lost" if session is None or session.lost.is_set() else "deposed"
        except asyncio.CancelledError:
            reason = "stopped"
            raise
        finally:
            self.leading.clear()
            self._emit(
                LeaderResigned(at=self.clock.now(), component="scheduler", source=self.id, reason=reason)
            )

    async def _lead(self) -> None:
        view = self.mirror.reset()
        self.assigner.reset()
        self.failer.reset()
        self.recoverer.reset()
        for loop in self.loops:
            loop.reset()
        started = self.clock.monotonic()
        revision = await self._load()
        log.info(
            "leading: %d workers, %d queued, %d running, %d delayed (loaded in %.2f s)",
            len(view.nodes),
            len(view.queue_kv),
            len(view.running),
            len(view.delayed),
            self.clock.monotonic() - started,
            extra=self._ctx(token=self.election.token),
        )
        self.mirror.wake.set()
        tasks = [
            asyncio.create_task(self._watch(revision + 1), name="sched-watch"),
            asyncio.create_task(self.assigner.run(), name="sched-assign"),
            asyncio.create_task(self.recoverer.run(), name="sched-timers"),
            asyncio.create_task(self.election.lost(), name="sched-lost"),
        ]
        tasks += [asyncio.create_task(loop.run(), name=f"sched-{loop.name}") for loop in self.loops]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            if not t.cancelled() and (exc := t.exception()) is not None:
                raise exc

    async def _load(self) -> int:
        """Read the watched range at one revision into the (empty) mirror, keys first.

        Assignment and queue keys are read without values (they carry whole
        records); delayed, leader, node and running keys with theirs (small),
        every read paged by bytes and count (see the module docstring).

        Returns:
            The revision of the read.
        """
        start, end = self.keys.scheduler_range
        k = self.keys
        view = self.mirror.view
        head = await self.store.range(start, end, count_only=True)
        revision = head.revision
        parts = [
            (k.assignments, prefix_end(k.assignments), True),
            (prefix_end(k.assignments), k.queues, False),  # delayed/, drain/, leader, node/, paused/
            (k.queues, prefix_end(k.queues), True),
            (prefix_end(k.queues), end, False),  # retention/, running/
        ]
        queued: list[KV] = []
        for lo, hi, keys_only in parts:
            async for page in self.store.scan(lo, hi, revision=revision, keys_only=keys_only):
                if lo == k.queues:
                    queued.extend(page.kvs)  # added in bulk below
                    continue
                for kv in page.kvs:
                    view.apply(kv, deleted=False, has_value=not keys_only)
        view.load_queue_keys(queued)
        view.revision = revision
        return revision

    async def _watch(self, revision: int) -> None:
        start, end = self.keys.scheduler_range
        while True:
            try:
                async for events in self.store.watch(start, end, revision):
                    self.mirror.apply_events(events)
                    revision = self.mirror.view.revision + 1
                return
            except WatchCompacted as exc:  # compacted, or a catch-up too large to receive
                log.warning("watch must start over (%s): reloading", exc, extra=self._ctx())
                self.mirror.reset()
                self.assigner.reset()
                revision = await self._load() + 1
                self.mirror.wake.set()
                for loop in self.loops:
                    loop.reloaded()
