"""The tool started in a ready session container: in a tmux session the user's terminal is
attached to (or left detached with --background), or directly on the terminal (--tmux=false)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

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
from coi_async.orchestration.sessions.tmux import TmuxSession, new_gate, user_env

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


def _session_env(config: Config, request: ShellRequest, state: SessionState) -> dict[str, str]:
    session = state.session
    # -e pairs over the profile's environment, for every process of the session.
    extra = {**state.tool.environment, **config.environment, **request.env}
    return user_env(home=session.home, user=session.user, term=request.term, extra=extra)


def _tmux_of(incus: IncusClient, config: Config, request: ShellRequest, state: SessionState) -> TmuxSession:
    session = state.session
    env = _session_env(config, request, state)
    return TmuxSession(incus, session.container, tmux_session(session.container), uid=session.uid, env=env)


def early_tmux(
    incus: IncusClient, config: Config, request: ShellRequest, terminal: Terminal
) -> Callable[[SessionState], Coroutine[Any, Any, None]]:
    """For `setup_session`: the tmux session of a new session started while the rest of the
    setup is done, its tool held back (`wrapped_command`'s gate) until `run_tool` opens the gate.
    Only for a container made in this run: one found running may have its tmux session already."""

    async def start(state: SessionState) -> None:
        if not (state.created and request.use_tmux):
            return
        state.gate = new_gate(state.session.home)
        tmux = _tmux_of(incus, config, request, state)
        await tmux.start(tool_command(state, config, request), size=terminal.size(), gate=state.gate)

    return start


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
    argv = tool_command(state, config, request)
    state.has_state = True
    if not request.use_tmux:
        env = _session_env(config, request, state)
        if await attach_terminal(incus, session.container, argv, terminal, env, session.uid) == LOST_EXEC:
            # Not retried: the tool may have run, and a second one could run beside it.
            note(emit, "session.exec-lost", session.container, level="warning")
        return await after_session(incus, session.container, None)

    tmux = _tmux_of(incus, config, request, state)
    started = bool(state.gate)
    if started:  # during setup (early_tmux); its tool goes once this file is there
        await tmux.open_gate(state.gate)
    # A container made a moment ago has no tmux session yet: one exec saved.
    exists = started or (False if state.created else await tmux.exists())
    if request.background:
        if started:
            note(emit, "background.created", session.container, tmux=tmux.session)
        elif exists:
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
