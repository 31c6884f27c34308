"""The embedded etcd (`tasklease etcd`, `dev`) is locked down.

A web page open in the developer's browser can send a "simple" cross-origin
POST (``Content-Type: text/plain``) to 127.0.0.1; DNS rebinding lets it send
any request with a foreign ``Host:``; any local process can connect. So the
embedded etcd accepts loopback ``Host`` names only, lets no page read its
answers, and runs with auth on: the root password is generated into a 0600
file that local tasklease commands find by themselves (never on a command line).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tasklease.errors import EtcdStartError
from tasklease.etcd_server import EtcdServer, free_port

EVIL_ORIGIN = "http://evil.example"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def post(
    port: int, path: str, body: dict, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], dict]:
    """A raw HTTP request, as a browser (or curl) would send it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body), headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {"raw": raw.decode(errors="replace")}
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, answer
    finally:
        conn.close()


def read_key(port: int, password: str, key: str) -> int:
    """How many keys named ``key`` exist (read as root)."""
    status, _, answer = post(port, "/v3/auth/authenticate", {"name": "root", "password": password})
    assert status == 200, answer
    status, _, answer = post(
        port, "/v3/kv/range", {"key": b64(key), "count_only": True}, {"Authorization": answer["token"]}
    )
    assert status == 200, answer
    return int(answer.get("count", 0))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def tl(bin_: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_, *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def home_env(tmp_path: Path) -> dict[str, str]:
    """Environment of the commands: no etcd settings, a private XDG_DATA_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLEASE_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    return env


def wait_for_line(proc: subprocess.Popen[str], stream: str, text: str, within_s: float = 60) -> str:
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    deadline = time.monotonic() + within_s
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = pipe.readline()
        if not line:
            assert proc.poll() is None, f"exited with {proc.returncode}: {''.join(seen)}"
            continue
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"no line with {text!r} within {within_s} s: {''.join(seen)}")


@pytest.fixture
def etcd_command(tasklease_bin: str, tmp_path: Path, home_env: dict[str, str]) -> Iterator:
    """Start `tasklease etcd`; stop it with SIGTERM at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [tasklease_bin, "etcd", *args],
            env=home_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_tasklease_etcd_refuses_foreign_origins_hosts_and_anonymous_writes(
    etcd_command, tmp_path: Path, tasklease_bin: str, home_env: dict[str, str]
):
    port = free_port()
    data_dir = tmp_path / "new" / "parent" / "data"
    proc = etcd_command("--data-dir", str(data_dir), "--port", str(port))
    ready = wait_for_line(proc, "stdout", "ready")
    password_file = data_dir / "root-password"
    assert f"password file {password_file}" in ready, ready
    password = password_file.read_text().splitlines()[0]
    assert len(password) >= 32

    # A page's "simple" cross-origin POST: not written, and no page may read the answer
    status, headers, answer = post(
        port,
        "/v3/kv/put",
        {"key": b64("/tasklease/evil"), "value": b64("x")},
        {"Origin": EVIL_ORIGIN, "Content-Type": "text/plain"},
    )
    assert status != 200, answer
    assert "user name is empty" in json.dumps(answer), answer
    assert headers.get("access-control-allow-origin") in (None, ""), headers
    assert read_key(port, password, "/tasklease/evil") == 0

    # DNS rebinding: a foreign Host header is refused before anything runs
    status, _, answer = post(
        port, "/v3/kv/put", {"key": b64("/tasklease/evil"), "value": b64("x")}, {"Host": "evil.example:2379"}
    )
    assert status == 421, (status, answer)
    # the loopback names are fine
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        status, _, answer = post(port, "/v3/kv/range", {"key": b64("x")}, {"Host": host})
        assert status != 421, (host, answer)

    # Files: the new directories 0700, the password and the log 0600
    assert mode(data_dir) == 0o700
    assert mode(data_dir.parent) == 0o700
    assert mode(data_dir.parent.parent) == 0o700
    assert mode(password_file) == 0o600
    assert mode(data_dir.parent / "default.etcd.log") == 0o600

    # etcd runs with auto-compaction, and no password on any command line
    (etcd,) = psutil.Process(proc.pid).children()
    cmdline = etcd.cmdline()
    assert cmdline[cmdline.index("--auto-compaction-mode") + 1] == "periodic"
    assert cmdline[cmdline.index("--auto-compaction-retention") + 1] == "1h"
    assert not any(password in arg for arg in cmdline)

    # The CLI finds the credentials by itself for this port
    env = dict(home_env, TASKLEASE_ETCD=f"http://127.0.0.1:{port}", TASKLEASE_NAMESPACE="sec")
    out = tl(tasklease_bin, env, "submit", "noop", "--json")
    assert out.returncode == 0, out.stderr
    task_id = json.loads(out.stdout)["id"]
    # another user (who has no record of it) gets no access, and is told what to give
    anonymous = dict(env, XDG_DATA_HOME=str(tmp_path / "someone-else"))
    out = tl(tasklease_bin, anonymous, "list")
    assert out.returncode == 1, out.stderr
    assert "--etcd-password-file" in out.stderr, out.stderr

    # A restart keeps the password and the data
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    proc = etcd_command("--data-dir", str(data_dir), "--port", str(port))
    wait_for_line(proc, "stdout", "ready")
    assert password_file.read_text().splitlines()[0] == password
    out = tl(tasklease_bin, env, "status", task_id, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["state"] == "queued"


def test_the_local_record_is_removed_when_etcd_stops(
    etcd_command, tmp_path: Path, tasklease_bin: str, home_env: dict[str, str]
):
    port = free_port()
    proc = etcd_command("--data-dir", str(tmp_path / "d"), "--port", str(port))
    wait_for_line(proc, "stdout", "ready")
    record = Path(home_env["XDG_DATA_HOME"]) / "tasklease" / "run" / f"etcd-{port}.json"
    assert mode(record) == 0o600
    assert mode(record.parent) == 0o700
    assert "password" not in json.loads(record.read_text())  # only the file's path
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert not record.exists()


def test_no_auth_is_said_loudly(etcd_command, tmp_path: Path, home_env: dict[str, str]):
    port = free_port()
    proc = etcd_command("--data-dir", str(tmp_path / "d"), "--port", str(port), "--no-auth")
    ready = wait_for_line(proc, "stdout", "ready")
    assert "auth OFF" in ready, ready
    assert not (tmp_path / "d" / "root-password").exists()


@pytest.mark.parametrize("allow", ["shell", "http", "shell,http", " http , shell"])
def test_dev_refuses_shell_and_http_without_auth(
    tasklease_bin: str, tmp_path: Path, home_env: dict[str, str], allow: str
):
    port = free_port()
    out = subprocess.run(
        [
            tasklease_bin,
            "dev",
            "--no-auth",
            "--allow",
            allow,
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
        ],
        env=home_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tasklease: error:"), out.stderr
    assert "needs etcd auth" in lines[0], out.stderr
    with pytest.raises(ConnectionRefusedError):  # nothing was started
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_dev_runs_with_auth_and_its_processes_get_the_password_file_only(
    tasklease_bin: str, tmp_path: Path, home_env: dict[str, str]
):
    port = free_port()
    data_dir = tmp_path / "dev"
    proc = subprocess.Popen(
        [tasklease_bin, "dev", "--workers", "1", "--port", str(port), "--data-dir", str(data_dir)],
        env=home_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = wait_for_line(proc, "stderr", "Ctrl-C stops everything")
        password_file = data_dir / "root-password"
        assert f"password file {password_file}" in banner, banner
        assert mode(password_file) == 0o600
        password = password_file.read_text().splitlines()[0]

        # The scheduler and the worker log in (a task runs), found without options
        env = dict(home_env, TASKLEASE_ETCD=f"http://127.0.0.1:{port}")
        out = tl(tasklease_bin, env, "submit", "noop", "--payload", "1", "--wait", "--wait-timeout", "45")
        assert out.returncode == 0, (out.stdout, out.stderr)

        # ... with the password file's path only: not on a command line, not in an environment
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # etcd, scheduler, worker
        for child in children:
            assert not any(password in arg for arg in child.cmdline()), child.cmdline()
            environ = child.environ()
            assert password not in "\n".join(f"{k}={v}" for k, v in environ.items())
            if "tasklease" in " ".join(child.cmdline()) and "etcd" not in child.name():
                assert environ["TASKLEASE_ETCD_PASSWORD_FILE"] == str(password_file)
                assert environ["TASKLEASE_ETCD_USER"] == "root"

        # The anonymous gateway write is refused here too, and so is a forged Host
        status, _, answer = post(
            port,
            "/v3/kv/put",
            {"key": b64("/tasklease/evil"), "value": b64("x")},
            {"Origin": EVIL_ORIGIN, "Content-Type": "text/plain"},
        )
        assert status != 200 and "user name is empty" in json.dumps(answer), answer
        status, _, _ = post(port, "/v3/kv/range", {"key": b64("x")}, {"Host": "rebound.example"})
        assert status == 421
        assert mode(data_dir) == 0o700 and mode(data_dir / "etcd") == 0o700
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            if proc.stderr is not None:
                proc.stderr.close()
    assert code == 0


def test_a_user_added_before_auth_was_enabled_is_refused(tmp_path: Path):
    # Until auth is on, a local process could reach a new etcd and add itself a user:
    # the start that enables auth finds it and refuses to run that etcd.
    data_dir = tmp_path / "etcd"
    open_etcd = EtcdServer(data_dir=data_dir)
    open_etcd.start()
    try:
        status, _, answer = post(
            open_etcd.client_port, "/v3/auth/user/add", {"name": "intruder", "password": "x"}
        )
        assert status == 200, answer
    finally:
        open_etcd.stop()
    locked = EtcdServer(data_dir=data_dir, client_port=open_etcd.client_port, auth=True)
    with pytest.raises(EtcdStartError, match="intruder"):
        locked.start()
    assert not locked.running


def test_a_wrong_password_file_is_refused_at_start(tmp_path: Path):
    data_dir = tmp_path / "etcd"
    server = EtcdServer(data_dir=data_dir, auth=True)
    server.start()
    server.stop()
    (data_dir / "root-password").write_text("not the password\n")
    again = EtcdServer(data_dir=data_dir, client_port=server.client_port, auth=True)
    with pytest.raises(EtcdStartError, match="does not open its root user"):
        again.start()
    assert not again.running
