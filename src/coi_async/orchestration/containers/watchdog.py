"""A container that powers itself off once coi lets go of it, or dies: `coi run`'s teardown.

A root exec is held open while the command runs. Its shell puts a process in a session of its
own (the watcher) that reads a pipe the exec's side feeds from the exec's stdin. On coi's
"release" line it powers the container off at once; at the pipe's end without one (coi was
killed and incusd ended what it exec'd, or incusd lost the exec) it waits a grace period and
powers off unless a newer watcher has claimed the container meanwhile. An Incus-ephemeral
container is then deleted by incusd itself, so `coi run` returns as soon as the command is
done, and a `coi run` killed with SIGKILL leaves nothing behind either.

incusd now and then fails an exec before its command starts (right after a container starts,
or under load: "Failed to retrieve PID of executing child process"), and an exec can end while
coi still holds it. Nothing of the watcher's input is taken before it runs, so coi simply
starts the exec again with a new stream, and the new watcher claims the container: one that
did run after all, or lost its exec, finds itself replaced after its grace and goes quietly.
Only a watcher that never came up leaves the stop to coi.

The command in the container can kill the watcher or claim the container (it may run as root).
That only matters if coi dies too: on its own way out coi also asks incusd for the stop
(without waiting for it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import anyio

from coi_async.errors import CoiError
from coi_async.incus import IncusClient
from coi_async.incus.exec import LOST_EXEC
from coi_async.orchestration.background import in_background

_READY = b"coi-watchdog-ready"
_READY_S = 10.0
_RELEASE = b"release\n"
# How long the release may take to go out before coi closes the exec anyway (the grace follows).
_RELEASE_S = 1.0
# The pause before the watcher's exec is started once more, after the exec client's own retries
# of one incusd could not start came to nothing (a host under load for longer).
_AGAIN_S = 0.5
# A watcher whose exec ended without the release waits this long for a newer one to claim the
# container (coi starts it again at once) before it powers off: what a `coi run` killed with
# SIGKILL leaves goes this much later.
_GRACE_S = 3
# How often a watcher whose exec ended while coi holds on is started again (a command that
# kills every watcher must not keep coi busy).
_RESTARTS = 5

# `poweroff -ff` is the reboot system call itself, from systemd's and busybox's alike; inside a
# container it ends the container's init. The ready line comes from the watcher once the pipe
# to it is in place and the container is claimed, so ready means watched. It forks nothing
# until its input ends (builtins read and write, poweroff is exec'd): a failed fork (a process
# limit used up) cannot end its wait early. A failed fork of the pipeline makes the shell give
# up before anyone could power off: no ready, and coi stops the container itself. A claim
# that cannot be written (no /run) never holds the poweroff back.
_SCRIPT = rf"""
cat 2>/dev/null | setsid sh -c '
    me=$$
    claimed=
    if echo "$me" >/run/coi-watchdog; then claimed=1; fi
    echo {_READY.decode()}
    exec >/dev/null
    line=
    while read -r line; do [ "$line" = release ] && break; done
    if [ "$line" != release ]; then
        sleep {_GRACE_S}
        if [ -n "$claimed" ] && read -r owner </run/coi-watchdog && [ "$owner" != "$me" ]; then
            exit 0
        fi
    fi
    for p in /sbin/poweroff /usr/sbin/poweroff /bin/poweroff; do
        [ -x "$p" ] && exec "$p" -ff
    done
' 2>/dev/null
"""


class Watcher:
    def __init__(self) -> None:
        self._ready = anyio.Event()
        self._in_place = False
        self._seen = b""
        self._release = anyio.Event()
        self._released = anyio.Event()

    def _saw(self, data: bytes) -> None:
        # The line may come in more than one frame.
        self._seen = (self._seen + data)[-2 * len(_READY) :]
        if _READY in self._seen:
            self._in_place = True
            self._ready.set()

    def _ended(self) -> None:
        self._ready.set()

    async def _stdin(self) -> AsyncIterator[bytes]:
        # A new one for each start of the exec; nothing is sent before the release.
        await self._release.wait()
        yield _RELEASE
        self._released.set()  # resumed once the line was sent
        await anyio.sleep_forever()

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

    async def start() -> int:
        return await incus.exec_stream(name, ["sh", "-c", _SCRIPT], stdin=watcher._stdin, on_stdout=on_stdout)

    async def watch() -> None:
        # Only the starts are bounded, never a watcher once it runs.
        give_up_at = anyio.current_time() + _READY_S
        restarts = 0
        with suppress(CoiError):
            while True:
                code = await start()
                if watcher._release.is_set():
                    break
                if watcher._in_place:
                    # Ended while coi holds on: a new watcher claims the container within the
                    # old one's grace.
                    restarts += 1
                    if restarts > _RESTARTS:
                        break
                elif code != LOST_EXEC or anyio.current_time() + _AGAIN_S > give_up_at:
                    break  # not one incusd failed to start: nothing to gain by starting it again
                else:
                    await anyio.sleep(_AGAIN_S)
        watcher._ended()

    async with in_background(watch):
        yield watcher
        watcher._release.set()
        if watcher._in_place:
            with anyio.move_on_after(_RELEASE_S):
                await watcher._released.wait()
