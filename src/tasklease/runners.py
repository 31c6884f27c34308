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
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tasklease.errors import InvalidOption

if TYPE_CHECKING:
    from tasklease.dev import Stack
    from tasklease.etcd_server import EtcdServer
    from tasklease.executors.base import Registry
    from tasklease.keys import Keyspace
    from tasklease.scheduler import SchedulerConfig
    from tasklease.store import StoreConfig
    from tasklease.worker import WorkerConfig

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
            hint = ""
            if isinstance(exc, ModuleNotFoundError):
                hint = " (the current directory is not on the import path: add --path DIR)"
            raise InvalidOption(f"cannot import {module_name}: {type(exc).__name__}: {exc}{hint}") from None
        found = [v for v in vars(module).values() if isinstance(v, Registry)]
        if not found:
            raise InvalidOption(f"module {module_name} has no tasklease Registry")
        registry.update(found)
    return registry


def run_worker(store_config: StoreConfig, keys: Keyspace, registry: Registry, config: WorkerConfig) -> int:
    """Serve until SIGTERM/SIGINT (graceful), or a burst worker's end; a second signal stops at once."""
    return asyncio.run(_serve_worker(store_config, keys, registry, config))


async def _serve_worker(
    store_config: StoreConfig, keys: Keyspace, registry: Registry, config: WorkerConfig
) -> int:
    from tasklease.store import Store
    from tasklease.worker import Worker

    store = Store(store_config)
    await store.connect()
    worker = Worker(store, keys, registry, config)
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
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await worker.start()
        await worker.wait_stopped()
        await asyncio.gather(*background, return_exceptions=True)
    finally:
        await store.close()
    return EXIT_OK


def run_scheduler(store_config: StoreConfig, namespace: str, config: SchedulerConfig) -> int:
    """Register, campaign and lead until SIGTERM/SIGINT, then resign at once.

    Raises:
        DuplicateCandidate: Another live scheduler has this scheduler id.
    """
    return asyncio.run(_serve_scheduler(store_config, namespace, config))


async def _serve_scheduler(store_config: StoreConfig, namespace: str, config: SchedulerConfig) -> int:
    from tasklease.keys import Keyspace
    from tasklease.scheduler import Scheduler
    from tasklease.store import Store

    store = Store(store_config)
    await store.connect()
    scheduler = Scheduler(store, Keyspace(namespace), config)
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
        await store.close()
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
