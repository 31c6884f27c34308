"""Reads bounded by bytes: how :meth:`~tasklease.store.Store.scan` pages a range.

Owns the page sizes (``READ_BUDGET_BYTES``, ``FIRST_PAGE``, ``MAX_PAGE``),
:func:`next_page_limit` and :func:`scan_pages`, the paging loop over any range
read (the store passes its own ``range``, so a store that wraps ``range`` sees
every page). No etcd client here.

Imports: :mod:`tasklease.errors`, :mod:`tasklease.store_types`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable

from tasklease.errors import StoreRequestTooLarge
from tasklease.store_types import RangeResult

# Target size of one page of a scan: pages are sized from the largest value seen.
READ_BUDGET_BYTES = 4 * 1024 * 1024
# First page of a scan with values, before any size is known: even records of
# the 1 MiB maximum stay under the receive limit.
FIRST_PAGE = 64
# Most keys per page (etcd answers faster in moderate pages).
MAX_PAGE = 1000


def next_page_limit(largest_value: int, budget: int = READ_BUDGET_BYTES) -> int:
    """How many keys the next page may hold so that it stays near ``budget`` bytes."""
    return max(1, min(MAX_PAGE, budget // max(1, largest_value + 128)))


async def scan_pages(
    read: Callable[..., Awaitable[RangeResult]],
    prefix: str,
    end: str,
    *,
    revision: int,
    keys_only: bool,
    budget_bytes: int,
    first_page: int,
) -> AsyncGenerator[RangeResult, None]:
    """Read ``[prefix, end)`` with ``read`` (a store's ``range``) page by page (:meth:`Store.scan`).

    Yields:
        The pages (their ``revision`` is the first page's snapshot).
    """
    limit = MAX_PAGE if keys_only else max(1, min(first_page, MAX_PAGE))
    start = prefix
    largest = 0
    while True:
        try:
            page = await read(start, end, limit=limit, keys_only=keys_only, revision=revision)
        except StoreRequestTooLarge:
            if limit == 1:
                raise
            limit = max(1, limit // 4)
            continue
        revision = page.revision
        if not page.kvs:
            return
        yield page
        if not page.more:
            return
        start = page.kvs[-1].key + "\0"
        if not keys_only:
            largest = max(largest, *(len(kv.value) for kv in page.kvs))
            limit = next_page_limit(largest, budget_bytes)
