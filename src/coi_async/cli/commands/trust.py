"""`coi trust`, `coi trust --list`, `coi untrust`: which workspace config files may widen a session.

Until it is trusted, a workspace's `./.coi.toml` (which the agent can write) may only make a
session stricter; `coi trust` records its sha256, and any later change untrusts it again.
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncclick as click

from coi_async.errors import UsageError

_SHOWN_DIGEST = 12


@click.command()
@click.option("--list", "list_", is_flag=True, help="List the trusted files and whether they still match.")
async def trust(*, list_: bool) -> None:
    """Trust this workspace's .coi.toml as it is now (mounts, image, environment, ...)."""
    home = str(Path.home())
    if list_:
        _list(home)
    else:
        _trust(home, os.getcwd())


def _trust(home: str, cwd: str) -> None:
    from coi_async.cli import trust_store
    from coi_async.cli.config_loader import decode_text, read_config_file
    from coi_async.config import display_path, workspace_config_path
    from coi_async.config.schema import decode_file

    path = workspace_config_path(cwd)
    shown = display_path(path, home)
    data = read_config_file(path, home=home)
    if data is None:
        raise UsageError(
            f"no {os.path.basename(path)} in {display_path(cwd, home)}: nothing to trust "
            "(run 'coi trust' in the workspace whose config you trust)"
        )
    # Only a file that loads is worth trusting; its errors are the loader's own.
    decode_file(shown, decode_text(path, data, home=home))
    entry = trust_store.record(home, path, data)
    click.echo(f"Trusted {shown} (sha256 {entry.sha256[:_SHOWN_DIGEST]}); editing it untrusts it again")


def _list(home: str) -> None:
    from coi_async.cli import trust_store
    from coi_async.config import display_path

    found = trust_store.listing(home)
    if not found:
        click.echo("No trusted config files")
    for item in found:
        click.echo(f"{display_path(item.path, home)}  {item.sha256[:_SHOWN_DIGEST]}  {item.trust.value}")


@click.command()
@click.argument("path", required=False)
async def untrust(*, path: str | None) -> None:
    """Stop trusting a config file: this workspace's .coi.toml, or PATH (a file or a workspace)."""
    _untrust(str(Path.home()), os.getcwd(), path)


def _untrust(home: str, cwd: str, path: str | None) -> None:
    from coi_async.cli import trust_store
    from coi_async.config import display_path, workspace_config_path

    target = os.path.join(cwd, path) if path else workspace_config_path(cwd)
    if os.path.isdir(target):
        target = workspace_config_path(target)
    shown = display_path(os.path.abspath(target), home)
    if not trust_store.forget(home, target):
        raise UsageError(f"{shown} is not trusted: nothing to untrust (see 'coi trust --list')")
    click.echo(f"Untrusted {shown}")
