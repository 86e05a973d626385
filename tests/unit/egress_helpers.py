"""What the egress tests share: a client that reads an answer to its end."""

from __future__ import annotations

import anyio
import anyio.abc


async def send_and_read_to_end(stream: anyio.abc.ByteStream, request: bytes) -> bytes:
    """Send `request`, then read until the other side closes; within 10 s."""
    with anyio.fail_after(10):
        await stream.send(request)
        chunks = []
        while True:
            try:
                chunks.append(await stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return b"".join(chunks)
