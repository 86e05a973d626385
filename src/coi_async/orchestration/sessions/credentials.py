"""Copy the host's tool credentials and preferences into a session, with the sandbox settings on top.

Settings files are merged on the host, in Python, and pushed whole: no interpreter is needed in
the image, every file lands with the right owner in one request, and a user's key is never lost
(the merge is deep; see `tools.deep_merge`). A file that is not valid JSON is never rewritten: it
is copied as it is and reported, because dropping what we cannot parse would lose the user's data.

The session's own copies are read back from the container, so the agent wrote them: each is
read at most `CONTAINER_SETTINGS_MAX_BYTES` (JSON parsing costs some 25 times a file's size in
memory), and one nested deeper than `_MAX_DEPTH` counts as not JSON (it would make the parser,
the merge's copy or the encoder recurse past Python's limit). A larger one is not read and left
as it is, without the host's settings merged in, and a warning says so: the session still starts,
and a real but huge `.claude.json` loses nothing. Refusing to start instead would let an agent
lock its user out of a persistent session with one oversized file.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from coi_async.agent_state import agent_hooks, with_hooks
from coi_async.errors import NotFoundError, ReadLimitError
from coi_async.incus import IncusClient
from coi_async.orchestration.events import Emit, note
from coi_async.orchestration.sessions.archive import StatePlace, make_state_dir
from coi_async.tools import Tool, deep_merge

# The most read of a settings file in the container: real ones are KiBs (`.claude.json` can
# reach a few MiB); a bound on the host memory an agent can make coi spend at every start.
CONTAINER_SETTINGS_MAX_BYTES = 8 * 1024 * 1024
# Real settings nest a few levels; far deeper ones would make the JSON parser, the copy in the
# merge or the encoder recurse past Python's limit.
_MAX_DEPTH = 64


def _nests_within(value: object, limit: int) -> bool:
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            pending.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            pending.extend((v, depth + 1) for v in item)
    return True


def _parse(data: bytes | None) -> dict[str, Any] | None:
    """The JSON object in `data`; {} for no data; None when it is not a JSON object (or one
    nested deeper than `_MAX_DEPTH`)."""
    if data is None or not data.strip():
        return {}
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) and _nests_within(value, _MAX_DEPTH) else None


def merge_settings(
    existing: bytes | None,
    host: bytes | None,
    sandbox: Mapping[str, Any],
    hooks: Mapping[str, list[dict[str, Any]]] | None = None,
) -> tuple[bytes, list[str]]:
    """The settings file to write: what the session had, the host's on top, the sandbox's on top,
    then coi's `hooks` appended to the user's own for the same events (`agent_state.with_hooks`).

    Returns the bytes and the names ("existing", "host") of inputs that were not JSON objects and
    were therefore left out of the merge. An unparseable host file wins verbatim over everything,
    so the user's own file is never dropped.
    """
    old, new = _parse(existing), _parse(host)
    skipped = [name for name, value in (("existing", old), ("host", new)) if value is None]
    if new is None and host is not None:
        return host, skipped
    merged = deep_merge(deep_merge(old or {}, new or {}), sandbox)
    if hooks:
        merged = with_hooks(merged, hooks)
    return (json.dumps(merged, indent=2, ensure_ascii=False) + "\n").encode(), skipped


async def _read_host(path: Path) -> bytes | None:
    try:
        return await anyio.Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


async def _read_container(incus: IncusClient, container: str, path: str) -> bytes | None:
    """The file's bytes, None when there is none; ReadLimitError past the bound."""
    try:
        return (await incus.pull_file(container, path, max_bytes=CONTAINER_SETTINGS_MAX_BYTES)).data
    except NotFoundError:
        return None


