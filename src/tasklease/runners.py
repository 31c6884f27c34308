"""The long-running processes behind ``tasklease worker``, ``scheduler``, ``etcd`` and ``dev``.

:mod:`tasklease.cli` turns the command line into configs and calls these. Each
runs in the foreground until SIGTERM or SIGINT and returns the exit code. They
import the worker, the scheduler and the etcd server only when they run, so the
other commands start fast.

Signals:

- worker: the first SIGTERM/SIGINT drains (running tasks get the grace period),
  a second one stops at once (:meth:`Worker.stop`, then :meth:`Worker.kill`);
  a burst worker (``--burst``) also drains and stops by itself once nothing is
  left for it (exit 0);
- scheduler: either signal resigns and stops at once;
- etcd, dev: either signal stops the processes started.

HTTP (``--http``, :func:`serve_http`): a worker or scheduler given an address
gets a :class:`~tasklease.metrics.Metrics` of its own: its hook joins the
default hooks, its store observer watches the process's one etcd connection,
the component's gauges are read at scrape time, and ``/metrics``, ``/healthz``
and ``/readyz`` are served on the process's event loop (health.py). The
endpoint starts before the component (``/readyz`` says 503 until it is ready)
and stops after it. Without ``--http`` there is no metrics hook at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

from tasklease.errors import InvalidOption

if TYPE_CHECKING:
    from tasklease.dev import Stack
    from tasklease.etcd_server import EtcdServer
    from tasklease.events import Hook
    from tasklease.executors.base import Registry
    from tasklease.health import Readiness
    from tasklease.httpserver import HttpAddress, HttpServer
    from tasklease.keys import Keyspace
    from tasklease.metrics import Metrics
    from tasklease.scheduler import Scheduler, SchedulerConfig
    from tasklease.store import Store, StoreConfig
    from tasklease.worker import Worker, WorkerConfig

log = logging.getLogger("tasklease.runners")

EXIT_OK = 0
EXIT_RUNTIME = 1


def tune_gc() -> None:
    """Tune the garbage collector for a long-running service.

    Start-up objects are frozen out of the collector's way, and the young
    generation is collected less often (per-task garbage is short-lived).
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def load_registry(imports: Sequence[str], allow: frozenset[str]) -> Registry:
    """Built-ins plus every Registry found in the imported modules.

    Raises:
        InvalidOption: A module cannot be imported, or has no Registry.
    """
    import importlib

    from tasklease.executors.base import Registry
    from tasklease.executors.builtin import builtin_registry

    registry = builtin_registry(allow)
    for module_name in imports:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            hint = _import_hint(module_name, exc) if isinstance(exc, ModuleNotFoundError) else ""
            raise InvalidOption(f"cannot import {module_name}: {type(exc).__name__}: {exc}{hint}") from None
        found = [v for v in vars(module).values() if isinstance(v, Registry)]
        if not found:
            raise InvalidOption(f"module {module_name} has no tasklease Registry")
        registry.update(found)
    return registry


def _import_hint(module_name: str, exc: ModuleNotFoundError) -> str:
    """What to do about a module that could not be imported, by which name was missing.

    Only a missing top-level package is a question of the import path; a missing
    submodule is a misspelt name, and any other missing name is a dependency the
    task module imports, which the worker's environment lacks.
    """
    missing = exc.name or ""
    top = module_name.partition(".")[0]
    if missing in ("", top):
        return " (not on the import path: add --path DIR with the directory that holds it)"
    if module_name == missing or module_name.startswith(missing + "."):
        return f" (package {missing.rpartition('.')[0]} was found, but it has no module {missing})"
    return f" (the module imports {missing}, which is not installed where this worker runs)"


