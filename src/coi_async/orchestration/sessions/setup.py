"""A `coi shell`'s container made ready: taken (or reused), booted, its saved state restored, the
host's credentials injected and the session's metadata written."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from coi_async.config import Config
from coi_async.errors import SessionError
from coi_async.incus import IncusClient
from coi_async.naming import KEY_PERSISTENT, KEY_SESSION, SessionName
from coi_async.orchestration.containers import boot, ops
from coi_async.orchestration.events import Emit, note
from coi_async.orchestration.network.session import (
    SessionOrigin,
    attach_egress,
    checked_instance,
    configure_container,
    plan_egress,
    start_daemon_early,
)
from coi_async.orchestration.sessions import archive
from coi_async.orchestration.sessions.cleanup import REMOVE_S, SaveResult, SessionState, save
from coi_async.orchestration.sessions.credentials import inject_agent_hooks, inject_credentials
from coi_async.orchestration.sessions.guard import absorbing_coi_errors
from coi_async.orchestration.sessions.launch_request import LaunchRequest, launch_session
from coi_async.orchestration.sessions.model import session_of, started_metadata
from coi_async.orchestration.sessions.request import ShellRequest

_READY_S = 60.0
_RESTORE_ATTEMPTS = 3


async def setup_session(
    incus: IncusClient,
    config: Config,
    request: ShellRequest,
    state: SessionState,
    emit: Emit,
    *,
    alongside: Callable[[SessionState], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Have the session's container running with its state and credentials in place.
    `alongside` runs with the last steps, once the container is checked, unless a saved state
    is restored (which waits for boot): start.py's `early_tmux`."""
    resumed = state.resumed
    prefer = ""
    if resumed is not None and resumed.metadata is not None and resumed.metadata.container_name:
        prefer = resumed.metadata.container_name
        await _resume_container(incus, config, state, prefer, emit)
    egress = await plan_egress(incus, config)
    location = ""
    if not state.session.container:
        # The egress daemon starts while the container is made.
        async with start_daemon_early(egress):
            launched = await launch_session(
                incus,
                config,
                LaunchRequest(
                    workspace=request.workspace,
                    slot=request.slot,
                    persistent=state.session.persistent,
                    session_id=state.session.session_id,
                    mounts=request.mounts,
                    prefer_container=prefer,
                    host_uid=request.host_uid,
                    host_gid=request.host_gid,
                    egress=egress,
                    target=request.target,
                ),
                emit=emit,
            )
            # No checkpoint between launch returning and this: the cleanup always knows the name.
            state.session = msgspec.structs.replace(
                state.session, container=launched.name, slot=launched.slot
            )
            state.created = not launched.reused
            # A reused persistent container holds the session's own state already.
            state.has_state = launched.reused
            location = launched.location
        if request.slot == 0 and not launched.reused:
            note(emit, "setup.slot-allocated", launched.name, slot=str(launched.slot))
    session = state.session
    # Every start path (new, reused, found running) comes through here.
    origin = SessionOrigin.here(config.profile)
    state.metadata = started_metadata(
        session,
        tool=state.tool.name,
        image=config.defaults.image,
        network=egress.mode,
        # A tool that takes coi's session id for a new conversation resumes it by that id.
        cli_session_id=(resumed.metadata.cli_session_id if resumed and resumed.metadata else "")
        or (session.session_id if resumed is None and state.tool.session_id_flag else ""),
        location=location,
    )

    restore = resumed is not None and state.created

    async def restore_then_inject() -> None:
        if resumed is not None and restore:
            # Over exec (tar), so only once the container has booted: execs that race the
            # init system's start can be lost.
            if not await boot.booted(incus, session.container, within_s=_READY_S):
                raise SessionError(
                    f"container {session.container} failed to become ready after {_READY_S:g} seconds"
                )
            note(emit, "setup.restoring", session.container)
            for attempt in range(_RESTORE_ATTEMPTS):
                # Idempotent (files are overwritten), so a lost exec on a loaded host is retried.
                with absorbing_coi_errors() as failed:
                    place = archive.StatePlace(session.container, session.home, state.tool.config_dir)
                    await archive.restore_session_data(incus, place, resumed.path, session.uid, running=True)
                if not failed:
                    break
                if attempt == _RESTORE_ATTEMPTS - 1:
                    raise failed[0]
            state.has_state = True
        # After the restore: fresh credentials win over saved ones. Files API only, no exec.
        if config.defaults.mount_claude_config and request.host_home:
            await inject_credentials(
                incus,
                session.container,
                state.tool,
                host_home=Path(request.host_home),
                home=session.home,
                uid=session.uid,
                emit=emit,
            )
        else:  # nothing of the host's, but the hooks that report the agent's state
            await inject_agent_hooks(
                incus, session.container, state.tool, home=session.home, uid=session.uid, emit=emit
            )

    async def save_metadata() -> None:
        assert state.metadata is not None
        await anyio.to_thread.run_sync(state.store.save_metadata, state.metadata)

    # All at once, as none needs another's work: the proxy files inside (which need no daemon,
    # nor boot), the daemon taking the session on, the home filled while the init system is
    # still booting (nothing waits for boot but a restore: tmux keeps its socket where boot
    # leaves it, instance_spec.py), the store's record, and the tool's tmux session, its tool
    # held back until all that is done (start.py's early_tmux).
    checked = await checked_instance(incus, egress, session.container, created=state.created)
    async with anyio.create_task_group() as tg:
        if egress.through_daemon:
            tg.start_soon(configure_container, incus, session.container)
        tg.start_soon(restore_then_inject)
        tg.start_soon(save_metadata)
        if alongside is not None and not restore:
            tg.start_soon(alongside, state)
        await attach_egress(
            incus,
            config,
            egress,
            session.container,
            origin,
            created=state.created,
            emit=emit,
            checked=checked,
        )


async def _resume_container(
    incus: IncusClient, config: Config, state: SessionState, name: str, emit: Emit
) -> None:
    """Deal with the container a resumed session ran in, if it is still there.

    Running: the session is picked up where it is (after a reboot or a detach, #413/#418), as
    the user its keys name. Stopped and persistent: launch restarts it in its own slot. A stopped
    ephemeral leftover (its coi was killed): its state is newer than the store's, so it is
    saved, then removed.
    """
    parsed = SessionName.parse(name, config.container_prefix)
    instance = await ops.state(incus, name)
    if parsed is None or instance is None or instance.config.get(KEY_SESSION) != state.session.session_id:
        return
    found = session_of(instance, config)
    if found is None:
        return
    if instance.running:
        note(emit, "setup.reusing-running", name)
        # Its identity inside (user, uid, home) is the instance's; its mode is this run's.
        state.session = msgspec.structs.replace(
            found, persistent=state.session.persistent, workspace=state.session.workspace
        )
        state.created, state.has_state = False, True
        return
    if state.session.persistent and instance.config.get(KEY_PERSISTENT) == "true":
        return
    note(emit, "setup.leftover", name)
    leftover = SessionState(
        session=msgspec.structs.replace(found, persistent=False),
        tool=state.tool,
        store=state.store,
        limits=state.limits,
    )
    if await save(incus, leftover, emit, running=False) is not SaveResult.FAILED:
        await ops.remove_quietly(incus, name, bound_s=REMOVE_S)
