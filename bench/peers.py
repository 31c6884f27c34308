"""Peer benchmarks: Celery and Dramatiq under the same workloads as tasklease.

Each peer runs on this machine against its own ``redis-server`` (the Debian
package), started on a free port of 127.0.0.1 with a temporary directory and no
persistence, with 2 worker processes, and is driven by one client process
(``peer_apps/driver.py``) that prints its figures as one JSON line. The peers'
Python packages live in their own environment, ``bench/.venv-peers``, created
on first use from ``peer_apps/requirements.txt`` (pinned), never in the
project's environment.

Worker settings (the usual fast choice for no-op tasks, everything else default):

* Celery: one worker node, ``celery -A celery_app worker -P prefork -c 2
  --without-gossip --without-mingle --without-heartbeat -l WARNING`` (2 prefork
  pool processes plus the node's consumer process; prefetch multiplier 4,
  early ack, JSON), Redis broker on db 0 and Redis result backend on db 1.
* Dramatiq: ``dramatiq dramatiq_app --processes 2 --threads 8`` (default
  middleware plus Results with RedisBackend), Redis broker on db 0, results on
  db 1.

Manual use: ``python -m bench.peers [--quick]`` runs both peers and prints
their result dicts.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PEER_APPS = BENCH_DIR / "peer_apps"
PEER_VENV = BENCH_DIR / ".venv-peers"
REQUIREMENTS = PEER_APPS / "requirements.txt"
PEERS = ("celery", "dramatiq")

#: The port the Debian package's own Redis service would use; never ours.
DEBIAN_REDIS_PORT = 6379

WORKER_COMMANDS: dict[str, list[str]] = {
    "celery": [
        "-m",
        "celery",
        "-A",
        "celery_app",
        "worker",
        "-P",
        "prefork",
        "-c",
        "2",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-l",
        "WARNING",
        "-n",
        "bench@%h",
    ],
    "dramatiq": ["-m", "dramatiq", "dramatiq_app", "--processes", "2", "--threads", "8"],
}

#: Short, for the comparison table.
WORKER_SETTINGS = {
    "celery": "1 worker node, prefork -c 2, without gossip/mingle/heartbeat; Redis broker + Redis results",
    "dramatiq": "--processes 2 --threads 8; RedisBroker + Results(RedisBackend)",
}

#: Longer, kept in the results.
WORKER_DETAILS = {
    "celery": (
        "one worker node with a prefork pool of 2 processes (plus the node's consumer process), "
        "--without-gossip --without-mingle --without-heartbeat, -l WARNING; Celery defaults otherwise "
        "(prefetch multiplier 4, acks early, json); Redis broker db0, Redis result backend db1 (pub/sub); "
        "client: noop.delay(i), AsyncResult.get()"
    ),
    "dramatiq": (
        "dramatiq dramatiq_app --processes 2 --threads 8; default middleware plus Results(RedisBackend); "
        "RedisBroker db0, results db1; client: noop.send(i), Message.get_result(block=True)"
    ),
}

REDIS_ARGS = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "yes"]


def _log(msg: str) -> None:
    print(f"[bench.peers] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- peer environment


def _peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


def _requirements_hash() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def peer_versions(python: Path | None = None) -> dict[str, str]:
    """Versions of the peer packages installed in the peers' environment."""
    python = python or _peer_python()
    code = (
        "import json, importlib.metadata as m; "
        "print(json.dumps({p: m.version(p) for p in ('celery', 'kombu', 'dramatiq', 'redis')}))"
    )
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout
    return {("redis-py" if k == "redis" else k): v for k, v in json.loads(out).items()}


