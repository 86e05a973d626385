"""The end of an interactive session: save its data, then remove or keep its container.

Cleanup never leaks: a container is only ever removed once its session data is safe in the
store (or it had none); if saving fails, the container is kept and the user told where it is.
Everything here runs shielded, and every step is bounded, so it also runs (and ends) after a
signal cancelled the session.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import anyio

from coi_async.config.model import Limits
from coi_async.errors import coi_error
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance
from coi_async.naming import KEY_PERSISTENT, KEY_RESTORING
from coi_async.orchestration.containers import ops
from coi_async.orchestration.events import Emit, note
from coi_async.orchestration.sessions.model import Session
from coi_async.orchestration.sessions.outcome import STATE_S, poll_stopped, wait_stopped
from coi_async.orchestration.sessions.request import Outcome
from coi_async.orchestration.sessions.save import SaveTimedOutError, save_session, session_id_for
from coi_async.orchestration.sessions.store import SavedSession, SessionMetadata, SessionStore
from coi_async.tools import Tool

# Upper bounds for the cleanup steps: they run shielded, so they must end on their own.
SAVE_S = 60.0
REMOVE_S = 30.0
# How long a failed save waits for a container that may be powering off, before trying again.
_RETRY_SAVE_S = 5.0


@dataclass
class SessionState:
    """One session as a flow goes: the model `Session` (its container filled in once launched)
    and the bookkeeping the cleanup needs."""

    session: Session
    tool: Tool
    store: SessionStore
    # We made the container in this run (so a failed setup removes it again).
    created: bool = False
    # The container holds the session's state (restored, or the tool ran): worth saving.
    has_state: bool = False
    # Setup is complete and the tool was started (a signal before that is a failed setup).
    ready: bool = False
    # What the store says (or will say) about the session; kept current by every save.
    metadata: SessionMetadata | None = None
    # The saved session this one resumes, if any.
    resumed: SavedSession | None = None
    # What a save of its data may hold (the config's `[limits]`).
    limits: Limits = field(default_factory=Limits)
    # The file the tool's tmux session waits for, when it was started during setup ("": not).
    gate: str = ""


class SaveResult(enum.Enum):
    SAVED = "saved"  # a fresh copy is in the store
    NOTHING = "nothing"  # the container has no state directory: nothing to lose
    FAILED = "failed"  # the copy failed; the store keeps its previous copy


async def save(incus: IncusClient, state: SessionState, emit: Emit, *, running: bool | None) -> SaveResult:
    """Pull the tool's state out of the container into the store (atomically), telling how it went."""
    if not state.tool.saves_state:
        return SaveResult.NOTHING
    container = state.session.container
    session_dir = state.store.session_dir(session_id_for(state.session, state.store))
    note(emit, "save.started", container, path=str(session_dir))
    try:
        saved = await save_session(
            incus,
            state.session,
            state.store,
            state.tool,
            bound_s=SAVE_S,
            running=running,
            metadata=state.metadata,
            limits=state.limits,
        )
    except Exception as exc:
        error = coi_error(exc)
        if error is None:
            raise
        if isinstance(error, SaveTimedOutError):
            note(emit, "save.timed-out", container, level="warning", seconds=f"{error.bound_s:g}")
        else:
            note(emit, "save.failed", container, level="warning", error=error.message)
        return SaveResult.FAILED
    if saved.session_dir is None:
        note(emit, "save.nothing", container, config_dir=state.tool.config_dir)
        return SaveResult.NOTHING
    if saved.skipped:
        note(emit, "save.skipped", container, names=", ".join(saved.skipped))
    state.metadata = saved.metadata
    note(emit, "save.done", container)
    return SaveResult.SAVED


async def _save_for_cleanup(
    incus: IncusClient, state: SessionState, instance: Instance, emit: Emit
) -> SaveResult:
    """Save; if that fails on a container that is going down (poweroff inside), wait, save again.

    A copy over exec can break when the container stops under it; a stopped container is
    read through the files API instead.
    """
    result = await save(incus, state, emit, running=instance.running)
    if result is not SaveResult.FAILED or not instance.running:
        return result
    now = await poll_stopped(incus, state.session.container, within_s=_RETRY_SAVE_S)
    if now is None:
        return result
    if now.running:
        return await save(incus, state, emit, running=True)
    note(emit, "save.retry-stopped", state.session.container)
    return await save(incus, state, emit, running=False)


async def cleanup(incus: IncusClient, state: SessionState, outcome: Outcome, emit: Emit) -> None:
    """Save, then remove or keep the container; shielded, and every step bounded."""
    container = state.session.container
    with anyio.CancelScope(shield=True):
        note(emit, "cleanup.started", container)
        try:
            with anyio.fail_after(STATE_S):
                instance = await ops.state(incus, container)
            if instance is not None and outcome is Outcome.STOPPED and instance.running:
                instance = await wait_stopped(incus, container)
            if instance is None:
                note(emit, "cleanup.already-removed", container)
                return
            saved = SaveResult.NOTHING
            if state.has_state or not state.created:
                saved = await _save_for_cleanup(incus, state, instance, emit)
            await _dispose(incus, state, outcome, instance, emit, saved=saved)
        except TimeoutError:
            note(emit, "cleanup.no-answer", container, level="warning")
        except Exception as exc:
            error = coi_error(exc)
            if error is None:
                raise
            note(emit, "cleanup.failed", container, level="warning", error=error.message)


async def _dispose(
    incus: IncusClient,
    state: SessionState,
    outcome: Outcome,
    instance: Instance,
    emit: Emit,
    *,
    saved: SaveResult,
) -> None:
    session = state.session
    remove = _removes(state, outcome, instance)
    if remove and saved is SaveResult.FAILED:
        note(emit, "cleanup.kept-unsaved", session.container, level="warning", session_id=session.session_id)
        return
    if not remove:
        note(emit, "cleanup.kept-running" if instance.running else "cleanup.kept-stopped", session.container)
        return
    note(emit, "cleanup.removing" if instance.running else "cleanup.removing-stopped", session.container)
    await ops.remove(incus, session.container, bound_s=REMOVE_S)
    note(emit, "cleanup.removed", session.container)


def _removes(state: SessionState, outcome: Outcome, instance: Instance) -> bool:
    """Whether the cleanup removes the container (after saving): one made for a setup that failed,
    or an ephemeral session's once it has stopped (`sudo poweroff` inside) or coi was told to end
    (a signal). `exit` from bash and a detach leave a running one for `coi attach`.

    Persistence is read from the instance as it is now, so a `coi persist` from another terminal
    while the session ran counts.
    """
    if outcome is Outcome.FAILED and state.created:
        return True
    if state.session.persistent or instance.config.get(KEY_PERSISTENT) == "true":
        return False
    if instance.config.get(KEY_RESTORING) == "true":
        return False  # stopped by `coi snapshot restore`, which starts it again
    return outcome is Outcome.INTERRUPTED or not instance.running
