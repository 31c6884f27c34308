"""What real `tasklease worker` processes give the processes they start, and what they leave behind.

- A SIGKILLed worker leaves no shell command running, grandchildren included
  (PDEATHSIG alone reaches only the direct child: executors/supervisor.py).
- Shell commands and sync-task children see no ``TASKLEASE_*`` variable and no
  other secret of the worker's environment, only the allowlist and ``--pass-env``.
- The worker imports nothing from its current directory (a planted
  ``sample_tasks.py``, ``tasklease.py`` or ``json.py``); ``--path DIR`` is the way to
  import from a directory.

Tasks are assigned by hand (``queue.assign_next`` with the worker's id and lease,
as the scheduler does).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from faults.procs import Proc, Procs, pid_running, process_env, until
from tasklease import codec
from tasklease.client import Client
from tasklease.keys import Keyspace
from tasklease.models import Task, TaskState
from tasklease.queue import assign_next
from tasklease.store import Store


@pytest.fixture
def procs(tasklease_bin: str, cli_env: dict[str, str], tmp_path: Path) -> Iterator[Procs]:
    group = Procs(tasklease_bin, process_env(cli_env), tmp_path)
    yield group
    group.cleanup()


async def registered(store: Store, keys: Keyspace, worker_id: str, proc: Proc) -> dict:
    async def probe() -> dict | None:
        if not proc.alive:
            raise AssertionError(proc.why("the worker exited before registering"))
        kv, _ = await store.get(keys.node(worker_id))
        if kv is None:
            return None
        node = codec.decode_obj(kv.key, kv.value)
        return node if node.get("pid") == proc.pid else None

    return await until(probe, within_s=20, what=f"{worker_id} registered", log=proc.tail)


async def run(
    client: Client, store: Store, keys: Keyspace, node: dict, proc: Proc, type_: str, payload=None
) -> Task:
    task = await client.submit(type_, payload, timeout_s=30)
    assigned = await assign_next(store, keys, "default", node["id"], node["lease"], time.time())
    assert assigned is not None and assigned.id == task.id
    try:
        return await client.wait(task.id, timeout_s=60)
    except Exception as exc:
        raise AssertionError(proc.why(f"{type_} did not finish: {exc}")) from exc


async def read_pids(paths: list[Path], proc: Proc) -> list[int]:
    def probe() -> list[int] | None:
        try:
            return [int(p.read_text()) for p in paths]
        except (OSError, ValueError):
            return None

    return await until(probe, within_s=15, what="the shell's pids", log=proc.tail)


async def test_a_sigkilled_worker_leaves_no_shell_grandchild_running(
    procs: Procs, store: Store, keyspace: Keyspace, client: Client, tmp_path: Path
):
    w = procs.worker("wk", "--allow", "shell")
    node = await registered(store, keyspace, "wk", w)
    files = [tmp_path / f"{name}.pid" for name in ("sh", "bg1", "bg2")]
    script = (
        f"echo $$ > {files[0]}.tmp; mv {files[0]}.tmp {files[0]}; "
        f"sleep 60 & echo $! > {files[1]}.tmp; mv {files[1]}.tmp {files[1]}; "
        f"sleep 60 & echo $! > {files[2]}.tmp; mv {files[2]}.tmp {files[2]}; wait"
    )
    await client.submit("shell", {"argv": ["sh", "-c", script]}, timeout_s=120)
    await assign_next(store, keyspace, "default", node["id"], node["lease"], time.time())
    pids = await read_pids(files, w)
    assert all(pid_running(pid) for pid in pids)
    try:
        w.signal(signal.SIGKILL)
        await w.wait_exit(within_s=5)
        for pid in pids:
            await until(
                lambda pid=pid: not pid_running(pid), within_s=5, what=f"shell process {pid} to be gone"
            )
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


ENV_TASKS = """
import os
from tasklease.executors.base import Registry

registry = Registry()


@registry.task
def environ() -> dict:
    return dict(os.environ)
