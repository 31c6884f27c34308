"""Task functions used by ``tasklease demo`` (workers import this module)."""

from __future__ import annotations

from pathlib import Path

from tasklease.executors.base import Registry

registry = Registry()


@registry.task
def fail(message: str = "this task always fails") -> None:
    """Always fails (shows retries with backoff, then ``failed``)."""
    raise RuntimeError(message)


@registry.task
def flaky(marker: str) -> str:
    """Fails on its first attempt, succeeds on the next (the marker file remembers)."""
    path = Path(marker)
    if not path.exists():
        path.write_text("seen")
        raise RuntimeError("first attempt fails on purpose")
    return "succeeded on retry"


@registry.task
def square(x: int) -> int:
    """A sync function: runs in a worker's child process."""
    return x * x
