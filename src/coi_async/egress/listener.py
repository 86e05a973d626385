"""The accept loop of one session's socket, with its connection limit enforced before accept.

A slot is taken before `accept()`: while all are taken, new connections wait in the kernel's
backlog instead of being accepted and piling up in memory. A slot whose client has not sent a
whole request head yet is the cheapest to give up, so when every slot is taken the oldest such
connection is closed to make room: 500 idle connections cannot stop the next real request. Only
connections busy with a request (a tunnel, a download) make a new one wait.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable
from contextlib import suppress

import anyio
import anyio.abc

Handler = Callable[[anyio.abc.ByteStream, "Slot"], Awaitable[None]]
# How long a failed accept (out of file descriptors) waits before trying again.
_ACCEPT_BACKOFF_S = 0.1


class Slot:
    """One accepted connection's place in the pool."""

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.waiting_for_head = True
        self.since = anyio.current_time()
        self.evicted = False
        self.stream: anyio.abc.ByteStream | None = None

    def busy(self) -> None:
        """The request head is in: from now on this connection is not given up for another."""
        self.waiting_for_head = False

    def evict(self) -> None:
        self.evicted = True
        # Ended by shutting the socket down, so its reader sees an end of stream: cancelling a
        # receive on an anyio unix stream races with the socket becoming readable (the loop
        # then reports an InvalidStateError).
        raw = self.stream.extra(anyio.abc.SocketAttribute.raw_socket, None) if self.stream else None
        if raw is None:
            self.scope.cancel()
            return
        with suppress(OSError):
            raw.shutdown(socket.SHUT_RDWR)


class SlotPool:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots: set[Slot] = set()
        self._freed = anyio.Event()
        self.accepted = 0
        self.evicted = 0

    @property
    def active(self) -> int:
        """Connections accepted and not ended (a slot still waiting in an accept is none)."""
        return sum(1 for slot in self._slots if slot.stream is not None)

    async def take(self) -> Slot:
        while len(self._slots) >= self.limit:
            if not self._evict_oldest_idle():
                self._freed = anyio.Event()
                await self._freed.wait()
        slot = Slot()
        self._slots.add(slot)
        return slot

    def shut_all(self) -> None:
        """End every connection of the pool (their handlers then finish on their own)."""
        for slot in list(self._slots):
            slot.evict()

    def release(self, slot: Slot) -> None:
        if slot in self._slots:
            self._slots.discard(slot)
            self._freed.set()

    def _evict_oldest_idle(self) -> bool:
        # A slot still waiting in an accept (a session can have more than one listener) holds no
        # connection to give up.
        idle = [s for s in self._slots if s.waiting_for_head and s.stream is not None]
        if not idle:
            return False
        oldest = min(idle, key=lambda s: s.since)
        oldest.evict()
        self._slots.discard(oldest)
        self.evicted += 1
        return True


async def serve(listener: anyio.abc.SocketListener, handler: Handler, pool: SlotPool) -> None:
    """Accept connections until cancelled or the listener is closed; each runs `handler`."""

    async def run(stream: anyio.abc.ByteStream, slot: Slot) -> None:
        try:
            with slot.scope:
                await handler(stream, slot)
        finally:
            pool.release(slot)
            await anyio.aclose_forcefully(stream)

    async with anyio.create_task_group() as tg:
        while True:
            slot = await pool.take()
            try:
                stream = await listener.accept()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pool.release(slot)
                return
            except OSError as exc:
                pool.release(slot)
                if exc.errno not in (
                    errno.EMFILE,
                    errno.ENFILE,
                    errno.ENOBUFS,
                    errno.ENOMEM,
                    errno.ECONNABORTED,
                ):
                    raise
                await anyio.sleep(_ACCEPT_BACKOFF_S)
                continue
            except BaseException:
                pool.release(slot)
                raise
            pool.accepted += 1
            slot.stream = stream
            slot.since = anyio.current_time()
            tg.start_soon(run, stream, slot)
