"""The worker: registers under a lease, watches its assignments, runs them, records outcomes.

Life of a worker::

    register:  grant lease; create node/{id} under it, only if absent (one live worker
               per id: a live holder refuses us with WorkerIdInUse, a crashed one's
               record is waited for until its lease expires); read assign/{id}/
               (revision R; paged by bytes with Store.scan: assignments are whole
               task records)
    serve:     watch assign/{id}/ from R + 1 (compacted or too large to receive:
               read again, running tasks and the lease untouched, watch again)
               put    -> run the task (at most `concurrency` at once)
               delete -> the task was cancelled or taken away: stop it, write nothing
    heartbeat: every `heartbeat_s`, refresh the lease and re-put node/{id} with its load
               (fenced on the registration's create revision: never someone else's record)
    finish:    one transaction per attempt, fenced on the assignment (transitions.record_outcome);
               outcomes ready together share one, within RESULT_BATCH and RESULT_BATCH_BYTES
    lease lost -> stop every running task, write nothing for them, register again

Everything runs on one event loop; user code runs off it (sync functions in
child processes, see executors/python.py), so task code cannot starve the
keep-alive.

Runs. A run is one attempt, known by its task id *and* its attempt token (the
assignment's create revision): a retry of a task may be assigned to this
worker again while the old attempt is still being torn down, and the two are
separate runs (the old one's end never makes the worker forget the new one,
its cancellation or its hand-back on shutdown). An attempt ends in one of
three ways: the task returned or raised (the outcome is recorded), the worker
cancelled it (revoked, lease lost, shutdown: nothing is recorded, or
``handed_back``), or it timed out. A ``CancelledError`` that the worker did not
cause (the task code raised it itself) is a failed attempt, retried per policy.
An attempt of a task type this worker does not run (the scheduler assigned it
from a node record of an earlier process under this id: a restart under another
image) is handed back (``handed_back``, its place in its queue kept), never
failed; the node record's ``types`` lists exactly the types this worker runs.

Sizes. A record is checked before it is sent: a retry (written twice, as the
record and as its queue key) must fit ``codec.MAX_QUEUED_RECORD_BYTES``, any
other record the limit of its state. One that does not, and any outcome whose
transaction etcd refuses for its size (``StoreRequestTooLarge``), is recorded
as a bounded FAILED record saying why (``transitions.fit_record``,
``transitions.bounded_failure``): never a transaction resent unchanged, never a
dropped outcome.

Out of space. While etcd refuses writes for lack of space (its NOSPACE alarm,
``StoreNoSpace``), a finished outcome is kept and its write retried with a
backoff (up to ``NOSPACE_RETRY_MAX_S``) for as long as the lease lives: one
warning per outcome names NOSPACE and the remedy. It is never dropped (it
would otherwise be recorded later as a timeout, and the work done again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import secrets
import socket
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from tasklease import __version__, codec, transitions
from tasklease.clock import Clock, SystemClock
from tasklease.errors import (
    CorruptRecord,
    InvalidOption,
    PayloadTooLarge,
    Retry,
    StoreError,
    StoreLeaseNotFound,
    StoreNoSpace,
    StoreRequestTooLarge,
    StoreUnavailable,
    TaskleaseError,
    WatchCompacted,
)
from tasklease.errors import WorkerIdInUse as WorkerIdInUse  # noqa: PLC0414 (moved to errors.py; re-exported here)
from tasklease.executors.base import (
    Executor,
    PermanentError,
    Registry,
    TaskContext,
    UnknownTaskType,
    check_pass_env,
    child_environment,
)
from tasklease.executors.netpolicy import NetworkPolicy
from tasklease.executors.python import AsyncFunctionExecutor, ProcessPool, SyncFunctionExecutor
from tasklease.ids import IdGenerator
from tasklease.keys import NAME_RE, Keyspace, check_name, prefix_end
from tasklease.models import JSON, Outcome, Task, truncate_error
from tasklease.nodes import NodeRecord
from tasklease.queue import Assignment, decode_assignment
from tasklease.retention import RetentionLeases
from tasklease.session import Session
from tasklease.store import KV, MAX_TXN_BYTES, Compare, Get, KVStore, Op, Put

log = logging.getLogger("tasklease.worker")

# Outcomes per transaction: 2 compares and up to 4 operations each (etcd allows 128).
RESULT_BATCH = 30
# And at most this many bytes (etcd refuses a request over 1.5 MiB; store.MAX_TXN_BYTES).
RESULT_BATCH_BYTES = MAX_TXN_BYTES
# Deadline of our fenced writes: short, since resending them is safe, and a write
# lost in an etcd leader change should be resent within about a second or two.
FENCED_TXN_TIMEOUT_S = 2.0
# While etcd is out of space (NOSPACE) a finished outcome is kept and its write
# retried, backing off to this interval, until etcd accepts writes or the lease ends.
NOSPACE_RETRY_MAX_S = 2.0
NOSPACE_REMEDY = (
    "compact and defragment etcd, disarm the NOSPACE alarm (etcdctl alarm disarm) "
    "and purge old tasks (docs/operations.md)"
)


def default_worker_id() -> str:
    """``{host}-{pid}-{16 hex}``: unique, and made to fit ``[A-Za-z0-9_.-]{1,64}``.

    64 random bits: two workers started on hosts of the same name with the same
    pid (containers) still get different ids. The host part is cut to 38
    characters so that the whole id stays within 64.
    """
    host = "".join(c if NAME_RE.fullmatch(c) else "-" for c in socket.gethostname())[:38] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(8)}"


def set_import_path(paths: Sequence[str] = ()) -> list[str]:
    """Make ``sys.path`` what a worker process imports from: ``paths`` first, no current directory.

    ``python -m`` and ``python -c`` put the current directory first on the
    import path (``sys.path[0]``: its absolute path, or ``''``); a module planted
    there (even one named ``tasklease`` or ``json``) would shadow the real one
    in the worker and, through the path children inherit, in its children. It
    is removed, as is every ``''`` entry; a directory the worker should import
    from is given explicitly (``--path DIR``, e.g. ``--path .``), or in
    ``PYTHONPATH``. Used by ``tasklease worker`` before it imports ``--import``
    modules.

    Returns:
        The directories put first, as absolute paths, in order.

    Raises:
        InvalidOption: A path that is not a directory.
    """
    dirs: list[str] = []
    for given in paths:
        directory = os.path.abspath(given)
        if not os.path.isdir(directory):
            raise InvalidOption(f"--path {given!r}: not a directory")
        if directory not in dirs:
            dirs.append(directory)
    entries = list(sys.path)
    if entries and not sys.flags.safe_path and entries[0] in ("", os.getcwd()):
        entries = entries[1:]  # the current directory that -m / -c put first
    entries = [e for e in entries if e and e not in dirs]
    sys.path[:] = [*dirs, *entries]
    return dirs


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """How a worker behaves.

    Attributes:
        worker_id: Its id (default: host-pid-random).
        queues: The queues it serves.
        concurrency: Most tasks it runs at once (its capacity).
        weight: Relative capacity for the weighted balancer.
        tags: Free-form labels published in the node record.
        lease_ttl_s: Lease TTL: how long after a crash it counts as dead.
        heartbeat_s: Lease refresh and load update interval.
        grace_s: On SIGTERM, how long running tasks may take to finish.
        imports: Modules imported at start (they register task functions);
            children of the process pool import them too.
        pass_env: Names of environment variables passed to the processes
            started for tasks (shell commands, sync-task children) beside the
            allowlist (``executors.base.ENV_ALLOWLIST``); never ``TASKLEASE_*``.
        http_allow_nets: Networks (CIDR) ``http`` tasks may reach even though
            they are denied by default (loopback, private, link-local...).
        http_deny_nets: Networks ``http`` tasks may never reach.
    """

    worker_id: str = field(default_factory=default_worker_id)
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 4
    weight: float = 1.0
    tags: Mapping[str, str] = field(default_factory=dict)
    lease_ttl_s: int = 10
    heartbeat_s: float = 3.0
    grace_s: float = 30.0
    imports: tuple[str, ...] = ()
    pass_env: tuple[str, ...] = ()
    http_allow_nets: tuple[str, ...] = ()
    http_deny_nets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_name(self.worker_id, "worker")
        check_pass_env(self.pass_env)
        NetworkPolicy.from_options(self.http_allow_nets, self.http_deny_nets)
        if not self.queues:
            raise InvalidOption("a worker serves at least one queue")
        for q in self.queues:
            check_name(q)
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int):
            raise InvalidOption(f"concurrency must be an integer, got {self.concurrency!r}")
        if not 1 <= self.concurrency <= 10_000:
            raise InvalidOption("concurrency must be in 1..10000")
        # Every float option must be a finite number: NaN passes no comparison
        # and so slips through a `< 0` check; infinity would disable a bound.
        for name, value in (
            ("weight", self.weight),
            ("heartbeat", self.heartbeat_s),
            ("grace", self.grace_s),
        ):
            _check_finite(name, value)
        if not self.weight > 0:
            raise InvalidOption("weight must be > 0")
        if isinstance(self.lease_ttl_s, bool) or not isinstance(self.lease_ttl_s, int):
            raise InvalidOption(f"lease TTL must be a whole number of seconds, got {self.lease_ttl_s!r}")
        if self.lease_ttl_s < 2:
            raise InvalidOption("lease TTL must be >= 2 s")
        if not 0 < self.heartbeat_s < self.lease_ttl_s:
            raise InvalidOption("heartbeat must be > 0 and shorter than the lease TTL")
        if not self.grace_s >= 0:
            raise InvalidOption("grace must be >= 0")


def _check_finite(name: str, value: object) -> None:
    """Refuse anything but a finite int or float (NaN and infinity included).

    Raises:
        InvalidOption: Naming the option.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidOption(f"{name} must be a finite number, got {value!r}")


