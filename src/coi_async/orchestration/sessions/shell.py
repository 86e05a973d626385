"""`coi shell` and `coi attach`: one interactive session, from container to cleanup.

The flow: resolve the session (new, or resumed from the store), take a slot by creating the
container (launch.py), restore the saved conversation, inject fresh credentials, start the tool
in a detached tmux session as the session's user, attach the user's terminal, and finally save
the session data and remove an ephemeral container.

Cleanup never leaks: whatever ends the session (the tool and its shell exiting, a detach,
`sudo poweroff` inside, SIGINT/SIGTERM/SIGHUP of this process, or a failure during setup), the
session data is pulled back before a container is deleted, under a shielded and bounded scope.
Signals are received through anyio (never the default handlers), so they cancel the work and
the cleanup still runs; the process is never ended from inside a handler.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import msgspec

from coi_async.config import Config, Mount
from coi_async.errors import (
    CoiError,
    NotFoundError,
    SessionError,
    SessionNotFoundError,
    UsageError,
)
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance
from coi_async.incus.terminal import LocalTerminal
from coi_async.naming import (
    KEY_PERSISTENT,
    KEY_SESSION,
    KEY_UID,
    KEY_WORKSPACE,
    SessionName,
    tmux_session,
)
from coi_async.orchestration.containers import ops
from coi_async.orchestration.sessions import archive
from coi_async.orchestration.sessions.credentials import inject_credentials
from coi_async.orchestration.sessions.launch import LaunchRequest, launch_session
from coi_async.orchestration.sessions.store import (
    SavedSession,
    SessionMetadata,
    SessionStore,
    check_session_id,
    discover_cli_session_id,
    new_session_id,
    now_rfc3339,
)
from coi_async.orchestration.sessions.tmux import LOST_EXEC, WORKDIR, TmuxSession, user_env
from coi_async.slots import validate_slot
from coi_async.tools import Tool, get_tool

Say = Callable[[str], None]

CODE_HOME = "/home/code"
# Upper bounds for the cleanup steps: they run shielded, so they must end on their own.
_SAVE_S = 60.0
_STOP_S = 20.0
_DELETE_S = 30.0
_STATE_S = 10.0
# How long a container that is shutting down itself (poweroff inside) gets to reach Stopped.
_POWEROFF_WAIT_S = 30.0
_READY_S = 60.0
# How long a failed save waits for a container that may be powering off, before trying again.
_RETRY_SAVE_S = 5.0
_RESTORE_ATTEMPTS = 3
_ATTACH_ATTEMPTS = 3
# How long an unanswered tmux check waits for a container that may be stopping.
_SHUTDOWN_GRACE_S = 5.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Outcome(enum.Enum):
    DETACHED = "detached"  # the tmux session lives on; the container keeps running
    ENDED = "ended"  # the tool and its shell exited: the session is over
    STOPPED = "stopped"  # the container stopped (poweroff inside)
    INTERRUPTED = "interrupted"  # a signal to coi ended the session
    FAILED = "failed"  # setup failed
    BACKGROUND = "background"  # started detached on purpose; nothing to clean up
    NO_TMUX = "no-tmux"  # attach found no session to attach to


class ShellRequest(msgspec.Struct, frozen=True, kw_only=True):
    workspace: str  # absolute
    slot: int = 0  # 0: the first free one
    persistent: bool | None = None  # None: from the config, or inherited when resuming
    resume: str | None = None  # "auto" (latest of this workspace) or a session id
    env: dict[str, str] = {}
    mounts: tuple[Mount, ...] = ()  # config and command line, combined and validated
    background: bool = False
    debug: bool = False  # bash instead of the tool
    use_tmux: bool = True
    term: str | None = None
    host_uid: int = 1000
    host_gid: int = 1000


@dataclass
class Session:
    """What the cleanup needs to know, filled in as setup goes."""

    session_id: str
    tool: Tool
    store: SessionStore
    workspace: str
    persistent: bool
    uid: int = 1000
    home: str = CODE_HOME
    container: str = ""
    slot: int = 0
    # We made the container in this run (so a failed setup removes it again).
    created: bool = False
    # The container holds the session's state (restored, or the tool ran): worth saving.
    has_state: bool = False
    metadata: SessionMetadata | None = None
    # -e pairs over the profile's environment, for every process of the session.
    env: dict[str, str] = field(default_factory=dict)
    # Setup is complete and the tool was started (a signal before that is a failed setup).
    ready: bool = False
    # `tool.binary` from config ("" for the tool's own name).
    binary: str = ""


def coi_error(exc: BaseException) -> CoiError | None:
    """The CoiError behind `exc`, also from inside task-group exception groups made only of
    CoiErrors; None for anything else (a bug, or cancellation), which must propagate."""
    if isinstance(exc, CoiError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found = [coi_error(inner) for inner in exc.exceptions]
        if found and all(e is not None for e in found):
            return found[0]
    return None


@contextlib.contextmanager
def _absorbing_coi_errors() -> Iterator[list[CoiError]]:
    """Like `suppress(CoiError)`, but also for exception groups of them; keeps what it caught."""
    caught: list[CoiError] = []
    try:
        yield caught
    except Exception as exc:
        error = coi_error(exc)
        if error is None:
            raise
        caught.append(error)


# --- signals ---------------------------------------------------------------------------------


class Interrupt:
    """Which signal (if any) asked us to stop; the scope it cancels."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.scope = anyio.CancelScope()


