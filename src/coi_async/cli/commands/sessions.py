"""`coi list`, `coi info`, `coi persist`: what is running and what is saved."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import asyncclick as click

from coi_async.cli.app import App
from coi_async.cli.commands._options import tool_option
from coi_async.errors import CoiError, SessionNotFoundError, UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from coi_async.config import Config
    from coi_async.orchestration.sessions.listing import ActiveContainer
    from coi_async.orchestration.sessions.store import SavedSession, SessionStore


def _store(config: Config, tool: str = "") -> SessionStore:
    """The saved sessions of `tool` (default: the configured one)."""
    from coi_async.orchestration.sessions.store import SessionStore
    from coi_async.tools import get_tool

    name = tool or config.tool.name
    return SessionStore(config.paths.tool_sessions_dir(name), config_dir=get_tool(name).config_dir)


def _stores(config: Config, tool: str | None) -> list[SessionStore]:
    """`--tool NAME`: that tool's store (an unknown name is a ConfigError); else every tool's."""
    from coi_async.config import apply_flags
    from coi_async.tools import TOOLS

    if tool:
        return [_store(apply_flags(config, tool=tool))]
    return [_store(config, name) for name in TOOLS]


def _created(text: str) -> str:
    """Incus's created_at as `2006-01-02 15:04:05`, in the offset incusd gave."""
    try:
        return dt.datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return text


def _confirm(question: str) -> bool:
    """One token from stdin; only y/Y proceeds. EOF counts as no."""
    sys.stdout.write(question)
    sys.stdout.flush()
    line = sys.stdin.readline()
    answer = line.split()[0] if line.split() else ""
    return answer in ("y", "Y")


def list_json(active: list[ActiveContainer], saved: list[SavedSession] | None) -> str:
    containers: list[dict[str, Any]] = []
    for c in active:
        item: dict[str, Any] = {
            "created_at": c.created_at,
            "image": c.image,
            "ipv4": c.ipv4,
            "name": c.name,
            "persistent": c.persistent,
            "status": c.status,
        }
        if c.workspace:
            item["workspace"] = c.workspace
        if c.network:
            item["network"] = c.network
        if c.forked_from:
            item["forked_from"] = c.forked_from
        if c.location:
            item["location"] = c.location
        item["tool"] = c.tool
        containers.append(item)
    doc: dict[str, Any] = {"active_containers": containers}
    if saved:
        doc["saved_sessions"] = [
            {"ID": s.id, "SavedAt": s.saved_at, "Workspace": s.workspace, "Tool": _tool_of(s.path)}
            for s in saved
        ]
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False)


def _tool_of(session_dir: Path) -> str:
    """The tool whose store (`sessions-<tool>`) holds the session directory."""
    return session_dir.parent.name.removeprefix("sessions-")


def _tool_flag(config: Config, session_dir: Path) -> str:
    tool = _tool_of(session_dir)
    return "" if tool == config.tool.name else f" --tool {tool}"


def list_text(active: list[ActiveContainer], saved: list[SavedSession] | None) -> str:
    lines = ["Active Containers:", "------------------"]
    for c in active:
        lines.append(f"  {c.name} ({'persistent' if c.persistent else 'ephemeral'})")
        lines.append(f"    Status: {c.status}")
        if c.location:
            lines.append(f"    Location: {c.location}")
        if c.ipv4:
            lines.append(f"    IPv4: {c.ipv4}")
        lines.append(f"    Created: {_created(c.created_at)}")
        if c.image:
            lines.append(f"    Image: {c.image}")
        if c.workspace:
            lines.append(f"    Workspace: {c.workspace}")
        if c.network:
            lines.append(f"    Network: {c.network}")
        if c.forked_from:
            lines.append(f"    Forked from: {c.forked_from}")
        lines.append(f"    Tool: {c.tool}")
    if not active:
        lines.append("  (none)")
    if saved is not None:
        lines += ["", "Saved Sessions:", "---------------"]
        for s in saved:
            lines += [f"  {s.id}", f"    Saved: {s.saved_at}", f"    Workspace: {s.workspace}"]
            lines.append(f"    Tool: {_tool_of(s.path)}")
        if not saved:
            lines.append("  (none)")
    return "\n".join(lines)


@click.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also show saved sessions.")
@click.option("--format", "fmt", default="text", show_default=True, help="Output format: text or json.")
@tool_option("Only sessions of this AI tool (default: every tool's).")
@click.pass_obj
async def list_(app: App, *, show_all: bool, fmt: str, tool: str | None) -> None:
    """List session containers (and, with --all, saved sessions)."""
    from coi_async.orchestration.sessions.listing import active_containers

    if fmt not in ("text", "json"):
        raise UsageError(f"invalid format '{fmt}': must be 'text' or 'json'")
    from coi_async.orchestration.network.session import revive_daemon
    from coi_async.orchestration.sessions.store import saved_key

    config = app.config()
    stores = _stores(config, tool)
    async with app.incus() as incus:
        active = await active_containers(incus, config=config, stores=stores, tool=tool or "")
    # The sessions listed have no network while their egress daemon is down; a daemon that will
    # not start is for the commands that need it to say. (A remote's sessions have none.)
    if not app.is_remote():
        with contextlib.suppress(CoiError):
            await revive_daemon()
    saved = (
        sorted((s for store in stores for s in store.list_sessions()), key=saved_key) if show_all else None
    )
    click.echo(list_json(active, saved) if fmt == "json" else list_text(active, saved))


