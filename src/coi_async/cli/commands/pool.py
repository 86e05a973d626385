"""`coi pool status|fill|drain`: the stopped containers made ahead of time for new sessions where
creating one is slow (`[pool] size`; orchestration/pool)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncclick as click

from coi_async.cli.app import App
from coi_async.cli.commands._lowlevel import connected, say
from coi_async.cli.commands._options import format_option

if TYPE_CHECKING:
    from coi_async.incus import IncusClient
    from coi_async.orchestration.events import Event

QUICK_S = 60.0
# Making members of a large image on `dir` copies it whole, two at a time.
FILL_S = 3600.0


@click.group()
async def pool() -> None:
    """The warm pool: stopped containers taken by new sessions (`[pool] size`)."""


async def _size(incus: IncusClient, configured: int | None) -> tuple[int, str]:
    """The size `[pool] size` means here, and the storage driver it was decided by."""
    from coi_async.orchestration.pool.members import size_for, storage_driver

    driver = await storage_driver(incus)
    return size_for(configured, driver), driver


@pool.command()
@format_option("text", "json", description="Output format.")
@click.pass_obj
async def status(app: App, *, fmt: str) -> None:
    """Show the pool's size here and its members, per image."""
    import msgspec

    from coi_async.orchestration.pool.members import as_member, list_members

    config = app.config()
    async with connected(app, QUICK_S, "reading the pool") as incus:
        size, driver = await _size(incus, config.pool.size)
        members = [as_member(i) for i in await list_members(incus, config.container_prefix)]
    setting = "auto" if config.pool.size is None else str(config.pool.size)
    if fmt == "json":
        body = {"size": size, "setting": setting, "driver": driver, "members": members}
        click.echo(msgspec.json.encode(body).decode())
        return
    click.echo(f"Pool size: {size} per image (pool.size = {setting}; storage driver: {driver or 'unknown'})")
    if not members:
        click.echo("No members")
    for m in members:
        state = "ready" if m.ready else "being made"
        click.echo(f"  {m.name}  {m.image or '?'} ({m.fingerprint[:12]})  {state}")


def _quiet_view(event: Event) -> None:
    """A detached refill's log: failures only, one line each."""
    from coi_async.orchestration.events import ItemResult

    if isinstance(event, ItemResult) and not event.ok:
        say(f"pool: {event.item}: {event.error}")


@pool.command()
@click.option("--image", default=None, help="The image whose pool to fill (default: defaults.image).")
@click.option(
    "--size", type=click.IntRange(0, 16), default=None, help="Members to keep (default: [pool] size)."
)
@click.option("--quiet", is_flag=True, hidden=True, help="Started by a launch: print failures only.")
@click.option("--delay", type=float, default=0.0, hidden=True, help="Wait S seconds first.")
@click.pass_obj
async def fill(app: App, *, image: str | None, size: int | None, quiet: bool, delay: float) -> None:
    """Make the pool of the image up to its size now (a launch that takes a member does it too,
    in the background); removes members of an older build of the image and half-made ones."""
    import anyio

    from coi_async.orchestration.pool.fill import fill as fill_pool

    config = app.config()
    await anyio.sleep(delay)
    async with connected(app, FILL_S, "filling the pool") as incus:
        wanted = size if size is not None else (await _size(incus, config.pool.size))[0]
        result = await fill_pool(
            incus,
            image=image or config.defaults.image,
            size=wanted,
            prefix=config.container_prefix,
            emit=_quiet_view if quiet else (lambda _event: None),
        )
    if quiet:
        return
    for name in result.made:
        click.echo(f"Made {name}")
    for name in result.removed:
        click.echo(f"Removed {name}")
    click.echo(f"Pool of {result.image}: {result.ready} of {result.size} ready")
    for line in result.failed:
        say(f"Failed: {line}")
    if result.failed:
        raise click.exceptions.Exit(1)


@pool.command()
@click.pass_obj
async def drain(app: App) -> None:
    """Remove every member of the pool (of every image). New sessions refill it unless
    `[pool] size = 0`."""
    from coi_async.orchestration.pool.fill import drain as drain_pool

    config = app.config()
    async with connected(app, FILL_S, "draining the pool") as incus:
        removed = await drain_pool(incus, prefix=config.container_prefix)
    for name in removed:
        click.echo(f"Removed {name}")
    click.echo(f"Removed {len(removed)} pool member{'s' if len(removed) != 1 else ''}")
