"""The embedded stack: a local etcd, one scheduler and N worker processes.

``tasklease dev`` runs it in the foreground with one log stream until Ctrl-C;
``tasklease demo`` runs it in the background with a workload; the benchmarks
use it too. Everything is started by :class:`Stack` and stopped by it, in
reverse order: workers (SIGTERM: they drain), the scheduler (it resigns),
then etcd.

With ``auth`` (``dev`` and ``demo``), etcd runs with authentication on (see
:mod:`tasklease.etcd_server`); the root password's file is
``DATA_DIR/root-password`` (0600). The processes get the user and the file's
path in ``TASKLEASE_ETCD_USER`` / ``TASKLEASE_ETCD_PASSWORD_FILE``: the
password is never on a command line or in an environment.

With ``http`` (``dev --http``, ``demo --http``), each process it starts serves
its own ``/metrics``, ``/healthz`` and ``/readyz`` (one endpoint per process,
as in production, so a Prometheus pointed at them sees the same series as it
would from a real cluster): on free ports when the address's port is 0, else
the scheduler on PORT and ``worker-i`` on PORT+i. :attr:`Stack.http_urls`
says where each one is.

With ``web`` (``dev`` by default, ``demo``), it also runs ``tasklease web``
(the REST API and the dashboard) on that address (port 0: a free one);
:attr:`Stack.web_url` says where. It gets ``TASKLEASE_WEB_TOKEN`` from the
calling environment, if set.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from tasklease.etcd_server import (
    PASSWORD_FILE_NAME,
    EtcdServer,
    free_port,
    make_private_dir,
    open_private_log,
)
from tasklease.httpserver import HttpAddress
from tasklease.store import StoreConfig

# Connection settings of the calling environment that must not reach this stack's processes.
_CONNECTION_VARIABLES = (
    "TASKLEASE_ETCD_USER",
    "TASKLEASE_ETCD_PASSWORD",
    "TASKLEASE_ETCD_PASSWORD_FILE",
    "TASKLEASE_ETCD_CA",
    "TASKLEASE_ETCD_CERT",
    "TASKLEASE_ETCD_KEY",
    "TASKLEASE_ETCD_TLS_SERVER_NAME",
    # Each process gets its own --http: one inherited address would be bound by the first only.
    "TASKLEASE_HTTP",
)
_WORKER_NUMBER = re.compile(r"worker-(\d+)")


class Stack:
    """A local etcd plus tasklease processes.

    Args:
        data_dir: Directory for etcd's data (and the process logs when ``log_dir``).
        port: etcd client port (0 = a free one).
        workers: How many worker processes to start.
        namespace: The namespace they use.
        worker_args: Extra ``tasklease worker`` options.
        scheduler_args: Extra ``tasklease scheduler`` options.
        log_dir: Send each process's log to a file here instead of our stderr.
        log_format: ``text`` or ``json``.
        unsafe_no_fsync: Run etcd without fsync (benchmarks only).
        auth: Run etcd with authentication on (password file ``data_dir/root-password``).
        http: Give each scheduler and worker an HTTP endpoint (see the module docstring).
        web: Run ``tasklease web`` on this address (port 0: a free one).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        workers: int = 2,
        namespace: str = "tasklease",
        worker_args: Sequence[str] = (),
        scheduler_args: Sequence[str] = (),
        log_dir: Path | None = None,
        log_format: str = "text",
        unsafe_no_fsync: bool = False,
        auth: bool = False,
        http: HttpAddress | None = None,
        web: HttpAddress | None = None,
    ) -> None:
        self.etcd = EtcdServer(
            data_dir=Path(data_dir) / "etcd",
            client_port=port,
            unsafe_no_fsync=unsafe_no_fsync,
            auth=auth,
            password_file=Path(data_dir) / PASSWORD_FILE_NAME,
        )
        self.n_workers = workers
        self.namespace = namespace
        self.worker_args = list(worker_args)
        self.scheduler_args = list(scheduler_args)
        self.log_dir = log_dir
        self.log_format = log_format
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.http = http
        # Process name -> base URL of its HTTP endpoint (add /metrics, /readyz...).
        self.http_urls: dict[str, str] = {}
        self.web = web
        # Base URL of the dashboard and REST API (tasklease web), once started.
        self.web_url: str | None = None
        self._logs: list[IO[bytes]] = []

    @property
    def endpoint(self) -> str:
        """Etcd's client URL."""
        return self.etcd.endpoint

    def env(self) -> dict[str, str]:
        """Environment for a tasklease process of this stack (credentials as a file's path only)."""
        env = {k: v for k, v in os.environ.items() if k not in _CONNECTION_VARIABLES}
        env["TASKLEASE_ETCD"] = self.endpoint
        env["TASKLEASE_NAMESPACE"] = self.namespace
        credentials = self.etcd.credentials
        if credentials is not None:
            env["TASKLEASE_ETCD_USER"] = credentials[0]
            env["TASKLEASE_ETCD_PASSWORD_FILE"] = str(credentials[1])
        return env

    def store_config(self, **options: Any) -> StoreConfig:
        """How to connect to this stack's etcd (with its credentials when auth is on)."""
        credentials = self.etcd.credentials
        if credentials is not None:
            options.setdefault("user", credentials[0])
            options.setdefault("password_file", str(credentials[1]))
        return StoreConfig.from_text(self.endpoint, **options)

    def spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start ``tasklease ARGS`` as process ``name``."""
        out: IO[bytes] | None = None
        if self.log_dir is not None:
            make_private_dir(self.log_dir)
            out = open_private_log(self.log_dir / f"{name}.log")
            self._logs.append(out)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasklease", *args],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
        self.procs[name] = proc
        return proc

    def http_args(self, name: str) -> list[str]:
        """``--http HOST:PORT`` for process ``name`` (nothing without ``http``); notes its URL."""
        if self.http is None:
            return []
        port = 0
        if self.http.port:
            number = _WORKER_NUMBER.fullmatch(name)
            if name == "scheduler":
                port = self.http.port
            elif number is not None:
                port = self.http.port + int(number.group(1))
        address = HttpAddress(self.http.host, port or free_port())
        shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address.host, address.host)
        self.http_urls[name] = f"http://{HttpAddress(shown, address.port)}"
        return ["--http", str(address)]

    def start_scheduler(self, name: str = "scheduler", extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start a scheduler process."""
        return self.spawn(
            name,
            [
                "scheduler", "--id", name, "--log-format", self.log_format,
                *self.http_args(name), *self.scheduler_args, *extra,
            ],
        )  # fmt: skip

    def start_worker(self, name: str, extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start a worker process."""
        return self.spawn(
            name,
            [
                "worker", "--id", name, "--log-format", self.log_format,
                *self.http_args(name), *self.worker_args, *extra,
            ],
        )  # fmt: skip

    def start_web(self, name: str = "web") -> subprocess.Popen[bytes]:
        """Start ``tasklease web`` on :attr:`web` (port 0: a free one) and note its URL."""
        assert self.web is not None
        address = HttpAddress(self.web.host, self.web.port or free_port())
        shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address.host, address.host)
        self.web_url = f"http://{HttpAddress(shown, address.port)}"
        return self.spawn(name, ["web", "--http", str(address), "--log-format", self.log_format])

    def start(self) -> None:
        """Start etcd (waits until healthy), the scheduler, the web server (if any) and the workers."""
        self.etcd.start()
        self.start_scheduler()
        if self.web is not None:
            self.start_web()
        for i in range(1, self.n_workers + 1):
            self.start_worker(f"worker-{i}")

    def stop(self, timeout_s: float = 35.0) -> None:
        """Stop workers, then schedulers, then etcd. Idempotent."""
        workers = [p for n, p in self.procs.items() if n.startswith("worker")]
        others = [p for n, p in self.procs.items() if not n.startswith("worker")]
        for group in (workers, others):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        self.etcd.stop()
        for f in self._logs:
            with contextlib.suppress(OSError):
                f.close()
        self._logs.clear()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
