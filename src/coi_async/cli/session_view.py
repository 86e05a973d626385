"""How `coi shell`, `coi attach` and `coi run` show progress: each `Note` kind of the session
flows as the exact line(s) the reference printed (cli-contract.md), on stderr.

Orchestration only names what happened (`Note.kind` and its values); the words are here, one
table, so the same events can be shown differently (or as JSON) without touching the flows.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Mapping

from coi_async.orchestration.events import Event, Note

_MODES = {
    "direct": "Direct (no tmux)",
    "background": "Background (tmux)",
    "interactive": "Interactive (tmux)",
}
_RESUME_MODES = {
    "persistent": "Resume mode: Persistent session",
    "restored": "Resume mode: Restored conversation (auto-detect)",
}

# kind -> the line(s), formatted with the note's values and `item`.
SENTENCES: dict[str, str] = {
    # resume.py
    "resume.auto-detected": "Auto-detected session: {session_id}",
    "resume.resuming": "Resuming session: {session_id}",
    "resume.inherited-persistent": "Inherited persistent mode from session",
    # shell.py / setup.py
    "setup.started": "Setting up session {session_id}...",
    "setup.slot-allocated": "Auto-allocated slot {slot}",
    "setup.restoring": "[setup] Restoring session data...",
    "setup.reusing-running": "[setup] Session container {item} is running; reusing it",
    "setup.leftover": "Found stopped leftover container {item} of this session, saving and deleting...",
    "interrupted": "\nReceived interrupt signal, cleaning up...",
    # credentials.py
    "credentials.missing": "[setup] No credentials found at {path}; the tool may ask you to log in",
    "credentials.host-not-json": (
        "[setup] Warning: {file} is not a JSON object; copied as it is, without the sandbox settings"
    ),
    "credentials.session-not-json": (
        "[setup] Warning: the session's {file} was not a JSON object; replaced by the host's"
    ),
    "credentials.session-too-large": (
        "[setup] Warning: the session's {file} is larger than {limit} bytes; not read, "
        "left as it is without the host's settings"
    ),
    # launch.py
    "launch.idmap-fallback": "{plan} is not usable here ({error}); trying the next way to map file ownership",
    "launch.slot-occupied": "Slot {slot} is occupied, using slot {instead} instead",
    "launch.reusing-running": "Container already running, reusing...",
    "launch.restarting": "Restarting existing persistent container...",
    "launch.placed": "Container {item} is on cluster member {member}",
    # pool/take.py (a take that works says nothing: the session is as a created one)
    "pool.take-failed": "Warning: pool member {member} could not be used ({error}); creating {item}",
    "pool.refill-failed": "Warning: the pool is not refilled: {error}",
    # start.py
    "attach.restarted": "Its tmux session had ended: the tool is started again, resuming the conversation",
    "session.dummy": "Using dummy (test stub) for faster testing",
    "session.exec-lost": "[session] Warning: incusd lost track of the command (exit -1)",
    "background.sent": "Sent command to existing tmux session: {tmux}",
    "background.created": "Created background tmux session: {tmux}",
    "background.usage": (
        "Use 'coi tmux capture {item}' to view output\n"
        "Use 'coi tmux send {item} \"<command>\"' to send commands"
    ),
    # cleanup.py
    "cleanup.started": "\nCleaning up session...",
    "cleanup.already-removed": "[cleanup] Container was already removed",
    "cleanup.no-answer": "[cleanup] Warning: incusd did not answer about {item}; it may be left over",
    "cleanup.failed": "[cleanup] Warning: {error}",
    "save.started": "[cleanup] Saving session data to {path}",
    "save.timed-out": "[cleanup] Warning: saving session data took over {seconds}s; gave up",
    "save.failed": "[cleanup] Warning: {error}",
    "save.nothing": "[cleanup] No {config_dir} directory found in container",
    "save.skipped": "[cleanup] Left out (special files, or names or links leading outside): {names}",
    "save.done": "[cleanup] Session data saved successfully",
    "save.retry-stopped": "[cleanup] The container stopped meanwhile; saving from its filesystem",
    "cleanup.kept-unsaved": (
        "[cleanup] Container {item} kept: its session data could not be saved. "
        "Retry with 'coi shell --resume={session_id}' or copy it out with 'coi file pull'"
    ),
    "cleanup.kept-running": (
        "[cleanup] Container kept running - use 'coi attach' to reconnect, "
        "'coi shutdown' to stop, or 'coi kill' to force stop"
    ),
    "cleanup.kept-stopped": "[cleanup] Container was stopped but kept for reuse",
    "cleanup.removing-stopped": "[cleanup] Container was stopped, removing...",
    "cleanup.removing": "[cleanup] Removing container...",
    "cleanup.removed": "[cleanup] Container removed (session data saved for --resume)",
    # network/session.py
    "egress.devices-updated": "[setup] Network devices of {item} brought in line with this session's mode",
    # run.py
    "run.launching": "Launching container {item} from image {image}...",
    "run.stopping": "Stopping persistent container {item}...",
    "run.cleaning-up": "Cleaning up container {item}...",
}


def _starting(values: Mapping[str, str]) -> str:
    lines = [
        "\nStarting session...",
        f"Session ID: {values.get('session_id', '')}",
        f"Container: {values.get('container', '')}",
        f"Workspace: {values.get('workspace', '')}",
        f"Mode: {_MODES.get(values.get('mode', ''), values.get('mode', ''))}",
    ]
    resume = values.get("resume", "")
    if resume:
        lines.append(_RESUME_MODES.get(resume, f"Resume mode: {resume}"))
    return "\n".join(lines)


_COMPOSED: dict[str, Callable[[Mapping[str, str]], str]] = {"session.starting": _starting}
KINDS = frozenset(SENTENCES) | frozenset(_COMPOSED)


def sentence(event: Event) -> str | None:
    """The text of a session event; None for events these commands do not show."""
    if not isinstance(event, Note):
        return None
    composed = _COMPOSED.get(event.kind)
    if composed is not None:
        return composed(event.values)
    template = SENTENCES.get(event.kind)
    values = {"item": event.item, **event.values}
    if template is None:
        # A kind without words yet: shown plainly rather than lost.
        details = " ".join(f"{key}={value}" for key, value in values.items() if value)
        return f"{event.kind}: {details}" if details else event.kind
    try:
        return template.format_map(values)
    except (KeyError, IndexError, ValueError):
        return template


def show(event: Event) -> None:
    """The `Emit` of these commands: each line to stderr at once."""
    text = sentence(event)
    if text is None:
        return
    # The terminal may be gone (SIGHUP): losing a progress line must not stop the cleanup.
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
