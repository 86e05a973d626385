"""Ending session containers in bulk: what `coi shutdown`, `coi kill` and `coi clean` do per item.

Every action saves the container's session data first and touches the container only once that
worked: a failed save leaves it as it was. From the first state change on, the rest (stop,
force stop, delete) runs inside `ctx.committed()`: shielded and bounded, so an interrupted run
leaves each container either untouched or gone with its data saved. On interruption a graceful
stop still waiting on the guest turns into a forced one, so Ctrl-C never waits out a timeout.

Re-running is always safe: "already stopped" is success for a stop and "not found" for a delete.

On a cluster the listing covers every member, so `--all` works on all of them at once. A
container on a member incusd cannot reach (offline) is reported as such and left alone, without
a try: its data cannot be saved; the others go on.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import anyio.to_thread
import msgspec

from coi_async.config import Config
from coi_async.errors import CoiError, IncusApiError, InstanceRunningError, NotFoundError
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance
from coi_async.naming import SessionName
from coi_async.orchestration.containers import ops
from coi_async.orchestration.runner import ItemContext
from coi_async.orchestration.sessions.model import Session, new_session, session_of
from coi_async.orchestration.sessions.save import Saved, save_session
from coi_async.orchestration.sessions.store import SessionStore
from coi_async.tools import TOOLS, Tool

# Steps reported through `ItemContext.step` (stable `StepStarted.step` ids); the CLI turns them
# into the contract's lines.
SAVING = "saving"
SAVED = "saved"  # detail: the session directory
SAVE_SKIPPED = "save-skipped"  # detail: the entries left out of the copy, comma-separated
NO_SESSION_DATA = "no-session-data"  # detail: the tool's config directory
STOPPING = "stopping"  # graceful, detail: the timeout in seconds
STOPPED = "stopped"  # the guest shut down within the timeout
FORCE_STOPPING = "force-stopping"  # detail: "timeout", "interrupted" (Ctrl-C) or "kill"
STOPPED_DURING_TIMEOUT = "stopped-during-timeout"
DELETING = "deleting"

# After a failed graceful stop, how long a forced stop and a delete may take together.
_FINISH_S = 60.0


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
            # An offline member's containers may be stopped too: listed, to be reported.
            chosen = [i for i in chosen if i.status.lower() == "stopped" or i.on_offline_member]
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
    """Where bulk work saves session data to (store, tool) and how long one save may take."""

    def __init__(self, store: SessionStore, tool: Tool, config: Config, *, save_s: float = 300.0) -> None:
        self.store = store
        self.tool = tool
        self.config = config
        self.save_s = save_s

    def session(self, inst: Instance) -> Session:
        """The session of `inst` (`sessions.model.session_of`). A container given by a name coi
        did not make is no session, yet its data is kept all the same: as the configured code
        user's, whose home the tool's state would be in."""
        session = session_of(inst, self.config)
        if session is None:
            session = new_session(
                self.config, workspace="", session_id="", persistent=False, container=inst.name
            )
        return msgspec.structs.replace(session, running=inst.running, created_at=inst.created_at)

    def store_of(self, session: Session) -> tuple[SessionStore, Tool]:
        """The store and tool of the session's own tool (a workspace runs several at once)."""
        if session.tool == self.tool.name or session.tool not in TOOLS:
            return self.store, self.tool
        tool = TOOLS[session.tool]
        return SessionStore(self.config.paths.tool_sessions_dir(tool.name), config_dir=tool.config_dir), tool

    async def save(self, incus: IncusClient, inst: Instance) -> Saved:
        """`sessions.save.save_session` for `inst`; raises CoiError when the data exists but
        could not be saved."""
        session = self.session(inst)
        store, tool = self.store_of(session)
        return await save_session(
            incus,
            session,
            store,
            tool,
            bound_s=self.save_s,
            running=inst.running,
            limits=self.config.limits,
        )


# --- the per-container actions -----------------------------------------------------------------


def check_reachable(inst: Instance) -> None:
    """CoiError for a container on an offline cluster member: nothing can be done to it now."""
    if inst.on_offline_member:
        raise CoiError(f"cluster member {inst.location} is offline; left as it is")


async def _save(ctx: ItemContext, incus: IncusClient, inst: Instance, saver: SessionSaver) -> None:
    check_reachable(inst)
    ctx.step(SAVING)
    saved = await saver.save(incus, inst)
    if saved.session_dir is None:
        ctx.step(NO_SESSION_DATA, saver.tool.config_dir)
    else:
        if saved.skipped:
            ctx.step(SAVE_SKIPPED, ", ".join(saved.skipped))
        ctx.step(SAVED, str(saved.session_dir))
        ctx.detail = str(saved.session_dir)


async def shutdown_one(
    ctx: ItemContext, incus: IncusClient, inst: Instance, *, saver: SessionSaver, grace_s: int
) -> None:
    """Save, stop gracefully within `grace_s` (forced after it), delete."""
    await _save(ctx, incus, inst, saver)
    with ctx.committed(grace_s + ops.GRACE_SLACK_S + _FINISH_S):
        if inst.running:
            ctx.step(STOPPING, str(grace_s))
            # Waiting on incusd to bring the guest down (gracefully, then by force) costs this
            # process nothing: let others work meanwhile. Forcing inside the wait matters: after
            # a common timeout every late container is forced at once, not in waves of --parallel.
            async with ctx.released():
                clean = await ops.graceful_stop(
                    incus, inst.name, grace_s=grace_s, interrupted=ctx.interrupted
                )
                if clean:
                    ctx.step(STOPPED)
                elif await ops.is_running(incus, inst.name):
                    ctx.step(FORCE_STOPPING, "interrupted" if ctx.interrupted.is_set() else "timeout")
                    await ops.force_stop(incus, inst.name)
                else:
                    ctx.step(STOPPED_DURING_TIMEOUT)
        ctx.step(DELETING)
        await ops.delete(incus, inst.name)


async def kill_one(ctx: ItemContext, incus: IncusClient, inst: Instance, *, saver: SessionSaver) -> None:
    """Save, force stop, delete."""
    await _save(ctx, incus, inst, saver)
    with ctx.committed(_FINISH_S):
        if inst.running:
            # As in shutdown: a forced stop is incusd's work, so it waits without holding a slot.
            async with ctx.released():
                ctx.step(FORCE_STOPPING, "kill")
                await ops.force_stop(incus, inst.name)
        else:
            await ctx.hand_over()
        ctx.step(DELETING)
        await ops.delete(incus, inst.name)


async def remove_stopped_one(
    ctx: ItemContext, incus: IncusClient, inst: Instance, *, saver: SessionSaver
) -> None:
    """Save (through the files API: the container is stopped), delete. A container that has
    been started since it was listed is left alone."""
    await _save(ctx, incus, inst, saver)
    with ctx.committed(_FINISH_S):
        await ctx.hand_over()
        ctx.step(DELETING)
        # Not `ops.delete`: it stops a running container to delete it, and one that was started
        # since it was listed is someone's again.
        try:
            await incus.delete_instance(inst.name)
        except NotFoundError:
            return
        except InstanceRunningError as exc:
            raise CoiError(f"{inst.name} was started again; left as it is") from exc
        except IncusApiError:
            if not await ops.exists(incus, inst.name):
                return
            raise


async def delete_session_one(ctx: ItemContext, store: SessionStore, session_id: str) -> None:
    """Remove a saved session directory (`SessionStore.delete`: a part left is a failure)."""
    with ctx.committed(_FINISH_S):
        ctx.step(DELETING)
        await anyio.to_thread.run_sync(store.delete, session_id)
