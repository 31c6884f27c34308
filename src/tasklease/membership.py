"""Membership: a worker's session (its lease), its node record, and the watch of its assignments.

Owns, for one worker::

    register:  grant lease; create node/{id} under it, only if absent (one live worker
               per id: a live holder refuses us with WorkerIdInUse, a crashed one's
               record is waited for until its lease expires); read assign/{id}/
               (revision R; paged by bytes with Store.scan: assignments are whole
               task records)
    serve:     watch assign/{id}/ from R + 1 (compacted or too large to receive:
               read again, running tasks and the lease untouched, watch again)
               put    -> Intake.accept    (execution.py runs it)
               delete -> Intake.revoke    (the task was cancelled or taken away)
    heartbeat: every `heartbeat_s`, refresh the lease and re-put node/{id} with its load
               (fenced on the registration's create revision: never someone else's record)
    lease lost -> Intake.lease_lost (stop every task, write nothing), register again

:class:`Registration` is the node record (create only if absent, refresh only
while ours); :class:`Membership` is the loop around it (session, registration,
assignment reads and watch, what a lost lease does).

May import: codec, errors, events, keys, nodes, session, store, and from
recorder only its NOSPACE remedy text. Not execution: the runs are reached
through the :class:`Intake` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import psutil

from tasklease import codec
from tasklease.clock import Clock
from tasklease.errors import (
    CorruptRecord,
    StoreError,
    StoreNoSpace,
    StoreUnavailable,
    WatchCompacted,
    WorkerIdInUse,
)
from tasklease.events import Hooks, LeaseRefreshed, WorkerLeaseLost, WorkerRegistered
from tasklease.finished import read_kvs
from tasklease.keys import Keyspace, prefix_end
from tasklease.nodes import NodeRecord
from tasklease.queue import is_running_value
from tasklease.recorder import NOSPACE_REMEDY
from tasklease.session import Session
from tasklease.store import KV, Compare, Get, KVStore, Put

T = TypeVar("T")
log = logging.getLogger("tasklease.worker")


class Intake(Protocol):
    """Where assignments go (execution.Execution). Called on the event loop; never blocks."""

    def accept(self, kv: KV, record_kv: KV | None = None) -> None:
        """An assignment of ours was put (or found by a read), with its task's record read after it."""

    def revoke(self, key: str, revision: int) -> None:
        """The assignment ``key`` was deleted at ``revision``."""

    def reconcile(self, current: Sequence[tuple[KV, KV | None]]) -> None:
        """After a watch gap: ``current`` is every assignment of ours now, each with its record."""

    async def lease_lost(self) -> None:
        """The lease is gone: stop everything, write nothing."""