"""


async def test_task_processes_see_no_secret_of_the_worker_environment(
    procs: Procs, store: Store, keyspace: Keyspace, client: Client, tmp_path: Path
):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "env_tasks.py").write_text(ENV_TASKS)
    # The worker's environment also holds TASKLEASE_ETCD and TASKLEASE_NAMESPACE (cli_env)
    secrets = {"AWS_SECRET_ACCESS_KEY": "aws-s3cret", "TASKLEASE_PROBE_SECRET": "tl-s3cret"}
    w = procs.spawn(
        "wenv",
        "worker", "--id", "wenv", "--log-format", "text", "--path", "mods", "--import", "env_tasks",
        "--allow", "shell", "--pass-env", "FOO_PASSED", "--lease-ttl", "3", "--heartbeat", "0.5",
        env={**secrets, "FOO_PASSED": "passed-on", "BAR_KEPT": "kept-back"},
    )  # fmt: skip
    node = await registered(store, keyspace, "wenv", w)
    shell = await run(client, store, keyspace, node, w, "shell", {"argv": ["env"]})
    assert shell.state is TaskState.SUCCEEDED, w.why(str(shell))
    sync = await run(client, store, keyspace, node, w, "environ")
    assert sync.state is TaskState.SUCCEEDED, w.why(str(sync))
    for seen, what in (
        (shell.result["stdout"].splitlines(), "shell"),
        ([f"{k}={v}" for k, v in sync.result.items()], "sync task"),
    ):
        text = "\n".join(seen)
        for value in (*secrets.values(), "kept-back"):
            assert value not in text, f"{what} saw {value}:\n{text}"
        assert not any(line.startswith("TASKLEASE_") for line in seen), f"{what}:\n{text}"
        assert "FOO_PASSED=passed-on" in seen, f"{what}:\n{text}"


async def test_pass_env_never_takes_a_tasklease_variable(procs: Procs):
    w = procs.spawn("wbad", "worker", "--id", "wbad", "--pass-env", "TASKLEASE_ETCD_PASSWORD")
    assert await w.wait_exit(within_s=30) == 2, w.why("expected exit 2")
    lines = w.log_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tasklease: error:"), w.why("one error line")
    assert "TASKLEASE_ETCD_PASSWORD" in lines[0] and "never passed" in lines[0]


PLANTED = "open({marker!r}, 'a').write({name!r} + '\\n')\nraise ImportError('planted {name}')\n"


async def test_nothing_is_imported_from_the_current_directory(
    procs: Procs, store: Store, keyspace: Keyspace, client: Client, tmp_path: Path
):
    # The worker's directory (tmp_path) holds modules that would shadow real ones
    marker = tmp_path / "planted-code-ran"
    for name in ("sample_tasks", "tasklease", "json"):
        (tmp_path / f"{name}.py").write_text(PLANTED.format(marker=str(marker), name=name))
    w = procs.worker("wplant")
    node = await registered(store, keyspace, "wplant", w)
    for type_ in ("add", "async_add"):  # in a child, in the worker itself
        done = await run(client, store, keyspace, node, w, type_, {"a": 1, "b": 2})
        assert done.state is TaskState.SUCCEEDED and done.result == 3, w.why(str(done))
    assert not marker.exists(), w.why(f"planted modules ran: {marker.read_text()}")


MUL_TASKS = """
from tasklease.executors.base import Registry

registry = Registry()


@registry.task
def mul(a, b):
    return a * b
"""


async def test_path_puts_a_directory_on_the_import_path(
    procs: Procs, store: Store, keyspace: Keyspace, client: Client, tmp_path: Path
):
    module = MUL_TASKS
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "path_tasks.py").write_text(module)
    (tmp_path / "here_tasks.py").write_text(module)
    # From the current directory: refused, saying how to allow it
    w = procs.spawn("where", "worker", "--id", "where", "--import", "here_tasks")
    assert await w.wait_exit(within_s=30) == 2, w.why("expected exit 2")
    assert "add --path DIR" in w.log_text(), w.why("expected the --path hint")
    # With --path (relative to the worker's directory): imported, by the worker and its children
    w = procs.spawn(
        "wpath", "worker", "--id", "wpath", "--log-format", "text", "--path", "mods", "--import", "path_tasks",
        "--lease-ttl", "3", "--heartbeat", "0.5",
    )  # fmt: skip
    node = await registered(store, keyspace, "wpath", w)
    assert "mul" in node["types"]
    done = await run(client, store, keyspace, node, w, "mul", {"a": 6, "b": 7})
    assert done.state is TaskState.SUCCEEDED and done.result == 42, w.why(str(done))
