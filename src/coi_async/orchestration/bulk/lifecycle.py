"""Ending session containers in bulk: what `coi shutdown`, `coi kill` and `coi clean` do per item.

Every action saves the container's session data first and touches the container only once that
worked: a failed save leaves it as it was. From the first state change on, the rest (stop,
force stop, delete) runs inside `ctx.committed()`: shielded and bounded, so an interrupted run
leaves each container either untouched or gone with its data saved. On interruption a graceful
stop still waiting on the guest turns into a forced one, so Ctrl-C never waits out a timeout.

Re-running is always safe: "already stopped" is success for a stop and "not found" for a delete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec

from coi_async.errors import CoiError, IncusApiError, NotFoundError, OperationFailedError
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance
from coi_async.naming import KEY_PERSISTENT, KEY_SESSION, KEY_SLOT, KEY_UID, KEY_WORKSPACE, SessionName
from coi_async.orchestration.runner import ItemContext
from coi_async.orchestration.sessions import archive
from coi_async.orchestration.sessions.store import (
    SessionMetadata,
    SessionStore,
    check_session_id,
    discover_cli_session_id,
    new_session_id,
    now_rfc3339,
)
from coi_async.tools import Tool

CODE_HOME = "/home/code"

# Steps reported through `ItemContext.step`; the CLI turns them into the contract's lines.
SAVING = "saving"
SAVED = "saved"  # detail: the session directory
NO_SESSION_DATA = "no-session-data"
STOPPING = "stopping"  # graceful, detail: the timeout in seconds
STOPPED = "stopped"  # the guest shut down within the timeout
FORCE_STOPPING = "force-stopping"  # the timeout passed (detail "timeout") or Ctrl-C ("interrupted")
STOPPED_DURING_TIMEOUT = "stopped-during-timeout"
DELETING = "deleting"

# After a failed graceful stop, how long a forced stop and a delete may take together.
_FINISH_S = 60.0
# Slack on incusd's own shutdown timeout before we stop waiting for its answer.
_GRACE_SLACK_S = 10.0


class Selection(msgspec.Struct, frozen=True, kw_only=True):
    """The containers a bulk command acts on, from one listing."""

    found: list[Instance]
    unknown: list[str]  # names given that do not exist
    # Every instance of the project is one of coi's (by name): a project-wide action is safe.
    whole_project: bool


async def select(
    incus: IncusClient,
    *,
    prefix: str,
    names: Sequence[str] = (),
    all_: bool = False,
    stopped_only: bool = False,
) -> Selection:
    """One listing, filtered here: coi's containers for `all_`, else the names given (in order)."""
    instances = await incus.list_instances()
    ours = [i for i in instances if SessionName.parse(i.name, prefix) is not None]
    whole = len(ours) == len(instances)
    if all_:
        chosen = sorted(ours, key=lambda i: i.name)
        if stopped_only:
            chosen = [i for i in chosen if i.status.lower() == "stopped"]
        return Selection(found=chosen, unknown=[], whole_project=whole)
    by_name = {i.name: i for i in instances}
    seen: set[str] = set()
    found: list[Instance] = []
    unknown: list[str] = []
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        if name in by_name:
            found.append(by_name[name])
        else:
            unknown.append(name)
    return Selection(found=found, unknown=unknown, whole_project=whole)


