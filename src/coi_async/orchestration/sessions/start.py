"""The tool started in a ready session container: in a tmux session the user's terminal is
attached to (or left detached with --background), or directly on the terminal (--tmux=false)."""

from __future__ import annotations

from coi_async.config import Config
from coi_async.incus import IncusClient
from coi_async.incus.exec import LOST_EXEC, Terminal
from coi_async.naming import tmux_session
from coi_async.orchestration.events import Emit, note
from coi_async.orchestration.sessions.attach import attach_terminal, attach_tmux
from coi_async.orchestration.sessions.cleanup import SessionState
from coi_async.orchestration.sessions.outcome import after_session
from coi_async.orchestration.sessions.request import Outcome, ShellRequest
from coi_async.orchestration.sessions.store import discover_cli_session_id
from coi_async.orchestration.sessions.tmux import TmuxSession, user_env

# The test stub the coi image ships (recipes/dummy), run instead of the tool with COI_USE_DUMMY=1.
DUMMY_BINARY = "dummy"


def announce(state: SessionState, request: ShellRequest, emit: Emit) -> None:
    """What is about to run, where (one `session.starting` note)."""
    mode = "direct"
    if request.use_tmux:
        mode = "background" if request.background else "interactive"
    resume = ""
    if state.resumed is not None:
        resume = "persistent" if not state.created else "restored"
    session = state.session
    if request.dummy and not request.debug:
        note(emit, "session.dummy", session.container)
    note(
        emit,
        "session.starting",
        session.container,
        session_id=session.session_id,
        container=session.container,
        workspace=session.workspace,
        mode=mode,
        resume=resume,
    )


def tool_command(state: SessionState, config: Config, request: ShellRequest) -> list[str]:
    """The command the session runs: the tool (new, or resuming its conversation), or bash."""
    if request.debug:
        return ["bash"]
    binary, tool, resumed = config.tool.binary, state.tool, state.resumed
    if request.dummy:
        # The test stub takes the tool's own arguments (the original's users' harnesses rely on it).
        binary = DUMMY_BINARY
    if resumed is not None:
        cli_id = (resumed.metadata.cli_session_id if resumed.metadata else "") or discover_cli_session_id(
            tool, resumed.path
        )
        return tool.resume_command(cli_id, binary=binary)
    return tool.new_session_command(state.session.session_id, binary=binary)


async def run_tool(
    incus: IncusClient,
    config: Config,
    request: ShellRequest,
    state: SessionState,
    *,
    emit: Emit,
    terminal: Terminal,
) -> Outcome:
    """Start the tool and give it the terminal; how the session ended when the terminal is back."""
    session = state.session
    # -e pairs over the profile's environment, for every process of the session.
    extra = {**state.tool.environment, **config.environment, **request.env}
    env = user_env(home=session.home, user=session.user, term=request.term, extra=extra)
    argv = tool_command(state, config, request)
    state.has_state = True
    if not request.use_tmux:
        if await attach_terminal(incus, session.container, argv, terminal, env, session.uid) == LOST_EXEC:
            # Not retried: the tool may have run, and a second one could run beside it.
            note(emit, "session.exec-lost", session.container, level="warning")
        return await after_session(incus, session.container, None)

    tmux = TmuxSession(incus, session.container, tmux_session(session.container), uid=session.uid, env=env)
    # A container made a moment ago has no tmux session yet: one exec saved.
    exists = False if state.created else await tmux.exists()
    if request.background:
        if exists:
            await tmux.send_command(argv)
            note(emit, "background.sent", session.container, tmux=tmux.session)
        else:
            await tmux.start(argv, size=terminal.size())
            note(emit, "background.created", session.container, tmux=tmux.session)
        note(emit, "background.usage", session.container)
        return Outcome.BACKGROUND
    if not exists:
        await tmux.start(argv, size=terminal.size())
    code = await attach_tmux(incus, tmux, terminal)
    return await after_session(incus, session.container, tmux, attach_code=code)
