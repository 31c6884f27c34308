"""Retry policy and the pure backoff function."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tasklease.errors import InvalidOption

MAX_RETRIES_LIMIT = 100
MAX_LOSSES_LIMIT = 100


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how soon a failed task runs again.

    A failed or timed-out attempt is retried while fewer than ``max_retries``
    retries have been used. An attempt lost with its worker (crash, lease
    expiry) counts against ``max_losses`` instead, so a task that kills every
    worker it touches ends ``failed`` instead of looping.

    Attributes:
        max_retries: Retries after failures or timeouts (0 = run once).
        backoff_s: Delay before the first retry; doubles for each retry.
        backoff_max_s: Cap on the delay.
        jitter: Fraction of the delay drawn at random (0 = none, 1 = full jitter).
        max_losses: Attempts that may be lost with their worker before the
            task fails.
    """

    max_retries: int = 0
    backoff_s: float = 1.0
    backoff_max_s: float = 300.0
    jitter: float = 0.1
    max_losses: int = 3

    def __post_init__(self) -> None:
        for name in ("backoff_s", "backoff_max_s", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidOption(f"{name} must be a number, got {value!r}")
        for name in ("max_retries", "max_losses"):
            if isinstance(getattr(self, name), bool):
                raise InvalidOption(f"{name} must be an integer, got a bool")
        if not isinstance(self.max_retries, int) or not 0 <= self.max_retries <= MAX_RETRIES_LIMIT:
            raise InvalidOption(f"max_retries must be an integer in 0..{MAX_RETRIES_LIMIT}")
        if not isinstance(self.max_losses, int) or not 1 <= self.max_losses <= MAX_LOSSES_LIMIT:
            raise InvalidOption(f"max_losses must be an integer in 1..{MAX_LOSSES_LIMIT}")
        if not self.backoff_s >= 0:
            raise InvalidOption("backoff_s must be >= 0")
        if not self.backoff_max_s >= self.backoff_s:
            raise InvalidOption("backoff_max_s must be >= backoff_s")
        if not 0 <= self.jitter <= 1:
            raise InvalidOption("jitter must be in 0..1")


def compute_backoff(policy: RetryPolicy, retry_number: int, rng: random.Random) -> float:
    """Return the delay in seconds before retry number ``retry_number`` (1-based).

    ``backoff_s * 2**(n-1)``, capped at ``backoff_max_s``, of which a fraction
    ``jitter`` is drawn uniformly so that many tasks failing together do not
    come back together.

    Args:
        policy: The task's policy.
        retry_number: 1 for the first retry.
        rng: Source of randomness (seeded in tests).

    Returns:
        The delay, in ``[(1 - jitter) * d, d]`` for the capped delay ``d``.
    """
    if retry_number < 1:
        raise InvalidOption("retry_number starts at 1")
    exponent = min(retry_number - 1, 62)
    delay = min(policy.backoff_max_s, policy.backoff_s * (2.0**exponent))
    if policy.jitter == 0 or delay == 0:
        return delay
    return delay * (1 - policy.jitter) + rng.uniform(0, delay * policy.jitter)
