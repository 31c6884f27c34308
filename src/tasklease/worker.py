"""The worker: registers under a lease, watches its assignments, runs them, records outcomes.

A :class:`Worker` composes three parts, each in its own module (as Asynq's
server composes its heartbeater, processor and recoverer):

- membership.py (:class:`~tasklease.membership.Membership`): the session (lease),
  the node record (registration, one live worker per id, heartbeat, draining)
  and the watch of ``assign/{id}/`` with its re-reads;
- execution.py (:class:`~tasklease.execution.Execution`): the executors and their
  process pool, the slots, the runs table, running one attempt;
- recorder.py (:class:`~tasklease.recorder.OutcomeRecorder`): the fenced,
  group-committed outcome transactions.

burst.py ends a burst worker once nothing is left for it. This module keeps
the lifecycle (start, stop, kill and their order), the configuration and the
node record the worker publishes.

Everything runs on one event loop; user code runs off it (sync functions in
child processes, see executors/python.py), so task code cannot starve the
keep-alive.

Events (``hooks=``, events.py): WorkerRegistered, then per attempt Started and
its end (Succeeded, Failed, Retried, TimedOut, HandedBack) once its outcome
transaction succeeded, or Rejected if it was fenced off; WorkerDraining,
WorkerLeaseLost, WorkerStopped. The default hook (LoggingHook) writes the
per-task lines ("task started", "outcome recorded: task ...", "outcome
rejected: ..."); the process lines ("worker registered", "worker stopped",
"lease lost: ...") are still written where they happen.

May import: burst, execution, membership, recorder, events, finished (the parents' results), and what they do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from tasklease import controls
from tasklease.burst import Burst
from tasklease.clock import Clock, SystemClock
from tasklease.errors import (
    InvalidOption,
    StoreError,
    WorkerIdInUse,  # moved to errors.py; re-exported here
)
from tasklease.events import Hook, Hooks, WorkerDraining, WorkerStopped, as_hooks
from tasklease.execution import Execution, Run
from tasklease.executors.base import Registry, check_pass_env
from tasklease.executors.netpolicy import NetworkPolicy
from tasklease.executors.python import ProcessPool
from tasklease.finished import parent_results
from tasklease.keys import NAME_RE, Keyspace, check_name
from tasklease.membership import Membership
from tasklease.nodes import NodeRecord
from tasklease.recorder import (
    FENCED_TXN_TIMEOUT_S,
    NOSPACE_REMEDY,
    NOSPACE_RETRY_MAX_S,
    RESULT_BATCH,
    RESULT_BATCH_BYTES,
    OutcomeRecorder,
)
from tasklease.retention import RetentionLeases
from tasklease.store import KVStore
from tasklease.version import __version__

__all__ = [
    # The outcome bounds and deadlines live in recorder.py; their old home still names them.
    "FENCED_TXN_TIMEOUT_S",
    "NOSPACE_REMEDY",
    "NOSPACE_RETRY_MAX_S",
    "RESULT_BATCH",
    "RESULT_BATCH_BYTES",
    "Worker",
    "WorkerConfig",
    "WorkerIdInUse",
    "default_worker_id",
    "set_import_path",
]

log = logging.getLogger("tasklease.worker")


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
        burst: Run until no queued task it may run is left and it holds
            nothing, then drain and stop (burst.py); ``tasklease worker --burst``.
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
    burst: bool = False

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
        if not isinstance(self.burst, bool):
            raise InvalidOption(f"burst must be True or False, got {self.burst!r}")


def _check_finite(name: str, value: object) -> None:
    """Refuse anything but a finite int or float (NaN and infinity included).

    Raises:
        InvalidOption: Naming the option.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidOption(f"{name} must be a finite number, got {value!r}")


