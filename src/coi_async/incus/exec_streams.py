"""An exec's websockets: what flows in and out of them, and the control channel's messages."""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Mapping

import msgspec

from coi_async.errors import IncusError
from coi_async.incus.transport import WebSocket

ByteSink = Callable[[bytes], Awaitable[None]]
Input = bytes | AsyncIterable[bytes] | None  # what one start of the command is given

_CHUNK = 256 * 1024


class _Resize(msgspec.Struct):
    width: str
    height: str


class _Control(msgspec.Struct, omit_defaults=True):
    command: str
    args: _Resize | None = None
    signal: int = 0


async def pump_out(ws: WebSocket, sink: ByteSink | None) -> None:
    while True:
        frame = await ws.receive()
        if frame is None or isinstance(frame, str):
            return  # the end-of-stream barrier (empty text frame) or a close
        if sink is not None and frame:
            await sink(frame)


async def pump_in(ws: WebSocket, stdin: Input) -> None:
    try:
        await _send_stdin(ws, stdin)
    except IncusError:
        # The command ended without reading all its input; its exit code still tells the story.
        return


async def _send_stdin(ws: WebSocket, stdin: Input) -> None:
    if isinstance(stdin, bytes):
        for start in range(0, len(stdin), _CHUNK):
            await ws.send_bytes(stdin[start : start + _CHUNK])
    elif stdin is not None:
        async for chunk in stdin:
            if chunk:
                await ws.send_bytes(chunk)
    await ws.send_text("")  # EOF


async def send_resize(control: WebSocket, columns: int, rows: int) -> None:
    # incusd parses the sizes with Atoi: they must be strings.
    message = _Control(command="window-resize", args=_Resize(width=str(columns), height=str(rows)))
    await control.send_text(msgspec.json.encode(message).decode())


async def close_all(sockets: Mapping[str, WebSocket], *, abandoned: bool = False) -> None:
    """Close an exec's streams. Control goes last when the command is done (closing it kills
    the command). An abandoned exec (its caller gave up on it, or failed) closes control first:
    incusd then kills the command and ends its streams at once, where a stream of a command
    still running would answer the close only after the close's timeout."""
    for fd in sorted(sockets, key=lambda fd: (fd == "control") != abandoned):
        await sockets[fd].close()
