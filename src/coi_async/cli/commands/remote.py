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

# The whole of `remote add`: handshake, token, check. Each connect has its own deadline too.
ADD_WITHIN_S = 60.0


@click.group()
async def remote() -> None:
    """Other incusd servers coi can work on: `coi --remote NAME COMMAND`."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--token", required=True, help="A trust token from the server ('incus config trust add NAME').")
@click.pass_obj
async def add(app: App, *, name: str, url: str, token: str) -> None:
    """Add the remote NAME at URL (https://HOST[:PORT]), trusted with an Incus trust token.

    With `coi --project P remote add ...`, P is the project commands use on that remote unless
    told otherwise (a token restricted to projects admits only those)."""
    import os
    import ssl

    import anyio
    import msgspec

    from coi_async.cli import remote_store
    from coi_async.errors import CoiError, IncusApiError, IncusUnavailableError
    from coi_async.incus import IncusClient
    from coi_async.incus.server_cert import fetch_server_certificate, fingerprint_of_der
    from coi_async.remotes import Remote, check_name, decode_token, normalize_url

    check_name(name)
    url = normalize_url(url)
    expected = decode_token(token).fingerprint
    store = remote_store.load()
    if name in store.remotes:
        raise UsageError(f"remote '{name}' exists already ({store.remotes[name].url}): remove it first")
    try:
        with anyio.fail_after(ADD_WITHIN_S):
            der = await fetch_server_certificate(url)
            fingerprint = fingerprint_of_der(der)
            click.echo(f"Certificate fingerprint: {fingerprint}")
            if expected and expected != fingerprint:
                raise IncusUnavailableError(
                    f"the server at {url} presented certificate {fingerprint}, but the token is for "
                    f"{expected}: refusing to add remote '{name}'",
                    hint="is the URL right? someone between here and there may be answering instead",
                )
            remote_store.save_server_cert(name, ssl.DER_cert_to_PEM_cert(der))
            try:
                remote_store.client_certificate()
                endpoint = remote_store.endpoint(name, Remote(url=url, fingerprint=fingerprint))
                project = app.project or os.environ.get("INCUS_PROJECT") or None
                async with IncusClient.connect(endpoint, project=project) as client:
                    if (await client.server_info()).auth != "trusted":
                        try:
                            await client.trust_with_token(token)
                        except IncusApiError as exc:
                            raise CoiError(
                                f"{url} refused the token for remote '{name}': {exc}",
                                hint="tokens work once and expire: ask for a new one",
                            ) from exc
                    if (await client.server_info()).auth != "trusted":
                        raise CoiError(f"{url} took the token but does not trust coi's certificate")
            except BaseException:
                remote_store.forget_server_cert(name)
                raise
    except TimeoutError:
        raise IncusUnavailableError(
            f"remote '{name}' at {url} did not answer within {ADD_WITHIN_S:g}s: not added"
        ) from None
    # A project given to `add` is the remote's own: a token is often for that project only.
    remotes = {**store.remotes, name: Remote(url=url, fingerprint=fingerprint, project=app.project or "")}
    remote_store.save(msgspec.structs.replace(store, remotes=remotes))
    click.echo(f"Remote '{name}' added: {url} (use it with 'coi --remote {name} ...')")


@remote.command("list")
@format_option("text", "json", description="Output format.")
@click.pass_obj
async def list_(app: App, *, fmt: str) -> None:
    """List the remotes; `local` (this machine's incusd) is always there."""
    import os

    import msgspec

    from coi_async.cli import remote_store
    from coi_async.errors import ConfigError
    from coi_async.incus.endpoint import resolve_socket
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

    from coi_async.cli import remote_store
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

    from coi_async.cli import remote_store
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
