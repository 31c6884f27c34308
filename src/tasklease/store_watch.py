"""The store's watch stream: one gRPC watch, resumed across etcd restarts and fail-overs.

Owns :func:`watch_changes`, which :meth:`tasklease.store.Store.watch` returns.
Each restart (a stream resumed, or a compaction that makes the caller re-read)
is reported to the store's observer, if it has one.
The client library's own watch resumes after the *header* revision of the
last response, which skips events if the connection drops while a watch is
catching up; so the gRPC stream is driven here, and resumed right after the
last event delivered.

Imports: :mod:`tasklease.errors`, :mod:`tasklease.store_types`,
:mod:`tasklease.store_errors`, :mod:`tasklease.store_channel`; gRPC and the
etcd client inside the stream. Only ``store*.py`` modules import the etcd client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from tasklease.errors import StoreError, WatchCompacted, WatchTooLarge
from tasklease.store_channel import Channel, decode_kv
from tasklease.store_errors import over_receive_limit, rpc_status, wrap_error
from tasklease.store_h2 import RpcError
from tasklease.store_types import Event

log = logging.getLogger("tasklease.store")


async def watch_changes(
    channel: Channel, prefix: str, end: str, start_revision: int, *, prev_kv: bool = False
) -> AsyncGenerator[list[Event], None]:
    """Stream the changes of ``[prefix, end)`` from ``start_revision`` on (:meth:`Store.watch`).

    Yields:
        The events of one etcd response (never empty).

    Raises:
        WatchCompacted: ``start_revision`` (or the resume point) was compacted.
        WatchTooLarge: A response was over the receive limit.
        StoreError: The watch failed for good (or the channel is not open).
    """
    import grpc
    from etcd3aio._protobuf import WatchCreateRequest

    channel.svc()  # StoreError if the channel is not open
    next_revision = start_revision
    backoff = 0.1
    while True:
        create = WatchCreateRequest(
            key=prefix.encode(), range_end=end.encode(), start_revision=next_revision, prev_kv=prev_kv
        )
        responses = _over_h2(channel, create) if channel.unary is not None else _over_grpc(channel, create)
        try:
            async for resp in responses:
                backoff = 0.1
                if resp.compact_revision > 0:
                    _restarted(channel)  # the caller re-reads and watches again
                    raise WatchCompacted(
                        f"watch of {prefix} from revision {next_revision} was compacted "
                        f"(oldest is {resp.compact_revision})"
                    )
                if resp.canceled:
                    raise StoreError(f"etcd cancelled the watch of {prefix}: {resp.cancel_reason}")
                if not resp.events:
                    continue
                events = [
                    Event(
                        "put" if ev.type == 0 else "delete",
                        decode_kv(ev.kv),
                        decode_kv(ev.prev_kv) if ev.HasField("prev_kv") else None,
                    )
                    for ev in resp.events
                ]
                next_revision = events[-1].kv.mod_revision + 1
                yield events
            log.warning("watch of %s ended; watching again from revision %d", prefix, next_revision)
        except (grpc.aio.AioRpcError, RpcError) as exc:
            code, details = rpc_status(exc)
            if over_receive_limit(code, details):
                _restarted(channel)  # the caller re-reads and watches again
                raise WatchTooLarge(
                    f"watch of {prefix} from revision {next_revision}: a response was over "
                    f"{channel.config.max_receive_bytes} bytes ({details}); re-read and watch again"
                ) from exc
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise wrap_error(exc, "watch", channel.config) from exc
            log.warning(
                "watch of %s interrupted (%s); resuming from revision %d in %.1f s",
                prefix,
                code.name,
                next_revision,
                backoff,
            )
        finally:
            await responses.aclose()
        _restarted(channel)  # the stream ended or was interrupted: resumed below
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 1.0)


WATCH_PATH = "/etcdserverpb.Watch/Watch"


async def _over_h2(channel: Channel, create: Any) -> AsyncGenerator[Any, None]:
    """The watch's responses over :mod:`tasklease.store_h2` (transport ``h2``)."""
    from etcd3aio._protobuf import WatchRequest, WatchResponse

    assert channel.unary is not None
    request = WatchRequest(create_request=create).SerializeToString()
    stream = channel.unary.stream(WATCH_PATH, request, connect_timeout_s=channel.config.timeout_s)
    try:
        async for raw in stream:
            yield WatchResponse.FromString(raw)
    finally:
        await stream.aclose()


async def _over_grpc(channel: Channel, create: Any) -> AsyncGenerator[Any, None]:
    """The watch's responses over etcd3aio's gRPC stub (transport ``grpc``)."""
    from etcd3aio._protobuf import WatchRequest

    service = channel.svc().watch

    async def requests() -> AsyncIterator[Any]:
        yield WatchRequest(create_request=create)
        await asyncio.Event().wait()  # keep the request side open

    call = service._stub.Watch(requests(), metadata=service._metadata or None)
    try:
        async for resp in call:
            yield resp
    finally:
        call.cancel()


def _restarted(channel: Channel) -> None:
    """Tell the store's observer (if any) that a watch starts over."""
    if channel.observer is not None:
        channel.observer.watch_restarted()
