"""The session store: `<sessions dir>/<session-uuid>/{metadata.json, <tool config dir>/}`.

The sessions directory is per tool (e.g. ~/.coi/sessions-claude, from `Config.sessions_dir`).
`metadata.json` is real JSON, written atomically (temp file, fsync, rename). Files written by the
reference are read too: they are JSON unless a value held a quote or backslash, and then a
line-by-line reading like the reference's own recovers what it can.

Saved sessions hold the tool's credentials: every directory the store makes is 0700 and every
file 0600 from the moment it exists (the mode is given to mkdir and mkstemp, never set after),
so no other user of the host can read them, not even for an instant.

The methods are synchronous: they touch a handful of small local files, and the CLI calls them
both inside and outside the event loop.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec

from coi_async.errors import SessionError, SessionNotFoundError, UsageError
from coi_async.hostfs import make_private_dir, write_atomically
from coi_async.naming import SessionName, workspace_hash
from coi_async.tools import Tool

METADATA_FILE = "metadata.json"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# A session being deleted is renamed to `.<id>.deleting` first; one left by a failed delete is
# listed (without its metadata) so that the next delete finishes it.
_DELETING = re.compile(rf"\.(?P<id>{_UUID.pattern})\.deleting")


class SessionMetadata(msgspec.Struct, kw_only=True, omit_defaults=False):
    session_id: str
    container_name: str = ""
    persistent: bool = False
    workspace: str = ""
    saved_at: str = ""  # RFC 3339; when the data was last saved (or the session started)
    tool: str = "claude"
    slot: int = 0
    image: str = ""
    created_at: str = ""  # RFC 3339; when the session started
    # The tool's own conversation id, when known (claude's --resume argument).
    cli_session_id: str = ""
    network: str = ""  # the network mode the session ran in ("" in files from before modes)
    location: str = ""  # the cluster member its container was placed on ("": not on a cluster)


class SavedSession(msgspec.Struct, frozen=True, kw_only=True):
    """A session directory as found on disk."""

    id: str
    path: Path
    metadata: SessionMetadata | None
    has_data: bool  # the tool's config dir is there
    saved_at: str  # from the metadata, else the directory's mtime (RFC 3339)

    @property
    def workspace(self) -> str:
        return self.metadata.workspace if self.metadata else ""


def new_session_id() -> str:
    return str(uuid.uuid4())


def now_rfc3339() -> str:
    """Local time with its offset, seconds precision (Go's time.RFC3339)."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def parse_time(text: str) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.astimezone()


def check_session_id(session_id: str) -> str:
    """A session id must be a lowercase UUID: nothing else may become a path under the store."""
    if not _UUID.fullmatch(session_id):
        raise UsageError(
            f"invalid session id '{session_id}'",
            hint="session ids look like 1b4e28ba-2fa1-11d2-883f-0016d3cca427; see 'coi list --all'",
        )
    return session_id


_DECODER = msgspec.json.Decoder(SessionMetadata)
_LINE = re.compile(r'^\s*"(?P<key>[a-z_]+)"\s*:\s*(?P<value>.*?)\s*,?\s*$')


def decode_metadata(data: bytes) -> SessionMetadata | None:
    """Metadata from a file's bytes: real JSON, else the reference's hand-written format."""
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError:
        pass
    fields: dict[str, object] = {}
    for line in data.decode(errors="replace").splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        key, value = match["key"], match["value"]
        if value in ("true", "false"):
            fields[key] = value == "true"
        elif value.startswith('"') and value.endswith('"') and len(value) >= 2:
            fields[key] = value[1:-1]
        elif value.isdigit():
            fields[key] = int(value)
    if not isinstance(fields.get("session_id"), str):
        return None
    try:
        return msgspec.convert(fields, SessionMetadata)
    except msgspec.ValidationError:
        return None


def encode_metadata(meta: SessionMetadata) -> bytes:
    return msgspec.json.format(msgspec.json.encode(meta), indent=2) + b"\n"


class SessionStore:
    """One tool's saved sessions under `root` (e.g. ~/.coi/sessions-claude)."""

    def __init__(self, root: Path | str, *, config_dir: str = ".claude") -> None:
        self.root = Path(root)
        # The tool's state directory kept in each session ("" for tools configured by env only).
        self.config_dir = config_dir

    def session_dir(self, session_id: str) -> Path:
        return self.root / check_session_id(session_id)

    def data_dir(self, session_id: str) -> Path:
        return self.session_dir(session_id) / self.config_dir

    def ensure(self) -> None:
        make_private_dir(self.root)

    def make_session_dir(self, session_id: str) -> Path:
        """The session's directory, made (0700, as are the missing parents) if it is not there."""
        path = self.session_dir(session_id)
        make_private_dir(path)
        return path

    def exists(self, session_id: str) -> bool:
        return self.session_dir(session_id).is_dir()

    def has_data(self, session_id: str) -> bool:
        path = self.session_dir(session_id)
        return (path / self.config_dir).is_dir() if self.config_dir else (path / METADATA_FILE).is_file()

    def require(self, session_id: str) -> SavedSession:
        """A saved session that can be resumed, else SessionNotFoundError."""
        check_session_id(session_id)
        session = self._read(self.root / session_id) if self.exists(session_id) else None
        if session is None or not session.has_data:
            raise SessionNotFoundError(
                f"session '{session_id}' not found - check available sessions with: coi list --all"
            )
        return session

    def save_metadata(self, meta: SessionMetadata) -> Path:
        target = self.make_session_dir(meta.session_id) / METADATA_FILE
        write_atomically(target, encode_metadata(meta))
        return target

    def load_metadata(self, session_id: str) -> SessionMetadata | None:
        try:
            data = (self.session_dir(session_id) / METADATA_FILE).read_bytes()
        except OSError:
            return None
        return decode_metadata(data)

    def delete(self, session_id: str) -> None:
        """Remove a saved session: renamed aside first (so that nothing resumes half of it), then
        removed. A session that is not there counts as deleted; one that could not be removed
        whole raises SessionError, and what is left is listed and finished by the next delete."""
        path = self.session_dir(session_id)
        aside = path.with_name(f".{path.name}.deleting")
        try:
            if os.path.lexists(aside):
                shutil.rmtree(aside)  # what an earlier delete left
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                return
            shutil.rmtree(aside)
        except OSError as exc:
            raise self._not_deleted(session_id, exc, aside) from exc

    @staticmethod
    def _not_deleted(session_id: str, exc: OSError, left: Path) -> SessionError:
        # In the bulk report, where there is no room for a hint, the message must say it all.
        where = f" ({exc.filename})" if exc.filename else ""
        return SessionError(
            f"cannot delete session {session_id}: {exc.strerror}{where}; what is left is in {left}, "
            "and the next delete removes it"
        )

    def _read(self, path: Path, *, left_by_delete: str = "") -> SavedSession | None:
        try:
            st = path.stat()
        except OSError:
            return None
        mtime = dt.datetime.fromtimestamp(st.st_mtime).astimezone().isoformat(timespec="seconds")
        if left_by_delete:
            # Half removed: nothing in it may be resumed, only deleted.
            return SavedSession(id=left_by_delete, path=path, metadata=None, has_data=False, saved_at=mtime)
        meta: SessionMetadata | None = None
        with contextlib.suppress(OSError):
            meta = decode_metadata((path / METADATA_FILE).read_bytes())
        if self.config_dir:
            has_data = (path / self.config_dir).is_dir()
        else:
            has_data = meta is not None
        saved_at = meta.saved_at if meta and parse_time(meta.saved_at) else mtime
        return SavedSession(id=path.name, path=path, metadata=meta, has_data=has_data, saved_at=saved_at)

    def _entries(self) -> Iterator[tuple[Path, str]]:
        """Session directories, each with "", and what failed deletes left of sessions now gone,
        each with the session's id."""
        try:
            children = list(self.root.iterdir())
        except FileNotFoundError:
            return
        names = {child.name for child in children}
        for child in children:
            if not child.is_dir():
                continue
            if _UUID.fullmatch(child.name):
                yield child, ""
            elif (left := _DELETING.fullmatch(child.name)) and left["id"] not in names:
                yield child, left["id"]

    def list_sessions(self, *, with_data_only: bool = True) -> list[SavedSession]:
        """Saved sessions, oldest first; only those holding the tool's data unless told otherwise
        (then also what failed deletes left, without metadata, so that they can be deleted)."""
        found = [s for p, left in self._entries() if (s := self._read(p, left_by_delete=left)) is not None]
        if with_data_only:
            found = [s for s in found if s.has_data]
        return sorted(found, key=saved_key)

    def for_container(self, container_name: str) -> list[SavedSession]:
        """Sessions whose metadata names this container, newest first."""
        found = [
            s
            for s in self.list_sessions(with_data_only=False)
            if s.metadata and s.metadata.container_name == container_name
        ]
        return sorted(found, key=saved_key, reverse=True)

    def latest(self) -> SavedSession | None:
        sessions = self.list_sessions()
        return sessions[-1] if sessions else None

    def latest_for_workspace(self, abs_workspace: str, *, prefix: str) -> SavedSession | None:
        """The most recently saved session of this workspace.

        A session belongs to it when its metadata names the workspace, or (files written by the
        reference, or by a coi that had no workspace field) when its container name carries the
        workspace's hash under the current prefix.
        """
        wanted = workspace_hash(abs_workspace)
        mine = []
        for session in self.list_sessions():
            meta = session.metadata
            if meta is None:
                continue
            if meta.workspace:
                if meta.workspace == abs_workspace:
                    mine.append(session)
                continue
            name = SessionName.parse(meta.container_name, prefix)
            if name is not None and name.workspace_hash == wanted:
                mine.append(session)
        return mine[-1] if mine else None


def saved_key(session: SavedSession) -> tuple[float, str]:
    when = parse_time(session.saved_at)
    return (when.timestamp() if when else 0.0, session.id)


def discover_cli_session_id(tool: Tool, session_dir: Path) -> str | None:
    """The tool's own id of the conversation saved in `session_dir` (for its --resume), if any."""
    conversations = session_dir / tool.config_dir / tool.conversations_dir
    try:
        entries = [(e.name, e.stat().st_mtime) for e in os.scandir(conversations) if e.is_file()]
    except OSError:
        return None
    return tool.discover_session_id(entries)
