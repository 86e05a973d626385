"""What a `coi shell` continues: a new session, or a saved one (`--resume`, `--resume=ID`), and
whether it is persistent."""

from __future__ import annotations

from coi_async.config import Config
from coi_async.errors import CoiError, SessionError, SessionNotFoundError
from coi_async.naming import SessionName
from coi_async.orchestration.events import Emit, note
from coi_async.orchestration.sessions.request import ShellRequest
from coi_async.orchestration.sessions.store import SavedSession, SessionStore, check_session_id
from coi_async.tools import TOOLS


def resolve_resume(
    request: ShellRequest, store: SessionStore, config: Config, emit: Emit
) -> SavedSession | None:
    """The saved session to resume; None for a new session. SessionNotFoundError when there is
    none to resume, SessionError when it belongs to another workspace."""
    if request.resume is None:
        return None
    if request.resume == "auto":
        found = store.latest_for_workspace(request.workspace, prefix=config.container_prefix)
        if found is None:
            raise SessionNotFoundError(
                "no previous session to resume for this workspace: no saved sessions found",
                hint="start a new one with 'coi shell'",
            )
        note(emit, "resume.auto-detected", session_id=found.id)
        return found
    try:
        check_session_id(request.resume)
    except CoiError as exc:
        # The store's own check is a usage error; here, as in the reference, it is a lookup failure.
        raise SessionNotFoundError(
            f"session '{request.resume}' not found - check available sessions with: coi list --all"
        ) from exc
    _check_tool_of(request.resume, store, config)
    found = store.require(request.resume)
    foreign = _foreign_owner(found, config.container_prefix, request.workspace)
    if foreign is not None:
        # Another workspace's conversation would run against this workspace's files.
        raise SessionError(
            f"session '{found.id}' belongs to workspace {foreign}, not {request.workspace}",
            hint=f"resume it there: coi shell -w {foreign} --resume={found.id}",
        )
    note(emit, "resume.resuming", session_id=found.id)
    return found


def resolve_persistent(
    request: ShellRequest, config: Config, resumed: SavedSession | None, emit: Emit
) -> bool:
    """An explicit flag wins; else a resumed persistent session stays persistent; else the config."""
    if request.persistent is not None:
        return request.persistent
    if resumed is not None and resumed.metadata is not None and resumed.metadata.persistent:
        note(emit, "resume.inherited-persistent", session_id=resumed.id)
        return True
    return config.defaults.persistent


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


def _check_tool_of(session_id: str, store: SessionStore, config: Config) -> None:
    """SessionError naming the tool when the session is not this tool's but another's: its
    conversation is in a format only that tool reads."""
    if store.exists(session_id):
        return
    for name in TOOLS:
        if name != config.tool.name and SessionStore(config.paths.tool_sessions_dir(name)).exists(session_id):
            raise SessionError(
                f"session '{session_id}' is a {name} session, not {config.tool.name}: "
                f"resume it with 'coi shell --tool {name} --resume={session_id}'"
            )
