"""``tasklease submit --after``, ``workflow submit | status | cancel``, waiting in listings: real processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

import sample_tasks
import workflow_tasks
from tasklease.executors.builtin import builtin_registry

pytestmark = pytest.mark.timeout(180)

MISSING = "0" * 26


def tl(bin_: str, env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_submit_after_waits_and_shows_everywhere(tasklease_bin, cli_env):
    # Given a queued parent (no scheduler runs)
    parent = tl(tasklease_bin, cli_env, "submit", "noop").stdout.strip()
    # When a child is submitted after it (the id typed in lower case)
    out = tl(
        tasklease_bin, cli_env, "submit", "noop", "--after", parent.lower(), "--on-parent-failure", "run"
    )
    assert out.returncode == 0, out.stderr
    child = out.stdout.strip()
    # Then it waits, and status, list, stats and queues say so
    human = tl(tasklease_bin, cli_env, "status", child).stdout
    assert "state:     waiting" in human
    assert f"after:     {parent} (on parent failure: run)" in human
    listed = json.loads(tl(tasklease_bin, cli_env, "list", "--state", "waiting", "--json").stdout)
    assert [r["id"] for r in listed] == [child]
    stats = json.loads(tl(tasklease_bin, cli_env, "stats", "--json").stdout)
    assert stats["states"]["waiting"] == 1 and stats["states"]["queued"] == 1
    queues = tl(tasklease_bin, cli_env, "queues").stdout
    assert "WAITING" in queues.splitlines()[0]


def test_submit_after_an_unknown_or_malformed_id_exits_2(tasklease_bin, cli_env):
    unknown = tl(tasklease_bin, cli_env, "submit", "noop", "--after", MISSING)
    assert unknown.returncode == 2
    assert f"parent task '{MISSING}' not found" in unknown.stderr
    malformed = tl(tasklease_bin, cli_env, "submit", "noop", "--after", "nope")
    assert malformed.returncode == 2 and "malformed task id" in malformed.stderr
    listed = json.loads(tl(tasklease_bin, cli_env, "list", "--json").stdout)
    assert listed == []


def test_workflow_submit_status_cancel(tasklease_bin, cli_env, tmp_path: Path):
    # Given a DAG in a JSON file (a diamond)
    dag = {
        "name": "etl",
        "tasks": [
            {"key": "extract", "type": "noop", "payload": {"pad": "x" * 2048}},
            {"key": "a", "type": "noop", "after": ["extract"]},
            {"key": "b", "type": "noop", "after": ["extract"], "priority": 3},
            {"key": "load", "type": "noop", "after": ["a", "b"]},
        ],
    }
    path = tmp_path / "dag.json"
    path.write_text(json.dumps(dag))
    # When it is submitted
    out = tl(tasklease_bin, cli_env, "workflow", "submit", str(path), "--json")
    assert out.returncode == 0, out.stderr
    workflow = json.loads(out.stdout)
    assert workflow["transactions"] == 1 and set(workflow["keys"]) == {"extract", "a", "b", "load"}
    # Then its status (by the id of one of its tasks) shows the DAG
    status = tl(tasklease_bin, cli_env, "workflow", "status", workflow["keys"]["load"])
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == f"workflow {workflow['id']}  etl"
    assert "4 tasks: 1 queued, 3 waiting" in lines[1]
    assert lines[-1].split()[:5] == ["#4", workflow["keys"]["load"], "waiting", "noop", "#2,#3"]
    as_json = json.loads(tl(tasklease_bin, cli_env, "workflow", "status", workflow["id"], "--json").stdout)
    assert [t["state"] for t in as_json["tasks"]] == ["queued", "waiting", "waiting", "waiting"]
    # And cancelling it cancels all four
    cancel = tl(tasklease_bin, cli_env, "workflow", "cancel", workflow["id"], "--reason", "not today")
    assert cancel.returncode == 0, cancel.stderr
    assert cancel.stdout.strip() == "4 task(s) cancelled"
    after = json.loads(tl(tasklease_bin, cli_env, "workflow", "status", workflow["id"], "--json").stdout)
    assert after["finished"] and after["states"] == {"cancelled": 4}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["workflow", "status", MISSING], "not found"),
        (["workflow", "cancel", MISSING], "not found"),
        (["workflow", "submit", "/nonexistent.json"], "cannot read"),
    ],
)
def test_workflow_errors_exit_2(tasklease_bin, cli_env, args, message):
    out = tl(tasklease_bin, cli_env, *args)
    assert out.returncode == 2, out
    assert message in out.stderr


def test_a_bad_workflow_file_exits_2(tasklease_bin, cli_env, tmp_path: Path):
    path = tmp_path / "bad.json"
    path.write_text('{"tasks": [{"type": "noop", "after": ["missing-key"]}]}')
    out = tl(tasklease_bin, cli_env, "workflow", "submit", str(path))
    assert out.returncode == 2
    assert "tasks[0]" in out.stderr
    path.write_text("{not json")
    assert tl(tasklease_bin, cli_env, "workflow", "submit", str(path)).returncode == 2


async def test_workflow_submit_wait_runs_it_through(tasklease_bin, cli_env, cluster, tmp_path: Path):
    # Given a scheduler and a worker (in this process)
    await cluster.scheduler()
    reg = builtin_registry()
    reg.update([sample_tasks.registry, workflow_tasks.registry])
    await cluster.worker(types=reg)
    dag = {
        "tasks": [
            {"key": "one", "type": "number", "payload": {"n": 1}},
            {"key": "two", "type": "number", "payload": {"n": 2}},
            {"key": "sum", "type": "async_total", "after": ["one", "two"]},
        ]
    }
    path = tmp_path / "dag.json"
    path.write_text(json.dumps(dag))
    # When submitted with --wait
    proc = await asyncio.create_subprocess_exec(
        tasklease_bin,
        "workflow",
        "submit",
        str(path),
        "--wait",
        "--json",
        env=cli_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    # Then it exits 0 once every task succeeded, with the final status
    assert proc.returncode == 0, stderr.decode()
    status = json.loads(stdout)
    assert status["finished"] and status["states"] == {"succeeded": 3}
    assert status["tasks"][2]["parents"] == [status["tasks"][0]["id"], status["tasks"][1]["id"]]


def test_a_child_of_a_parent_that_already_ended_badly_says_so_and_no_worker_warning(tasklease_bin, cli_env):
    # Given a parent cancelled before its child is submitted (found by a newcomer walkthrough:
    # the child was cancelled at once, silently, under a "waits until a worker comes" warning)
    parent = tl(tasklease_bin, cli_env, "submit", "noop", "--queue", "nightly").stdout.strip()
    assert tl(tasklease_bin, cli_env, "cancel", parent).returncode == 0
    # When a child is submitted after it, with a few kilobytes of payload
    payload = json.dumps({"blob": "x" * 4000})
    out = tl(
        tasklease_bin,
        cli_env,
        "submit",
        "noop",
        "--queue",
        "nightly",
        "--after",
        parent,
        "--payload",
        payload,
    )
    # Then it exits 0 with the id, and stderr says it ended at once and why (no worker warning)
    assert out.returncode == 0, out.stderr
    child = out.stdout.strip()
    assert f"{child} was cancelled at once: parent {parent} cancelled" in out.stderr
    assert "no live worker" not in out.stderr
    assert "state:     cancelled" in tl(tasklease_bin, cli_env, "status", child).stdout
