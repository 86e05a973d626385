"""Where the egress daemon of one incusd keeps its sockets, registrations, lock and pid file.

One private directory per user and incusd: `$XDG_RUNTIME_DIR/coi-egress-<hash>` (or
`/tmp/coi-<uid>/coi-egress-<hash>` without a runtime dir), where the hash names the incusd
socket. Every directory on the way from the base is made 0700 and checked to be a real directory
owned by this user, so nobody else can put a socket or a registration where coi looks for them.

incusd's proxy devices connect to the session sockets as root from the host, so the paths must
fit a unix socket address (107 bytes).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from coi_async.errors import EgressError
from coi_async.incus import resolve_socket

MAX_SOCKET_PATH = 107


def _private_dir(path: Path) -> Path:
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise EgressError(f"cannot make the egress runtime directory {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise EgressError(
            f"the egress runtime directory {path} is not a directory of this user",
            hint="remove it, or set XDG_RUNTIME_DIR to a directory of your own",
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


class EgressPaths:
    """The daemon's directory and what is in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sockets = root / "s"  # one per session: <key>.sock
        self.registrations = root / "r"  # one per session: <key>.json
        self.control = root / "control.sock"
        self.daemon_lock = root / "daemon.lock"  # held by the daemon for as long as it runs
        self.start_lock = root / "start.lock"  # held by a coi while it starts one
        self.pid_file = root / "daemon.pid"
        self.daemon_log = root / "daemon.log"  # its output, when started on demand

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EgressPaths) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    @classmethod
    def for_environment(cls, env: Mapping[str, str] | None = None) -> EgressPaths:
        """The directory of the daemon for the incusd this environment reaches (not yet made)."""
        environ = os.environ if env is None else env
        incusd = str(resolve_socket(environ).socket)
        tag = hashlib.sha256(incusd.encode()).hexdigest()[:8]
        runtime = environ.get("XDG_RUNTIME_DIR", "")
        base = Path(runtime) if os.path.isabs(runtime) else Path(f"/tmp/coi-{os.geteuid()}")
        return cls(base / f"coi-egress-{tag}")

    def make(self) -> EgressPaths:
        """Make the directories (0700, checked); raises EgressError when they cannot be trusted."""
        # The base too: under /tmp someone else could have made it first.
        _private_dir(self.root.parent)
        _private_dir(self.root)
        _private_dir(self.sockets)
        _private_dir(self.registrations)
        if len(str(self.socket_of("0" * 16))) > MAX_SOCKET_PATH:
            raise EgressError(
                f"the egress runtime directory {self.root} is too deep for unix sockets",
                hint="set XDG_RUNTIME_DIR to a shorter path",
            )
        return self

    def socket_of(self, key: str) -> Path:
        return self.sockets / f"{key}.sock"

    def registration_of(self, key: str) -> Path:
        return self.registrations / f"{key}.json"


def session_key(project: str, container: str) -> str:
    """The id of a session's socket and registration: the same for the same container."""
    return hashlib.sha256(f"{project}/{container}".encode()).hexdigest()[:16]