class Registration:
    """The worker's node record ``node/{id}``: created only if absent, refreshed only while ours.

    Args:
        store: The etcd connection.
        keys: The namespace.
        worker_id: The id (one live worker per id).
        lease_ttl_s: Our TTL (how long to wait for a holder that gives none).
        clock: Time source.
        node: Builds the record to publish.
    """

    def __init__(
        self,
        store: KVStore,
        keys: Keyspace,
        worker_id: str,
        lease_ttl_s: int,
        *,
        clock: Clock,
        node: Callable[[], NodeRecord],
    ) -> None:
        self.store = store
        self.keys = keys
        self.id = worker_id
        self._ttl_s = lease_ttl_s
        self._clock = clock
        self._node = node
        self._extra = {"component": "worker", "worker": worker_id}
        # The session the record lives under; set by begin() only.
        self.session: Session | None = None
        # Every lease this worker has had: a node record under one of them is ours (begin() adds).
        self.leases: set[int] = set()
        # Create revision of our node key under the current session (0: not registered);
        # set by register() and put(), reset() clears it.
        self.node_rev = 0
        # Set when our node key turned out to belong to another worker (put() sets, reset() clears).
        self.id_taken = asyncio.Event()

    def reset(self) -> None:
        """Before a new session: nothing is registered (heartbeats write nothing until then)."""
        self.node_rev = 0
        self.id_taken.clear()

    def begin(self, session: Session) -> None:
        """The new session has its lease: the record will live under it."""
        self.session = session
        self.leases.add(session.lease_id)

    async def put(self) -> None:
        """Refresh our node record (heartbeat, draining), only if it is still ours.

        Fenced on the create revision of our registration: a record someone
        else created under our id (after ours was deleted by hand) is never
        overwritten. If ours was deleted and the id is free, it is created
        again; if another worker holds it, :attr:`id_taken` is set.
        """
        session = self.session
        if session is None or session.lost.is_set() or not self.node_rev:
            return
        key = self.keys.node(self.id)
        put = Put(key, self._node().encode(), lease=session.lease_id)
        res = await self.store.txn([Compare.created_at(key, self.node_rev)], [put], [Get(key)])
        if res.succeeded:
            return
        if not (res.reads and res.reads[0]):
            again = await self.store.txn([Compare.absent(key)], [put])
            if again.succeeded:
                log.warning("node record was deleted; registered again", extra=self._extra)
                self.node_rev = again.revision
                return
        log.error("node record %s now belongs to another worker: stopping", key, extra=self._extra)
        self.id_taken.set()

    async def register(self, session: Session) -> None:
        """Create ``node/{id}`` under the session's lease, only if no live worker holds it.

        ``if create(node/{id}) = 0 then put it (lease) else get it``. Held under
        a lease of ours (an earlier session that etcd still keeps): revoke that
        and retry. Held by another worker: wait for its key to vanish (its
        lease to expire: a crashed worker's does within its TTL) for up to its
        lease TTL plus a margin, watching the key; a heartbeat (a put) proves
        the holder alive and refuses at once.

        Raises:
            WorkerIdInUse: Another live worker holds the id.
        """
        key = self.keys.node(self.id)
        deadline: float | None = None
        while True:
            data = self._node().encode()
            res = await self.store.txn(
                [Compare.absent(key)], [Put(key, data, lease=session.lease_id)], [Get(key)]
            )
            if res.succeeded:
                self.node_rev = res.revision
                return
            if not (res.reads and res.reads[0]):
                continue  # gone in between: try again
            holder = res.reads[0][0]
            if holder.lease and holder.lease in self.leases:
                log.info("revoking an earlier lease of this worker (%x)", holder.lease, extra=self._extra)
                await self.store.revoke(holder.lease)
                continue
            info: dict[str, Any] = {}
            with contextlib.suppress(CorruptRecord):
                info = codec.decode_obj(holder.key, holder.value)
            who = f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, lease {holder.lease:x}"
            if deadline is None:
                ttl = info.get("lease_ttl")
                if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 2 <= ttl <= 3600:
                    ttl = self._ttl_s
                wait_s = ttl + max(2.0, ttl / 2)
                deadline = self._clock.monotonic() + wait_s
                log.warning(
                    "worker id %s is registered by another worker (%s); waiting up to %.0f s "
                    "for it to vanish (a crashed worker's lease expires)",
                    self.id,
                    who,
                    wait_s,
                    extra=self._extra,
                )
            remaining = deadline - self._clock.monotonic()
            if remaining > 0 and await self._watch_holder(key, res.revision, remaining) != "alive":
                continue  # deleted, or waited long enough: look again (refused if still held)
            raise WorkerIdInUse(
                f"worker id {self.id!r} is in use by another live worker ({who}): "
                "choose another --id, or stop that worker first"
            )

    async def _watch_holder(self, key: str, revision: int, within_s: float) -> str:
        """Watch ``key`` after ``revision`` for up to ``within_s``.

        Returns:
            ``"gone"`` (deleted, or unknown after a watch gap), ``"alive"`` (written
            again: its holder's heartbeat) or ``"waited"`` (nothing happened).
        """
        events = self.store.watch(key, key + "\0", revision + 1)
        try:
            async with asyncio.timeout(within_s):
                async for batch in events:
                    return "gone" if batch[0].type == "delete" else "alive"
        except TimeoutError:
            return "waited"
        except WatchCompacted:
            return "gone"
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()
        return "waited"