@asynccontextmanager
async def interruptible(say: Say) -> AsyncIterator[Interrupt]:
    """Catch SIGINT/SIGTERM/SIGHUP for the duration; the first one cancels `interrupt.scope`.

    The receiver stays open until the block ends, so a second signal during cleanup is absorbed
    instead of killing the process halfway through saving.
    """
    interrupt = Interrupt()

    async def watch(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(*_SIGNALS) as signals:
            task_status.started()
            async for signum in signals:
                if interrupt.signum is None:
                    # Announced by the caller: the terminal may still be in raw mode here.
                    interrupt.signum = signum
                    interrupt.scope.cancel()

    async with anyio.create_task_group() as tg:
        await tg.start(watch)
        try:
            yield interrupt
        finally:
            tg.cancel_scope.cancel()


# --- the shell flow ----------------------------------------------------------------------------


def _resolve_resume(
    request: ShellRequest, store: SessionStore, config: Config, say: Say
) -> SavedSession | None:
    if request.resume is None:
        return None
    if request.resume == "auto":
        found = store.latest_for_workspace(request.workspace, prefix=config.container_prefix)
        if found is None:
            raise SessionNotFoundError(
                "no previous session to resume for this workspace: no saved sessions found",
                hint="start a new one with 'coi shell'",
            )
        say(f"Auto-detected session: {found.id}")
        return found
    try:
        check_session_id(request.resume)
    except CoiError as exc:
        # The store's own check is a usage error; here, as in the reference, it is a lookup failure.
        raise SessionNotFoundError(
            f"session '{request.resume}' not found - check available sessions with: coi list --all"
        ) from exc
    found = store.require(request.resume)
    foreign = _foreign_owner(found, config.container_prefix, request.workspace)
    if foreign is not None:
        # Another workspace's conversation would run against this workspace's files.
        raise SessionError(
            f"session '{found.id}' belongs to workspace {foreign}, not {request.workspace}",
            hint=f"resume it there: coi shell -w {foreign} --resume={found.id}",
        )
    say(f"Resuming session: {found.id}")
    return found


def _foreign_owner(session: SavedSession, prefix: str, workspace: str) -> str | None:
    """The other workspace a saved session belongs to; None when it is this one's (or unknown)."""
    meta = session.metadata
    if meta is None:
        return None
    if meta.workspace:
        return None if meta.workspace == workspace else meta.workspace
    # Metadata written by the reference has no workspace; its container name carries the hash.
    name = SessionName.parse(meta.container_name, prefix)
    if name is None or name.belongs_to(workspace):
        return None
    return f"<hash {name.workspace_hash}>"


def _tool_command(session: Session, request: ShellRequest, resumed: SavedSession | None) -> list[str]:
    if request.debug:
        return ["bash"]
    binary = session.binary
    if resumed is not None:
        cli_id = (resumed.metadata.cli_session_id if resumed.metadata else "") or discover_cli_session_id(
            session.tool, resumed.path
        )
        return session.tool.resume_command(cli_id, binary=binary)
    return session.tool.new_session_command(session.session_id, binary=binary)


async def run_shell(
    incus: IncusClient,
    config: Config,
    request: ShellRequest,
    *,
    host_home: Path,
    say: Say,
    terminal: LocalTerminal | None = None,
) -> int:
    """Run one `coi shell`; returns the exit code. Raises CoiError for bad input or failed setup."""
    tool = get_tool(config.tool.name)
    store = SessionStore(config.sessions_dir, config_dir=tool.config_dir)
    store.ensure()
    if not await anyio.Path(request.workspace).is_dir():
        raise UsageError(f"workspace '{request.workspace}' is not a directory")
    if request.slot:
        validate_slot(request.slot, max_slots=config.defaults.max_slots)

    async with interruptible(say) as interrupt:
        session: Session | None = None
        outcome = Outcome.FAILED
        try:
            with interrupt.scope:
                resumed = _resolve_resume(request, store, config, say)
                persistent = request.persistent
                if persistent is None:
                    persistent = config.defaults.persistent
                    if resumed is not None and resumed.metadata is not None and resumed.metadata.persistent:
                        persistent = True
                        say("Inherited persistent mode from session")
                session = Session(
                    session_id=resumed.id if resumed else new_session_id(),
                    tool=tool,
                    store=store,
                    workspace=request.workspace,
                    persistent=persistent,
                    uid=config.incus.code_uid,
                )
                session.env = {**config.environment, **request.env}
                session.binary = config.tool.binary
                say(f"Setting up session {session.session_id}...")
                await _setup(incus, config, request, session, resumed, host_home=host_home, say=say)
                session.ready = True
                _announce(session, request, resumed, say)
                outcome = await _run_tool(incus, request, session, resumed, say=say, terminal=terminal)
        except BaseException:
            if interrupt.signum is None or session is None:
                # A failed setup (or a bug): remove what we made, after saving what it held.
                if session is not None and session.container:
                    await _cleanup(incus, session, Outcome.FAILED, say)
                raise
        if interrupt.signum is not None:
            say("\nReceived interrupt signal, cleaning up...")
            # Interrupted during setup, it is a failed setup: what was made for it goes again.
            outcome = Outcome.INTERRUPTED if session is not None and session.ready else Outcome.FAILED
        if session is not None and session.container and outcome is not Outcome.BACKGROUND:
            await _cleanup(incus, session, outcome, say)
    return 0 if interrupt.signum is None else 128 + interrupt.signum


async def _setup(
    incus: IncusClient,
    config: Config,
    request: ShellRequest,
    session: Session,
    resumed: SavedSession | None,
    *,
    host_home: Path,
    say: Say,
) -> None:
    """Have the session's container running with its state and credentials in place."""
    user = "root" if session.uid == 0 else config.incus.code_user
    session.home = "/root" if session.uid == 0 else f"/home/{user}"
    slot, prefer = request.slot, ""
    if resumed is not None and resumed.metadata is not None and resumed.metadata.container_name:
        prefer = resumed.metadata.container_name
        await _resume_container(incus, config, session, prefer, say)
    if not session.container:
        launched = await launch_session(
            incus,
            config,
            LaunchRequest(
                workspace=request.workspace,
                slot=slot,
                persistent=session.persistent,
                session_id=session.session_id,
                mounts=request.mounts,
                prefer_container=prefer,
                host_uid=request.host_uid,
                host_gid=request.host_gid,
            ),
            say=say,
        )
        # No checkpoint between launch returning and this: the cleanup always knows the name.
        session.container = launched.name
        session.created = not launched.reused
        # A reused persistent container holds the session's own state already.
        session.has_state = launched.reused
        session.slot, session.uid, session.home = launched.slot, launched.uid, launched.home
        if request.slot == 0 and not launched.reused:
            say(f"Auto-allocated slot {launched.slot}")
    session.metadata = SessionMetadata(
        session_id=session.session_id,
        container_name=session.container,
        persistent=session.persistent,
        workspace=session.workspace,
        saved_at=now_rfc3339(),
        tool=session.tool.name,
        slot=session.slot,
        image=config.defaults.image,
        created_at=now_rfc3339(),
        cli_session_id=(resumed.metadata.cli_session_id if resumed and resumed.metadata else ""),
    )

    restore = resumed is not None and session.created

    async def restore_then_inject() -> None:
        if resumed is not None and restore:
            # Over exec (tar), so only once the container has booted: execs that race the
            # init system's start can be lost.
            await wait_ready(incus, session.container)
            say("[setup] Restoring session data...")
            for attempt in range(_RESTORE_ATTEMPTS):
                # Idempotent (files are overwritten), so a lost exec on a loaded host is retried.
                with _absorbing_coi_errors() as failed:
                    await archive.restore_session_data(
                        incus,
                        session.container,
                        resumed.path,
                        session.home,
                        session.uid,
                        session.uid,
                        config_dir=session.tool.config_dir,
                        running=True,
                    )
                if not failed:
                    break
                if attempt == _RESTORE_ATTEMPTS - 1:
                    raise failed[0]
            session.has_state = True
        # After the restore: fresh credentials win over saved ones. Files API only, no exec.
        if config.defaults.mount_claude_config:
            await inject_credentials(
                incus,
                session.container,
                session.tool,
                host_home=host_home,
                home=session.home,
                uid=session.uid,
                say=say,
            )

    async def save_metadata() -> None:
        assert session.metadata is not None
        await anyio.to_thread.run_sync(session.store.save_metadata, session.metadata)

    # A new session's home is filled while the init system is still booting.
    async with anyio.create_task_group() as tg:
        if not restore:
            tg.start_soon(wait_ready, incus, session.container)
        tg.start_soon(restore_then_inject)
        tg.start_soon(save_metadata)


async def _resume_container(
    incus: IncusClient, config: Config, session: Session, name: str, say: Say
) -> None:
    """Deal with the container a resumed session ran in, if it is still there.

    Running: the session is picked up where it is (after a reboot or a detach, #413/#418).
    Stopped and persistent: launch restarts it in its own slot. A stopped ephemeral leftover
    (its coi was killed): its state is newer than the store's, so it is saved, then removed.
    """
    parsed = SessionName.parse(name, config.container_prefix)
    instance = await _state(incus, name)
    if parsed is None or instance is None or instance.config.get(KEY_SESSION) != session.session_id:
        return
    if instance.running:
        say(f"[setup] Session container {name} is running; reusing it")
        session.container, session.slot, session.created, session.has_state = name, parsed.slot, False, True
        return
    if session.persistent and instance.config.get(KEY_PERSISTENT) == "true":
        return
    say(f"Found stopped leftover container {name} of this session, saving and deleting...")
    leftover = Session(
        session_id=session.session_id,
        tool=session.tool,
        store=session.store,
        workspace=session.workspace,
        persistent=False,
        uid=session.uid,
        home=session.home,
        container=name,
    )
    if await save_session(incus, leftover, say, running=False) is not Saved.FAILED:
        await ops.remove_quietly(incus, name, bound_s=_DELETE_S)


# One exec that polls inside the container (each exec costs a round trip, and execs are slow
# while the container boots). Ready: the image's init is not systemd, or systemd-tmpfiles-setup
# has run (or the image has no such unit), or boot is over. Whether init is systemd is read from
# the image, not from PID 1: early in the boot PID 1 may not be systemd yet.
_READY_PROBE = """
case "$(readlink -f /sbin/init 2>/dev/null)" in */systemd) ;; *) exit 0 ;; esac
unit=systemd-tmpfiles-setup.service known=
i=0
while [ "$i" -lt 1500 ]; do
    systemctl is-active --quiet "$unit" 2>/dev/null && exit 0
    state=$(systemctl is-system-running 2>/dev/null)
    case "$state" in
        running|degraded) exit 0 ;;
        initializing|starting)
            if [ -z "$known" ]; then
                [ "$(systemctl show -p LoadState --value "$unit" 2>/dev/null)" = not-found ] && exit 0
                known=1
            fi ;;
    esac
    sleep 0.02
    i=$((i + 1))
done
exit 1
"""


async def wait_ready(incus: IncusClient, name: str, *, within_s: float = _READY_S) -> None:
    """Wait until the container can host the tmux session, by probing it with exec.

    Under systemd that is once systemd-tmpfiles-setup has run: it empties /tmp at boot (and
    /tmp may become a fresh tmpfs before it), which would take a tmux server's socket
    (/tmp/tmux-<uid>/) with it, and with it every later attach.
    """
    try:
        with anyio.fail_after(within_s):
            while True:
                with _absorbing_coi_errors():
                    if (await incus.exec(name, ["sh", "-c", _READY_PROBE])).ok:
                        return
                # The exec itself failed (too early in the boot): try again shortly.
                await anyio.sleep(0.05)
    except TimeoutError:
        raise SessionError(f"container {name} failed to become ready after {within_s:g} seconds") from None


def _announce(session: Session, request: ShellRequest, resumed: SavedSession | None, say: Say) -> None:
    mode = "Direct (no tmux)"
    if request.use_tmux:
        mode = "Background (tmux)" if request.background else "Interactive (tmux)"
    say("\nStarting session...")
    say(f"Session ID: {session.session_id}")
    say(f"Container: {session.container}")
    say(f"Workspace: {session.workspace}")
    say(f"Mode: {mode}")
    if resumed is not None:
        say(
            "Resume mode: Persistent session"
            if not session.created
            else "Resume mode: Restored conversation (auto-detect)"
        )


async def _run_tool(
    incus: IncusClient,
    request: ShellRequest,
    session: Session,
    resumed: SavedSession | None,
    *,
    say: Say,
    terminal: LocalTerminal | None,
) -> Outcome:
    term = terminal or LocalTerminal()
    env = user_env(
        home=session.home, user=os.path.basename(session.home), term=request.term, extra=session.env
    )
    argv = _tool_command(session, request, resumed)
    session.has_state = True
    if not request.use_tmux:
        if await _attach(incus, session.container, argv, term, env, session.uid) == LOST_EXEC:
            # Not retried: the tool may have run, and a second one could run beside it.
            say("[session] Warning: incusd lost track of the command (exit -1)")
        return await _after_session(incus, session.container, None)

    tmux = TmuxSession(incus, session.container, tmux_session(session.container), uid=session.uid, env=env)
    # A container made a moment ago has no tmux session yet: one exec saved.
    exists = False if session.created else await tmux.exists()
    if request.background:
        if exists:
            await tmux.send_command(argv)
            say(f"Sent command to existing tmux session: {tmux.session}")
        else:
            await tmux.start(argv, size=term.size())
            say(f"Created background tmux session: {tmux.session}")
        say(f"Use 'coi tmux capture {session.container}' to view output")
        say(f"Use 'coi tmux send {session.container} \"<command>\"' to send commands")
        return Outcome.BACKGROUND
    if not exists:
        await tmux.start(argv, size=term.size())
    await attach_tmux(incus, tmux, term)
    return await _after_session(incus, session.container, tmux)


async def attach_tmux(incus: IncusClient, tmux: TmuxSession, term: LocalTerminal | None) -> int | None:
    """Attach the terminal to the tmux session; its exit code (None if the link broke).

    Attaching is idempotent, so an exec incusd lost track of (-1, seen on loaded hosts) is
    attached again while the session is there.
    """
    local = term or LocalTerminal()
    code: int | None = LOST_EXEC
    for _ in range(_ATTACH_ATTEMPTS):
        code = await _attach(incus, tmux.container, tmux.attach_argv(), local, tmux.env, tmux.uid)
        if code != LOST_EXEC:
            break
        with _absorbing_coi_errors() as failed:
            alive = await tmux.exists()
        if failed or not alive:
            break
    return code


async def _attach(
    incus: IncusClient, container: str, argv: list[str], term: LocalTerminal, env: dict[str, str], uid: int
) -> int | None:
    """The user's terminal on `argv` in the container; its exit code, None if the link broke.

    A broken link (the container powering off under the exec) is not an error here: what
    happened is read from the container's state afterwards.
    """
    with _absorbing_coi_errors():
        return await incus.exec_attached(
            container, argv, terminal=term, env=env, user=uid, group=uid, cwd=WORKDIR
        )
    return None


async def _after_session(incus: IncusClient, container: str, tmux: TmuxSession | None) -> Outcome:
    """Why the terminal came back: a detach, the end of the session, or the container stopping.

    When incusd cannot tell in time, the answer is DETACHED: the container is kept (and its
    data saved), which is never the wrong thing to do with a session that may still be alive.
    """
    try:
        with anyio.fail_after(_STATE_S):
            instance = await _state(incus, container)
            if instance is None or not instance.running:
                return Outcome.STOPPED
            if tmux is None:
                return Outcome.ENDED
            alive = True
            with _absorbing_coi_errors() as failed:
                alive = await tmux.exists()
            if failed:
                # No answer from inside: the container may be on its way down (poweroff). Give
                # it a moment to reach Stopped; if it does not, keep it as if detached.
                instance = await _poll_stopped(incus, container, within_s=_SHUTDOWN_GRACE_S)
                if instance is None or not instance.running:
                    return Outcome.STOPPED
    except TimeoutError:
        return Outcome.DETACHED
    return Outcome.DETACHED if alive else Outcome.ENDED


# --- cleanup ---------------------------------------------------------------------------------


async def _state(incus: IncusClient, name: str) -> Instance | None:
    try:
        return await incus.get_instance(name)
    except NotFoundError:
        return None


async def _wait_stopped(incus: IncusClient, name: str) -> Instance | None:
    """Wait for a container that is shutting itself down; force it after the grace period."""
    instance = await _poll_stopped(incus, name, within_s=_POWEROFF_WAIT_S)
    if instance is None or not instance.running:
        return instance
    with anyio.move_on_after(_STOP_S), _absorbing_coi_errors():
        await incus.stop_instance(name, force=True)
    return await _state(incus, name)


class Saved(enum.Enum):
    SAVED = "saved"  # a fresh copy is in the store
    NOTHING = "nothing"  # the container has no state directory: nothing to lose
    FAILED = "failed"  # the copy failed; the store keeps its previous copy


async def save_session(
    incus: IncusClient, session: Session, say: Say, *, running: bool | None = None
) -> Saved:
    """Pull the tool's state out of the container into the store (atomically)."""
    if not session.tool.saves_state:
        return Saved.NOTHING
    session_dir = session.store.session_dir(session.session_id)
    say(f"[cleanup] Saving session data to {session_dir}")
    try:
        with anyio.fail_after(_SAVE_S):
            result = await archive.save_session_data(
                incus,
                session.container,
                session_dir,
                session.home,
                config_dir=session.tool.config_dir,
                running=running,
            )
    except TimeoutError:
        say(f"[cleanup] Warning: saving session data took over {_SAVE_S:g}s; gave up")
        return Saved.FAILED
    except Exception as exc:
        error = coi_error(exc)
        if error is None:
            raise
        say(f"[cleanup] Warning: could not save session data: {error}")
        return Saved.FAILED
    if result.missing:
        say(f"[cleanup] No {session.tool.config_dir} directory found in container")
        return Saved.NOTHING
    if result.skipped:
        say(f"[cleanup] Left out (links or unsafe names): {', '.join(result.skipped)}")
    meta = session.metadata or SessionMetadata(
        session_id=session.session_id,
        container_name=session.container,
        persistent=session.persistent,
        workspace=session.workspace,
        tool=session.tool.name,
        slot=session.slot,
    )
    cli_id = discover_cli_session_id(session.tool, session_dir)
    meta = msgspec.structs.replace(meta, saved_at=now_rfc3339(), cli_session_id=cli_id or meta.cli_session_id)
    await anyio.to_thread.run_sync(session.store.save_metadata, meta)
    session.metadata = meta
    say("[cleanup] Session data saved successfully")
    return Saved.SAVED


async def _save_for_cleanup(incus: IncusClient, session: Session, instance: Instance, say: Say) -> Saved:
    """Save; if that fails on a container that is going down (poweroff inside), wait, save again.

    A copy over exec can break when the container stops under it; a stopped container is
    read through the files API instead.
    """
    result = await save_session(incus, session, say, running=instance.running)
    if result is not Saved.FAILED or not instance.running:
        return result
    now = await _poll_stopped(incus, session.container, within_s=_RETRY_SAVE_S)
    if now is None:
        return result
    if now.running:
        return await save_session(incus, session, say, running=True)
    say("[cleanup] The container stopped meanwhile; saving from its filesystem")
    return await save_session(incus, session, say, running=False)


async def _poll_stopped(incus: IncusClient, name: str, *, within_s: float) -> Instance | None:
    """The container's state once it is stopped, or after `within_s` (None: it is gone)."""
    delay = 0.05
    instance = await _state(incus, name)
    with anyio.move_on_after(within_s):
        while instance is not None and instance.running:
            await anyio.sleep(delay)  # polling incusd's state, not waiting blindly
            delay = min(delay * 2, 0.5)
            instance = await _state(incus, name)
    return instance


async def _cleanup(incus: IncusClient, session: Session, outcome: Outcome, say: Say) -> None:
    """Save, then remove or keep the container; shielded, and every step bounded.

    A container is only ever removed once its session data is safe in the store (or it had
    none): if saving fails, the container is kept and the user told where it is.
    """
    with anyio.CancelScope(shield=True):
        say("\nCleaning up session...")
        try:
            with anyio.fail_after(_STATE_S):
                instance = await _state(incus, session.container)
            if instance is not None and outcome is Outcome.STOPPED and instance.running:
                instance = await _wait_stopped(incus, session.container)
            if instance is None:
                say("[cleanup] Container was already removed")
                return
            saved = Saved.NOTHING
            if session.has_state or not session.created:
                saved = await _save_for_cleanup(incus, session, instance, say)
            await _dispose(incus, session, outcome, instance, say, saved=saved)
        except TimeoutError:
            say(f"[cleanup] Warning: incusd did not answer about {session.container}; it may be left over")
        except Exception as exc:
            error = coi_error(exc)
            if error is None:
                raise
            say(f"[cleanup] Warning: {error}")


async def _dispose(
    incus: IncusClient, session: Session, outcome: Outcome, instance: Instance, say: Say, *, saved: Saved
) -> None:
    remove = (not session.persistent and outcome is not Outcome.DETACHED) or (
        outcome is Outcome.FAILED and session.created
    )
    if remove and saved is Saved.FAILED:
        say(
            f"[cleanup] Container {session.container} kept: its session data could not be saved. "
            f"Retry with 'coi shell --resume={session.session_id}' or copy it out with 'coi file pull'"
        )
        return
    if not remove:
        if instance.running:
            say(
                "[cleanup] Container kept running - use 'coi attach' to reconnect, "
                "'coi shutdown' to stop, or 'coi kill' to force stop"
            )
        else:
            say("[cleanup] Container was stopped but kept for reuse")
        return
    say(
        "[cleanup] Container was stopped, removing..."
        if not instance.running
        else "[cleanup] Removing container..."
    )
    with anyio.fail_after(_DELETE_S):
        if instance.running:
            with _absorbing_coi_errors():
                await incus.stop_instance(session.container, force=True)
        with contextlib.suppress(NotFoundError):
            await incus.delete_instance(session.container)
    say("[cleanup] Container removed (session data saved for --resume)")


# --- attach ------------------------------------------------------------------------------------


class AttachTarget(msgspec.Struct, frozen=True, kw_only=True):
    container: str
    instance: Instance


class AttachList(msgspec.Struct, frozen=True, kw_only=True):
    running: list[str]


async def choose_attach_target(
    incus: IncusClient, config: Config, *, workspace: str, slot: int, name: str | None
) -> AttachTarget | AttachList:
    """The container to attach to: by slot, by name, or the only session there is."""
    prefix = config.container_prefix
    if slot:
        validate_slot(slot, max_slots=config.defaults.max_slots)
        container = str(SessionName.for_workspace(workspace, slot, prefix=prefix))
        instance = await _state(incus, container)
        if instance is None or not instance.running:
            raise SessionNotFoundError(f"container {container} not found or not running")
        return AttachTarget(container=container, instance=instance)
    ours = sorted(
        (i for i in await incus.list_instances() if SessionName.parse(i.name, prefix) is not None),
        key=lambda i: i.name,
    )
    if name is not None:
        for instance in ours:
            if instance.name == name and instance.running:
                return AttachTarget(container=name, instance=instance)
        raise SessionNotFoundError(f"container {name} not found or not running")
    running = [i for i in ours if i.running]
    if len(running) == 1:
        return AttachTarget(container=running[0].name, instance=running[0])
    return AttachList(running=[i.name for i in running])


def _session_of(config: Config, instance: Instance) -> Session | None:
    """The session a container belongs to, from the keys coi stamped on it."""
    session_id = instance.config.get(KEY_SESSION, "")
    try:
        check_session_id(session_id)
    except CoiError:
        return None
    tool = get_tool(config.tool.name)
    try:
        uid = int(instance.config.get(KEY_UID, "1000"))
    except ValueError:
        uid = 1000
    store = SessionStore(config.sessions_dir, config_dir=tool.config_dir)
    return Session(
        session_id=session_id,
        tool=tool,
        store=store,
        workspace=instance.config.get(KEY_WORKSPACE, ""),
        persistent=instance.config.get(KEY_PERSISTENT, "false") == "true",
        uid=uid,
        home="/root" if uid == 0 else CODE_HOME,
        container=instance.name,
        has_state=True,
        metadata=store.load_metadata(session_id),
    )


async def attach_session(
    incus: IncusClient,
    config: Config,
    target: AttachTarget,
    *,
    use_bash: bool,
    host_home: Path,
    term: str | None,
    say: Say,
    terminal: LocalTerminal | None = None,
) -> Outcome:
    """Attach to the session's tmux (or a bash); save and clean up if the session ends here."""
    del host_home
    session = _session_of(config, target.instance)
    uid = session.uid if session else 1000
    home = session.home if session else CODE_HOME
    env = user_env(home=home, user=os.path.basename(home), term=term)
    tmux = TmuxSession(incus, target.container, tmux_session(target.container), uid=uid, env=env)
    argv = ["bash"] if use_bash else tmux.attach_argv()
    async with interruptible(say) as interrupt:
        outcome = Outcome.DETACHED
        with interrupt.scope:
            if use_bash:
                code = await _attach(incus, target.container, argv, terminal or LocalTerminal(), env, uid)
            else:
                code = await attach_tmux(incus, tmux, terminal)
            outcome = await _after_session(incus, target.container, tmux)
            if use_bash:
                # A side shell says nothing about the session: save, keep, whatever tmux does.
                outcome = Outcome.DETACHED if outcome is not Outcome.STOPPED else outcome
            elif code not in (0, 130, 137, 143) and outcome is Outcome.ENDED:
                return Outcome.NO_TMUX
        if interrupt.signum is not None:
            # Unlike `coi shell`, a signal to attach drops only this terminal: the session lives
            # on, with its data saved so far.
            outcome = Outcome.DETACHED
        if session is not None and outcome in (Outcome.ENDED, Outcome.STOPPED, Outcome.DETACHED):
            await _cleanup(incus, session, outcome, say)
    return outcome