@dataclass
class _Run:
    """One attempt this worker is running. Touched only on the event loop."""

    assignment: Assignment
    task: asyncio.Task[None] | None = None
    # Why it is being stopped, if it is: "revoked" (assignment deleted),
    # "lease" (lease lost), "handback" (shutdown), "abandon" (hard stop).
    stop_reason: str | None = None
    # Set when the outcome is being written: the deletion of the assignment
    # that our own transaction causes must not be taken for a revocation.
    recording: bool = False


class Worker:
    """A worker process's engine. Use ``async with Worker(...)`` or start()/stop().

    Args:
        store: The etcd connection.
        keys: The namespace.
        registry: Task types this worker runs (built-ins included by the caller).
        config: Its settings.
        clock: Time source.
    """

    def __init__(
        self,
        store: KVStore,
        keys: Keyspace,
        registry: Registry,
        config: WorkerConfig | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.registry = registry
        self.config = config or WorkerConfig()
        self.clock = clock or SystemClock()
        self.id = self.config.worker_id
        # What processes started for tasks get of our environment, and where http may go.
        self.child_env = child_environment(self.config.pass_env)
        self.network = NetworkPolicy.from_options(self.config.http_allow_nets, self.config.http_deny_nets)
        self.pool = ProcessPool(self.config.concurrency, self.config.imports, self.child_env)
        self._executors = self._build_executors()
        self._ids = IdGenerator(self.clock)
        self._rng = random.Random()
        self.retention = RetentionLeases(store, keys, self.clock)
        # Outcomes waiting to be written; only the flusher task takes from it.
        self._results: deque[tuple[Assignment, Task, asyncio.Future[None]]] = deque()
        self._flusher: asyncio.Task[None] | None = None
        # Leases declared lost, to revoke once etcd answers again (_serve_once only).
        self._abandoned: list[int] = []
        # Every lease this worker has had: a node record under one of them is ours.
        self._leases: set[int] = set()
        # Create revision of our node key under the current session (0: not registered).
        self._node_rev = 0
        # Set when our node key turned out to belong to another worker.
        self._id_taken = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        # All of the following are touched only on the event loop.
        # Runs by task id, then by attempt token (the assignment's create
        # revision): a task may have two here at once, an attempt still being
        # torn down and a newer attempt of the same task assigned to us again.
        self._runs: dict[str, dict[int, _Run]] = {}
        self._slots = asyncio.Semaphore(self.config.concurrency)
        self._executing = 0
        self._draining = False
        self._stopped = asyncio.Event()
        self._session: Session | None = None
        self._main: asyncio.Task[None] | None = None
        self._registered = asyncio.Event()
        self._started_at = self.clock.now()
        self.completed = 0

    def _build_executors(self) -> dict[str, Executor]:
        executors: dict[str, Executor] = {}
        for name in self.registry.names:
            tf = self.registry.function(name)
            if tf is None:
                executor = self.registry.get(name)
                assert executor is not None
                executors[name] = executor
            elif tf.is_async:
                executors[name] = AsyncFunctionExecutor(tf)
            else:
                executors[name] = SyncFunctionExecutor(tf, self.pool)
        return executors

    # lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Register and start serving; returns once registered."""
        self._main = asyncio.create_task(self._serve_forever(), name=f"worker-{self.id}")
        registered = asyncio.create_task(self._registered.wait())
        await asyncio.wait({registered, self._main}, return_when=asyncio.FIRST_COMPLETED)
        if not registered.done():
            registered.cancel()
            await self._main  # it failed: raise its error

    @property
    def lease_id(self) -> int:
        """The current lease (0 when not registered)."""
        return self._session.lease_id if self._session else 0

    @property
    def running(self) -> int:
        """Tasks executing right now."""
        return self._executing

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown (idempotent).

        The order, and why:

        1. Stop accepting work: mark the node record ``draining`` so the
           scheduler assigns nothing more; hand back anything that still arrives.
        2. Let running tasks finish for up to ``grace_s``, while the session
           keeps heartbeating, so their results are still accepted.
        3. Cancel what is left; each is handed back to its queue in one
           transaction (outcome ``handed_back``), fenced like any result.
        4. Stop watching, close the child processes, revoke the lease: the
           node record vanishes at once instead of after a TTL.
        """
        grace = self.config.grace_s if grace_s is None else grace_s
        if self._stopped.is_set():
            return
        self._draining = True
        with contextlib.suppress(StoreError):
            await self._put_node()
        pending = [r.task for r in self._all_runs() if r.task is not None]
        if pending:
            log.info("draining: waiting up to %.1f s for %d tasks", grace, len(pending), extra=self._ctx())
            _, still = await asyncio.wait(pending, timeout=grace)
            for run in self._all_runs():
                # A run already being stopped (revoked) stays so: it writes nothing.
                if run.task is not None and run.task in still and run.stop_reason is None:
                    run.stop_reason = "handback"
                    run.task.cancel()
            if still:
                await asyncio.wait(still, timeout=max(5.0, self.config.lease_ttl_s))
        await self._shutdown(revoke=True)

    async def kill(self) -> None:
        """Stop at once: cancel every task without writing for them, revoke the lease.

        Their assignments vanish with the lease; recovery re-queues them.
        """
        for run in self._all_runs():
            if run.task is not None:
                run.stop_reason = "abandon"
                run.task.cancel()
        await self._shutdown(revoke=True)

    async def _shutdown(self, *, revoke: bool) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        tasks = []
        for run in self._all_runs():
            if run.task is not None and not run.task.done():
                run.stop_reason = run.stop_reason or "abandon"
                run.task.cancel()
                tasks.append(run.task)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._main is not None and self._main is not asyncio.current_task():
            self._main.cancel()
            # It may have ended with an error (start() raised it already).
            await asyncio.gather(self._main, return_exceptions=True)
        if self._session is not None:
            if revoke:
                await self._session.close()
            else:
                await self._session.orphan()
        await self.pool.close()
        log.info("worker stopped", extra=self._ctx())

    async def wait_stopped(self) -> None:
        """Block until the worker has stopped."""
        await self._stopped.wait()

    # registration and the watch ---------------------------------------------------------
    def _ctx(self, **extra: Any) -> dict[str, Any]:
        return {"component": "worker", "worker": self.id, **extra}

    def node(self) -> NodeRecord:
        """The record published at ``node/{id}``."""
        return NodeRecord(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=tuple(self.config.queues),
            capacity=self.config.concurrency,
            running=self._executing,
            assigned=sum(len(runs) for runs in self._runs.values()),
            cpu=psutil.cpu_percent(interval=None),
            memory=psutil.virtual_memory().percent,
            weight=self.config.weight,
            tags=dict(self.config.tags),
            types=tuple(self.registry.names),
            version=__version__,
            started_at=self._started_at,
            heartbeat_at=self.clock.now(),
            lease=self.lease_id,
            lease_ttl=self.config.lease_ttl_s,
            draining=self._draining,
            completed=self.completed,
        )

    def node_record(self) -> dict[str, Any]:
        """The record published at ``node/{id}``, as the JSON object written."""
        return self.node().to_json()

    async def _put_node(self) -> None:
        """Refresh our node record (heartbeat, draining), only if it is still ours.

        Fenced on the create revision of our registration: a record someone
        else created under our id (after ours was deleted by hand) is never
        overwritten. If ours was deleted and the id is free, it is created
        again; if another worker holds it, this worker stops.
        """
        if self._session is None or self._session.lost.is_set() or not self._node_rev:
            return
        key = self.keys.node(self.id)
        data = self.node().encode()
        put = Put(key, data, lease=self.lease_id)
        res = await self.store.txn([Compare.created_at(key, self._node_rev)], [put], [Get(key)])
        if res.succeeded:
            return
        if not (res.reads and res.reads[0]):
            again = await self.store.txn([Compare.absent(key)], [put])
            if again.succeeded:
                log.warning("node record was deleted; registered again", extra=self._ctx())
                self._node_rev = again.revision
                return
        log.error("node record %s now belongs to another worker: stopping", key, extra=self._ctx())
        self._id_taken.set()

    async def _register(self, session: Session) -> None:
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
            data = self.node().encode()
            res = await self.store.txn(
                [Compare.absent(key)], [Put(key, data, lease=session.lease_id)], [Get(key)]
            )
            if res.succeeded:
                self._node_rev = res.revision
                return
            if not (res.reads and res.reads[0]):
                continue  # gone in between: try again
            holder = res.reads[0][0]
            if holder.lease and holder.lease in self._leases:
                log.info("revoking an earlier lease of this worker (%x)", holder.lease, extra=self._ctx())
                await self.store.revoke(holder.lease)
                continue
            info: dict[str, Any] = {}
            with contextlib.suppress(CorruptRecord):
                info = codec.decode_obj(holder.key, holder.value)
            who = f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, lease {holder.lease:x}"
            if deadline is None:
                ttl = info.get("lease_ttl")
                if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 2 <= ttl <= 3600:
                    ttl = self.config.lease_ttl_s
                wait_s = ttl + max(2.0, ttl / 2)
                deadline = self.clock.monotonic() + wait_s
                log.warning(
                    "worker id %s is registered by another worker (%s); waiting up to %.0f s "
                    "for it to vanish (a crashed worker's lease expires)",
                    self.id,
                    who,
                    wait_s,
                    extra=self._ctx(),
                )
            remaining = deadline - self.clock.monotonic()
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

    async def _serve_forever(self) -> None:
        """Register, serve until the lease is lost, repeat until stopped."""
        backoff = 0.2
        while not self._stopped.is_set():
            try:
                await self._serve_once()
                backoff = 0.2
            except WorkerIdInUse as exc:
                if not self._registered.is_set():
                    raise  # start() raises it
                log.error("%s; the worker stops", exc, extra=self._ctx())
                stopping = asyncio.create_task(self._shutdown(revoke=True))
                self._background.add(stopping)
                stopping.add_done_callback(self._background.discard)
                return
            except StoreNoSpace as exc:
                log.warning(
                    "worker cannot register: etcd is out of space (NOSPACE; %s): %s; retrying in %.1f s",
                    NOSPACE_REMEDY,
                    exc,
                    backoff,
                    extra=self._ctx(),
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except (StoreError, OSError) as exc:
                log.warning(
                    "worker cannot reach etcd: %s; retrying in %.1f s", exc, backoff, extra=self._ctx()
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:
                log.exception("worker error; registering again", extra=self._ctx())
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
            ttl_s=self.config.lease_ttl_s,
            heartbeat_s=self.config.heartbeat_s,
            on_beat=self._put_node,
            clock=self.clock,
        )
        self._node_rev = 0
        self._id_taken.clear()
        await session.start()
        self._leases.add(session.lease_id)
        self._session = session
        try:
            await self._register(session)
        except BaseException:
            await session.close()
            raise
        try:
            prefix = self.keys.worker_assignments(self.id)
            assigned, revision = await self._read_assignments(prefix)
            log.info(
                "worker registered",
                extra=self._ctx(lease=f"{session.lease_id:x}", queues=",".join(self.config.queues)),
            )
            self._registered.set()
            for kv in assigned:
                self._on_assigned(kv)
            watcher = asyncio.create_task(self._watch(prefix, revision + 1))
            lost = asyncio.create_task(session.lost.wait())
            taken = asyncio.create_task(self._id_taken.wait())
            try:
                await asyncio.wait({watcher, lost, taken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (watcher, lost, taken):
                    t.cancel()
                await asyncio.gather(watcher, lost, taken, return_exceptions=True)
            if watcher.done() and not watcher.cancelled() and watcher.exception():
                raise watcher.exception()  # type: ignore[misc]
            if self._id_taken.is_set() and not session.lost.is_set():
                raise WorkerIdInUse(f"worker id {self.id!r} was taken over by another worker")
        finally:
            if session.lost.is_set():
                await self._on_lease_lost()
                await session.orphan()
                self._abandoned.append(session.lease_id)
            elif not self._stopped.is_set():
                # Leaving for another reason (an error): give the tasks up and
                # revoke the lease, so that recovery re-queues them at once.
                await self._on_lease_lost()
                await session.close()

    async def _watch(self, prefix: str, revision: int) -> None:
        while True:
            try:
                async for events in self.store.watch(prefix, prefix_end(prefix), revision):
                    for ev in events:
                        revision = ev.kv.mod_revision + 1
                        if ev.type == "put":
                            self._on_assigned(ev.kv)
                        else:
                            self._on_revoked(ev.kv.key, ev.kv.mod_revision)
                return
            except WatchCompacted as exc:
                # Compacted, or a catch-up too large to receive (WatchTooLarge):
                # re-read, and what is assigned now is the truth. Running tasks
                # whose assignment is still there go on; the lease is untouched.
                log.warning("assignment watch: %s; reading the assignments again", exc, extra=self._ctx())
                current, read_at = await self._reread_assignments(prefix)
                live = {(self.keys.parse_assignment(kv.key)[1], kv.create_revision) for kv in current}
                for run in self._all_runs():
                    if (run.assignment.task.id, run.assignment.token) not in live:
                        self._stop_revoked(run)
                for kv in current:
                    self._on_assigned(kv)
                revision = read_at + 1

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
        delay = 0.1
        while True:
            try:
                return await self._read_assignments(prefix)
            except StoreUnavailable as exc:
                log.warning(
                    "cannot read the assignments (%s); retrying in %.1f s", exc, delay, extra=self._ctx()
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _on_lease_lost(self) -> None:
        """Stop every task; write nothing (their assignments are gone with the lease)."""
        runs = [r for r in self._all_runs() if r.task is not None]
        log.error("lease lost: stopping %d tasks, their outcomes are dropped", len(runs), extra=self._ctx())
        for run in runs:
            run.stop_reason = "lease"
            assert run.task is not None
            run.task.cancel()
        await asyncio.gather(*(r.task for r in runs if r.task), return_exceptions=True)

    def _all_runs(self) -> list[_Run]:
        """Every run, those being torn down included (a copy: safe to mutate ``_runs``)."""
        return [run for runs in self._runs.values() for run in runs.values()]

    def _forget(self, run: _Run) -> None:
        """Remove ``run`` (and only it: a newer attempt of the same task stays)."""
        runs = self._runs.get(run.assignment.task.id)
        if runs is not None and runs.get(run.assignment.token) is run:
            del runs[run.assignment.token]
            if not runs:
                del self._runs[run.assignment.task.id]

    def _on_assigned(self, kv: Any) -> None:
        _, task_id = self.keys.parse_assignment(kv.key)
        if kv.lease != self.lease_id:
            return  # left over from an earlier lease of ours: it is about to vanish
        runs = self._runs.get(task_id, {})
        if kv.create_revision in runs:
            return  # seen already (a re-read after a watch gap)
        try:
            assignment = decode_assignment(self.keys, self.id, kv)
        except CorruptRecord as exc:
            log.error("skipping corrupt assignment: %s", exc, extra=self._ctx(task_id=task_id))
            return
        # An older attempt of this task: its assignment was deleted before this
        # one was created, whether or not we have seen the deletion yet.
        for older in list(runs.values()):
            if older.assignment.token < kv.create_revision:
                self._stop_revoked(older)
        run = _Run(assignment)
        self._runs.setdefault(task_id, {})[assignment.token] = run
        if self._draining:
            run.stop_reason = "handback"
        run.task = asyncio.create_task(self._execute(run), name=f"task-{task_id}")

    def _on_revoked(self, key: str, revision: int) -> None:
        """The assignment ``key`` was deleted at ``revision``: stop the attempts it fenced."""
        _, task_id = self.keys.parse_assignment(key)
        for run in list(self._runs.get(task_id, {}).values()):
            if run.assignment.token < revision:
                self._stop_revoked(run)

    def _stop_revoked(self, run: _Run) -> None:
        if run.task is None or run.task.done() or run.recording or run.stop_reason == "revoked":
            return
        log.info(
            "assignment revoked: stopping the task",
            extra=self._ctx(task_id=run.assignment.task.id, attempt=run.assignment.attempt.number),
        )
        run.stop_reason = "revoked"
        run.task.cancel()

    # execution -------------------------------------------------------------------------
    async def _execute(self, run: _Run) -> None:
        assignment = run.assignment
        task = assignment.task
        attempt = assignment.attempt.number
        extra = self._ctx(task_id=task.id, attempt=attempt)
        outcome, result, error, permanent = Outcome.FAILED, None, None, False
        retry_after: float | None = None
        try:
            if run.stop_reason == "handback":
                outcome = Outcome.HANDED_BACK
            else:
                async with self._slots:
                    self._executing += 1
                    try:
                        outcome, result, error, permanent, retry_after = await self._invoke(assignment)
                    finally:
                        self._executing -= 1
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # we handle it: later awaits must not see it
            if run.stop_reason == "handback":
                outcome, error = Outcome.HANDED_BACK, "worker shut down"
            else:
                # Revoked, lease lost or hard stop: someone else owns the task now.
                # Forget this run only: a newer attempt of the same task may
                # have been assigned to us meanwhile, and it keeps its entry
                # (so its own cancellation and drain still find it).
                log.info("task stopped (%s); nothing recorded", run.stop_reason, extra=extra)
                self._forget(run)
                return
        run.recording = True
        try:
            await asyncio.shield(self._record(assignment, outcome, result, error, permanent, retry_after))
        finally:
            self._forget(run)

    async def _invoke(self, assignment: Assignment) -> tuple[Outcome, JSON, str | None, bool, float | None]:
        """Run one attempt: (outcome, result, error, permanent, retry_after)."""
        task = assignment.task
        extra = self._ctx(task_id=task.id, attempt=assignment.attempt.number, type=task.type)
        executor = self._executors.get(task.type)
        if executor is None:
            # Assigned a type we do not run: the scheduler's view of our node record
            # was older than this process (a restart under another image). Hand it
            # back, keeping its place; the scheduler gives it to a worker whose node
            # record lists the type (ours lists exactly self.registry.names).
            types = ", ".join(self.registry.names) or "none"
            err = UnknownTaskType(
                f"unknown task type {task.type!r}; this worker runs: {types}; handed back to its queue"
            )
            log.warning("%s", err, extra=extra)
            return Outcome.HANDED_BACK, None, str(err), False, None
        ctx = TaskContext(
            task.id,
            assignment.attempt.number,
            task.type,
            task.payload,
            task.timeout_s,
            self.id,
            env=self.child_env,
            network=self.network,
        )
        log.debug("task started", extra=extra)
        try:
            async with asyncio.timeout(task.timeout_s):
                result = await executor.run(ctx)
            codec.encode_json(result, "result")
        except TimeoutError:
            log.warning("task timed out after %g s", task.timeout_s, extra=extra)
            return Outcome.TIMEOUT, None, f"timed out after {task.timeout_s:g} s", False, None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we cancelled it (revoked, lease lost, shutdown): _execute handles it
            # Nobody cancelled this attempt: the task code raised CancelledError
            # itself (e.g. it awaited something that was cancelled). A failure,
            # retried per policy; otherwise it would sit running until its deadline.
            message = (
                "CancelledError raised by the task itself (the worker did not cancel it: "
                "it was not revoked and did not time out)"
            )
            log.warning("task failed: %s", message, extra=extra)
            return Outcome.FAILED, None, message, False, None
        except Retry as exc:
            log.info("task asked to be retried after %g s: %s", exc.after, exc, extra=extra)
            return Outcome.FAILED, None, truncate_error(str(exc)), False, exc.after
        except PermanentError as exc:
            log.warning("task failed permanently: %s", exc, extra=extra)
            return Outcome.FAILED, None, truncate_error(str(exc)), True, None
        except (PayloadTooLarge, TaskleaseError) as exc:
            log.warning("task failed: %s", exc, extra=extra)
            return Outcome.FAILED, None, truncate_error(str(exc)), isinstance(exc, PayloadTooLarge), None
        except Exception as exc:
            log.warning("task failed: %s: %s", type(exc).__name__, exc, extra=extra)
            return Outcome.FAILED, None, truncate_error(f"{type(exc).__name__}: {exc}"), False, None
        log.debug("task succeeded", extra=extra)
        return Outcome.SUCCEEDED, result, None, False, None

    def next_record(
        self,
        assignment: Assignment,
        outcome: Outcome,
        result: JSON,
        error: str | None,
        permanent: bool,
        retry_after: float | None = None,
    ) -> Task:
        """The record after this attempt (transitions.next_record, on this worker's clock and sequence)."""
        return transitions.next_record(
            assignment.task,
            outcome,
            now=self.clock.now(),
            rng=self._rng,
            new_seq=self._ids.sequence(),
            result=result,
            error=error,
            permanent=permanent,
            retry_after=retry_after,
        )

    async def _record(
        self,
        assignment: Assignment,
        outcome: Outcome,
        result: JSON,
        error: str | None,
        permanent: bool,
        retry_after: float | None = None,
    ) -> None:
        """Write the attempt's outcome in one fenced transaction, grouped with others.

        Outcomes that are ready while a write is in flight go out together in
        the next transaction (group commit): under load one transaction records
        many attempts; alone, an outcome is written at once.
        """
        new = transitions.fit_record(
            self.next_record(assignment, outcome, result, error, permanent, retry_after), self.clock.now()
        )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._results.append((assignment, new, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_results(), name=f"results-{self.id}")
        await done

    async def _flush_results(self) -> None:
        """Write queued outcomes, as many per transaction as fit (RESULT_BATCH, RESULT_BATCH_BYTES)."""
        while self._results:
            batch = [self._results.popleft()]
            size = transitions.outcome_bytes(batch[0][1])
            while len(batch) < RESULT_BATCH and self._results:
                more = transitions.outcome_bytes(self._results[0][1])
                if size + more > RESULT_BATCH_BYTES:
                    break
                batch.append(self._results.popleft())
                size += more
            try:
                if len(batch) == 1:
                    await self._write_one(batch[0][0], batch[0][1])
                else:
                    await self._write_batch(batch)
            except Exception:
                log.exception("recording outcomes failed", extra=self._ctx())
            finally:
                for _, _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _write_batch(self, batch: list[tuple[Assignment, Task, asyncio.Future[None]]]) -> None:
        compares: list[Compare] = []
        ops: list[Op] = []
        failure: list[Op] = []
        sent = True
        try:
            for assignment, new, _ in batch:
                lease = await self.retention.lease_for(new.retention_s) if new.state.terminal else 0
                part = transitions.record_outcome(self.keys, assignment.worker, assignment.token, new, lease)
                compares += part.compares
                ops += part.ops
                failure += part.failure
            res = await self.store.txn(compares, ops, failure, timeout_s=FENCED_TXN_TIMEOUT_S)
        except (StoreRequestTooLarge, StoreNoSpace):
            res, sent = None, False  # refused (too large, or etcd out of space): nothing landed
        except StoreError:
            res = None
        if res is not None and res.succeeded:
            self.completed += len(batch)
            for assignment, new, done in batch:
                log.debug(
                    "outcome recorded: task %s",
                    new.state.value,
                    extra=self._ctx(task_id=new.id, attempt=assignment.attempt.number),
                )
                done.set_result(None)
            return
        # Someone's compare failed (or no answer, or too large): record them one
        # by one, which tells the fenced ones from the rest and retries while
        # etcd is away.
        for i, (assignment, new, done) in enumerate(batch):
            if res is not None:
                read = res.reads[i]
                if not read or read[0].create_revision != assignment.token:
                    self._rejected(assignment, new)
                    done.set_result(None)
                    continue
            await self._write_one(assignment, new, maybe_landed=res is None and sent)
            done.set_result(None)

    def _rejected(self, assignment: Assignment, new: Task) -> None:
        log.warning(
            "outcome rejected: the assignment was revoked (task cancelled or reassigned)",
            extra=self._ctx(task_id=new.id, attempt=assignment.attempt.number, outcome=new.state.value),
        )

    async def _write_one(self, assignment: Assignment, new: Task, *, maybe_landed: bool = False) -> None:
        """Write one outcome; retried while etcd is away or out of space, and our lease lives.

        Out of space (NOSPACE: etcd refuses every write until an operator frees
        room) the outcome is kept and retried with a backoff up to
        ``NOSPACE_RETRY_MAX_S``, never dropped: one warning per outcome names
        NOSPACE and the remedy, and one line says when it was recorded after all.
        """
        extra = self._ctx(task_id=new.id, attempt=assignment.attempt.number)
        delay = 0.1
        lease = 0
        sent = maybe_landed
        bounded = False
        out_of_space = False
        while True:
            if self._session is None or self._session.lost.is_set():
                log.warning("lease lost: outcome dropped", extra=extra)
                return
            try:
                if new.state.terminal and not lease:
                    lease = await self.retention.lease_for(new.retention_s)
                txn = transitions.record_outcome(self.keys, assignment.worker, assignment.token, new, lease)
                res = await self.store.txn(txn.compares, txn.ops, txn.failure, timeout_s=FENCED_TXN_TIMEOUT_S)
            except StoreUnavailable as exc:
                sent = True
                log.warning("could not record outcome (%s); retrying", exc, extra=extra)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except StoreNoSpace as exc:
                # Refused, nothing written. Keep the outcome until etcd has room again.
                if not out_of_space:
                    out_of_space = True
                    log.warning(
                        "etcd is out of space (NOSPACE): the outcome is kept and its write retried "
                        "until etcd accepts writes again (while this worker's lease lives); "
                        "remedy: %s [%s]",
                        NOSPACE_REMEDY,
                        exc,
                        extra=extra,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, NOSPACE_RETRY_MAX_S)
                continue
            except StoreRequestTooLarge as exc:
                # Refused for its size (nothing was sent): never resend it
                # unchanged. Record a bounded failure instead, once.
                if bounded:
                    log.error(
                        "could not record even a bounded failure: %s; outcome dropped", exc, extra=extra
                    )
                    return
                log.error("outcome too large to write (%s); recording the task as failed", exc, extra=extra)
                new = transitions.bounded_failure(
                    new, f"not retried: the task record grew too large to write ({exc})", self.clock.now()
                )
                bounded = True
                lease = 0
                continue
            except StoreError as exc:
                if lease and isinstance(exc, StoreLeaseNotFound):
                    self.retention.forget(lease)
                    lease = 0
                    continue
                log.error("could not record outcome: %s", exc, extra=extra)
                return
            if res.succeeded:
                self.completed += 1
                if out_of_space:
                    log.info(
                        "outcome recorded once etcd had room again: task %s", new.state.value, extra=extra
                    )
                else:
                    log.debug("outcome recorded: task %s", new.state.value, extra=extra)
                return
            if sent and await self._landed(new):
                return
            self._rejected(assignment, new)
            return

    async def _landed(self, new: Task) -> bool:
        """After a lost answer: did our earlier transaction commit?"""
        with contextlib.suppress(StoreError, CorruptRecord):
            kv, _ = await self.store.get(self.keys.task(new.id))
            if kv is not None:
                return codec.decode_task(kv.key, kv.value) == new
        return False
