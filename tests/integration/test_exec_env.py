"""What processes started for tasks get from their worker (a worker in this process).

- Environment: shell commands and sync-task children get an allowlist (PATH,
  LANG, HOME...), the variables the worker is told to pass (``pass_env``) and,
  for shell, the task's own ``env``; never the rest (etcd credentials, cloud keys).
- Import path: a sync-task child imports from the worker's path, not from the
  current directory: a module planted there (``tasklease.py``, ``json.py``)
  shadows nothing.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tasklease.client import Client
from tasklease.errors import InvalidOption
from tasklease.executors.base import Registry, child_environment
from tasklease.executors.builtin import builtin_registry
from tasklease.keys import Keyspace
from tasklease.models import Task, TaskState
from tasklease.queue import assign_next
from tasklease.store import Store
from tasklease.worker import Worker, WorkerConfig

SECRETS = {"TASKLEASE_ETCD_PASSWORD": "s3cret", "AWS_SECRET_ACCESS_KEY": "x-aws-secret-x"}

TASKS_MODULE = """
import os
from tasklease.executors.base import Registry

registry = Registry()


@registry.task
def environ() -> dict:
    return dict(os.environ)


@registry.task
def where() -> dict:
    import json, sys, tasklease
    return {"tasklease": tasklease.__file__, "json": json.__file__, "path": sys.path}
"""


@pytest.fixture(scope="module")
def tasks_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A task module in a directory of its own, on this process's import path (so children have it)."""
    directory = tmp_path_factory.mktemp("exec-env-tasks")
    (directory / "exec_env_tasks.py").write_text(TASKS_MODULE)
    sys.path.insert(0, str(directory))
    try:
        module = importlib.import_module("exec_env_tasks")
        yield module.registry
    finally:
        sys.path.remove(str(directory))
        sys.modules.pop("exec_env_tasks", None)


@pytest.fixture
async def make_worker(store: Store, keyspace: Keyspace, tasks_module: Registry) -> AsyncIterator:
    workers: list[Worker] = []

    async def make(**config) -> Worker:
        registry = builtin_registry(frozenset({"shell"}))
        registry.update([tasks_module])
        config.setdefault("worker_id", f"wenv{len(workers)}")
        w = Worker(store, keyspace, registry, WorkerConfig(lease_ttl_s=3, heartbeat_s=0.5, **config))
        await w.start()
        workers.append(w)
        return w

    yield make
    for w in workers:
        await w.kill()


async def run(
    client: Client, store: Store, keyspace: Keyspace, worker: Worker, type_: str, payload=None
) -> Task:
    task = await client.submit(type_, payload, timeout_s=30)
    assigned = await assign_next(store, keyspace, "default", worker.id, worker.lease_id, time.time())
    assert assigned is not None and assigned.id == task.id
    final = await client.wait(task.id, timeout_s=60)
    assert final.state is TaskState.SUCCEEDED, final
    return final


async def test_tasks_see_no_secret_of_the_worker_environment(
    client, store, keyspace, make_worker, monkeypatch
):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FOO_PASSED", "passed-on")
    monkeypatch.setenv("BAR_KEPT", "kept-back")
    monkeypatch.setenv("LANG", "C.UTF-8")
    worker = await make_worker(pass_env=("FOO_PASSED",))

    shell = await run(client, store, keyspace, worker, "shell", {"argv": ["env"], "env": {"TASK_VAR": "t"}})
    lines = set(shell.result["stdout"].splitlines())
    sync = await run(client, store, keyspace, worker, "environ")
    for seen, what in ((lines, "shell"), ({f"{k}={v}" for k, v in sync.result.items()}, "sync task")):
        text = "\n".join(sorted(seen))
        for name, value in SECRETS.items():
            assert value not in text and f"{name}=" not in text, f"{what} saw {name}"
        assert "BAR_KEPT=kept-back" not in seen, what
        assert "FOO_PASSED=passed-on" in seen, what
        assert "LANG=C.UTF-8" in seen, what
        assert any(line.startswith("PATH=") for line in seen), what
        assert not any(line.startswith("TASKLEASE_") for line in seen), f"{what}: {text}"
    assert "TASK_VAR=t" in lines  # the shell task's own env


def test_tasklease_variables_are_never_passed() -> None:
    for name in ("TASKLEASE_ETCD_PASSWORD", "tasklease_etcd", "TASKLEASE_X"):
        with pytest.raises(InvalidOption, match="TASKLEASE_"):
            WorkerConfig(worker_id="w", pass_env=(name,))
    with pytest.raises(InvalidOption, match="not an environment variable name"):
        WorkerConfig(worker_id="w", pass_env=("A=B",))
    env = child_environment(
        ("FOO",), {"PATH": "/bin", "FOO": "1", "SECRET": "2", "TASKLEASE_ETCD_PASSWORD": "3"}
    )
    assert env == {"PATH": "/bin", "FOO": "1"}


async def test_a_module_planted_in_the_current_directory_shadows_nothing_in_children(
    client, store, keyspace, make_worker, tmp_path: Path, monkeypatch
):
    planted = tmp_path / "planted"
    planted.mkdir()
    marker = tmp_path / "planted-code-ran"
    for name in ("tasklease", "json", "exec_env_tasks"):
        (planted / f"{name}.py").write_text(
            f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\nraise SystemExit('planted {name}')\n"
        )
    monkeypatch.chdir(planted)
    worker = await make_worker()
    final = await run(client, store, keyspace, worker, "where")
    assert not marker.exists(), marker.read_text()
    assert not final.result["tasklease"].startswith(str(planted))
    assert not final.result["json"].startswith(str(planted))
    assert str(planted) not in final.result["path"] and "" not in final.result["path"]
