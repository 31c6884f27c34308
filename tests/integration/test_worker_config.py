"""WorkerConfig and worker ids: pure checks, no etcd needed."""

from __future__ import annotations

import os
import re
import socket
from typing import Any, cast

import pytest

from tasklease.errors import InvalidOption
from tasklease.keys import NAME_RE
from tasklease.worker import WorkerConfig, default_worker_id

NON_FINITE = [float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("option", ["grace_s", "heartbeat_s", "weight"])
def test_every_float_option_refuses_nan_and_infinity(option: str, value: float) -> None:
    # `--grace nan` used to pass the `< 0` check (NaN fails every comparison)
    with pytest.raises(InvalidOption) as err:
        WorkerConfig(worker_id="w", **cast(dict[str, Any], {option: value}))
    assert "finite" in str(err.value) or "must be" in str(err.value)


@pytest.mark.parametrize("value", [*NON_FINITE, 2.5, True])
def test_lease_ttl_must_be_a_whole_number(value: object) -> None:
    with pytest.raises(InvalidOption):
        WorkerConfig(worker_id="w", lease_ttl_s=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [float("nan"), 2.0, True])
def test_concurrency_must_be_an_integer(value: object) -> None:
    with pytest.raises(InvalidOption):
        WorkerConfig(worker_id="w", concurrency=value)  # type: ignore[arg-type]


def test_finite_values_still_pass() -> None:
    config = WorkerConfig(worker_id="w", grace_s=0, heartbeat_s=0.5, weight=2.5, lease_ttl_s=3)
    assert config.grace_s == 0 and config.weight == 2.5
    with pytest.raises(InvalidOption, match="grace"):
        WorkerConfig(worker_id="w", grace_s=-1)


def test_default_worker_id_is_host_pid_and_64_random_bits() -> None:
    ids = {default_worker_id() for _ in range(1000)}
    assert len(ids) == 1000
    for worker_id in list(ids)[:10]:
        assert NAME_RE.fullmatch(worker_id), worker_id
        host, pid, rand = worker_id.rsplit("-", 2)
        assert pid == str(os.getpid())
        assert re.fullmatch(r"[0-9a-f]{16}", rand), rand
        expected = "".join(c if NAME_RE.fullmatch(c) else "-" for c in socket.gethostname())[:38]
        assert host == (expected or "host")
