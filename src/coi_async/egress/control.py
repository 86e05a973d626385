"""The daemon's control socket: one JSON request line, one JSON reply line, then close.

Only the user who runs the daemon can reach it (the socket lives in a 0700 directory, mode 0600).
Requests: `{"command": "ping" | "status" | "reload" | "stop"}`.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import msgspec
from anyio.streams.buffered import BufferedByteReceiveStream

from coi_async.errors import EgressError

MAX_LINE = 64 * 1024
_REQUEST_S = 5.0
_REPLY_S = 1.0

Reply = dict[str, Any]
Dispatch = Callable[[str], Awaitable[Reply]]


class ControlRequest(msgspec.Struct, frozen=True):
    command: str


_REQUEST = msgspec.json.Decoder(ControlRequest)


async def serve_control(listener: anyio.abc.Listener[anyio.abc.ByteStream], dispatch: Dispatch) -> None:
    """Answer control requests until cancelled; one bad request ends only its own connection."""

    async def one(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            reply: Reply
            with anyio.move_on_after(_REQUEST_S):
                try:
                    line = await BufferedByteReceiveStream(stream).receive_until(b"\n", MAX_LINE)
                    request = _REQUEST.decode(line)
                except (
                    anyio.DelimiterNotFound,
                    anyio.IncompleteRead,
                    anyio.EndOfStream,
                    msgspec.DecodeError,
                ):
                    reply = {"ok": False, "error": "malformed request"}
                else:
                    reply = await dispatch(request.command)
                # Shielded: a `stop` ends the daemon at once, and its reply must still go out.
                with anyio.CancelScope(shield=True), anyio.move_on_after(_REPLY_S):
                    try:
                        await stream.send(msgspec.json.encode(reply) + b"\n")
                    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass

    await listener.serve(one)


async def call(path: str, command: str, *, within_s: float = 10.0) -> Reply:
    """Send one request to the daemon at `path`; its reply. EgressError when nobody answers."""
    try:
        with anyio.fail_after(within_s):
            async with await anyio.connect_unix(path) as stream:
                await stream.send(msgspec.json.encode(ControlRequest(command)) + b"\n")
                line = await BufferedByteReceiveStream(stream).receive_until(b"\n", MAX_LINE)
    except TimeoutError:
        raise EgressError(f"the egress daemon at {path} did not answer within {within_s:g}s") from None
    except (OSError, anyio.EndOfStream, anyio.IncompleteRead, anyio.DelimiterNotFound) as exc:
        code = getattr(exc, "errno", None)
        why = (
            "it is not running"
            if code in (errno.ENOENT, errno.ECONNREFUSED)
            else str(exc) or type(exc).__name__
        )
        raise EgressError(f"cannot reach the egress daemon at {path}: {why}") from None
    try:
        reply: Reply = msgspec.json.decode(line)
    except msgspec.DecodeError as exc:
        raise EgressError(f"unexpected answer from the egress daemon: {exc}") from None
    if not isinstance(reply, dict):
        raise EgressError("unexpected answer from the egress daemon")
    return reply
