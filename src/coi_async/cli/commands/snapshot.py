"""`coi snapshot create|list|restore|delete CONTAINER [NAME]`: Incus snapshots of one container
(stateless), to take before risky work and go back to when it went wrong."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import asyncclick as click

from coi_async.cli.app import App
from coi_async.cli.commands._lowlevel import connected, say
from coi_async.cli.commands._options import format_option

if TYPE_CHECKING:
    from coi_async.config import Config
    from coi_async.orchestration.bulk.lifecycle import SessionSaver
    from coi_async.orchestration.containers.snapshots import Snapshot
    from coi_async.orchestration.events import Event

# incusd's own work: on storage without cheap snapshots (dir) a snapshot is a full copy.
SNAPSHOT_S = 600.0
LIST_S = 60.0

_NAME_HELP = "NAME: 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit."


@click.group()
async def snapshot() -> None:
    """Snapshots of a container: take one before risky work, restore it if that went wrong."""


@snapshot.command(epilog=_NAME_HELP)
@click.argument("container")
@click.argument("name", required=False)
@click.pass_obj
async def create(app: App, container: str, name: str | None) -> None:
    """Take a snapshot of CONTAINER, running or not.

    NAME defaults to snap-YYYYMMDD-HHMMSS (local time; -2, -3, ... appended if that is taken).
    """
    from coi_async.orchestration.containers import snapshots

    async with connected(app, SNAPSHOT_S, f"snapshotting {container}") as incus:
        taken = await snapshots.create_snapshot(incus, container, name)
    click.echo(f"Created snapshot {taken} of {container}")


def human_age(seconds: float) -> str:
    """An age as its largest whole unit: `42s`, `5m`, `3h`, `2d`."""
    whole = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _created(stamp: str) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def snapshot_table(found: list[Snapshot], now: dt.datetime) -> list[str]:
    """NAME, CREATED (local time), AGE and SIZE (`-` where incusd does not know it)."""
    from coi_async.cli.commands.image import human_size

    rows = [("NAME", "CREATED", "AGE", "SIZE")]
    for snap in found:
        when = _created(snap.created_at)
        created = when.astimezone().strftime("%Y-%m-%d %H:%M:%S") if when else snap.created_at
        age = human_age((now - when).total_seconds()) if when else "-"
        size = "-" if snap.size_bytes is None else human_size(snap.size_bytes)
        rows.append((snap.name, created, age, size))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in rows
    ]


@snapshot.command("list")
@click.argument("container")
@format_option("text", "json", description="text: a table; json: a list of {name, created_at, size_bytes}.")
@click.pass_obj
async def list_(app: App, container: str, *, fmt: str) -> None:
    """List the snapshots of CONTAINER.

    Oldest first, with when each was taken, its age and its size (`-` where the storage driver
    does not tell, e.g. btrfs without quotas or dir).
    """
    from coi_async.orchestration.containers import snapshots

    async with connected(app, LIST_S, f"listing the snapshots of {container}") as incus:
        found = await snapshots.list_snapshots(incus, container)
    if fmt == "json":
        import msgspec

        click.echo(msgspec.json.encode(found).decode())
    elif not found:
        click.echo(f"No snapshots of {container}")
    else:
        click.echo("\n".join(snapshot_table(found, dt.datetime.now(dt.UTC))))


def _saver(config: Config) -> SessionSaver:
    from coi_async.orchestration.bulk.lifecycle import SessionSaver
    from coi_async.orchestration.sessions.store import SessionStore
    from coi_async.tools import get_tool

    tool = get_tool(config.tool.name)
    return SessionSaver(SessionStore(config.sessions_dir, config_dir=tool.config_dir), tool, config)


def _show_step(event: Event) -> None:
    """A restore's steps as lines on stderr (stdout keeps the result)."""
    from coi_async.orchestration.containers import snapshots as s
    from coi_async.orchestration.events import StepStarted

    if not isinstance(event, StepStarted):
        return
    item, detail = event.item, event.detail
    lines = {
        s.SAVING: f"Saving the session data of {item}...",
        s.SAVED: f"Session data saved to {detail}",
        s.NO_SESSION_DATA: f"No {detail} directory in {item}: no session data to save",
        s.STOPPING: f"Stopping {item} (gracefully, up to {detail}s)...",
        s.FORCE_STOPPING: f"{item} did not stop in time; forcing it...",
        s.RESTORING: f"Restoring snapshot {detail} of {item}...",
        s.STARTING: f"Starting {item} again...",
    }
    if event.step in lines:
        say(lines[event.step])


@snapshot.command()
@click.argument("container")
@click.argument("name")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.IntRange(min=1),
    default=60,
    show_default=True,
    help="Seconds a running container gets to shut down before it is forced.",
)
@click.pass_obj
async def restore(app: App, container: str, name: str, *, timeout_s: int) -> None:
    """Restore CONTAINER to snapshot NAME.

    A running container is stopped for it and started again; a running coi session's data is
    saved first (as `coi shutdown` does). A stopped container is restored and left stopped.
    """
    from coi_async.orchestration.containers import snapshots
    from coi_async.orchestration.interrupts import interruptible

    saver = _saver(app.config())
    restored = None
    # A signal cancels the work instead of killing it: before the stop nothing has changed, after
    # it the restore and the start finish (bounded) before the process exits.
    async with interruptible() as interrupt:
        with interrupt.scope:
            async with app.incus() as incus:
                restored = await snapshots.restore_snapshot(
                    incus, container, name, saver=saver, grace_s=timeout_s, emit=_show_step
                )
    if restored is not None:
        click.echo(f"Restored snapshot {name} of {container}")
    if interrupt.signum is not None:
        say("Interrupted" + ("" if restored else f": {container} was left as it was"))
        raise click.exceptions.Exit(interrupt.exit_code)


@snapshot.command(epilog=_NAME_HELP)
@click.argument("container")
@click.argument("name")
@click.pass_obj
async def delete(app: App, container: str, name: str) -> None:
    """Delete snapshot NAME of CONTAINER."""
    from coi_async.orchestration.containers import snapshots

    async with connected(app, SNAPSHOT_S, f"deleting snapshot {name} of {container}") as incus:
        await snapshots.delete_snapshot(incus, container, name)
    click.echo(f"Deleted snapshot {name} of {container}")
