"""The container test: the image built offline, the Compose stack up under podman, real kills.

Builds the Dockerfile on a local Debian base (tests/deploy/containers.py says
why and how), then runs ``deploy/compose/compose.yaml`` with the test override
``compose.test.yaml`` (etcd and Prometheus from what this machine has) under
podman-compose, and drives it as a user would:

- submits tasks with kilobyte payloads from a client container (the ``cli``
  service) and sees them succeed;
- scales workers to 3 and sees them register;
- SIGKILLs a worker container mid-task and sees its tasks finish elsewhere;
- stops a worker container (SIGTERM through tini) mid-task and sees it drain:
  its tasks finish on it and it exits 0 within the compose file's grace;
- checks the web port (probes, token, API), the image's HEALTHCHECK, and
  Prometheus scraping every worker and the leader's cluster gauges;
- ``down`` and ``up`` again with the etcd volume kept: the tasks are still there.

Skipped only when podman cannot run containers here (after installing it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.containers import (
    REPO,
    REPORT,
    build_image,
    ensure_tools,
    image_size,
    podman,
    podman_env,
    unusable,
)

pytestmark = [pytest.mark.container, pytest.mark.timeout(1500)]

COMPOSE_DIR = REPO / "deploy" / "compose"
TOKEN = "compose-test-token-0123456789"
IMAGE = "localhost/tasklease:ci"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """One Compose project: podman-compose with both files, the web API and Prometheus on the host."""

    def __init__(self, env: dict[str, str], project: str) -> None:
        self.project = project
        self.web_port = free_port()
        self.prom_port = free_port()
        self.env = {
            **env,
            "TASKLEASE_IMAGE": IMAGE,
            "TASKLEASE_WEB_TOKEN": TOKEN,
            "TASKLEASE_WEB_PORT": str(self.web_port),
            "PROMETHEUS_PORT": str(self.prom_port),
            "PROMETHEUS_BIN": _prometheus_binary(),
        }
        self.tool = str(Path(sys.executable).with_name("podman-compose"))

    def compose(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.tool, "-p", self.project, "-f", "compose.yaml", "-f", "compose.test.yaml", *args]
        done = subprocess.run(
            cmd, cwd=COMPOSE_DIR, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} -> {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def cli(self, *args: str, entrypoint: str | None = None) -> str:
        """Run the ``cli`` service (a client container on the stack's network); its stdout."""
        extra = ["--entrypoint", entrypoint] if entrypoint else []
        return self.compose("--profile", "cli", "run", "--rm", *extra, "cli", *args, timeout=120).stdout

    def api(self, path: str, *, token: str | None = TOKEN) -> tuple[int, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.web_port}{path}")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def prometheus(self, query: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        with urllib.request.urlopen(url, timeout=10) as answer:
            result: list[dict[str, Any]] = json.loads(answer.read())["data"]["result"]
            return result

    def containers(self, service: str) -> dict[str, str]:
        """Running containers of ``service``: short id (the worker id's prefix) -> name."""
        out = podman(
            self.env,
            "ps",
            "--filter",
            f"label=io.podman.compose.project={self.project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
            "--format",
            "{{.ID}} {{.Names}}",
        )
        return dict(line.split() for line in out.splitlines() if line.strip())

    def logs(self) -> str:
        out = []
        for name in podman(
            self.env,
            "ps",
            "-a",
            "--filter",
            f"label=io.podman.compose.project={self.project}",
            "--format",
            "{{.Names}}",
        ).split():
            tail = subprocess.run(
                ["podman", "logs", "--tail", "15", name], env=self.env, capture_output=True, text=True
            ).stdout
            out.append(f"--- {name}\n{tail}")
        return "\n".join(out)


def _prometheus_binary() -> str:
    sys.path.insert(0, str(REPO / "tests"))
    from promtools import ensure_prometheus

    return ensure_prometheus().prometheus


def until(check: Callable[[], Any], within_s: float, what: str, stack: Stack | None = None) -> Any:
    deadline = time.monotonic() + within_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, ValueError, KeyError) as exc:  # not up yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    logs = stack.logs() if stack else ""
    raise AssertionError(f"{what}: not within {within_s} s (last: {last!r})\n{logs}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ensure_tools()
    env = podman_env(tmp_path_factory.mktemp("podman"))
    if why := unusable(env):
        pytest.skip(f"podman cannot run containers here: {why}")
    started = time.monotonic()
    build_image(env, IMAGE)
    size = image_size(env, IMAGE)
    REPORT.append(
        f"image {IMAGE}: {size / 1e6:.0f} MB (with the etcd extra), built offline in "
        f"{time.monotonic() - started:.0f} s"
    )
    s = Stack(env, f"tlci{os.getpid()}")
    try:
        s.compose("up", "-d")
        yield s
    finally:
        s.compose("down", "-v", "-t", "5", "--remove-orphans", check=False, timeout=600)
        podman(env, "image", "prune", "--force", check=False)


def _live_workers(stack: Stack) -> list[dict[str, Any]]:
    status, body = stack.api("/api/workers")
    assert status == 200, body
    return [w for w in body if not w["draining"]]


def _task(stack: Stack, task_id: str) -> dict[str, Any]:
    status, body = stack.api(f"/api/tasks/{task_id}")
    assert status == 200, body
    return dict(body)


def _worker_of(stack: Stack, task_id: str) -> str:
    worker: str = _task(stack, task_id)["attempts"][-1]["worker"]
    return worker


def _all(stack: Stack, ids: list[str], state: str) -> bool:
    return all(_task(stack, i)["state"] == state for i in ids)


SUBMIT = """
import json, os, sys
from tasklease import SyncClient
from tasklease.store import StoreConfig
specs = json.loads(sys.argv[1])  # [[type, payload, copies], ...] (an argument is at most 128 KiB)
with SyncClient(StoreConfig.from_env(), namespace=os.environ["TASKLEASE_NAMESPACE"]) as client:
    print(json.dumps([client.submit(t, payload).id for t, payload, n in specs for _ in range(n)]))
"""


def submit(stack: Stack, task_type: str, payload: Any, copies: int) -> list[str]:
    """Submit ``copies`` tasks from a client container (a Python client inside the image); their ids."""
    out = stack.cli("-c", SUBMIT, json.dumps([[task_type, payload, copies]]), entrypoint="python")
    ids: list[str] = json.loads(out.strip().splitlines()[-1])
    assert len(ids) == copies
    return ids


def test_the_compose_stack_runs_scales_recovers_drains_and_keeps_its_data(stack: Stack) -> None:
    t0 = time.monotonic()
    steps: list[str] = []

    def step(name: str) -> None:
        steps.append(f"{name} ({time.monotonic() - t0:.0f} s)")

    # The stack is up: both schedulers, one worker, the web server
    until(
        lambda: stack.api("/readyz", token=None) == (200, {"status": "ready", "reason": "serving"}),
        90,
        "web ready",
        stack,
    )
    until(lambda: len(_live_workers(stack)) == 1, 90, "one worker registered", stack)
    assert stack.api("/api/overview", token=None)[0] == 401  # the token is required off loopback
    step("up")

    # Submit from a client container: the CLI, then a Python client with kilobyte payloads
    out = stack.cli("submit", "checksum", "--payload", json.dumps({"text": "hello"}), "--wait")
    assert "succeeded" in out and "sha256" in out, out
    text = "".join(chr(0x41 + i % 26) for i in range(4096))  # 4 KiB
    ids = submit(stack, "checksum", {"text": text, "rounds": 2000}, 40)
    until(lambda: _all(stack, ids, "succeeded"), 120, "40 checksum tasks to succeed", stack)
    assert _task(stack, ids[0])["result"]["bytes"] == 4096
    step("submitted and ran 41 tasks")

    # Scale to 3 workers
    stack.compose("up", "-d", "--scale", "worker=3")
    until(lambda: len(_live_workers(stack)) == 3, 120, "three workers registered", stack)
    assert len(stack.containers("worker")) == 3
    step("scaled to 3 workers")

    # SIGKILL a worker container mid-task: its tasks finish on another worker
    waits = submit(stack, "wait", {"seconds": 6}, 6)
    until(lambda: _all(stack, waits, "running"), 60, "6 wait tasks running", stack)
    victim_id = _worker_of(stack, waits[0])
    victims = [i for i in waits if _worker_of(stack, i) == victim_id]
    container = next(name for cid, name in stack.containers("worker").items() if victim_id.startswith(cid))
    podman(stack.env, "kill", "--signal", "KILL", container)
    until(lambda: _all(stack, waits, "succeeded"), 120, "every wait task to succeed after the kill", stack)
    for task_id in victims:
        attempts = _task(stack, task_id)["attempts"]
        assert attempts[0]["worker"] == victim_id and attempts[-1]["worker"] != victim_id, attempts
        assert attempts[-1]["outcome"] == "succeeded"
    step(f"SIGKILLed {container} mid-task: {len(victims)} tasks finished elsewhere")

    # Stop a worker container (SIGTERM via tini): it drains; its tasks finish on it; exit 0
    until(lambda: len(_live_workers(stack)) >= 2, 60, "two live workers", stack)
    drains = submit(stack, "wait", {"seconds": 4}, 4)
    until(lambda: _all(stack, drains, "running"), 60, "4 wait tasks running", stack)
    worker_id = _worker_of(stack, drains[0])
    mine = [i for i in drains if _worker_of(stack, i) == worker_id]
    container = next(name for cid, name in stack.containers("worker").items() if worker_id.startswith(cid))
    grace = _stop_grace_s()
    started = time.monotonic()
    podman(stack.env, "stop", "--time", str(grace), container, timeout=grace + 60)
    took = time.monotonic() - started
    state = json.loads(podman(stack.env, "inspect", container))[0]["State"]
    assert state["ExitCode"] == 0, state  # drained, not killed at the end of the grace (137)
    assert took < grace, took
    for task_id in mine:
        attempts = _task(stack, task_id)["attempts"]
        assert [(a["worker"], a["outcome"]) for a in attempts] == [(worker_id, "succeeded")], attempts
    until(lambda: _all(stack, drains, "succeeded"), 60, "the other drain tasks", stack)
    step(f"stopped {container} mid-task: drained in {took:.1f} s, exit 0")

    # Health checks, metrics, Prometheus
    for service in ("worker", "scheduler-1", "web"):
        name = next(iter(stack.containers(service).values()))
        done = subprocess.run(
            ["podman", "healthcheck", "run", name], env=stack.env, capture_output=True, text=True
        )
        assert done.returncode == 0, (service, done.stdout, done.stderr)
    worker = next(iter(stack.containers("worker").values()))
    metrics = podman(
        stack.env,
        "exec",
        worker,
        "python",
        "-c",
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9100/metrics').read().decode())",
    )
    assert "tasklease_worker_capacity" in metrics
    live = len(stack.containers("worker"))
    until(
        lambda: len([r for r in stack.prometheus('up{job="tasklease-worker"} == 1')]) == live,
        90,
        f"Prometheus scraping {live} workers",
        stack,
    )
    until(lambda: stack.prometheus("sum(tasklease_workers)"), 60, "the leader's gauges in Prometheus", stack)
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.prom_port}/api/v1/rules", timeout=10) as answer:
        groups = json.loads(answer.read())["data"]["groups"]
    assert {r["name"] for g in groups for r in g["rules"]} >= {"TaskleaseNoLiveWorker"}
    step("health checks, /metrics, Prometheus targets and rules")

    # down (the etcd volume kept) and up again: the finished tasks are still there
    # podman-compose's down handles the replicas the file declares; the scaled ones are
    # orphans to it (deploy/compose/README.md): without --remove-orphans they keep running
    stack.compose("down", "-t", "5", "--remove-orphans", timeout=600)
    assert not stack.containers("worker")
    stack.compose("up", "-d")
    until(lambda: stack.api("/readyz", token=None)[0] == 200, 90, "web ready again", stack)
    assert _all(stack, ids + waits + drains, "succeeded")
    until(lambda: len(_live_workers(stack)) == 1, 90, "a worker again", stack)
    again = submit(stack, "checksum", {"text": text}, 1)
    until(lambda: _all(stack, again, "succeeded"), 60, "a task after the restart", stack)
    step("down and up again: 51 finished tasks kept, a new one ran")
    REPORT.append("container test: " + "; ".join(steps))


def _stop_grace_s() -> int:
    compose = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    worker = compose["services"]["worker"]
    grace = int(re.fullmatch(r"(\d+)s", worker["stop_grace_period"]).group(1))  # type: ignore[union-attr]
    flag = next(int(a.split("=")[1]) for a in worker["command"] if a.startswith("--grace="))
    assert grace > flag, "stop_grace_period must cover the worker's --grace"
    return grace
