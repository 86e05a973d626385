"""`coi file push/pull`: copy files and directories between the host and a container."""

from __future__ import annotations

import os
from pathlib import Path

import asyncclick as click

from coi_async.cli.app import App
from coi_async.cli.commands._lowlevel import say

# No deadline on transfers: their size is the user's to choose; Ctrl-C stops them cleanly.


@click.group()
async def file() -> None:
    """Copy files between the host and a container."""


@file.command()
@click.argument("local")
@click.argument("destination", metavar="CONTAINER:PATH")
@click.option("-r", "--recursive", is_flag=True, help="Copy a directory and everything in it.")
@click.pass_obj
async def push(app: App, local: str, destination: str, *, recursive: bool) -> None:
    """Copy LOCAL into the container, keeping modes and numeric owners.

    A file lands at PATH (or inside it, if PATH is a directory or ends in /). A directory's
    contents land in PATH, created if missing; with a trailing / in PATH they land in PATH/<name>.
    """
    from coi_async.orchestration.files import transfer

    remote = transfer.parse_remote(destination, role="destination")
    async with app.incus() as incus:
        done = await transfer.push(incus, Path(local), remote, recursive=recursive)
    say(f"Pushed {done.kind} {local} -> {done.target}")


@file.command()
@click.argument("source", metavar="CONTAINER:PATH")
@click.argument("local")
@click.option("-r", "--recursive", is_flag=True, help="Copy a directory and everything in it.")
@click.pass_obj
async def pull(app: App, source: str, local: str, *, recursive: bool) -> None:
    """Copy a file or directory out of the container to LOCAL.

    A directory replaces LOCAL (or lands in LOCAL/<name> if LOCAL ends in /); a file replaces a
    file, or lands inside LOCAL when it is a directory. Links that point outside the copy and
    special files are skipped and named; nothing is ever written outside LOCAL. A directory's
    size is bounded by the config's [limits].
    """
    from coi_async.orchestration.files import transfer

    remote = transfer.parse_remote(source, role="source")
    target = Path(os.path.abspath(local))  # noqa: ASYNC240 - a getcwd, no disk access
    async with app.incus() as incus:
        done = await transfer.pull(
            incus,
            remote,
            target,
            into=local.endswith(os.sep),
            recursive=recursive,
            limits=app.config().limits,
        )
    for entry in done.skipped:
        say(f"Skipped {entry}: not a plain file, directory or link inside {done.target}")
    landed = local if done.target == str(target) else done.target
    say(f"Pulled {done.kind} {done.source} -> {landed}")
