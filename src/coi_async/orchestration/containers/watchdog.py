"""A container that powers itself off once coi lets go of it, or dies: `coi run`'s teardown.

A root exec is held open while the command runs. Its shell puts a process in a session of its
own that waits for the end of a pipe the exec's side writes to; when the exec ends (coi closes
it, or coi is killed and incusd kills what it exec'd), the pipe closes and that process powers
the container off. An Incus-ephemeral container is then deleted by incusd itself, so `coi run`
returns as soon as the command is done, and a `coi run` killed with SIGKILL leaves nothing
behind either.

The command in the container can kill the watcher (it may run as root). That only matters if
coi dies too: on its own way out coi also asks incusd for the stop (without waiting for it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import anyio

from coi_async.errors import CoiError
from coi_async.incus import IncusClient
from coi_async.orchestration.background import in_background

_READY = b"coi-watchdog-ready"
_READY_S = 10.0

# `poweroff -ff` is the reboot system call itself, from systemd's and busybox's alike; inside a
# container it ends the container's init.
_SCRIPT = rf"""
echo {_READY.decode()}
cat | setsid sh -c '
    cat >/dev/null
    for p in /sbin/poweroff /usr/sbin/poweroff /bin/poweroff; do
        [ -x "$p" ] && exec "$p" -ff
    done
' >/dev/null 2>&1
"""


async def _never() -> AsyncIterator[bytes]:
    await anyio.sleep_forever()
    yield b""  # pragma: no cover - the stdin of the watcher never ends on its own


class Watcher:
    def __init__(self) -> None:
        self._ready = anyio.Event()
        self._in_place = False

    def _saw(self, data: bytes) -> None:
        if _READY in data:
            self._in_place = True
            self._ready.set()

    def _ended(self) -> None:
        self._ready.set()

    async def in_place(self) -> bool:
        """Whether the watcher runs in the container (waiting a moment for it to start). When
        not (a container that does not answer), the caller stops the container itself."""
        with anyio.move_on_after(_READY_S):
            await self._ready.wait()
        return self._in_place


@asynccontextmanager
async def powered_off_on_release(incus: IncusClient, name: str) -> AsyncIterator[Watcher]:
    """While the context is open, `name` runs; once it closes (or this process dies) the
    container powers itself off. The watcher starts in the background: the body goes on at
    once and asks `in_place()` when it needs to know."""
    watcher = Watcher()

    async def on_stdout(data: bytes) -> None:
        watcher._saw(data)

    async def watch() -> None:
        with suppress(CoiError):
            await incus.exec_stream(name, ["sh", "-c", _SCRIPT], stdin=_never(), on_stdout=on_stdout)
        watcher._ended()

    async with in_background(watch):
        yield watcher
