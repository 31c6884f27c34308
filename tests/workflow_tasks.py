"""Task functions the workflow tests import (in-process and with ``--import workflow_tasks``).

Functions with a ``parents`` parameter receive their parents' results (docs/workflows.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

from tasklease.executors.base import Registry

registry = Registry()


@registry.task
def total(parents: dict[str, Any]) -> dict[str, Any]:
    """Sums the parents' ``n`` (sync: runs in a child process): ``{"n": sum, "parents": count}``."""
    return {"n": sum((r or {}).get("n", 0) for r in parents.values()), "parents": len(parents)}


@registry.task
async def async_total(extra: int = 0, *, parents: dict[str, Any]) -> dict[str, Any]:
    """As :func:`total`, on the worker's loop, plus ``extra``; also lists the parents' ids in order."""
    await asyncio.sleep(0)
    return {
        "n": extra + sum((r or {}).get("n", 0) for r in parents.values()),
        "parents": len(parents),
        "order": list(parents),
    }


@registry.task
async def seen(tag: str, parents: dict[str, Any] | None = None) -> dict[str, Any]:
    """Returns what it got: its tag and its parents' results (None for a parent that did not succeed)."""
    return {"tag": tag, "parents": parents}


@registry.task
async def number(n: int, pad: str = "") -> dict[str, Any]:
    """Returns ``{"n": n}`` (``pad``: kilobytes of payload, not returned)."""
    return {"n": n}
