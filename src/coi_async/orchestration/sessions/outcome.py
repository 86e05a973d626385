"""Why the user's terminal came back from a session: a detach, the end of the session, or the
container stopping; and waiting for a container that is on its way down."""

from __future__ import annotations

import anyio

from coi_async.incus import IncusClient
from coi_async.incus.models import Instance
from coi_async.orchestration.containers import ops
from coi_async.orchestration.sessions.guard import absorbing_coi_errors
from coi_async.orchestration.sessions.request import Outcome
from coi_async.orchestration.sessions.tmux import TmuxSession

# How long incusd gets to say what state a container is in.
STATE_S = 10.0
# How long a container that is shutting down itself (poweroff inside) gets to reach Stopped.
_POWEROFF_WAIT_S = 30.0
_FORCE_STOP_S = 20.0
# How long the tmux check inside the container gets before its answer counts as unknown.
_TMUX_CHECK_S = 5.0
# How long a terminal cut off while tmux still answers waits for a container that may be stopping.
_SHUTDOWN_GRACE_S = 5.0


async def after_session(
    incus: IncusClient, container: str, tmux: TmuxSession | None, *, attach_code: int | None = 0
) -> Outcome:
    """Why the terminal came back: a detach, the end of the session, or the container stopping.

    `attach_code` is the exit code of the terminal's exec (None: its link broke). A detach, or
    the session's end, is a clean 0. A container that no longer answers the tmux check is most
    likely powering off (its shutdown kills the check), so it gets the whole poweroff window to
    reach Stopped; a terminal cut off while tmux lives on gets a short grace. When incusd cannot
    tell in time, the answer is DETACHED: the container is kept (and its data saved), which is
    never the wrong thing to do with a session that may still be alive.
    """
    try:
        with anyio.fail_after(STATE_S):
            instance = await ops.state(incus, container)
    except TimeoutError:
        return Outcome.DETACHED
    if instance is None or not instance.running:
        return Outcome.STOPPED
    if tmux is None:
        return Outcome.ENDED
    alive = True
    with anyio.move_on_after(_TMUX_CHECK_S) as check, absorbing_coi_errors() as failed:
        alive = await tmux.exists()
    unanswered = bool(failed) or check.cancelled_caught
    if unanswered or (alive and attach_code != 0):
        within_s = _POWEROFF_WAIT_S if unanswered else _SHUTDOWN_GRACE_S
        try:
            with anyio.fail_after(within_s + STATE_S):
                instance = await poll_stopped(incus, container, within_s=within_s)
        except TimeoutError:
            return Outcome.DETACHED
        if instance is None or not instance.running:
            return Outcome.STOPPED
        if unanswered:
            return Outcome.DETACHED
    return Outcome.DETACHED if alive else Outcome.ENDED


async def poll_stopped(incus: IncusClient, name: str, *, within_s: float) -> Instance | None:
    """The container's state once it is stopped, or after `within_s` (None: it is gone)."""
    delay = 0.05
    instance = await ops.state(incus, name)
    with anyio.move_on_after(within_s):
        while instance is not None and instance.running:
            await anyio.sleep(delay)  # polling incusd's state, not waiting blindly
            delay = min(delay * 2, 0.5)
            instance = await ops.state(incus, name)
    return instance


async def wait_stopped(incus: IncusClient, name: str) -> Instance | None:
    """Wait for a container that is shutting itself down; force it after the grace period."""
    instance = await poll_stopped(incus, name, within_s=_POWEROFF_WAIT_S)
    if instance is None or not instance.running:
        return instance
    with anyio.move_on_after(_FORCE_STOP_S), absorbing_coi_errors():
        await ops.force_stop(incus, name)
    return await ops.state(incus, name)
