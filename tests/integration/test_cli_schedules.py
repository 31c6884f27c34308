"""`tasklease schedule ...` run as a real process against a real etcd (a scheduler in this process fires)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

from tasklease.schedules import CronExpr


def tl(bin_: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_, *args], env=env, capture_output=True, text=True, timeout=60)


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    return out.stdout


def usage_error(out: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tasklease: error: ") and fragment in lines[0], out.stderr


async def test_schedule_add_list_show_next_pause_resume_remove(tasklease_bin, cli_env, client, cluster):
    # Given a schedule added from the command line, every second, with a kilobyte payload
    payload = json.dumps({"report": "x" * 2000})
    added = json.loads(
        ok(
            tl(
                tasklease_bin, cli_env, "schedule", "add", "beat", "--cron", "* * * * * *", "--type", "noop",
                "--payload", payload, "--queue", "cron", "--priority", "2", "--retries", "1",
                "--expires", "10m", "--catch-up", "all", "--overlap", "allow", "--json",
            )
        )
    )  # fmt: skip
    assert added["name"] == "beat" and added["cron"] == "* * * * * *" and added["catch_up"] == "all"
    assert added["task"]["queue"] == "cron" and added["task"]["expires_s"] == 600
    # When a scheduler runs, it fires it
    await cluster.scheduler()
    for _ in range(400):
        if (await client.get_schedule("beat")).fired >= 2:
            break
        await asyncio.sleep(0.05)
    listed = json.loads(ok(tl(tasklease_bin, cli_env, "schedule", "list", "--json")))
    assert [s["name"] for s in listed] == ["beat"] and listed[0]["fired"] >= 2
    table = ok(tl(tasklease_bin, cli_env, "schedule", "list"))
    assert table.splitlines()[0].split()[:3] == ["NAME", "CRON", "TZ"] and "beat" in table
    shown = ok(tl(tasklease_bin, cli_env, "schedule", "show", "beat"))
    assert "overlap allow, catch-up all" in shown and "fired" in shown
    # next: the expression's own next times
    nxt = json.loads(ok(tl(tasklease_bin, cli_env, "schedule", "next", "beat", "--count", "3", "--json")))
    assert len(nxt["times"]) == 3 and nxt["times"][1] - nxt["times"][0] == 1
    # pause, resume, remove
    paused = json.loads(ok(tl(tasklease_bin, cli_env, "schedule", "pause", "beat", "--json")))
    assert paused["paused"] is True and paused["next_at"] is None
    assert "resumed" in ok(tl(tasklease_bin, cli_env, "schedule", "resume", "beat"))
    assert "removed" in ok(tl(tasklease_bin, cli_env, "schedule", "remove", "beat"))
    usage_error(tl(tasklease_bin, cli_env, "schedule", "remove", "beat"), "no schedule 'beat'")
    usage_error(tl(tasklease_bin, cli_env, "schedule", "show", "beat"), "no schedule 'beat'")


def test_schedule_next_in_a_time_zone_and_bad_input(tasklease_bin, cli_env):
    ok(tl(tasklease_bin, cli_env, "schedule", "add", "night", "--cron", "30 2 * * *", "--tz", "Europe/Berlin",
          "--type", "report", "--paused"))  # fmt: skip
    text = ok(tl(tasklease_bin, cli_env, "schedule", "next", "night", "--count", "2"))
    lines = text.strip().splitlines()
    assert len(lines) == 2 and all("T02:30:00+0" in line or "T03:00:00+02:00" in line for line in lines)
    want = CronExpr("30 2 * * *", "Europe/Berlin").next_times(time.time(), 2)
    got = json.loads(ok(tl(tasklease_bin, cli_env, "schedule", "next", "night", "--count", "2", "--json")))
    assert got["times"] == want and got["tz"] == "Europe/Berlin"
    usage_error(
        tl(tasklease_bin, cli_env, "schedule", "add", "night", "--cron", "0 3 * * *", "--type", "x"), "exists"
    )
    ok(
        tl(
            tasklease_bin,
            cli_env,
            "schedule",
            "add",
            "night",
            "--cron",
            "0 3 * * *",
            "--type",
            "x",
            "--replace",
        )
    )
    for args, fragment in (
        (("--cron", "61 * * * *"), "bad cron expression"),
        (("--cron", "* * *"), "has 3 fields"),
        (("--cron", "* * * * *", "--tz", "Mars/Base"), "unknown time zone"),
        (("--cron", "* * * * *", "--payload", "{bad"), "JSON"),
    ):
        usage_error(tl(tasklease_bin, cli_env, "schedule", "add", "bad", "--type", "noop", *args), fragment)
    usage_error(tl(tasklease_bin, cli_env, "schedule", "add", "bad", "--cron", "* * * * *"), "--type")
    usage_error(tl(tasklease_bin, cli_env, "schedule", "next", "night", "--count", "0"), "count")
    assert json.loads(ok(tl(tasklease_bin, cli_env, "schedule", "list", "--json")))[0]["cron"] == "0 3 * * *"


def test_a_bad_expression_zone_or_name_is_refused_before_connecting(tasklease_bin, cli_env):
    # Given an etcd nobody listens on: a connection would fail with exit 1
    env = {**cli_env, "TASKLEASE_ETCD": "http://127.0.0.1:1"}
    # When / Then bad input is one usage error (exit 2), found before any connection
    for args, fragment in (
        (["x", "--cron", "bad cron"], "has 2 fields"),
        (["x", "--cron", "0 3 * * *", "--tz", "Mars/Base"], "unknown time zone"),
        (["bad/name", "--cron", "0 3 * * *"], "invalid schedule name"),
    ):
        usage_error(tl(tasklease_bin, env, "schedule", "add", *args, "--type", "noop"), fragment)