class SessionSaver:
    """Saves a container's tool state into its session in the store, with its metadata."""

    def __init__(self, store: SessionStore, tool: Tool, *, save_s: float = 300.0) -> None:
        self.store = store
        self.tool = tool
        self.save_s = save_s

    def session_id(self, inst: Instance) -> str:
        """The container's session: the id coi stamped on it, else the newest saved one naming
        it, else a new one (so data of a container coi did not start is still kept)."""
        stamped = inst.config.get(KEY_SESSION, "")
        with contextlib.suppress(CoiError):
            return check_session_id(stamped)
        known = self.store.for_container(inst.name)
        return known[0].id if known else new_session_id()

    async def save(self, incus: IncusClient, inst: Instance) -> Path | None:
        """The session directory the data went to, or None when there was nothing to save.

        Raises CoiError when the data exists but could not be saved.
        """
        if not self.tool.saves_state:
            return None
        session_id = await anyio.to_thread.run_sync(self.session_id, inst)
        session_dir = self.store.session_dir(session_id)
        try:
            uid = int(inst.config.get(KEY_UID, "1000"))
        except ValueError:
            uid = 1000
        home = "/root" if uid == 0 else CODE_HOME
        try:
            with anyio.fail_after(self.save_s):
                outcome = await archive.save_session_data(
                    incus,
                    inst.name,
                    session_dir,
                    home,
                    config_dir=self.tool.config_dir,
                    running=inst.running,
                )
        except TimeoutError:
            raise CoiError(f"saving session data took over {self.save_s:g}s") from None
        except CoiError as exc:
            raise CoiError(f"could not save session data: {exc}") from exc
        if outcome.missing:
            return None
        await anyio.to_thread.run_sync(self._write_metadata, inst, session_id, session_dir)
        return session_dir

    def _write_metadata(self, inst: Instance, session_id: str, session_dir: Path) -> None:
        meta = self.store.load_metadata(session_id) or SessionMetadata(
            session_id=session_id,
            container_name=inst.name,
            persistent=inst.config.get(KEY_PERSISTENT) == "true",
            workspace=inst.config.get(KEY_WORKSPACE, ""),
            tool=self.tool.name,
            slot=_int(inst.config.get(KEY_SLOT, "0")),
            created_at=inst.created_at,
        )
        cli_id = discover_cli_session_id(self.tool, session_dir)
        self.store.save_metadata(
            msgspec.structs.replace(
                meta,
                container_name=inst.name,
                saved_at=now_rfc3339(),
                cli_session_id=cli_id or meta.cli_session_id,
            )
        )


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


# --- the per-container actions -----------------------------------------------------------------


async def _save(ctx: ItemContext, incus: IncusClient, inst: Instance, saver: SessionSaver) -> None:
    ctx.step(SAVING)
    saved = await saver.save(incus, inst)
    if saved is None:
        ctx.step(NO_SESSION_DATA, saver.tool.config_dir)
    else:
        ctx.step(SAVED, str(saved))
        ctx.detail = str(saved)


async def shutdown_one(
    ctx: ItemContext, incus: IncusClient, inst: Instance, *, saver: SessionSaver, grace_s: int
) -> None:
    """Save, stop gracefully within `grace_s` (forced after it), delete."""
    await _save(ctx, incus, inst, saver)
    with ctx.committed(grace_s + _GRACE_SLACK_S + _FINISH_S):
        if inst.running:
            ctx.step(STOPPING, str(grace_s))
            # Waiting on incusd to bring the guest down (gracefully, then by force) costs this
            # process nothing: let others work meanwhile. Forcing inside the wait matters: after
            # a common timeout every late container is forced at once, not in waves of --parallel.
            async with ctx.released():
                clean = await _graceful_stop(incus, inst.name, grace_s, ctx.interrupted)
                if clean:
                    ctx.step(STOPPED)
                elif await _running(incus, inst.name):
                    ctx.step(FORCE_STOPPING, "interrupted" if ctx.interrupted.is_set() else "timeout")
                    await force_stop(incus, inst.name)
                else:
                    ctx.step(STOPPED_DURING_TIMEOUT)
        ctx.step(DELETING)
        await delete(incus, inst.name)


async def kill_one(ctx: ItemContext, incus: IncusClient, inst: Instance, *, saver: SessionSaver) -> None:
    """Save, force stop, delete."""
    await _save(ctx, incus, inst, saver)
    with ctx.committed(_FINISH_S):
        if inst.running:
            # As in shutdown: a forced stop is incusd's work, so it waits without holding a slot.
            async with ctx.released():
                ctx.step(FORCE_STOPPING, "kill")
                await force_stop(incus, inst.name)
        else:
            await ctx.hand_over()
        ctx.step(DELETING)
        await delete(incus, inst.name)