def ensure_peer_env() -> Path:
    """Create or update bench/.venv-peers from the pinned requirements; return its python.

    Idempotent: a stamp file holds the hash of the requirements it was built
    from, and a file lock keeps two benchmark runs from installing at once.
    """
    python = _peer_python()
    stamp = PEER_VENV / ".requirements.sha256"
    want = _requirements_hash()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return python
    PEER_VENV.mkdir(parents=True, exist_ok=True)
    with open(PEER_VENV / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
            return python
        _log(f"installing the peers' packages into {PEER_VENV} (first use)")
        if not python.exists():
            # The project's venv python creates a venv on the same base interpreter.
            subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        done = subprocess.run([*pip, "-r", str(REQUIREMENTS)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip install into {PEER_VENV} failed:\n{done.stdout}\n{done.stderr}")
        stamp.write_text(want + "\n")
        versions = peer_versions(python)
        _log("installed: " + ", ".join(f"{k}=={v}" for k, v in versions.items()))
    return python


# --------------------------------------------------------------------------- redis


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def ensure_redis_server() -> str:
    """Path of redis-server, installing the Debian package if it is missing.

    Should the package start its own service on 6379 (it does not in this
    sandbox: no systemd, and policy-rc.d denies starts), it is stopped again.
    """
    path = shutil.which("redis-server")
    if path:
        return path
    busy_before = _listening(DEBIAN_REDIS_PORT)
    _log("redis-server missing: apt-get install -y redis-server")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "redis-server"], check=True, env=env, stdout=subprocess.DEVNULL
    )
    if not busy_before and _listening(DEBIAN_REDIS_PORT):
        _log("the package started a Redis service on 6379; stopping it")
        subprocess.run(["service", "redis-server", "stop"], check=False, capture_output=True)
        if _listening(DEBIAN_REDIS_PORT):
            subprocess.run(
                ["redis-cli", "-p", str(DEBIAN_REDIS_PORT), "shutdown", "nosave"],
                check=False,
                capture_output=True,
            )
    path = shutil.which("redis-server")
    if not path:
        raise RuntimeError("redis-server is still missing after apt-get install")
    return path


def redis_server_version(binary: str | None = None) -> str:
    out = subprocess.run(
        [binary or ensure_redis_server(), "--version"], check=True, capture_output=True, text=True
    ).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip()


def _free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != DEBIAN_REDIS_PORT:
            return port


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _guarded(cmd: list[str]) -> list[str]:
    """``cmd`` run so that it gets SIGTERM should this benchmark process die.

    ``setpriv --pdeathsig`` (util-linux) is a safety net only, for a benchmark
    killed with SIGKILL; normal and error exits stop every process through the
    context managers.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else cmd


def _stop_process_group(proc: subprocess.Popen[Any], *, grace: float = 10.0) -> None:
    """SIGTERM the leader ``proc`` (it stops its own children), then SIGKILL what is left of its group."""
    pgid = proc.pid  # started with start_new_session=True: its own group
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _log(
                f"pid {proc.pid} ignored SIGTERM for {grace:.0f}s, SIGKILL: {' '.join(map(str, proc.args))[:150]}"
            )
    # Children (pool processes) may outlive the leader: kill the rest of the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """Run a throwaway redis-server on a free 127.0.0.1 port; yield its URL.

    Data directory is a temporary directory under ``workdir``; no RDB
    snapshots (``--save ''``), no AOF (``--appendonly no``). The log is kept in
    ``workdir/redis-<port>.log``. The server is stopped on exit, errors included.
    """
    binary = ensure_redis_server()
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="redis-", dir=workdir) as datadir:
        for _attempt in range(5):
            port = _free_port()
            log = workdir / f"redis-{port}.log"
            cmd = [binary, "--port", str(port), *REDIS_ARGS, "--dir", datadir, "--logfile", str(log)]
            proc = subprocess.Popen(
                _guarded(cmd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and proc.poll() is None and not _redis_ping(port):
                    time.sleep(0.05)
                if proc.poll() is not None or not _redis_ping(port):
                    continue  # port taken in the meantime, or a failed start: try another
                yield f"redis://127.0.0.1:{port}"
                return
            finally:
                _stop_process_group(proc, grace=5)
        raise RuntimeError(f"could not start redis-server; see the logs in {workdir}")


def redis_settings() -> str:
    return "redis-server " + " ".join(a if a else "''" for a in REDIS_ARGS) + " --port <free> --dir <tempdir>"


# --------------------------------------------------------------------------- peers


def _peer_env(redis_url: str) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(var, None)
    env.update(
        BENCH_REDIS_URL=redis_url,
        PYTHONPATH=str(PEER_APPS),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


@contextlib.contextmanager
def _workers(name: str, python: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[Any]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            _guarded([str(python), *WORKER_COMMANDS[name]]),
            cwd=PEER_APPS,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            _stop_process_group(proc)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_peer(name: str, *, tasks: int, latency_tasks: int, rate: float, workdir: Path) -> dict[str, Any]:
    """Run the throughput and latency workloads on one peer ("celery" or "dramatiq").

    Starts its own Redis and 2 worker processes, runs ``peer_apps/driver.py``
    as the client, stops everything (errors included) and returns the figures
    with the versions and settings used.
    """
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; expected one of {PEERS}")
    python = ensure_peer_env()
    versions = peer_versions(python)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    worker_log = workdir / f"{name}-workers.log"
    raw_file = workdir / f"{name}-latencies.json"
    timeout = 120 + tasks / 50 + latency_tasks / rate * 3
    load_before = os.getloadavg()[0]
    with redis_server(workdir) as url:
        env = _peer_env(url)
        with _workers(name, python, env, worker_log) as workers:
            driver_cmd = [str(python), str(PEER_APPS / "driver.py"), name, "--tasks", str(tasks)]
            driver_cmd += ["--latency-tasks", str(latency_tasks), "--rate", str(rate)]
            driver_cmd += ["--warmup", str(min(500, tasks)), "--raw", str(raw_file)]
            driver = subprocess.Popen(
                _guarded(driver_cmd),
                cwd=PEER_APPS,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            try:
                out, err = driver.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _stop_process_group(driver, grace=2)
                out, err = driver.communicate()
                raise RuntimeError(
                    f"{name} driver timed out after {timeout:.0f}s\n{err.decode(errors='replace')[-3000:]}\n"
                    f"workers' log:\n{_tail(worker_log)}"
                ) from None
            finally:
                _stop_process_group(driver, grace=2)
            if driver.returncode != 0 or workers.poll() is not None:
                raise RuntimeError(
                    f"{name} driver exited {driver.returncode} (workers: {workers.poll()})\n"
                    f"{err.decode(errors='replace')[-3000:]}\nworkers' log:\n{_tail(worker_log)}"
                )
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{name} driver printed no JSON line:\n{out.decode()[-2000:]}")
    measured = json.loads(lines[-1])
    return {
        "system": name,
        "version": measured["version"],
        "settings": WORKER_SETTINGS[name] + f" (redis-server {redis_server_version()}, no persistence)",
        "throughput_tasks_s": measured["throughput_tasks_s"],
        "submit_rate_s": measured["submit_rate_s"],
        "p50_ms": measured["p50_ms"],
        "p95_ms": measured["p95_ms"],
        "p99_ms": measured["p99_ms"],
        "tasks": tasks,
        "latency_tasks": latency_tasks,
        "rate": rate,
        "versions": {**versions, "redis-server": redis_server_version()},
        "settings_detail": WORKER_DETAILS[name],
        "redis_settings": redis_settings(),
        "worker_command": " ".join([name if name == "dramatiq" else "celery", *WORKER_COMMANDS[name][2:]]),
        "latency_method": measured["latency_method"],
        "mean_ms": measured["mean_ms"],
        "max_ms": measured["max_ms"],
        "achieved_submit_rate_s": measured["achieved_submit_rate_s"],
        "submit_lag_max_ms": measured["submit_lag_max_ms"],
        "throughput_elapsed_s": measured["throughput_elapsed_s"],
        "throughput_cleanup_s": measured["throughput_cleanup_s"],
        "raw_latencies_file": str(raw_file),
        # The machine is shared: the 1-minute load average tells how noisy the figures may be.
        "loadavg_1m_before": load_before,
        "loadavg_1m_after": os.getloadavg()[0],
    }


# --------------------------------------------------------------------------- manual CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description="Run the peer benchmarks.")
    parser.add_argument("--quick", action="store_true", help="1000 throughput tasks, 200 latency tasks")
    parser.add_argument("--tasks", type=int, help="throughput tasks (default 5000, quick 1000)")
    parser.add_argument("--latency-tasks", type=int, help="latency tasks (default 500, quick 200)")
    parser.add_argument("--rate", type=float, default=100.0, help="latency submits per second (default 100)")
    parser.add_argument("--peer", choices=PEERS, action="append", help="only this peer (repeatable)")
    parser.add_argument("--workdir", type=Path, help="logs and Redis temp dirs (default: a temp dir)")
    args = parser.parse_args(argv)
    tasks = args.tasks or (1000 if args.quick else 5000)
    latency_tasks = args.latency_tasks or (200 if args.quick else 500)

    # SIGTERM and SIGHUP unwind like Ctrl-C, so the context managers stop workers and Redis.
    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-peers-"))
        )
        for name in args.peer or PEERS:
            _log(f"{name}: {tasks} throughput tasks, {latency_tasks} latency tasks at {args.rate}/s")
            result = run_peer(name, tasks=tasks, latency_tasks=latency_tasks, rate=args.rate, workdir=workdir)
            print(json.dumps(result, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
