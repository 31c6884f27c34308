"""`tasklease demo` (the README's first command) runs the embedded stack end to end."""

from __future__ import annotations

import subprocess


def test_demo_runs_and_exits_0(tasklease_bin):
    out = subprocess.run([tasklease_bin, "demo"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    assert "demo ok" in out.stdout
    for line in (
        "failing task: 3 attempts, then failed",
        "flaky task:   failed -> succeeded",
        "timed out:",
        "latency      p50",
        "dashboard and REST API at http://127.0.0.1:",
    ):
        assert line in out.stdout, out.stdout
