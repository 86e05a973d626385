"""Where incusd listens: the unix socket found exactly as the Go client finds it, or a remote URL.

Pure: the caller passes the environment and the file-system probes, so tests need no daemon.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class UnixEndpoint:
    socket: Path
    # incus-user's socket confines the caller to its own project.
    default_project: str | None = None


@dataclass(frozen=True, slots=True)
class HttpsEndpoint:
    """A remote incusd over HTTPS, authenticated by a client certificate."""

    url: str
    client_cert: Path
    client_key: Path
    # The server's own certificate, pinned as the only trust anchor; None trusts the system CAs.
    server_cert: Path | None = None
    # A remote's name (`coi remote add`) and the sha256 of its pinned certificate, for the error
    # that says the server's certificate changed.
    label: str = ""
    fingerprint: str = ""


Endpoint = UnixEndpoint | HttpsEndpoint


def resolve_socket(
    env: Mapping[str, str],
    *,
    exists: Callable[[Path], bool] = os.path.lexists,
    writable: Callable[[Path], bool] = lambda p: os.access(p, os.W_OK),
    euid: int | None = None,
) -> UnixEndpoint:
    """`$INCUS_SOCKET`, `$INCUS_DIR/unix.socket`, `/run/incus/unix.socket` if present, else
    `/var/lib/incus/unix.socket`; then incus-user's `unix.socket.user` beside it when only that
    one may be written to."""
    if sock := env.get("INCUS_SOCKET"):
        path = Path(sock)
    elif incus_dir := env.get("INCUS_DIR"):
        path = Path(incus_dir) / "unix.socket"
    elif exists(Path("/run/incus/unix.socket")):
        path = Path("/run/incus/unix.socket")
    else:
        path = Path("/var/lib/incus/unix.socket")
    user_socket = path.with_name("unix.socket.user")
    if exists(path) and not writable(path) and exists(user_socket) and writable(user_socket):
        uid = os.geteuid() if euid is None else euid
        return UnixEndpoint(user_socket, default_project=f"user-{uid}")
    return UnixEndpoint(path)
