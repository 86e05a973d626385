"""What the low-level command families (container, file, image, tmux) share."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import anyio

from coi_async.errors import CoiError

if TYPE_CHECKING:
    from coi_async.cli.app import App
    from coi_async.incus import IncusClient

# Deadlines for incusd's own work; a user's command (`container exec`) has none.
QUICK_S = 60.0
START_S = 180.0
# incusd gives a graceful stop 600 s before it fails the operation.
STOP_S = 630.0
PUBLISH_S = 1800.0


def say(line: str) -> None:
    """Progress and confirmations: stderr, so stdout stays machine output."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Fail with one readable line, not a traceback, when incusd takes longer than `seconds`."""
    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError as exc:
        raise CoiError(f"{what} timed out after {seconds:g}s") from exc


@contextlib.asynccontextmanager
async def connected(app: App, seconds: float, what: str) -> AsyncIterator[IncusClient]:
    """A client for work that must end within `seconds` (see `deadline`).

    Opening the client is not counted: the deadline is for what incusd is asked to do.
    """
    async with app.incus() as incus:
        with deadline(seconds, what):
            yield incus
