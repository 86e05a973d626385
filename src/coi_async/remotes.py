"""Remotes: other incusd servers coi reaches over HTTPS (`coi remote add`). Pure.

What is kept of each remote, which one a command uses, what a trust token says, and where a
workspace is on a remote's server. `local` is always this machine's unix socket and never stored.
"""

from __future__ import annotations

import base64
import binascii
import os.path
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

import msgspec

from coi_async.errors import ConfigError, UsageError

LOCAL = "local"
REMOTE_ENV = "COI_REMOTE"
DEFAULT_PORT = 8443
# The prefix `--workspace` takes for a path on the remote's server.
REMOTE_PATH_PREFIX = "remote:"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class Remote(msgspec.Struct, frozen=True, kw_only=True):
    url: str  # https://HOST:PORT
    fingerprint: str  # sha256 of the server certificate's DER, pinned on `coi remote add`
    project: str = ""  # the Incus project commands use there unless told (`coi --project P remote add`)


class RemoteStore(msgspec.Struct, frozen=True, kw_only=True):
    """The file `coi remote` keeps: the remotes and the one `coi remote switch` chose."""

    default: str = LOCAL
    remotes: dict[str, Remote] = msgspec.field(default_factory=dict)


class TrustToken(msgspec.Struct, frozen=True, kw_only=True):
    """What an Incus trust token carries (it is base64 JSON): the server's fingerprint among it."""

    client_name: str = ""
    fingerprint: str = ""
    addresses: list[str] = msgspec.field(default_factory=list)
    secret: str = ""


def check_name(name: str) -> str:
    if name == LOCAL:
        raise UsageError("'local' is this machine's incusd (its unix socket): choose another remote name")
    if not _NAME.match(name):
        raise UsageError(
            f"invalid remote name {name!r}: letters, digits, '.', '_' and '-', starting with a "
            "letter or digit, at most 63"
        )
    return name


def normalize_url(url: str) -> str:
    """`https://HOST[:PORT]` with the port spelled out; UsageError for anything else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise UsageError(f"invalid remote URL {url!r}: {exc}") from exc
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
        raise UsageError(f"invalid remote URL {url!r}: expected https://HOST[:PORT]")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError(f"invalid remote URL {url!r}: expected https://HOST[:PORT]")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"https://{host}:{port}"


def decode_token(token: str) -> TrustToken:
    """An Incus trust token's contents; UsageError when `token` is not one."""
    text = token.strip()
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        decoded = msgspec.json.decode(raw, type=TrustToken)
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise UsageError(
            "the token is not an Incus trust token (make one with 'incus config trust add NAME')"
        ) from exc
    if not decoded.secret:
        raise UsageError("the token is not an Incus trust token (it carries no secret)")
    return decoded


def urls_of_token(token: TrustToken) -> list[str]:
    """The server's URLs a trust token names (its `addresses`, in its order); UsageError when it
    names none."""
    urls: list[str] = []
    for address in token.addresses:
        try:
            url = normalize_url(f"https://{address}")
        except UsageError:
            continue
        if url not in urls:
            urls.append(url)
    if not urls:
        raise UsageError(
            "the token names no address of the server: give its URL too "
            "(coi remote add NAME https://HOST:8443 --token TOKEN)"
        )
    return urls


def choose(
    flag: str | None, env: Mapping[str, str], configured: str, store: RemoteStore
) -> tuple[str, Remote | None]:
    """The remote a command uses: `--remote`, else $COI_REMOTE, else `[incus] remote`, else the
    one `coi remote switch` chose, else local. (name, None) for local; ConfigError for a name
    that was never added."""
    name = flag or env.get(REMOTE_ENV) or configured or store.default or LOCAL
    if name == LOCAL:
        return name, None
    remote = store.remotes.get(name)
    if remote is None:
        known = ", ".join([LOCAL, *sorted(store.remotes)])
        raise ConfigError(f"unknown remote '{name}' (known: {known}; add one with 'coi remote add')")
    return name, remote


def remote_workspace(workspace: str, *, remote: str, root: str, home: str, cwd: str) -> str:
    """Where the workspace `--workspace` names is on a remote's server, or UsageError.

    `remote:PATH` is PATH there, as given (absolute). A local path is mapped only through the
    remote's `workspace_root` (a path under the home directory is the same path under the root);
    anything else is refused: the remote cannot see this machine's directories, and coi never
    mounts a directory that merely has the same name there."""
    if workspace.startswith(REMOTE_PATH_PREFIX):
        path = workspace[len(REMOTE_PATH_PREFIX) :]
        if not path.startswith("/"):
            raise UsageError(f"--workspace {workspace}: the path on remote '{remote}' must be absolute")
        return os.path.normpath(path)
    if workspace == "~" or workspace.startswith("~/"):
        workspace = home + workspace[1:]
    local = os.path.normpath(os.path.join(cwd, workspace))
    if not root:
        raise UsageError(
            f"workspace {local} is on this machine, which remote '{remote}' cannot see: give its "
            f"path on the server (--workspace remote:PATH) or set [remotes.{remote}] workspace_root"
        )
    home = os.path.normpath(home)
    if local != home and not local.startswith(home.rstrip("/") + "/"):
        raise UsageError(
            f"workspace {local} is outside {home}, so [remotes.{remote}] workspace_root does not "
            "map it: give its path on the server (--workspace remote:PATH)"
        )
    relative = os.path.relpath(local, home)
    return os.path.normpath(os.path.join(root, relative)) if relative != "." else root
