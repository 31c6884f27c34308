"""The short soak: 1,500 tasks under chaos, every invariant checked from etcd.

Payloads are mixed sizes drawn per task by the seed: tiny, 4.5 KB, 64 KiB and
200 KB, weighted 50:40:8:2 (about 30 tasks of 200 KB, 17 MB of payloads in all).
1,500 such tasks take about as long as the 2,000 tiny ones the soak ran before.

The long one runs on demand: `tasklease soak --tasks 100000 --workers 4`.

It runs `tasklease soak` (the README's command).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tasklease.errors import InvalidOption
from tasklease.soak import parse_payload_bytes

MIX = "0:50,4500:40,65536:8,204800:2"


def test_payload_bytes_parsing():
    assert parse_payload_bytes("4500") == ((4500, 1),)
    assert parse_payload_bytes("0,4500,65536,204800") == ((0, 1), (4500, 1), (65536, 1), (204800, 1))
    assert parse_payload_bytes(MIX) == ((0, 50), (4500, 40), (65536, 8), (204800, 2))
    for bad in ("", "4.5k", "-1", "100:0", str(10**7)):
        with pytest.raises(InvalidOption):
            parse_payload_bytes(bad)


# Its own limit, above the run's own (600 s): the suite's 120 s would cut it off and leave
# its processes running (the workflow mix made it take close to 2 minutes here).
@pytest.mark.timeout(660)
def test_short_soak_has_no_violations(tasklease_bin):
    out = subprocess.run(
        [
            tasklease_bin,
            "soak",
            "--tasks",
            "1500",
            "--workers",
            "3",
            "--seed",
            "7",
            "--chaos-interval",
            "1.5",
            "--payload-bytes",
            MIX,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["violations"] == 0
    assert report["tasks"] == 1500
    assert sum(report["states"].values()) == 1500
    assert report["states"]["succeeded"] > 750
    # every size was in the workload, and large payloads came back whole (a result
    # that differs from its payload is a violation)
    by_payload = report["by_payload"]
    assert set(by_payload) == {"0", "4500", "65536", "204800"}
    assert by_payload["204800"].get("succeeded", 0) >= 10
    assert report["payload_bytes"] > 10_000_000
    # about 8 % were delayed, and none started before its time (a violation otherwise)
    assert report["delayed"] > 60
    # the workflow mix ran under the same chaos (its invariants are violations otherwise):
    # 25 diamonds, some children cancelled by their failed parent, a cron tick every second
    assert report["workflows"] == 25
    assert report["cancelled_by_parent"] >= 1
    assert report["ticks"] >= 10
    assert 1 <= report["sleep_peak"] <= 4
    # the chaos really happened and really cost attempts
    assert report["worker_kills"] >= 3
    assert report["leader_kills"] + report["worker_kills"] >= 5
