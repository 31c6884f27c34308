"""Example task code for the Compose stack: mounted at /app, served by `--path /app --import example_tasks`.

Replace it with your own modules (or bake them into an image FROM tasklease; docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import hashlib

from tasklease.executors.base import PermanentError, Registry

registry = Registry()


@registry.task
def checksum(text: str, rounds: int = 1000) -> dict[str, object]:
    """Sync (runs in a child process of the worker): a CPU-bound digest of a text payload."""
    if rounds <= 0 or rounds > 1_000_000:
        raise PermanentError(f"rounds must be in 1..1000000, got {rounds}")
    digest = text.encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return {"bytes": len(text.encode()), "rounds": rounds, "sha256": digest.hex()}


@registry.task(timeout_s=600)
async def wait(seconds: float) -> float:
    """Async (runs on the worker's event loop): waits, e.g. for an outside service."""
    await asyncio.sleep(seconds)
    return seconds
