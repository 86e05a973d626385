"""`coi remote add|list|remove|switch`: the other incusd servers coi can work on (`--remote NAME`).

`add` pins the server's certificate on first contact (its sha256 is shown, and must be the one
the trust token names), has the server trust coi's client certificate with the token, and keeps
the remote only once the server says it is trusted. Every step has a deadline.
"""

from __future__ import annotations

import asyncclick as click

from coi_async.cli.app import App
from coi_async.cli.commands._options import format_option
from coi_async.errors import UsageError


@click.group()
async def remote() -> None:
    """Other incusd servers coi can work on: `coi --remote NAME COMMAND`."""


@remote.command("add")
@click.argument("name")
@click.argument("where", metavar="URL|TOKEN")
@click.option("--token", default=None, help="A trust token from the server ('incus config trust add NAME').")
@click.pass_obj
async def add(app: App, *, name: str, where: str, token: str | None) -> None:
    """Add the remote NAME at URL (https://HOST[:PORT]), trusted with an Incus trust token; or
    `coi remote add NAME TOKEN`, at the first address the token names that answers.

    With `coi --project P remote add ...`, P is the project commands use on that remote unless
    told otherwise (a token restricted to projects admits only those)."""
    from coi_async.orchestration.events import Event, Note
    from coi_async.orchestration.remotes.add import (
        NOTE_CERTIFICATE,
        NOTE_EGRESS,
        NOTE_UNREACHABLE,
        add_remote_at,
    )
    from coi_async.remotes import decode_token, urls_of_token

    if token is None:
        if "://" in where:
            raise UsageError(
                "missing --token TOKEN (a trust token from the server: 'incus config trust add NAME')"
            )
        token = where
        urls = urls_of_token(decode_token(token))
    else:
        urls = [where]

    lines: list[str] = []

    def show(event: Event) -> None:
        if isinstance(event, Note) and event.kind == NOTE_CERTIFICATE:
            click.echo(f"Certificate fingerprint: {event.values['fingerprint']}")
        elif isinstance(event, Note) and event.kind == NOTE_UNREACHABLE:
            click.echo(f"{event.values['url']} did not answer; trying the token's next address", err=True)
        elif isinstance(event, Note) and event.kind == NOTE_EGRESS and event.values["missing"]:
            missing = event.values["missing"].replace(",", ", ")
            lines.append(
                f"No coi egress daemon on: {missing} (restricted and allowlist sessions are refused "
                "there until `coi egress serve` runs beside its incusd)"
            )

    added = await add_remote_at(name, urls, token, project=app.project or "", emit=show)
    click.echo(f"Remote '{name}' added: {added.url} (use it with 'coi --remote {name} ...')")
    for line in lines:
        click.echo(line)


@remote.command("list")
@format_option("text", "json", description="Output format.")
@click.pass_obj
async def list_(app: App, *, fmt: str) -> None:
    """List the remotes; `local` (this machine's incusd) is always there."""
    import os

    import msgspec

    from coi_async.errors import ConfigError
    from coi_async.incus.endpoint import resolve_socket
    from coi_async.orchestration.remotes import store as remote_store
    from coi_async.remotes import LOCAL

    store = remote_store.load()
    try:
        current = app.remote_name()
    except ConfigError:
        current = ""  # chosen but never added: the listing is what shows that
    rows: list[dict[str, str | bool]] = [
        {
            "name": LOCAL,
            "url": f"unix://{resolve_socket(os.environ).socket}",
            "fingerprint": "",
            "project": "",
        }
    ]
    rows += [
        {"name": n, "url": r.url, "fingerprint": r.fingerprint, "project": r.project}
        for n, r in sorted(store.remotes.items())
    ]
    for row in rows:
        row["default"] = row["name"] == (store.default or LOCAL)
        row["current"] = row["name"] == current
    if fmt == "json":
        click.echo(msgspec.json.encode(rows).decode())
        return
    width = max(len(str(row["name"])) for row in rows)
    for row in rows:
        mark = "*" if row["current"] else " "
        fingerprint = f"  {str(row['fingerprint'])[:12]}" if row["fingerprint"] else ""
        project = f"  project {row['project']}" if row["project"] else ""
        click.echo(f"{mark} {row['name']!s:<{width}}  {row['url']}{fingerprint}{project}")


@remote.command("remove")
@click.argument("name")
async def remove(*, name: str) -> None:
    """Forget the remote NAME (the server keeps trusting coi's certificate until told otherwise)."""
    import msgspec

    from coi_async.orchestration.remotes import store as remote_store
    from coi_async.remotes import LOCAL

    if name == LOCAL:
        raise UsageError("'local' is this machine's incusd: it cannot be removed")
    store = remote_store.load()
    if name not in store.remotes:
        raise UsageError(f"no remote '{name}' (see 'coi remote list')")
    remotes = {n: r for n, r in store.remotes.items() if n != name}
    default = LOCAL if store.default == name else store.default
    remote_store.save(msgspec.structs.replace(store, remotes=remotes, default=default))
    remote_store.forget_server_cert(name)
    click.echo(
        f"Remote '{name}' removed" + (" (the default is local again)" if default != store.default else "")
    )


@remote.command("switch")
@click.argument("name")
@click.pass_obj
async def switch(app: App, *, name: str) -> None:
    """Make NAME the remote commands use when neither --remote nor [incus] remote says."""
    import msgspec

    from coi_async.orchestration.remotes import store as remote_store
    from coi_async.remotes import LOCAL

    store = remote_store.load()
    if name != LOCAL and name not in store.remotes:
        raise UsageError(f"no remote '{name}' (see 'coi remote list')")
    remote_store.save(msgspec.structs.replace(store, default=name))
    click.echo(f"Default remote: {name}")
    configured = app.config().incus.remote
    if configured and configured != name:
        click.echo(
            f"Note: [incus] remote = {configured!r} in the config still chooses {configured!r}", err=True
        )
