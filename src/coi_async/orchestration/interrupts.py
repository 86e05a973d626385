"""Signals as cancellation: SIGINT/SIGTERM/SIGHUP cancel a scope instead of killing the process.

The default handlers would end the process (or raise KeyboardInterrupt) wherever it is, halfway
through a save; received through anyio, a signal cancels the work and the shielded cleanup still
runs. The receiver stays open until the block ends, so a second signal during cleanup is
absorbed rather than fatal.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupt:
    """Which signal (if any) asked us to stop, and the scope it cancels."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.scope = anyio.CancelScope()

    @property
    def exit_code(self) -> int:
        """What the process exits with: 0 when no signal came, else 128 + the signal."""
        return 0 if self.signum is None else 128 + self.signum


@asynccontextmanager
async def interruptible(signals: tuple[signal.Signals, ...] = SIGNALS) -> AsyncIterator[Interrupt]:
    """For the duration, the first of `signals` cancels `interrupt.scope`; later ones are absorbed."""
    interrupt = Interrupt()

    async def watch(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(*signals) as received:
            task_status.started()
            async for signum in received:
                if interrupt.signum is None:
                    interrupt.signum = signum
                    interrupt.scope.cancel()

    async with anyio.create_task_group() as tg:
        await tg.start(watch)
        try:
            yield interrupt
        finally:
            tg.cancel_scope.cancel()
