"""`coi network allow|deny CONTAINER HOST` and `coi network log [CONTAINER]`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncclick as click

from coi_async.cli.app import App
from coi_async.cli.commands._options import format_option

if TYPE_CHECKING:
    from coi_async.egress.connection import ConnectionRecord

_HOST_HELP = "HOST: a name, *.domain, an IP address or CIDR range, each optionally with :PORT."


@click.group()
async def network() -> None:
    """A running session's network: its allowlist and its connection log."""


def _not_over_a_remote(app: App) -> None:
    """A remote's sessions are served by the daemon beside its incusd, which keeps no log."""
    from coi_async.errors import UsageError

    if app.is_remote():
        raise UsageError(
            f"sessions on remote '{app.remote_name()}' are served by the egress daemon beside its "
            "incusd, which keeps no connection log: `coi network log` covers this machine's only"
        )


async def _change(app: App, container: str, host: str, *, action: str) -> None:
    from coi_async.orchestration.network.live import change_allowlist, parse_host_argument
    from coi_async.orchestration.network.paths import EgressPaths

    entry = parse_host_argument(host)  # a bad HOST fails before anything is looked up
    async with app.incus() as incus:
        await change_allowlist(
            incus,
            EgressPaths.for_environment(),
            container,
            host,
            action="allow" if action == "allow" else "deny",
        )
    verb = "Allowed" if action == "allow" else "Denied"
    click.echo(f"{verb} {entry} for {container}")


def _allowlist_command(action: str, summary: str) -> None:
    async def command(app: App, *, container: str, host: str) -> None:
        await _change(app, container, host, action=action)

    command.__doc__ = summary
    arguments = click.argument("container")(click.argument("host")(click.pass_obj(command)))
    network.command(action, epilog=_HOST_HELP)(arguments)


_allowlist_command("allow", "Let the running session CONTAINER reach HOST, from its next request on.")
_allowlist_command("deny", "Refuse HOST to the running session CONTAINER, whatever its mode and lists say.")


def record_line(record: ConnectionRecord) -> str:
    where = f"{record.method} {record.host}:{record.port}" if record.host else "(no request)"
    line = f"{record.time} {record.session} {record.decision} {where}"
    if record.address:
        line += f" -> {record.address}"
    if record.decision == "allowed":
        line += f" up {record.bytes_up} B down {record.bytes_down} B in {record.seconds:g}s"
    elif record.reason:
        line += f": {record.reason}"
    return line


@network.command()
@click.argument("container", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new connections as they end.")
@format_option("text", "json", description="text, or one JSON record per line.")
@click.pass_obj
async def log(app: App, *, container: str | None, follow: bool, fmt: str) -> None:
    """The connections of session CONTAINER (or of every session): time, host, port, address,
    allowed or refused and why, bytes each way."""
    import msgspec

    from coi_async.errors import NotFoundError, UsageError
    from coi_async.orchestration.network import live

    config = app.config()
    _not_over_a_remote(app)
    async with app.incus() as incus:
        project = incus.project
        paths = live.log_paths(config, project, container)
        if container is not None and not any(_exists(p) for p in paths):
            try:
                await incus.get_instance(container)
            except NotFoundError:
                raise UsageError(f"unknown container '{container}'") from None

    def show(record: ConnectionRecord) -> None:
        click.echo(msgspec.json.encode(record).decode() if fmt == "json" else record_line(record))

    for record in live.records(paths):
        show(record)
    if follow:
        async for record in live.follow(paths):
            show(record)


def _exists(path: str) -> bool:
    import os

    return os.path.exists(path) or os.path.exists(path + ".1")
