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
# How long an unanswered tmux check waits for a container that may be stopping.
_SHUTDOWN_GRACE_S = 5.0


async def after_session(
    incus: IncusClient, container: str, tmux: TmuxSession | None, *, attach_code: int | None = 0
) -> Outcome:
    """Why the terminal came back: a detach, the end of the session, or the container stopping.

    `attach_code` is the exit code of the terminal's exec (None: its link broke). A detach, or
    the session's end, is a clean 0; anything else with the tmux session still there may be a
    container powering off whose tmux has not been stopped yet, so it gets a moment to stop.
    When incusd cannot tell in time, the answer is DETACHED: the container is kept (and its
    data saved), which is never the wrong thing to do with a session that may still be alive.
    """
    try:
        with anyio.fail_after(STATE_S):
            instance = await ops.state(incus, container)
            if instance is None or not instance.running:
                return Outcome.STOPPED
            if tmux is None:
                return Outcome.ENDED
            alive = True
            with absorbing_coi_errors() as failed:
                alive = await tmux.exists()
            if failed or (alive and attach_code != 0):
                # No answer from inside, or a terminal cut off while tmux lives on: the container
                # may be on its way down (poweroff). Give it a moment to reach Stopped; if it
                # does not, keep it as if detached.
                instance = await poll_stopped(incus, container, within_s=_SHUTDOWN_GRACE_S)
                if instance is None or not instance.running:
                    return Outcome.STOPPED
    except TimeoutError:
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
