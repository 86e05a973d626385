"""`coi tmux ...`: drive the tmux session an AI tool runs in, from scripts."""

from __future__ import annotations

import os
import sys

import asyncclick as click

from coi_async.cli.app import App
from coi_async.cli.commands._lowlevel import QUICK_S, connected, say


@click.group()
async def tmux() -> None:
    """Send to, read and list the tmux sessions of containers (as the session's user)."""


@tmux.command()
@click.argument("container")
@click.argument("command")
@click.pass_obj
async def send(app: App, container: str, command: str) -> None:
    """Type COMMAND, then Enter, into the container's tmux session (key names like C-c work)."""
    from coi_async.orchestration.sessions import tmux_control

    async with connected(app, QUICK_S, f"sending to {container}") as incus:
        session = await tmux_control.send(incus, app.config(), container, command)
    click.echo(f"Sent command to session {session}")


@tmux.command()
@click.argument("container")
@click.pass_obj
async def capture(app: App, container: str) -> None:
    """Print what the container's tmux session shows now."""
    from coi_async.orchestration.sessions import tmux_control

    async with connected(app, QUICK_S, f"capturing {container}") as incus:
        screen = await tmux_control.capture(incus, app.config(), container)
    sys.stdout.buffer.write(screen)
    sys.stdout.flush()


@tmux.command("list")
@click.pass_obj
async def list_(app: App) -> None:
    """List running coi containers that have a tmux session."""
    from coi_async.naming import container_prefix
    from coi_async.orchestration.sessions import tmux_control

    prefix = container_prefix(os.environ)
    async with connected(app, QUICK_S, "listing tmux sessions") as incus:
        listing = await tmux_control.list_sessions(incus, app.config(), prefix)
    for name, reason in listing.failed:
        say(f"Warning: cannot check {name}: {reason}")
    if not listing.sessions:
        click.echo("No active sessions")
        return
    click.echo("Active sessions:")
    for name in listing.sessions:
        click.echo(f"  - {name} (tmux session: coi-{name})")
