"""The container operations every flow uses: stop (graceful or forced), delete, remove.

Each is idempotent and says what it means for the states a container can be in when the call
arrives: already stopped or gone counts as stopped, gone counts as deleted, "on its way down"
or "busy with another operation" is waited out within a bound. Shell, run, bulk, build and the
low-level commands all end containers through these, so a fix here is a fix everywhere.
"""

from __future__ import annotations

import contextlib

import anyio

from coi_async.errors import (
    AlreadyStoppedError,
    CoiError,
    IncusApiError,
    InstanceBusyError,
    NotFoundError,
    StopTimedOutError,
)
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance
from coi_async.naming import KEY_LAUNCH

# Slack on incusd's own shutdown timeout before we stop waiting for its answer.
GRACE_SLACK_S = 10.0
# How long a removal (forced stop and delete) may take when the caller sets no bound.
REMOVE_S = 30.0
_BUSY_ATTEMPTS = 20
_BUSY_PAUSE_S = 0.1


async def state(incus: IncusClient, name: str) -> Instance | None:
    """The instance, or None when it does not exist."""
    try:
        return await incus.get_instance(name)
    except NotFoundError:  # on an instance's own path, only the instance can be missing
        return None


async def is_running(incus: IncusClient, name: str) -> bool:
    """Whether the container is anything but stopped (or gone): "Stopping" counts as running."""
    instance = await state(incus, name)
    return instance is not None and instance.status.lower() != "stopped"


async def exists(incus: IncusClient, name: str) -> bool:
    return await state(incus, name) is not None


async def graceful_stop(
    incus: IncusClient, name: str, *, grace_s: int, interrupted: anyio.Event | None = None
) -> bool:
    """Ask the guest to shut down; True if it is stopped (or gone) within `grace_s`.

    False when the guest outlived the timeout or `interrupted` was set meanwhile; the caller
    then forces the stop.
    """
    clean = False
    async with anyio.create_task_group() as tg:

        async def stop() -> None:
            nonlocal clean
            try:
                with anyio.move_on_after(grace_s + GRACE_SLACK_S):
                    await incus.stop_instance(name, grace_s=grace_s)
                    clean = True
            except (NotFoundError, AlreadyStoppedError):
                clean = True  # an ephemeral container is gone once it stopped
            except (StopTimedOutError, InstanceBusyError):
                clean = False
            tg.cancel_scope.cancel()

        async def escalate() -> None:
            if interrupted is None:
                await anyio.sleep_forever()
            else:
                await interrupted.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(stop)
        tg.start_soon(escalate)
    return clean


async def force_stop(incus: IncusClient, name: str) -> None:
    """Stop at once; a container that is stopped already, or gone, is fine. A container busy
    with another operation (a start, a create) is tried again for a moment."""
    for attempt in range(_BUSY_ATTEMPTS):
        try:
            await incus.stop_instance(name, force=True)
            return
        except (NotFoundError, AlreadyStoppedError):
            return
        except InstanceBusyError:
            if attempt == _BUSY_ATTEMPTS - 1:
                raise
        await anyio.sleep(_BUSY_PAUSE_S)


async def delete(incus: IncusClient, name: str, *, attempts: int = 4) -> None:
    """Delete a container; one that is gone already (ephemeral, or a race) is fine.

    A container still on its way down is stopped for good and the delete retried, so a removal
    never ends with the container stopped but not deleted.
    """
    for attempt in range(attempts):
        try:
            await incus.delete_instance(name)
            return
        except NotFoundError:
            return
        except IncusApiError as exc:
            # A concurrent delete (e.g. the session's own cleanup) can fail ours: what counts is
            # whether the container still exists.
            if not await exists(incus, name):
                return
            if attempt == attempts - 1:
                raise CoiError(f"could not delete {name}: {' '.join(str(exc).split())}") from exc
            if await is_running(incus, name):
                await force_stop(incus, name)
            else:
                await anyio.sleep(0.5 * (attempt + 1))


async def remove(incus: IncusClient, name: str, *, grace_s: int = 0, bound_s: float | None = None) -> None:
    """Stop (gracefully within `grace_s`, else at once) and delete; gone already is fine.

    Shielded and bounded, so it is safe in `finally` blocks during cancellation. Callers save
    session data first. Raises CoiError when the container could not be deleted.
    """
    bound = bound_s if bound_s is not None else grace_s + GRACE_SLACK_S + REMOVE_S
    try:
        with anyio.CancelScope(shield=True), anyio.fail_after(bound):
            if grace_s <= 0 or not await graceful_stop(incus, name, grace_s=grace_s):
                # An Incus-ephemeral instance is deleted by this stop already.
                await force_stop(incus, name)
            await delete(incus, name)
    except TimeoutError:
        raise CoiError(f"could not remove {name} within {bound:g}s") from None


async def remove_quietly(incus: IncusClient, name: str, *, bound_s: float = REMOVE_S) -> None:
    """`remove` at once, for cleanup paths that have nothing to tell about a failure."""
    with contextlib.suppress(CoiError):
        await remove(incus, name, bound_s=bound_s)


async def stop_and_keep(incus: IncusClient, name: str, *, grace_s: int = 10) -> None:
    """Stop a persistent container (gracefully, then by force), keeping it; shielded, bounded."""
    bound = grace_s + GRACE_SLACK_S + REMOVE_S
    with anyio.CancelScope(shield=True), anyio.move_on_after(bound), contextlib.suppress(CoiError):
        if not await graceful_stop(incus, name, grace_s=grace_s):
            await force_stop(incus, name)


async def launch_token(incus: IncusClient, name: str) -> str | None:
    """The launch token coi stamped on instance `name` ("" if none); None if there is no such
    instance. Shielded and bounded: it is asked while cleaning up."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(REMOVE_S):
        instance = await state(incus, name)
        return None if instance is None else instance.config.get(KEY_LAUNCH, "")
    return None


async def remove_if_ours(incus: IncusClient, name: str, token: str) -> None:
    """Remove a half-made instance, but only if the launch holding `token` made it (never a
    rival's that took the name meanwhile)."""
    if await launch_token(incus, name) == token:
        await remove_quietly(incus, name)


async def request_stop(incus: IncusClient, name: str) -> None:
    """Ask for a forced stop and do not wait for it (an ephemeral container is then deleted by
    incusd); stopped or gone already is fine."""
    with contextlib.suppress(NotFoundError, AlreadyStoppedError, InstanceBusyError):
        await incus.request_forced_stop(name)
