"""The local terminal side of an interactive exec: raw mode, keystrokes in, window sizes out.

The CLI makes one and hands it to the session flows; it satisfies `coi_async.incus.exec.Terminal`,
which is all the exec needs of a terminal.
"""

from __future__ import annotations

import os
import signal
import sys
import termios
import tty
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import anyio

_READ = 64 * 1024


class LocalTerminal:
    """The process's own terminal (or any pair of file descriptors, for pipes and tests)."""

    def __init__(self, in_fd: int | None = None, out_fd: int | None = None) -> None:
        self.in_fd = sys.stdin.fileno() if in_fd is None else in_fd
        self.out_fd = sys.stdout.fileno() if out_fd is None else out_fd

    @property
    def is_tty(self) -> bool:
        return os.isatty(self.in_fd)

    def size(self) -> tuple[int, int]:
        """(columns, rows), 80x24 when there is no terminal to ask."""
        for fd in (self.out_fd, self.in_fd):
            try:
                cols, rows = os.get_terminal_size(fd)
            except OSError:
                continue
            return cols, rows
        return 80, 24

    @contextmanager
    def raw(self) -> Iterator[None]:
        """Raw mode for the duration: every key goes to the instance, Ctrl-C included."""
        if not self.is_tty:
            yield
            return
        saved = termios.tcgetattr(self.in_fd)
        try:
            # Not TCSAFLUSH (the default): that would discard what the user typed ahead.
            tty.setraw(self.in_fd, termios.TCSANOW)
            yield
        finally:
            termios.tcsetattr(self.in_fd, termios.TCSADRAIN, saved)

    async def read(self) -> bytes:
        """The next bytes typed; b"" at end of input."""
        await anyio.wait_readable(self.in_fd)
        try:
            return os.read(self.in_fd, _READ)
        except OSError:
            return b""

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.out_fd, view)
            except BlockingIOError:
                await anyio.wait_writable(self.out_fd)
                continue
            view = view[written:]

    async def resizes(self) -> AsyncIterator[tuple[int, int]]:
        """The new size each time the window changes."""
        with anyio.open_signal_receiver(signal.SIGWINCH) as signals:
            async for _ in signals:
                yield self.size()
