"""Task functions the worker tests import (in-process and with `--import sample_tasks`)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from tasklease.errors import Retry
from tasklease.executors.base import PermanentError, Registry

registry = Registry()

# In-process concurrency probe (async tasks run on the worker's loop).
PROBE = {"now": 0, "max": 0}


@registry.task
def add(a: int, b: int) -> int:
    return a + b


@registry.task
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@registry.task
def sync_sleep(seconds: float, pid_file: str | None = None) -> float:
    """Sleeps in the child; writes the child's pid first so tests can check it is killed."""
    if pid_file:
        Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)
    return seconds


@registry.task
def spin(seconds: float) -> int:
    """Burns CPU (holds the GIL of its process) for `seconds`."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


@registry.task
async def probe(seconds: float) -> int:
    PROBE["now"] += 1
    PROBE["max"] = max(PROBE["max"], PROBE["now"])
    try:
        await asyncio.sleep(seconds)
    finally:
        PROBE["now"] -= 1
    return PROBE["max"]


@registry.task
def fail(message: str = "boom") -> None:
    raise RuntimeError(message)


@registry.task
def fail_permanently(message: str = "no point retrying") -> None:
    raise PermanentError(message)


@registry.task
def not_json() -> object:
    return {1, 2, 3}


@registry.task
async def async_not_json() -> object:
    return object()


@registry.task
def crash() -> None:
    os._exit(3)


@registry.task
async def kill_own_worker() -> None:
    """Async, so it runs in the worker process itself: SIGKILLs that worker (a task that crashes it)."""
    os.kill(os.getpid(), signal.SIGKILL)


@registry.task
async def wait_for_file(path: str, within_s: float = 60.0) -> str:
    """Runs until ``path`` exists (a gate the test opens), polling every 20 ms."""
    deadline = time.monotonic() + within_s
    while not await asyncio.to_thread(os.path.exists, path):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{path} did not appear within {within_s:g} s")
        await asyncio.sleep(0.02)
    return path


# Realistic payload sizes (tests/integration/test_payload_sizes.py): `pad` carries the bulk.
@registry.task
async def pad_echo(pad: str, n: int = 0) -> dict:
    return {"pad": pad, "n": n}


@registry.task
async def pad_fail(pad: str, n: int = 0, error_bytes: int = 8192) -> None:
    raise RuntimeError("e" * error_bytes)


@registry.task
def pad_sleep(pad: str, seconds: float) -> int:
    time.sleep(seconds)
    return len(pad)


@registry.task
def retry_later(after: float) -> None:
    """Asks for another attempt after `after` seconds (from a child process)."""
    raise Retry("the service said later", after=after)


@registry.task
async def async_retry_later(after: float) -> None:
    """Asks for another attempt after `after` seconds (on the worker's loop)."""
    raise Retry(after=after)
