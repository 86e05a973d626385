"""Adding a remote: its server certificate pinned on first contact, coi trusted with a token.

The server's certificate is fetched with a TLS 1.3 handshake that verifies nothing yet, and its
sha256 must be the one the trust token names; then coi's client certificate (made on first use)
is trusted with the token, and the remote is kept only once the server says it trusts coi.
Every step has a deadline, and a failure keeps nothing.
"""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import anyio
import msgspec

from coi_async.errors import CoiError, IncusApiError, IncusUnavailableError, UsageError
from coi_async.incus import IncusClient
from coi_async.incus.models import ServerInfo
from coi_async.incus.server_cert import fetch_server_certificate, fingerprint_of_der
from coi_async.orchestration.events import Emit, ignore, note
from coi_async.orchestration.network.members import fresh_adverts
from coi_async.orchestration.remotes import store
from coi_async.remotes import Remote, check_name, decode_token, normalize_url

# The whole of it: handshake, token, check. Each connect has its own deadline too.
ADD_WITHIN_S = 60.0

NOTE_CERTIFICATE = "remote.certificate"  # fingerprint: the server's, before it is trusted
# url, error: an address of the token's that did not answer (the next one is tried)
NOTE_UNREACHABLE = "remote.unreachable"
# served, missing: the members with and without coi's egress daemon (comma-separated)
NOTE_EGRESS = "remote.egress"


async def add_remote(
    name: str,
    url: str,
    token: str,
    *,
    project: str = "",
    emit: Emit = ignore,
    directory: Path | None = None,
) -> Remote:
    """Add remote `name` at `url` (https://HOST[:PORT]) with trust token `token`; the remote kept.

    `project` becomes the remote's own (a token is often for one project only); without one,
    the trust is asked for in `$INCUS_PROJECT`'s, else the server's default."""
    check_name(name)
    url = normalize_url(url)
    expected = decode_token(token).fingerprint
    kept = store.load(directory)
    if name in kept.remotes:
        raise UsageError(f"remote '{name}' exists already ({kept.remotes[name].url}): remove it first")
    try:
        with anyio.fail_after(ADD_WITHIN_S):
            der = await fetch_server_certificate(url)
            fingerprint = fingerprint_of_der(der)
            note(emit, NOTE_CERTIFICATE, name, fingerprint=fingerprint)
            if expected and expected != fingerprint:
                raise IncusUnavailableError(
                    f"the server at {url} presented certificate {fingerprint}, but the token is for "
                    f"{expected}: refusing to add remote '{name}'",
                    hint="is the URL right? someone between here and there may be answering instead",
                )
            store.save_server_cert(name, ssl.DER_cert_to_PEM_cert(der), directory)
            try:
                await _trust(
                    name, url, token, Remote(url=url, fingerprint=fingerprint), project, directory, emit
                )
            except BaseException:
                store.forget_server_cert(name, directory)
                raise
    except TimeoutError:
        raise IncusUnavailableError(
            f"remote '{name}' at {url} did not answer within {ADD_WITHIN_S:g}s: not added"
        ) from None
    remote = Remote(url=url, fingerprint=fingerprint, project=project)
    store.save(msgspec.structs.replace(kept, remotes={**kept.remotes, name: remote}), directory)
    return remote


async def add_remote_at(
    name: str,
    urls: list[str],
    token: str,
    *,
    project: str = "",
    emit: Emit = ignore,
    directory: Path | None = None,
) -> Remote:
    """`add_remote` at the first of `urls` that answers (a token names every address of its
    server, not all of them reachable from here); the last one's error when none does."""
    for url in urls[:-1]:
        try:
            return await add_remote(name, url, token, project=project, emit=emit, directory=directory)
        except IncusUnavailableError as exc:
            note(emit, NOTE_UNREACHABLE, name, url=url, error=str(exc))
    return await add_remote(name, urls[-1], token, project=project, emit=emit, directory=directory)


async def _trust(
    name: str, url: str, token: str, remote: Remote, project: str, directory: Path | None, emit: Emit
) -> None:
    store.client_certificate(directory)
    endpoint = store.endpoint(name, remote, directory)
    async with IncusClient.connect(endpoint, project=project or None) as client:
        if (await client.server_info()).auth != "trusted":
            try:
                await client.trust_with_token(token)
            except IncusApiError as exc:
                raise CoiError(
                    f"{url} refused the token for remote '{name}': {exc}",
                    hint="tokens work once and expire: ask for a new one",
                ) from exc
        info = await client.server_info()
        if info.auth != "trusted":
            raise CoiError(f"{url} took the token but does not trust coi's certificate")
        await _report_egress(client, info, name, emit)


async def _report_egress(client: IncusClient, info: ServerInfo, name: str, emit: Emit) -> None:
    """Which of the remote's members run coi's egress daemon (restricted and allowlist sessions
    go only there); a server that cannot say is not worth failing the add for."""
    served = fresh_adverts(info.config)
    members = [info.environment.server_name]
    if info.environment.server_clustered:
        with contextlib.suppress(CoiError):
            members = [m.server_name for m in await client.cluster_members()]
    missing = sorted(m for m in members if m not in served)
    note(emit, NOTE_EGRESS, name, served=",".join(sorted(served)), missing=",".join(missing))
