"""Reading server-sent events in tests: the fields of each message, as a browser's EventSource splits them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SSEMessage:
    """One dispatched message (or comment) of an event stream."""

    event: str = "message"
    id: str | None = None
    data: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def revision(self) -> int:
        assert self.id is not None
        return int(self.id)


def parse_block(block: str) -> SSEMessage:
    """One blank-line-terminated block, split into its fields (the EventSource rules)."""
    msg = SSEMessage()
    data: list[str] = []
    for line in block.split("\n"):
        if not line:
            continue
        if line.startswith(":"):
            msg.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            msg.event = value
        elif name == "id":
            msg.id = value
        elif name == "data":
            data.append(value)
        elif name == "retry":
            msg.retry = int(value)
        else:
            raise AssertionError(f"unknown SSE field {name!r} in {block!r}")
    msg.data = "\n".join(data)
    return msg


def parse_sse(raw: bytes) -> list[SSEMessage]:
    """Every complete block of ``raw`` (which must end at a block boundary)."""
    text = raw.decode("utf-8")
    assert "\r" not in text
    assert text.endswith("\n\n"), text[-80:]
    return [parse_block(block) for block in text[:-2].split("\n\n")]


class SSEReader:
    """Reads the byte chunks of a stream into messages (a chunk may hold several)."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks
        self.pending: list[SSEMessage] = []

    async def next(self) -> SSEMessage:
        """The next block: a message, a ``retry:`` or a comment."""
        while not self.pending:
            chunk = await anext(self.chunks)
            self.pending.extend(parse_sse(chunk))
        return self.pending.pop(0)

    async def next_message(self) -> SSEMessage:
        """The next message that has an event (skips ``retry:`` and comments)."""
        while True:
            msg = await self.next()
            if msg.id is not None or msg.data:
                return msg


class Blocks:
    """Whole SSE blocks from a byte stream (TCP may split or join them)."""

    def __init__(self, raw: AsyncIterator[bytes]) -> None:
        self.raw = raw

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pending = b""
        async for chunk in self.raw:
            pending += chunk
            end = pending.rfind(b"\n\n")
            if end >= 0:
                whole, pending = pending[: end + 2], pending[end + 2 :]
                yield whole
