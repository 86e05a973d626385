"""`coi shell`: one interactive session, from container to cleanup.

The flow: resolve the session (new, or resumed from the store: resume.py), take a slot by
creating the container, restore the saved conversation and inject fresh credentials (setup.py),
start the tool in a detached tmux session as the session's user and attach the user's terminal
(start.py, attach.py), and finally save the session data and remove an ephemeral container
(cleanup.py). What happens is told as events (`Note` kinds); the CLI words them.

Cleanup never leaks: whatever ends the session (the tool and its shell exiting, a detach,
`sudo poweroff` inside, SIGINT/SIGTERM/SIGHUP of this process, or a failure during setup), the
session data is pulled back before a container is deleted, under a shielded and bounded scope.
Signals are received through anyio (orchestration/interrupts.py), so they cancel the work and
the cleanup still runs; the process is never ended from inside a handler.
"""

from __future__ import annotations

import anyio

from coi_async.config import Config
from coi_async.errors import UsageError
from coi_async.incus import IncusClient
from coi_async.incus.exec import Terminal
from coi_async.orchestration.events import Emit, note
from coi_async.orchestration.interrupts import interruptible
from coi_async.orchestration.sessions.cleanup import SessionState, cleanup
from coi_async.orchestration.sessions.model import new_session
from coi_async.orchestration.sessions.request import Outcome, ShellRequest
from coi_async.orchestration.sessions.resume import resolve_persistent, resolve_resume
from coi_async.orchestration.sessions.setup import setup_session
from coi_async.orchestration.sessions.start import announce, early_tmux, run_tool
from coi_async.orchestration.sessions.store import SessionStore, new_session_id
from coi_async.slots import validate_slot
from coi_async.tools import get_tool


async def run_shell(
    incus: IncusClient, config: Config, request: ShellRequest, *, emit: Emit, terminal: Terminal
) -> int:
    """Run one `coi shell`; returns the exit code. Raises CoiError for bad input or failed setup."""
    tool = get_tool(config.tool.name)
    store = SessionStore(config.sessions_dir, config_dir=tool.config_dir)
    store.ensure()
    if not await anyio.Path(request.workspace).is_dir():
        raise UsageError(f"workspace '{request.workspace}' is not a directory")
    if request.slot:
        validate_slot(request.slot, max_slots=config.defaults.max_slots)

    async with interruptible() as interrupt:
        state: SessionState | None = None
        outcome = Outcome.FAILED
        try:
            with interrupt.scope:
                resumed = resolve_resume(request, store, config, emit)
                persistent = resolve_persistent(request, config, resumed, emit)
                session = new_session(
                    config,
                    workspace=request.workspace,
                    session_id=resumed.id if resumed else new_session_id(),
                    persistent=persistent,
                )
                state = SessionState(
                    session=session, tool=tool, store=store, resumed=resumed, limits=config.limits
                )
                note(emit, "setup.started", session_id=session.session_id)
                early = early_tmux(incus, config, request, terminal)
                await setup_session(incus, config, request, state, emit, alongside=early)
                state.ready = True
                announce(state, request, emit)
                outcome = await run_tool(incus, config, request, state, emit=emit, terminal=terminal)
        except BaseException:
            if interrupt.signum is None or state is None:
                # A failed setup (or a bug): remove what we made, after saving what it held.
                if state is not None and state.session.container:
                    await cleanup(incus, state, Outcome.FAILED, emit)
                raise
        if interrupt.signum is not None:
            # Announced here, not by the signal watcher: the terminal may have been in raw mode.
            note(emit, "interrupted", signal=str(interrupt.signum))
            # Interrupted during setup, it is a failed setup: what was made for it goes again.
            outcome = Outcome.INTERRUPTED if state is not None and state.ready else Outcome.FAILED
        if state is not None and state.session.container and outcome is not Outcome.BACKGROUND:
            await cleanup(incus, state, outcome, emit)
    return interrupt.exit_code
