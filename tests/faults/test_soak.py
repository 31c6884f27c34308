"""The short soak: 2,000 tasks under chaos, every invariant checked from etcd.

The long one runs on demand: `tasklease soak --tasks 100000 --workers 4`.
"""

from __future__ import annotations

import json
import subprocess


def test_short_soak_has_no_violations(tasklease_bin):
    out = subprocess.run(
        [
            tasklease_bin,
            "soak",
            "--tasks",
            "2000",
            "--workers",
            "3",
            "--seed",
            "7",
            "--chaos-interval",
            "1.5",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["violations"] == 0
    assert report["tasks"] == 2000
    assert sum(report["states"].values()) == 2000
    assert report["states"]["succeeded"] > 1000
    # the chaos really happened and really cost attempts
    assert report["worker_kills"] >= 3
    assert report["leader_kills"] + report["worker_kills"] >= 5
