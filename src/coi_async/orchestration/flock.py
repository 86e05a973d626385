"""An exclusive `flock` waited for without blocking the event loop (the lock is another
process's, so nothing here can wake us: poll)."""

from __future__ import annotations

import fcntl

import anyio


async def wait_for_flock(fd: int, *, poll_s: float = 0.02) -> None:
    """Until this process holds an exclusive lock on the open `fd` (closing it releases it)."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            await anyio.sleep(poll_s)