class Membership:
    """Keeps a worker registered and its assignments flowing to its :class:`Intake`.

    Args:
        store: The etcd connection.
        keys: The namespace.
        worker_id: The worker's id.
        queues: The queues it serves (logged at registration).
        lease_ttl_s: Its lease TTL.
        heartbeat_s: Lease refresh and node record interval.
        clock: Time source.
        hooks: Receive WorkerRegistered, LeaseRefreshed (each answered
            keep-alive, with its latency) and WorkerLeaseLost.
        node: Builds the node record.
        intake: Where assignments go.
        stopped: Set by the worker's shutdown only: serve no more.
        on_fatal: Called when the worker must stop for good (its id was taken over).
    """

    def __init__(
        self,
        store: KVStore,
        keys: Keyspace,
        worker_id: str,
        *,
        queues: Sequence[str],
        lease_ttl_s: int,
        heartbeat_s: float,
        clock: Clock,
        hooks: Hooks,
        node: Callable[[], NodeRecord],
        intake: Intake,
        stopped: asyncio.Event,
        on_fatal: Callable[[], None],
    ) -> None:
        self.store = store
        self.keys = keys
        self.id = worker_id
        self._queues = tuple(queues)
        self._ttl_s = lease_ttl_s
        self._heartbeat_s = heartbeat_s
        self._clock = clock
        self._hooks = hooks
        self._intake = intake
        self._stopped = stopped
        self._on_fatal = on_fatal
        self._extra = {"component": "worker", "worker": worker_id}
        self.registration = Registration(store, keys, worker_id, lease_ttl_s, clock=clock, node=node)
        # The current session; replaced by _serve_once only.
        self.session: Session | None = None
        # Set once the first registration succeeded (start() waits for it).
        self.registered = asyncio.Event()
        # Leases declared lost, to revoke once etcd answers again (_serve_once only).
        self._abandoned: list[int] = []

    @property
    def lease_id(self) -> int:
        """The current lease (0 when not registered)."""
        return self.session.lease_id if self.session else 0

    @property
    def lease_alive(self) -> bool:
        """Whether there is a session whose lease was not declared lost."""
        return self.session is not None and not self.session.lost.is_set()

    @property
    def serving(self) -> bool:
        """Whether it is registered under a lease that was not declared lost."""
        return self.lease_alive and bool(self.registration.node_rev)

    async def catch_up(self) -> None:
        """Read our assignments once and hand the intake those it has not seen yet.

        Worker.stop calls it once the node record says ``draining``: an
        assignment the scheduler made before it saw that, which the watch has
        not delivered yet, reaches the intake now (and is handed back at once)
        instead of being left to recovery when the lease is revoked.
        """
        if not self.serving:
            return
        assigned, _ = await self._read_assignments(self.keys.worker_assignments(self.id))
        for kv, record_kv in await self._with_records(assigned):
            self._intake.accept(kv, record_kv)

    async def close(self, *, revoke: bool) -> None:
        """End the session: revoke the lease (its keys vanish now), or let it expire (a crash)."""
        if self.session is not None:
            if revoke:
                await self.session.close()
            else:
                await self.session.orphan()

    async def serve_forever(self) -> None:
        """Register, serve until the lease is lost, repeat until stopped.

        Raises:
            WorkerIdInUse: The id is held by a live worker at the first registration.
        """
        backoff = 0.2
        while not self._stopped.is_set():
            try:
                await self._serve_once()
                backoff = 0.2
            except WorkerIdInUse as exc:
                if not self.registered.is_set():
                    raise  # start() raises it
                log.error("%s; the worker stops", exc, extra=self._extra)
                self._on_fatal()
                return
            except StoreNoSpace as exc:
                log.warning(
                    "worker cannot register: etcd is out of space (NOSPACE; %s): %s; retrying in %.1f s",
                    NOSPACE_REMEDY,
                    exc,
                    backoff,
                    extra=self._extra,
                )
            except (StoreError, OSError) as exc:
                log.warning(
                    "worker cannot reach etcd: %s; retrying in %.1f s", exc, backoff, extra=self._extra
                )
            except Exception:
                log.exception("worker error; registering again", extra=self._extra)
            else:
                continue
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _serve_once(self) -> None:
        psutil.cpu_percent(interval=None)  # prime the CPU meter
        # A lease we gave up for lost may live again if etcd restarted meanwhile
        # (leases get a fresh TTL): revoke it so its stale keys go now.
        remaining = []
        for lease in self._abandoned:
            try:
                await self.store.revoke(lease)
            except StoreError:
                remaining.append(lease)
        self._abandoned = remaining
        session = Session(
            self.store,
            ttl_s=self._ttl_s,
            heartbeat_s=self._heartbeat_s,
            on_beat=lambda: self._beat(session),
            clock=self._clock,
        )
        self.registration.reset()
        await session.start()
        self.registration.begin(session)
        self.session = session
        try:
            await self.registration.register(session)
        except BaseException:
            await session.close()
            raise
        try:
            await self._serve_registered(session)
        finally:
            if session.lost.is_set():
                self._hooks.emit(WorkerLeaseLost(at=self._clock.now(), component="worker", source=self.id))
                await self._intake.lease_lost()
                await session.orphan()
                self._abandoned.append(session.lease_id)
            elif not self._stopped.is_set():
                # Leaving for another reason (an error): give the tasks up and
                # revoke the lease, so that recovery re-queues them at once.
                await self._intake.lease_lost()
                await session.close()

    async def _beat(self, session: Session) -> None:
        """A keep-alive of ``session`` was answered: tell the hooks, then put the node record."""
        if self._hooks:
            self._hooks.emit(
                LeaseRefreshed(
                    at=self._clock.now(), component="worker", source=self.id, latency_s=session.refresh_s
                )
            )
        await self.registration.put()

    async def _serve_registered(self, session: Session) -> None:
        """Read our assignments, then watch them until the lease is lost or the id taken over."""
        prefix = self.keys.worker_assignments(self.id)
        assigned, revision = await self._read_assignments(prefix)
        log.info(
            "worker registered",
            extra={**self._extra, "lease": f"{session.lease_id:x}", "queues": ",".join(self._queues)},
        )
        self.registered.set()
        self._hooks.emit(
            WorkerRegistered(at=self._clock.now(), component="worker", source=self.id, lease=session.lease_id)
        )
        for kv, record_kv in await self._with_records(assigned):
            self._intake.accept(kv, record_kv)
        taken_over = self.registration.id_taken
        watcher = asyncio.create_task(self._watch(prefix, revision + 1))
        lost = asyncio.create_task(session.lost.wait())
        taken = asyncio.create_task(taken_over.wait())
        try:
            await asyncio.wait({watcher, lost, taken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (watcher, lost, taken):
                t.cancel()
            await asyncio.gather(watcher, lost, taken, return_exceptions=True)
        if watcher.done() and not watcher.cancelled() and watcher.exception():
            raise watcher.exception()  # type: ignore[misc]
        if taken_over.is_set() and not session.lost.is_set():
            raise WorkerIdInUse(f"worker id {self.id!r} was taken over by another worker")

    async def _watch(self, prefix: str, revision: int) -> None:
        while True:
            try:
                async for events in self.store.watch(prefix, prefix_end(prefix), revision):
                    # The records of the new assignments, in one read before any of
                    # these events is handled (their order stays that of the watch).
                    records = await self._records_of([ev.kv for ev in events if ev.type == "put"])
                    for ev in events:
                        revision = ev.kv.mod_revision + 1
                        if ev.type == "put":
                            self._intake.accept(ev.kv, records.get(ev.kv.key))
                        else:
                            self._intake.revoke(ev.kv.key, ev.kv.mod_revision)
                return
            except WatchCompacted as exc:
                # Compacted, or a catch-up too large to receive (WatchTooLarge):
                # re-read, and what is assigned now is the truth. Running tasks
                # whose assignment is still there go on; the lease is untouched.
                log.warning("assignment watch: %s; reading the assignments again", exc, extra=self._extra)
                current, read_at = await self._reread_assignments(prefix)
                self._intake.reconcile(await self._with_records(current))
                revision = read_at + 1

    async def _records_of(self, assignments: Sequence[KV]) -> dict[str, KV | None]:
        """The records of the tasks of ``assignments`` (by assignment key) that need one read.

        An assignment's value names the attempt and the record's revision; the
        record (payload included) is read here, in transactions of gets
        (``finished.read_kvs``), retried while etcd does not answer (the
        session's own deadline ends a long outage). One read per watch
        response, however many assignments it holds.
        """
        wanted = {
            kv.key: self.keys.parse_assignment(kv.key)[1] for kv in assignments if is_running_value(kv.value)
        }
        if not wanted:
            return {}
        found = await self._retrying(
            "the assigned records", lambda: read_kvs(self.store, self.keys, list(wanted.values()))
        )
        return {key: found.get(task_id) for key, task_id in wanted.items()}

    async def _with_records(self, assignments: Sequence[KV]) -> list[tuple[KV, KV | None]]:
        records = await self._records_of(assignments)
        return [(kv, records.get(kv.key)) for kv in assignments]

    async def _read_assignments(self, prefix: str) -> tuple[list[KV], int]:
        """Every assignment of ours as of one revision, paged by bytes.

        Assignment values are whole task records (up to
        ``codec.MAX_RUNNING_RECORD_BYTES`` each), so one unpaged read of a
        worker's assignments may be far over what one response may carry.

        Returns:
            The assignments and the revision of the read (watch from the next one).
        """
        end = prefix_end(prefix)
        # The revision first: an empty scan yields no page, hence no revision.
        revision = (await self.store.range(prefix, end, count_only=True)).revision
        kvs: list[KV] = []
        async for page in self.store.scan(prefix, end, revision=revision):
            kvs.extend(page.kvs)
        return kvs, revision

    async def _reread_assignments(self, prefix: str) -> tuple[list[KV], int]:
        """:meth:`_read_assignments`, retried while etcd does not answer.

        Giving up here would end the session (revoke the lease, stop every
        task) for what is only a gap in the watch; if etcd stays away, the
        session's own deadline (lease lost) ends the serve instead.
        """
        return await self._retrying("the assignments", lambda: self._read_assignments(prefix))

    async def _retrying(self, what: str, read: Callable[[], Awaitable[T]]) -> T:
        """``read()``, again after 0.1 s doubling to 2 s while etcd does not answer (a read: safe to resend)."""
        delay = 0.1
        while True:
            try:
                return await read()
            except StoreUnavailable as exc:
                log.warning("cannot read %s (%s); retrying in %.1f s", what, exc, delay, extra=self._extra)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
