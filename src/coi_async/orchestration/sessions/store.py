"""The session store: `<sessions dir>/<session-uuid>/{metadata.json, <tool config dir>/}`.

The sessions directory is per tool (e.g. ~/.coi/sessions-claude, from `Config.sessions_dir`).
`metadata.json` is real JSON, written atomically (temp file, fsync, rename). Files written by the
reference are read too: they are JSON unless a value held a quote or backslash, and then a
line-by-line reading like the reference's own recovers what it can.

The methods are synchronous: they touch a handful of small local files, and the CLI calls them
both inside and outside the event loop.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec

from coi_async.errors import SessionNotFoundError, UsageError
from coi_async.naming import SessionName, workspace_hash
from coi_async.tools import Tool

METADATA_FILE = "metadata.json"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


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


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old file or the new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

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
        path = self.session_dir(meta.session_id)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = path / METADATA_FILE
        write_atomically(target, encode_metadata(meta))
        return target

    def load_metadata(self, session_id: str) -> SessionMetadata | None:
        try:
            data = (self.session_dir(session_id) / METADATA_FILE).read_bytes()
        except OSError:
            return None
        return decode_metadata(data)

    def delete(self, session_id: str) -> None:
        shutil.rmtree(self.session_dir(session_id), ignore_errors=False)

    def _read(self, path: Path) -> SavedSession | None:
        try:
            st = path.stat()
        except OSError:
            return None
        meta: SessionMetadata | None = None
        with contextlib.suppress(OSError):
            meta = decode_metadata((path / METADATA_FILE).read_bytes())
        if self.config_dir:
            has_data = (path / self.config_dir).is_dir()
        else:
            has_data = meta is not None
        mtime = dt.datetime.fromtimestamp(st.st_mtime).astimezone().isoformat(timespec="seconds")
        saved_at = meta.saved_at if meta and parse_time(meta.saved_at) else mtime
        return SavedSession(id=path.name, path=path, metadata=meta, has_data=has_data, saved_at=saved_at)

    def _entries(self) -> Iterator[Path]:
        try:
            children = list(self.root.iterdir())
        except FileNotFoundError:
            return
        for child in children:
            if _UUID.fullmatch(child.name) and child.is_dir():
                yield child

    def list_sessions(self, *, with_data_only: bool = True) -> list[SavedSession]:
        """Saved sessions, oldest first; only those holding the tool's data unless told otherwise."""
        found = [s for p in self._entries() if (s := self._read(p)) is not None]
        if with_data_only:
            found = [s for s in found if s.has_data]
        return sorted(found, key=_saved_key)

    def for_container(self, container_name: str) -> list[SavedSession]:
        """Sessions whose metadata names this container, newest first."""
        found = [
            s
            for s in self.list_sessions(with_data_only=False)
            if s.metadata and s.metadata.container_name == container_name
        ]
        return sorted(found, key=_saved_key, reverse=True)

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


def _saved_key(session: SavedSession) -> tuple[float, str]:
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