async def inject_credentials(
    incus: IncusClient,
    container: str,
    tool: Tool,
    *,
    host_home: Path,
    home: str,
    uid: int,
    emit: Emit,
) -> None:
    """Put the host's credentials and config for `tool` into `home` in the container.

    Runs after a resumed session's state has been restored, so fresh credentials win over the
    saved ones while every other saved setting stays.
    """
    if not tool.saves_state:
        return
    host_dir = host_home / tool.config_dir
    remote_dir = posixpath.join(home, tool.config_dir)
    plain = [name for name in tool.host_files if name != tool.settings_file]

    host: dict[str, bytes | None] = {}
    remote: dict[str, bytes | None] = {}
    too_large: set[str] = set()

    async def read_host(key: str, path: Path) -> None:
        host[key] = await _read_host(path)

    async def read_remote(key: str, path: str, shown: str) -> None:
        try:
            remote[key] = await _read_container(incus, container, path)
        except ReadLimitError as exc:
            _too_large(emit, container, shown, exc)
            too_large.add(key)

    settings_remote = posixpath.join(remote_dir, tool.settings_file) if tool.settings_file else ""
    home_remote = posixpath.join(home, tool.home_settings_file) if tool.home_settings_file else ""
    settings_shown = f"~/{tool.config_dir}/{tool.settings_file}"
    home_shown = f"~/{tool.home_settings_file}"
    async with anyio.create_task_group() as tg:
        for name in tool.host_files:
            tg.start_soon(read_host, name, host_dir / name)
        if tool.home_settings_file:
            tg.start_soon(read_host, tool.home_settings_file, host_home / tool.home_settings_file)
            tg.start_soon(read_remote, tool.home_settings_file, home_remote, home_shown)
        if tool.settings_file:
            tg.start_soon(read_remote, tool.settings_file, settings_remote, settings_shown)
        # The directory must exist (owned by the user) before anything is pushed into it.
        await make_state_dir(incus, StatePlace(container, home, tool.config_dir), uid)

    writes: list[tuple[str, bytes, int]] = []
    for name in plain:
        data = host.get(name)
        if data is not None:
            # Secrets stay private to the user inside too.
            mode = 0o600 if name in tool.secret_files else 0o644
            writes.append((posixpath.join(remote_dir, name), data, mode))
    if tool.settings_file and tool.settings_file not in too_large:
        # The tool reports what its agent does through coi's hooks (`coi top`, `coi wait`).
        hooks = agent_hooks(home) if tool.agent_state == "hooks" else None
        data, skipped = merge_settings(
            remote.get(tool.settings_file), host.get(tool.settings_file), tool.sandbox_settings, hooks
        )
        _warn(emit, container, skipped, settings_shown)
        writes.append((settings_remote, data, 0o644))
    if tool.home_settings_file and tool.home_settings_file not in too_large:
        existing, mine = remote.get(tool.home_settings_file), host.get(tool.home_settings_file)
        # Written only where the user has one: the tool creates it on first run otherwise.
        if existing is not None or mine is not None:
            data, skipped = merge_settings(existing, mine, tool.sandbox_settings)
            _warn(emit, container, skipped, home_shown)
            writes.append((home_remote, data, 0o600))

    async with anyio.create_task_group() as tg:
        for path, data, mode in writes:
            tg.start_soon(_push, incus, container, path, data, uid, mode)
    if tool.credentials_file and host.get(tool.credentials_file) is None:
        note(emit, "credentials.missing", container, path=str(host_dir / tool.credentials_file))


async def inject_agent_hooks(
    incus: IncusClient, container: str, tool: Tool, *, home: str, uid: int, emit: Emit
) -> None:
    """Only coi's hooks into the session's settings, for a session that gets nothing of the
    host's (`mount_claude_config` off), so its tool still reports its agent's state. A session
    file that is too large or not JSON is left as it is (a warning says so)."""
    if tool.agent_state != "hooks" or not tool.settings_file:
        return
    path = posixpath.join(home, tool.config_dir, tool.settings_file)
    shown = f"~/{tool.config_dir}/{tool.settings_file}"
    try:
        existing = await _read_container(incus, container, path)
    except ReadLimitError as exc:
        _too_large(emit, container, shown, exc)
        return
    data, skipped = merge_settings(existing, None, {}, agent_hooks(home))
    if skipped:
        _warn(emit, container, skipped, shown)
        return
    await make_state_dir(incus, StatePlace(container, home, tool.config_dir), uid)
    await _push(incus, container, path, data, uid, 0o644)


async def _push(incus: IncusClient, container: str, path: str, data: bytes, uid: int, mode: int) -> None:
    await incus.push_file(container, path, data, uid=uid, gid=uid, mode=mode)


def _warn(emit: Emit, container: str, skipped: list[str], what: str) -> None:
    if "host" in skipped:
        note(emit, "credentials.host-not-json", container, level="warning", file=what)
    elif "existing" in skipped:
        note(emit, "credentials.session-not-json", container, level="warning", file=what)


def _too_large(emit: Emit, container: str, shown: str, exc: ReadLimitError) -> None:
    note(emit, "credentials.session-too-large", container, level="warning", file=shown, limit=str(exc.limit))