class Worker:
    """A worker process's engine. Use ``async with Worker(...)`` or start()/stop().

    Args:
        store: The etcd connection.
        keys: The namespace.
        registry: Task types this worker runs (built-ins included by the caller).
        config: Its settings.
        clock: Time source.
        hooks: Event hooks (``events.as_hooks``: None is the default list, logging).
    """

    def __init__(
        self,
        store: KVStore,
        keys: Keyspace,
        registry: Registry,
        config: WorkerConfig | None = None,
        *,
        clock: Clock | None = None,
        hooks: Hooks | Iterable[Hook] | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.registry = registry
        self.config = config or WorkerConfig()
        self.clock = clock or SystemClock()
        self.hooks = as_hooks(hooks)
        self.id = self.config.worker_id
        self._extra = {"component": "worker", "worker": self.id}
        # Set by _shutdown only: at its start (nothing more is served; Membership reads it) ...
        self._stopped = asyncio.Event()
        # ... and at its end (wait_stopped).
        self._closed = asyncio.Event()
        self._burst = Burst(
            store,
            keys,
            self.id,
            self.config.queues,
            registry.names,
            self.config.tags,
            idle=lambda: self.execution.idle,
            ready=lambda: self.membership.serving,
            finish=self.stop,
        )
        self.recorder = OutcomeRecorder(
            store,
            keys,
            self.id,
            clock=self.clock,
            hooks=self.hooks,
            lease_alive=lambda: self.membership.lease_alive,
        )
        self.execution = Execution(
            keys,
            registry,
            self.id,
            concurrency=self.config.concurrency,
            imports=self.config.imports,
            pass_env=self.config.pass_env,
            http_nets=(self.config.http_allow_nets, self.config.http_deny_nets),
            clock=self.clock,
            hooks=self.hooks,
            record=self.recorder.record,
            lease_id=lambda: self.lease_id,
            on_idle=self._burst.wake if self.config.burst else None,
            read_parents=lambda parents: parent_results(store, keys, parents),
        )
        self.membership = Membership(
            store,
            keys,
            self.id,
            queues=self.config.queues,
            lease_ttl_s=self.config.lease_ttl_s,
            heartbeat_s=self.config.heartbeat_s,
            clock=self.clock,
            hooks=self.hooks,
            node=self.node,
            intake=self.execution,
            stopped=self._stopped,
            on_fatal=self._stop_in_background,
        )
        # The outcome's record and write, as the worker's (tests use them).
        self.next_record = self.recorder.next_record
        self._record = self.recorder.record
        # Tasks of this worker's own (the serve loop, burst mode, a shutdown it started itself).
        self._main: asyncio.Task[None] | None = None
        self._burst_task: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._started_at = self.clock.now()

    # the parts' state, as the worker's (tests and tools read these) ------------------------------
    @property
    def lease_id(self) -> int:
        """The current lease (0 when not registered)."""
        return self.membership.lease_id

    @property
    def running(self) -> int:
        """Tasks executing right now."""
        return self.execution.executing

    @property
    def completed(self) -> int:
        """Outcomes this worker wrote."""
        return self.recorder.completed

    @property
    def child_env(self) -> dict[str, str]:
        """What processes started for tasks get of our environment."""
        return self.execution.child_env

    @property
    def network(self) -> NetworkPolicy:
        """Where ``http`` tasks may go."""
        return self.execution.network

    @property
    def pool(self) -> ProcessPool:
        """The process pool of sync task functions."""
        return self.execution.pool

    @property
    def retention(self) -> RetentionLeases:
        """The retention leases finished records are written under."""
        return self.recorder.retention

    @property
    def _runs(self) -> dict[str, dict[int, Run]]:
        return self.execution.runs

    def readiness(self) -> tuple[bool, str]:
        """Whether it takes work now (``/readyz``, with etcd's reachability checked by health.py).

        Ready: it holds a lease not declared lost, its node record is registered
        under it, and it is not draining (a SIGTERM, the end of a burst) or stopped.

        Returns:
            ``(ready, reason)``, the reason one short line.
        """
        if self._stopped.is_set():
            return False, "stopped"
        if self.execution.draining:
            return False, "draining"
        if not self.membership.lease_alive:
            return False, "no live lease (registering, or the lease was lost)"
        if not self.membership.registration.node_rev:
            return False, "not registered"
        return True, f"registered under lease {self.lease_id:x}, not draining"

    def node(self) -> NodeRecord:
        """The record published at ``node/{id}``."""
        return NodeRecord(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=tuple(self.config.queues),
            capacity=self.config.concurrency,
            running=self.execution.executing,
            assigned=self.execution.assigned,
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
            draining=self.execution.draining,
            completed=self.recorder.completed,
        )

    def node_record(self) -> dict[str, Any]:
        """The record published at ``node/{id}``, as the JSON object written."""
        return self.node().to_json()

    # lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Register and start serving; returns once registered.

        Raises:
            WorkerIdInUse: Another live worker holds this worker's id.
        """
        self._main = asyncio.create_task(self.membership.serve_forever(), name=f"worker-{self.id}")
        registered = asyncio.create_task(self.membership.registered.wait())
        await asyncio.wait({registered, self._main}, return_when=asyncio.FIRST_COMPLETED)
        if not registered.done():
            registered.cancel()
            await self._main  # it failed: raise its error
        if self.config.burst:
            self._burst_task = asyncio.create_task(self._burst.run(), name=f"burst-{self.id}")
        self._drain_task = asyncio.create_task(self._drain_on_request(), name=f"drain-{self.id}")

    async def _drain_on_request(self) -> None:
        """Stop as on SIGTERM once an operator asks (``tasklease drain``, controls.py)."""
        try:
            await controls.wait_for_drain(self.store, self.keys, self.id)
        except StoreError as exc:
            log.warning("cannot watch for drain requests: %s", exc, extra=self._extra)
            return
        log.info("drain requested: stopping as on SIGTERM", extra=self._extra)
        await self.stop()

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown (idempotent).

        The order, and why:

        1. Stop accepting work: mark the node record ``draining`` so the
           scheduler assigns nothing more; read our assignments once (one the
           watch has not delivered yet was made before the scheduler saw it)
           and hand back anything not started, or that still arrives.
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
        if not self.execution.draining:
            self.execution.draining = True
            self.hooks.emit(WorkerDraining(at=self.clock.now(), component="worker", source=self.id))
        with contextlib.suppress(StoreError):
            await self.membership.registration.put()
        with contextlib.suppress(StoreError):
            await self.membership.catch_up()
        pending = self.execution.tasks()
        if pending:
            log.info("draining: waiting up to %.1f s for %d tasks", grace, len(pending), extra=self._extra)
            _, still = await asyncio.wait(pending, timeout=grace)
            self.execution.hand_back(still)
            if still:
                await asyncio.wait(still, timeout=max(5.0, self.config.lease_ttl_s))
        await self._shutdown(revoke=True)

    async def kill(self) -> None:
        """Stop at once: cancel every task without writing for them, revoke the lease.

        Their assignments vanish with the lease; recovery re-queues them.
        """
        self.execution.abandon_all()
        await self._shutdown(revoke=True)

    async def _shutdown(self, *, revoke: bool) -> None:
        """Runs, then the serve loop, then the lease (``revoke``: at once; else it expires), then the pool."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        try:
            await self.execution.cancel_rest()
            current = asyncio.current_task()
            for task in (self._main, self._burst_task, self._drain_task):
                if task is not None and task is not current:
                    task.cancel()
                    # It may have ended with an error (start() raised it already).
                    await asyncio.gather(task, return_exceptions=True)
            await self.membership.close(revoke=revoke)
            await self.execution.close()
            log.info("worker stopped", extra=self._extra)
            self.hooks.emit(WorkerStopped(at=self.clock.now(), component="worker", source=self.id))
        finally:
            self._closed.set()

    def _stop_in_background(self) -> None:
        """Stop for good, from inside the serve loop (its id was taken over)."""
        stopping = asyncio.create_task(self._shutdown(revoke=True))
        self._background.add(stopping)
        stopping.add_done_callback(self._background.discard)

    async def wait_stopped(self) -> None:
        """Block until the worker has stopped: its shutdown finished (lease revoked, pool closed)."""
        await self._closed.wait()