class Instruments:
    """A process's metrics when it serves HTTP: its registry, hook and store observer (or nothing).

    Args:
        component: ``worker`` or ``scheduler`` (the ``component`` label of ``tasklease_build_info``).
        http: The address to serve on; None: no metrics and no endpoint.
    """

    def __init__(self, component: str, http: HttpAddress | None) -> None:
        self.http = http
        self.metrics: Metrics | None = None
        if http is not None:
            from tasklease.metrics import Metrics

            self.metrics = Metrics(component)

    def store(self, config: StoreConfig) -> Store:
        """The process's etcd connection, observed by the metrics if any."""
        from tasklease.store import Store

        if self.metrics is None:
            return Store(config)
        return Store(config, observer=self.metrics.store_observer())

    def hooks(self) -> list[Hook] | None:
        """The component's hooks: the defaults, plus the metrics hook if any (None: the defaults)."""
        from tasklease.events import default_hooks

        if self.metrics is None:
            return None
        return [*default_hooks(), self.metrics.hook()]


@contextlib.asynccontextmanager
async def serve_http(
    instruments: Instruments, store: Store, readiness: Readiness
) -> AsyncIterator[HttpServer | None]:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` while inside (nothing without an address).

    Args:
        instruments: The process's metrics and address.
        store: The process's etcd connection (``/readyz`` asks it for etcd's status).
        readiness: The component's own readiness.

    Raises:
        InvalidOption: The address cannot be bound (in use, not an address of this host).
    """
    if instruments.http is None or instruments.metrics is None:
        yield None
        return
    from tasklease.health import ReadinessCheck, routes
    from tasklease.httpserver import HttpServer

    server = HttpServer(
        routes(instruments.metrics.registry, ReadinessCheck(store, readiness)), instruments.http
    )
    try:
        await server.start()
    except OSError as exc:
        raise InvalidOption(f"--http {instruments.http}: cannot listen: {exc.strerror or exc}") from None
    log.info(
        "serving %s/metrics, /healthz and /readyz", server.url, extra={"component": "http", "url": server.url}
    )
    try:
        yield server
    finally:
        await server.stop()


def run_worker(
    store_config: StoreConfig,
    keys: Keyspace,
    registry: Registry,
    config: WorkerConfig,
    *,
    http: HttpAddress | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (graceful), or a burst worker's end; a second signal stops at once.

    Args:
        store_config: The etcd connection.
        keys: The namespace.
        registry: The task types it runs.
        config: Its settings.
        http: Serve metrics and health checks on this address (:func:`serve_http`).
    """
    return asyncio.run(_serve_worker(store_config, keys, registry, config, http))


async def _serve_worker(
    store_config: StoreConfig,
    keys: Keyspace,
    registry: Registry,
    config: WorkerConfig,
    http: HttpAddress | None,
) -> int:
    from tasklease.worker import Worker

    instruments = Instruments("worker", http)
    store = instruments.store(store_config)
    await store.connect()
    try:
        worker = Worker(store, keys, registry, config, hooks=instruments.hooks())
        if instruments.metrics is not None:
            instruments.metrics.track_worker(worker)
        async with serve_http(instruments, store, worker.readiness):
            return await _work(worker)
    finally:
        await store.close()


async def _work(worker: Worker) -> int:
    """Start ``worker`` and serve until it stopped (signals: drain, then stop at once)."""
    signals = {"count": 0}
    loop = asyncio.get_running_loop()
    background: set[asyncio.Task[None]] = set()

    def on_signal() -> None:
        signals["count"] += 1
        action = worker.stop() if signals["count"] == 1 else worker.kill()
        task = loop.create_task(action)
        background.add(task)
        task.add_done_callback(background.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    with contextlib.suppress(asyncio.CancelledError):
        await worker.start()
    await worker.wait_stopped()
    await asyncio.gather(*background, return_exceptions=True)
    return EXIT_OK


def run_scheduler(
    store_config: StoreConfig, namespace: str, config: SchedulerConfig, *, http: HttpAddress | None = None
) -> int:
    """Register, campaign and lead until SIGTERM/SIGINT, then resign at once.

    Args:
        store_config: The etcd connection.
        namespace: The namespace.
        config: Its settings.
        http: Serve metrics and health checks on this address (:func:`serve_http`).

    Raises:
        DuplicateCandidate: Another live scheduler has this scheduler id.
    """
    return asyncio.run(_serve_scheduler(store_config, namespace, config, http))


async def _serve_scheduler(
    store_config: StoreConfig, namespace: str, config: SchedulerConfig, http: HttpAddress | None
) -> int:
    from tasklease.keys import Keyspace
    from tasklease.scheduler import Scheduler

    instruments = Instruments("scheduler", http)
    store = instruments.store(store_config)
    await store.connect()
    try:
        scheduler = Scheduler(store, Keyspace(namespace), config, hooks=instruments.hooks())
        if instruments.metrics is not None:
            instruments.metrics.track_scheduler(scheduler)
        async with serve_http(instruments, store, scheduler.readiness):
            return await _lead(scheduler)
    finally:
        await store.close()


async def _lead(scheduler: Scheduler) -> int:
    """Register, then campaign and lead until a signal (resign at once) or a fatal error."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        # Register the id first: a second live scheduler with the same id is
        # refused here (DuplicateCandidate, exit 2) instead of campaigning.
        registering = asyncio.create_task(scheduler.election.register())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({registering, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not registering.done():
            registering.cancel()
            await asyncio.gather(registering, return_exceptions=True)
            return EXIT_OK
        registering.result()
        await scheduler.start()
        stopping = asyncio.create_task(stop.wait())
        gave_up = asyncio.create_task(scheduler.stopped.wait())
        await asyncio.wait({stopping, gave_up}, return_when=asyncio.FIRST_COMPLETED)
        for t in (stopping, gave_up):
            t.cancel()
        if scheduler.fatal is not None:
            raise scheduler.fatal
    finally:
        await scheduler.stop()
    return EXIT_OK


class _StopSignal:
    """Installed as the process's SIGTERM and SIGINT handler: remembers the signal."""

    def __init__(self) -> None:
        self.signum = 0
        signal.signal(signal.SIGTERM, self._note)
        signal.signal(signal.SIGINT, self._note)

    def _note(self, signum: int, _frame: object) -> None:
        self.signum = signum


def run_etcd(server: EtcdServer, *, on_ready: Callable[[], None]) -> int:
    """Run ``server`` until SIGTERM/SIGINT, published for the local commands that look for it.

    Args:
        server: The etcd to run (not started).
        on_ready: Called once it is up and published (says where it is).

    Returns:
        ``EXIT_OK`` once stopped by a signal, ``EXIT_RUNTIME`` if etcd exited by itself.
    """
    from tasklease.etcd_server import publish_local, withdraw_local

    stop = _StopSignal()
    server.start(stream=False)
    published = publish_local(server)
    on_ready()
    sys.stdout.flush()
    try:
        while not stop.signum:
            if not server.running:
                print("error: etcd exited unexpectedly", file=sys.stderr)
                return EXIT_RUNTIME
            time.sleep(0.1)
    finally:
        withdraw_local(published, server)
        server.stop()
    return EXIT_OK


def run_dev(stack: Stack, *, on_ready: Callable[[], None]) -> int:
    """Run the embedded stack (etcd, a scheduler, workers) until SIGINT/SIGTERM, then stop it all.

    Args:
        stack: The stack to run (not started).
        on_ready: Called once it is up and its etcd published (says where it is).

    Returns:
        ``EXIT_OK`` once stopped by a signal, ``EXIT_RUNTIME`` if etcd exited by itself.
    """
    from tasklease.etcd_server import publish_local, withdraw_local

    published = None
    stop = _StopSignal()
    try:
        stack.start()
        published = publish_local(stack.etcd)
        on_ready()
        while not stop.signum:
            if not stack.etcd.running:
                print("tasklease: error: etcd exited", file=sys.stderr)
                return EXIT_RUNTIME
            time.sleep(0.2)
    finally:
        withdraw_local(published, stack.etcd)
        stack.stop()
        print("tasklease dev: stopped", file=sys.stderr, flush=True)
    return EXIT_OK
