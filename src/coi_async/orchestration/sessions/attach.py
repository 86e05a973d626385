"""The user's terminal on a session: `coi attach` (choose the container, attach to its tmux or a
bash, clean up if the session ends there) and the attaching itself, shared with `coi shell`."""

from __future__ import annotations

import msgspec

from coi_async.config import Config
from coi_async.errors import CoiError, SessionNotFoundError
from coi_async.incus import IncusClient
from coi_async.incus.exec import LOST_EXEC, Terminal
from coi_async.incus.models import Instance
from coi_async.naming import KEY_TOOL, SessionName, tmux_session
from coi_async.orchestration.containers import ops
from coi_async.orchestration.events import Emit, note
from coi_async.orchestration.interrupts import interruptible
from coi_async.orchestration.sessions.cleanup import SessionState, cleanup
from coi_async.orchestration.sessions.guard import absorbing_coi_errors
from coi_async.orchestration.sessions.model import Session, new_session, session_of
from coi_async.orchestration.sessions.outcome import after_session
from coi_async.orchestration.sessions.request import Outcome
from coi_async.orchestration.sessions.store import SessionStore, check_session_id
from coi_async.orchestration.sessions.tmux import WORKDIR, TmuxSession, user_env
from coi_async.orchestration.sessions.tmux_control import find_session_user
from coi_async.slots import validate_slot
from coi_async.tools import DEFAULT_TOOL, get_tool

_ATTACH_ATTEMPTS = 3
# Exit codes of a tmux attach that ended the normal ways (detach, exit, a signal to the client).
_ATTACH_ENDED = (0, 130, 137, 143)


class AttachTarget(msgspec.Struct, frozen=True, kw_only=True):
    container: str
    instance: Instance


class AttachList(msgspec.Struct, frozen=True, kw_only=True):
    running: list[str]


async def choose_attach_target(
    incus: IncusClient, config: Config, *, workspace: str, slot: int, name: str | None, tool: str = ""
) -> AttachTarget | AttachList:
    """The container to attach to: by slot, by name, or the only session there is (of `tool`'s
    sessions, when given)."""
    prefix = config.container_prefix
    if slot:
        validate_slot(slot, max_slots=config.defaults.max_slots)
        container = str(SessionName.for_workspace(workspace, slot, prefix=prefix))
        instance = await ops.state(incus, container)
        if instance is None or not instance.running:
            raise SessionNotFoundError(f"container {container} not found or not running")
        return AttachTarget(container=container, instance=instance)
    if name is not None:
        # Any container by its name, coi's session or not (one made by `coi container launch`).
        instance = await ops.state(incus, name)
        if instance is None or not instance.running:
            raise SessionNotFoundError(f"container {name} not found or not running")
        return AttachTarget(container=name, instance=instance)
    ours = sorted(
        (i for i in await incus.list_instances() if SessionName.parse(i.name, prefix) is not None),
        key=lambda i: i.name,
    )
    running = [i for i in ours if i.running and (not tool or i.config.get(KEY_TOOL, DEFAULT_TOOL) == tool)]
    if len(running) == 1:
        return AttachTarget(container=running[0].name, instance=running[0])
    return AttachList(running=[i.name for i in running])


def _is_coi_session(session: Session) -> bool:
    try:
        check_session_id(session.session_id)
    except CoiError:
        return False
    return True


def _saved_state(config: Config, session: Session) -> SessionState | None:
    """What the cleanup of an attached session needs; None when the container carries no coi
    session id (its data has no session to go to, so attach leaves it alone)."""
    if not _is_coi_session(session):
        return None
    tool = get_tool(session.tool)
    store = SessionStore(config.paths.tool_sessions_dir(tool.name), config_dir=tool.config_dir)
    return SessionState(
        session=session,
        tool=tool,
        store=store,
        has_state=True,
        metadata=store.load_metadata(session.session_id),
        limits=config.limits,
    )


