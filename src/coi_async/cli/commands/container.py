"""`coi container ...`: low-level container operations."""

from __future__ import annotations

import sys

import asyncclick as click

from coi_async.cli.app import App
from coi_async.errors import NotFoundError


@click.group()
async def container() -> None:
    """Low-level container operations."""


@container.command()
@click.argument("name")
@click.pass_obj
async def exists(app: App, name: str) -> None:
    """Exit 0 if the container exists, 1 if not."""
    async with app.incus() as incus:
        found = await incus.instance_exists(name)
    sys.exit(0 if found else 1)


@container.command()
@click.argument("name")
@click.pass_obj
async def running(app: App, name: str) -> None:
    """Exit 0 if the container is running, 1 if not."""
    async with app.incus() as incus:
        try:
            up = (await incus.get_instance(name)).running
        except NotFoundError:
            up = False
    sys.exit(0 if up else 1)
