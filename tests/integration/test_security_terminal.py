"""Terminal safety: untrusted text from records never reaches the terminal raw.

A submitter controls a task's payload and (through the task) its error and
result; a worker controls its id and tags. The CLI prints all of them escaped:
no ESC (clear screen, window title, OSC-8 links), no newline that could forge
a line, no C1 control, in text output and in ``--json`` output alike.
"""

from __future__ import annotations

import json
import subprocess

import orjson

from tasklease import codec
from tasklease.client import Client
from tasklease.keys import Keyspace
from tasklease.models import TaskState
from tasklease.store import Store

CLEAR = "\x1b[2J"
LINK = "\x1b]8;;http://evil.example/\x1b\\click me\x1b]8;;\x1b\\"
TITLE = "\x1b]0;pwned\x07"
C1_CSI = "\x9b31m"
EVIL = f"{CLEAR}{LINK}{TITLE}{C1_CSI}\nstate:     succeeded"
RAW_CONTROLS = ("\x1b", "\x07", "\x9b")


def tl(bin_: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_, *args], env=env, capture_output=True, text=True, timeout=30)


def assert_no_raw_controls(text: str) -> None:
    for char in RAW_CONTROLS:
        assert char not in text, repr(text)


def test_a_control_character_type_is_refused_at_submit(tasklease_bin, cli_env):
    out = tl(tasklease_bin, cli_env, "submit", f"noop{CLEAR}", "--json")
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert_no_raw_controls(out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("tasklease: error: invalid task type"), out.stderr
    assert "\\x1b[2J" in lines[0], out.stderr
    assert "[A-Za-z0-9_.:-]" in lines[0], out.stderr
    # nothing was written
    assert json.loads(tl(tasklease_bin, cli_env, "list", "--json").stdout) == []


async def test_an_error_with_escape_sequences_is_shown_escaped(
    cluster, client: Client, tasklease_bin, cli_env
):
    await cluster.scheduler()
    await cluster.worker()
    task = await client.submit("fail", {"message": EVIL})
    final = await client.wait(task.id, timeout_s=30)
    assert final.state is TaskState.FAILED
    assert CLEAR in (final.error or "")  # the record keeps the text as it is

    status = tl(tasklease_bin, cli_env, "status", task.id)
    assert status.returncode == 0, status.stderr
    assert_no_raw_controls(status.stdout)
    assert "\\x1b[2J\\x1b]8;;http://evil.example/\\x1b\\click me" in status.stdout, status.stdout
    assert "\\x1b]0;pwned\\x07\\x9b31m\\nstate:     succeeded" in status.stdout, status.stdout
    # the newline did not forge a line: the only state line is the real one
    state_lines = [line for line in status.stdout.splitlines() if line.startswith("state:")]
    assert state_lines == ["state:     failed"], status.stdout
    # the payload line (JSON) is escaped too
    payload_lines = [line for line in status.stdout.splitlines() if line.startswith("payload:")]
    assert len(payload_lines) == 1 and "\\u001b[2J" in payload_lines[0], status.stdout

    listed = tl(tasklease_bin, cli_env, "list")
    assert listed.returncode == 0, listed.stderr
    assert_no_raw_controls(listed.stdout)
    assert task.id in listed.stdout

    # --json: valid JSON, the C1 control as a \u escape, and the text unchanged once decoded
    as_json = tl(tasklease_bin, cli_env, "status", task.id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert_no_raw_controls(as_json.stdout)
    assert "\\u009b" in as_json.stdout
    assert json.loads(as_json.stdout)["error"] == final.error


async def test_a_stored_type_with_control_characters_is_listed_escaped(
    store: Store, keyspace: Keyspace, client: Client, tasklease_bin, cli_env
):
    # A record written before types were restricted (or by a hostile etcd user)
    task = await client.submit("noop", None)
    record = orjson.loads(codec.encode_task(task))
    record["type"] = f"old{CLEAR}{TITLE}"
    await store.put(keyspace.task(task.id), orjson.dumps(record))

    for args in (["list"], ["status", task.id]):
        out = tl(tasklease_bin, cli_env, *args)
        assert out.returncode == 0, out.stderr
        assert_no_raw_controls(out.stdout)
        assert "old\\x1b[2J\\x1b]0;pwned\\x07" in out.stdout, out.stdout


async def test_a_node_record_with_escape_sequences_is_shown_escaped(
    store: Store, keyspace: Keyspace, tasklease_bin, cli_env
):
    node = {
        "id": f"w{CLEAR}",
        "queues": ["default", f"q{TITLE}"],
        "tags": {"zone": f"eu{LINK}", f"k{C1_CSI}": "v\nforged"},
        "capacity": 4,
        "running": 0,
        "weight": 1,
        "heartbeat_at": 0,
    }
    await store.put(keyspace.node("evil"), codec.encode_obj(node))

    out = tl(tasklease_bin, cli_env, "nodes")
    assert out.returncode == 0, out.stderr
    assert_no_raw_controls(out.stdout)
    assert "w\\x1b[2J" in out.stdout, out.stdout
    assert "zone=eu\\x1b]8;;http://evil.example/" in out.stdout, out.stdout
    assert "k\\x9b31m=v\\nforged" in out.stdout, out.stdout
    assert len(out.stdout.splitlines()) == 2, out.stdout  # header and one node

    as_json = tl(tasklease_bin, cli_env, "nodes", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert_no_raw_controls(as_json.stdout)
    assert json.loads(as_json.stdout)[0]["tags"] == node["tags"]
