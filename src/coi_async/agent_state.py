"""What a session's agent is doing, as its tool reports it. Pure: no I/O.

A tool with `agent_state == "hooks"` (Claude Code) runs the commands coi puts into its settings
at the moments of its life: a prompt submitted or a tool about to be used (working), a
notification (waiting: for input or a permission), the end of a turn or the start of the tool
(idle), the end of the tool (exited). Each command writes one small JSON record,
`{"state": ..., "since": <unix seconds>, "message": ...}`, to `record_path(home)` in the
container, atomically (a temporary file renamed over it), with nothing but sh, printf, date, mv
(and, for the notification's message, head, sed, tr and cut): busybox has them all.

The container is the agent's, so the record is hostile input: it is read bounded
(`RECORD_MAX_BYTES`), decoded strictly, and anything unexpected makes the state `unknown`; the
message is cut to printable characters, at most `MESSAGE_MAX` of them.
"""

from __future__ import annotations

import copy
import math
import posixpath
import shlex
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

STARTING = "starting"  # the session started, its tool has reported nothing yet
WORKING = "working"
WAITING = "waiting"  # for the user's input or a permission
IDLE = "idle"
EXITED = "exited"  # the container or the tool does not run
UNKNOWN = "unknown"  # a tool that reports nothing, or a record that makes no sense
STATES = (STARTING, WORKING, WAITING, IDLE, EXITED, UNKNOWN)

RECORD_MAX_BYTES = 4096
MESSAGE_MAX = 120
RECORD_DIR = ".coi"
RECORD_NAME = "agent-state.json"
# Ends every hook command coi writes, so a later merge finds (and replaces) coi's own hooks.
HOOK_MARKER = "#coi-agent-state"

# Claude Code's hook events and the state each one reports.
HOOK_STATES: Mapping[str, str] = {
    "SessionStart": IDLE,
    "UserPromptSubmit": WORKING,
    "PreToolUse": WORKING,
    "Notification": WAITING,
    "Stop": IDLE,
    "SessionEnd": EXITED,
}
# Events whose hooks Claude Code matches against a tool name ("*": every tool).
_TOOL_EVENTS = frozenset({"PreToolUse"})

# The first `"message": "..."` of the notification (up to an escape), printable, bounded.
_MESSAGE_SH = (
    'm=$(head -c 65536 | sed -n \'s/.*"message"[[:space:]]*:[[:space:]]*"\\([^"\\\\]*\\).*/\\1/p\''
    f" | head -n 1 | tr -d '\\000-\\037' | cut -c 1-{MESSAGE_MAX})"
)


class AgentState(msgspec.Struct, frozen=True, kw_only=True):
    state: str
    since: float | None = None  # unix seconds; None when not known
    message: str = ""


class _Record(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    state: Literal["working", "waiting", "idle", "exited"]
    since: float
    message: str = ""


_DECODER = msgspec.json.Decoder(_Record)


def record_path(home: str) -> str:
    """The record in the container, under the session user's home."""
    return posixpath.join(home, RECORD_DIR, RECORD_NAME)


def hook_command(state: str, home: str) -> str:
    """The sh command that records `state`, atomically (a temporary file renamed over it)."""
    path = shlex.quote(record_path(home))
    directory = shlex.quote(posixpath.join(home, RECORD_DIR))
    if state == WAITING:
        fmt = '{"state":"%s","since":%s,"message":"%s"}\\n'
        values = f'{state} "$(date +%s)" "$m"'
        prelude = f"{_MESSAGE_SH}; "
    else:
        fmt = '{"state":"%s","since":%s}\\n'
        values = f'{state} "$(date +%s)"'
        prelude = ""
    return (
        f"{prelude}mkdir -p {directory} && printf '{fmt}' {values} > {path}.$$ "
        f"&& mv -f {path}.$$ {path} {HOOK_MARKER}"
    )


def agent_hooks(home: str) -> dict[str, list[dict[str, Any]]]:
    """Claude Code's `hooks` settings that make it report its state to `record_path(home)`."""
    hooks: dict[str, list[dict[str, Any]]] = {}
    for event, state in HOOK_STATES.items():
        group: dict[str, Any] = {"hooks": [{"type": "command", "command": hook_command(state, home)}]}
        if event in _TOOL_EVENTS:
            group = {"matcher": "*", **group}
        hooks[event] = [group]
    return hooks


def _is_ours(group: object) -> bool:
    if not isinstance(group, Mapping):
        return False
    entries = group.get("hooks")
    return (
        isinstance(entries, list)
        and bool(entries)
        and all(
            isinstance(e, Mapping)
            and isinstance(e.get("command"), str)
            and str(e["command"]).endswith(HOOK_MARKER)
            for e in entries
        )
    )


def with_hooks(settings: Mapping[str, Any], ours: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """`settings` with coi's hooks added: for each event the user's own hooks stay, first, and
    coi's are appended (an earlier copy of coi's replaced). Where the user's `hooks`, or an
    event's entry, is not what Claude Code expects (an object, a list), it is left as it is and
    coi adds nothing there. Neither input is modified."""
    merged = copy.deepcopy(dict(settings))
    hooks = merged.setdefault("hooks", {})
    if not isinstance(hooks, dict):
        return merged
    for event, groups in ours.items():
        theirs = hooks.get(event, [])
        if not isinstance(theirs, list):
            continue
        hooks[event] = [g for g in theirs if not _is_ours(g)] + copy.deepcopy(groups)
    return merged


def printable(text: str, limit: int = MESSAGE_MAX) -> str:
    """`text` with only printable characters (others dropped, whitespace runs made one space),
    at most `limit` of them."""
    kept = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(kept.split())[:limit]


def parse_record(data: bytes, *, now: float) -> AgentState:
    """The state a record says; `unknown` for anything but a small, well-formed record. A
    `since` in the future (or not a time) counts as now."""
    if len(data) > RECORD_MAX_BYTES:
        return AgentState(state=UNKNOWN)
    try:
        record = _DECODER.decode(data.decode("utf-8", errors="replace"))
    except (msgspec.DecodeError, msgspec.ValidationError):
        return AgentState(state=UNKNOWN)
    since = record.since if math.isfinite(record.since) and 0 < record.since <= now else now
    return AgentState(state=record.state, since=since, message=printable(record.message))