async def remove_stopped_one(
    ctx: ItemContext, incus: IncusClient, inst: Instance, *, saver: SessionSaver
) -> None:
    """Save (through the files API: the container is stopped), delete. A container that has
    been started since it was listed is left alone."""
    await _save(ctx, incus, inst, saver)
    with ctx.committed(_FINISH_S):
        await ctx.hand_over()
        ctx.step(DELETING)
        try:
            await incus.delete_instance(inst.name)
        except NotFoundError:
            return
        except IncusApiError as exc:
            if "running" in str(exc).lower():
                raise CoiError(f"{inst.name} was started again; left as it is") from exc
            if not await incus.instance_exists(inst.name):
                return
            raise


async def delete_session_one(ctx: ItemContext, store: SessionStore, session_id: str) -> None:
    """Remove a saved session directory: renamed aside first (atomic), then removed."""
    path = store.session_dir(session_id)
    with ctx.committed(_FINISH_S):
        ctx.step(DELETING)
        aside = path.with_name(f".{path.name}.deleting")
        try:
            await anyio.to_thread.run_sync(os.rename, path, aside)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CoiError(f"cannot delete session {session_id}: {exc.strerror}") from exc
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(aside, ignore_errors=True))


# --- the Incus steps ---------------------------------------------------------------------------


def _already_stopped(exc: CoiError) -> bool:
    return "already stopped" in str(exc) or "not running" in str(exc).lower()


async def _running(incus: IncusClient, name: str) -> bool:
    """Whether the container is anything but stopped (or gone): "Stopping" counts as running."""
    try:
        return (await incus.get_instance(name)).status.lower() != "stopped"
    except NotFoundError:
        return False


async def _graceful_stop(incus: IncusClient, name: str, grace_s: int, interrupted: anyio.Event) -> bool:
    """Ask the guest to shut down; True if it did within `grace_s`.

    False when the timeout passed or the run was interrupted; the caller then forces the stop.
    """
    clean = False
    async with anyio.create_task_group() as tg:

        async def stop() -> None:
            nonlocal clean
            try:
                with anyio.move_on_after(grace_s + _GRACE_SLACK_S):
                    await incus.stop_instance(name, grace_s=grace_s)
                    clean = True
            except NotFoundError:
                clean = True  # an ephemeral container is gone once it stopped
            except OperationFailedError as exc:
                # incusd: 'Failed shutting down instance, status is "Running": context deadline
                # exceeded' when the guest outlived the timeout.
                clean = _already_stopped(exc)
            tg.cancel_scope.cancel()

        async def escalate() -> None:
            await interrupted.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(stop)
        tg.start_soon(escalate)
    return clean


async def force_stop(incus: IncusClient, name: str) -> None:
    """Stop at once; a container that is already stopped, or gone, is fine."""
    try:
        await incus.stop_instance(name, force=True)
    except NotFoundError:
        return
    except OperationFailedError as exc:
        if not _already_stopped(exc):
            raise


async def delete(incus: IncusClient, name: str, *, attempts: int = 4) -> None:
    """Delete a stopped container; one that is gone already (ephemeral, or a race) is fine.

    A container still on its way down (incusd: "Instance is running") is stopped for good and
    the delete retried, so a shutdown never ends with the container stopped but not deleted.
    """
    for attempt in range(attempts):
        try:
            await incus.delete_instance(name)
            return
        except NotFoundError:
            return
        except IncusApiError as exc:
            # A concurrent delete (e.g. the session's own cleanup) can fail ours with "A matching
            # non-reusable operation has now succeeded": what counts is whether it still exists.
            if not await incus.instance_exists(name):
                return
            if attempt == attempts - 1:
                raise CoiError(f"could not delete {name}: {' '.join(str(exc).split())}") from exc
            if await _running(incus, name):
                await force_stop(incus, name)
            else:
                await anyio.sleep(0.5 * (attempt + 1))