async def attach_session(
    incus: IncusClient,
    config: Config,
    target: AttachTarget,
    *,
    use_bash: bool,
    term: str | None,
    emit: Emit,
    terminal: Terminal,
) -> Outcome:
    """Attach to the session's tmux (or a bash); save and clean up if the session ends here."""
    session = session_of(target.instance, config) or new_session(
        config, workspace="", session_id="", persistent=False, container=target.container
    )
    uid, user, home = session.uid, session.user, session.home
    # The session is wherever it was started: as the session's user, or as root by hand.
    owner = None if use_bash else await find_session_user(incus, config, target.instance)
    if owner is not None:
        uid, user, home = owner.uid, owner.user, owner.home
    extra = (
        {**get_tool(session.tool).environment, **config.environment} if session.tool else config.environment
    )
    env = user_env(home=home, user=user, term=term, extra=extra)
    tmux = TmuxSession(incus, target.container, tmux_session(target.container), uid=uid, env=env)
    if not use_bash and owner is None and not await _restart_tool(config, session, tmux, terminal, emit):
        return Outcome.NO_TMUX
    async with interruptible() as interrupt:
        outcome = Outcome.DETACHED
        with interrupt.scope:
            if use_bash:
                code = await attach_terminal(incus, target.container, ["bash"], terminal, env, session.uid)
            else:
                code = await attach_tmux(incus, tmux, terminal)
            # A side shell's exit code is its own, not a sign of anything: only a broken link is.
            attach_code = 0 if use_bash and code is not None else code
            outcome = await after_session(incus, target.container, tmux, attach_code=attach_code)
            if use_bash:
                # A side shell says nothing about the session: save, keep, whatever tmux does.
                outcome = Outcome.DETACHED if outcome is not Outcome.STOPPED else outcome
            elif code not in _ATTACH_ENDED and outcome is Outcome.ENDED:
                return Outcome.NO_TMUX
        if interrupt.signum is not None:
            # Unlike `coi shell`, a signal to attach drops only this terminal: the session lives
            # on, with its data saved so far.
            outcome = Outcome.DETACHED
        state = _saved_state(config, session)
        if state is not None and outcome in (Outcome.ENDED, Outcome.STOPPED, Outcome.DETACHED):
            await cleanup(incus, state, outcome, emit)
    return outcome


async def _restart_tool(
    config: Config, session: Session, tmux: TmuxSession, terminal: Terminal, emit: Emit
) -> bool:
    """Start a coi session's tool again, resuming its conversation, in a new tmux session: its
    container outlives `exit` in bash, and `coi attach` is how the user gets back in. False for a
    container that carries no coi session (there is no tool of ours to start)."""
    if not _is_coi_session(session):
        return False
    tool = get_tool(session.tool)
    store = SessionStore(config.paths.tool_sessions_dir(tool.name), config_dir=tool.config_dir)
    meta = store.load_metadata(session.session_id)
    cli_id = (meta.cli_session_id if meta else "") or None
    argv = tool.resume_command(cli_id, binary=config.tool.binary_for(tool.name))
    await tmux.start(argv, size=terminal.size())
    note(emit, "attach.restarted", session.container)
    return True


async def attach_tmux(incus: IncusClient, tmux: TmuxSession, terminal: Terminal) -> int | None:
    """Attach the terminal to the tmux session; its exit code (None if the link broke).

    Attaching is idempotent, so an exec incusd lost track of (-1, seen on loaded hosts) is
    attached again while the session is there.
    """
    code: int | None = LOST_EXEC
    for _ in range(_ATTACH_ATTEMPTS):
        code = await attach_terminal(incus, tmux.container, tmux.attach_argv(), terminal, tmux.env, tmux.uid)
        if code != LOST_EXEC:
            break
        with absorbing_coi_errors() as failed:
            alive = await tmux.exists()
        if failed or not alive:
            break
    return code


async def attach_terminal(
    incus: IncusClient, container: str, argv: list[str], terminal: Terminal, env: dict[str, str], uid: int
) -> int | None:
    """The user's terminal on `argv` in the container; its exit code, None if the link broke.

    A broken link (the container powering off under the exec) is not an error here: what
    happened is read from the container's state afterwards.
    """
    with absorbing_coi_errors():
        return await incus.exec_attached(
            container, argv, terminal=terminal, env=env, user=uid, group=uid, cwd=WORKDIR
        )
    return None
