"""Bulk bytes between two sockets without passing them through Python: `os.splice` via a pipe.

A download through the daemon would otherwise be read into Python and written out again, chunk
by chunk; splicing moves it inside the kernel, so the daemon costs a few system calls per
megabyte. Only sockets nobody else reads or writes behind our back can be spliced: anyio's unix
streams (they use the raw socket only while receive/send run) and `RawSocketStream`, the
upstream connection the daemon makes itself. anyio's TCP streams read through an asyncio
transport that may already hold bytes, so they are copied the ordinary way.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from coi_async.config.network import IPAddress

T = TypeVar("T")
PIPE_BYTES = 1024 * 1024
_F_SETPIPE_SZ = 1031
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


class RawSocketStream(anyio.abc.SocketStream):
    """A connected, non-blocking socket as an anyio stream that reads only when asked to."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(0.0)  # non-blocking
        self._sock = sock

    @property
    def _raw_socket(self) -> socket.socket:
        return self._sock

    async def _when_ready(self, call: Callable[[], T], wait: Callable[[socket.socket], Awaitable[None]]) -> T:
        """`call()` once the socket lets it through without blocking."""
        while True:
            try:
                return call()
            except BlockingIOError:
                await wait(self._sock)
            except OSError as exc:
                raise anyio.BrokenResourceError from exc

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint()
        data = await self._when_ready(lambda: self._sock.recv(max_bytes), anyio.wait_readable)
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        view = memoryview(item)
        while view:
            sent = await self._when_ready(partial(self._sock.send, view), anyio.wait_writable)
            view = view[sent:]

    async def send_eof(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        self._sock.close()
        await anyio.lowlevel.checkpoint()


async def tcp_connect(address: IPAddress, port: int) -> anyio.abc.SocketStream:
    """A TCP connection to exactly `address` (no name resolution)."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(0.0)  # non-blocking
        try:
            sock.connect((str(address), port))
        except BlockingIOError:
            await anyio.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error)) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return RawSocketStream(sock)


def spliceable(stream: anyio.abc.ByteStream) -> socket.socket | None:
    """The socket under `stream` if bytes may be spliced to and from it directly."""
    if isinstance(stream, (RawSocketStream, anyio.abc.UNIXSocketStream)):
        return stream.extra(anyio.abc.SocketAttribute.raw_socket)
    return None


async def splice(
    src: socket.socket, dst: socket.socket, moved: Callable[[int], None], *, limit: int | None = None
) -> None:
    """Move bytes from `src` to `dst` until `src` ends (or `limit` bytes moved); `moved` is told
    every batch. OSError when a side fails."""
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        try:
            fcntl.fcntl(write_end, _F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # a smaller pipe only means more system calls
        left = limit
        while left is None or left > 0:
            want = PIPE_BYTES if left is None else min(left, PIPE_BYTES)
            await anyio.lowlevel.checkpoint()
            try:
                filled = os.splice(src.fileno(), write_end, want, flags=_FLAGS)
            except BlockingIOError:
                await anyio.wait_readable(src)
                continue
            if filled == 0:
                return
            while filled:
                try:
                    sent = os.splice(read_end, dst.fileno(), filled, flags=_FLAGS)
                except BlockingIOError:
                    await anyio.wait_writable(dst)
                    continue
                filled -= sent
                moved(sent)
                if left is not None:
                    left -= sent
    finally:
        os.close(read_end)
        os.close(write_end)