def _size(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def format_bytes(size: int) -> str:
    """Go-style binary sizes: `512 B`, `12.3 KB`, `4.0 MB`."""
    if size < 1024:
        return f"{size} B"
    value, unit = float(size), 0
    while value >= 1024 and unit < 6:
        value /= 1024
        unit += 1
    return f"{value:.1f} {'KMGTPE'[unit - 1]}B"


@click.command()
@click.argument("session_id", required=False)
@tool_option("Look only at this AI tool's sessions (default: the configured tool's latest, any tool's ID).")
@click.pass_obj
async def info(app: App, *, session_id: str | None, tool: str | None) -> None:
    """Show a saved session (the most recent one without SESSION_ID)."""
    from coi_async.orchestration.sessions.store import check_session_id

    config = app.config()
    stores = _stores(config, tool)
    store = stores[0] if tool else _store(config)
    if session_id is None:
        latest = store.latest()
        if latest is None:
            raise CoiError("no sessions found (specify session ID or use 'coi list --all')")
        session_id = latest.id
    # Whatever its shape, an id that names no saved session is not found (and no path is built
    # from a malformed one).
    holders: list[SessionStore] = []
    with contextlib.suppress(CoiError):
        check_session_id(session_id)
        holders = [s for s in stores if s.exists(session_id)]
    if not holders:
        raise SessionNotFoundError(f"session not found: {session_id}", hint="see 'coi list --all'")
    store = holders[0]
    meta = store.load_metadata(session_id)
    path = store.session_dir(session_id)
    config_dir = store.config_dir
    data = path / config_dir
    present = data.is_dir()
    lines = [
        "Session Information",
        "===================",
        f"Session ID:     {session_id}",
        f"Container:      {meta.container_name if meta else ''}",
        f"Saved At:       {meta.saved_at if meta else ''}",
        f"Tool:           {_tool_of(path)}",
    ]
    if meta and meta.workspace:
        lines.append(f"Workspace:      {meta.workspace}")
    if meta:
        lines.append(f"Mode:           {'persistent' if meta.persistent else 'ephemeral'}")
    if meta and meta.network:
        lines.append(f"Network:        {meta.network}")
    if meta and meta.location:
        lines.append(f"Location:       {meta.location}")
    lines.append(
        f"Session Data:   ✓ Present ({config_dir} directory)" if present else "Session Data:   ✗ Missing"
    )
    if present:
        lines.append(f"Data Size:      {format_bytes(_size(str(data)))}")
    lines += [
        "",
        f"Session Path:   {path}",
        "",
        f"Resume:         coi shell --resume={session_id}{_tool_flag(config, path)}",
    ]
    click.echo("\n".join(lines))


@click.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Persist every session container.")
@click.option("--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
async def persist(app: App, *, names: tuple[str, ...], all_: bool, force: bool) -> None:
    """Keep containers after their session ends (turn ephemeral sessions persistent)."""
    from coi_async.orchestration.sessions.listing import persist_container, prefixed_instances

    config = app.config()
    store = _store(config)
    async with app.incus() as incus:
        targets = list(names)
        if all_:
            targets = [i.name for i in await prefixed_instances(incus, config.container_prefix)]
            if not targets:
                click.echo("No containers to persist")
                return
            click.echo(f"Found {len(targets)} container(s):")
            for name in targets:
                click.echo(f"  - {name}")
            if not force and not _confirm("\nPersist all these containers? [y/N]: "):
                click.echo("Cancelled.")
                return
        elif not targets:
            raise CoiError("no container names provided - use 'coi list' to see active containers")
        elif len(targets) > 1 and not force and not _confirm(f"Persist {len(targets)} container(s)? [y/N]: "):
            click.echo("Cancelled.")
            return
        done = 0
        for name in targets:
            click.echo(f"Persisting container {name}...")
            try:
                found = await persist_container(incus, store, name)
            except CoiError as exc:
                click.echo(f"  ✗ {exc}", err=True)
                continue
            if not found:
                click.echo(f"  Warning: no session metadata found for container {name}", err=True)
            click.echo(f"  ✓ Persisted {name}")
            done += 1
    if done == 0:
        raise CoiError("failed to persist specified containers")
    click.echo(f"\nPersisted {done} container(s)")
