"""Registrations: one small file per session that tells the egress daemon what to serve.

A session's coi writes it once the container exists (and again on every start path, so a
daemon that lost it gets it back); `coi network allow/deny` rewrite it; the daemon re-reads the
directory whenever asked and every second otherwise, and removes the files of containers that
are gone. Files are replaced atomically (written beside, then renamed), so a reader never sees
half of one.

A registration says where the policy comes from rather than what it is: the config as that coi
read it (its working directory, home, the variables the layering reads, the profile), so the
daemon re-reads the config files and an edit of `network.allowed_domains` reaches running
sessions within seconds. The mode is fixed when the session starts (it decided the devices).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import msgspec

from coi_async.orchestration.network.paths import EgressPaths

# What the config layering reads from the environment, beside the working directory and home.
CONFIG_VARIABLES = ("XDG_CONFIG_HOME", "COI_CONFIG")
_MAX_BYTES = 256 * 1024


class Registration(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    container: str
    project: str
    mode: str
    socket: str
    log: str = ""  # the session's connection log; "" keeps none
    cwd: str
    home: str
    env: dict[str, str] = {}
    profile: str = ""
    allow: tuple[str, ...] = ()  # `coi network allow`, on top of the config's allowlist
    deny: tuple[str, ...] = ()  # `coi network deny`, over everything
    # The daemon listens on this port inside the container itself (egress/netns.py); 0: the
    # container reaches `socket` through a proxy device.
    inside_port: int = 0
    # "build": a `coi build` container, whose policy is its `allow` list alone (no config);
    # "carried": a session over a remote, whose policy is `carried` (network/members.py).
    kind: str = "session"
    carried: str = ""
    # The session's AI tool (its API hosts are in an allowlist); "" for the config's `tool.name`
    # (the session's may come from `--tool`, which the config files do not know).
    tool: str = ""


_DECODER = msgspec.json.Decoder(Registration)


def config_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: env[k] for k in CONFIG_VARIABLES if env.get(k)}


def write(paths: EgressPaths, registration: Registration) -> None:
    target = paths.registration_of(registration.key)
    temporary = target.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(msgspec.json.encode(registration))
    os.replace(temporary, target)


def read(path: Path) -> Registration | None:
    """The registration in `path`; None when it is gone or unreadable (a half-removed one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(_MAX_BYTES + 1)
    if len(data) > _MAX_BYTES:
        return None
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError:
        return None


def read_all(paths: EgressPaths) -> dict[str, Registration]:
    found: dict[str, Registration] = {}
    try:
        names = sorted(os.listdir(paths.registrations))
    except FileNotFoundError:
        return found
    for name in names:
        if not name.endswith(".json"):
            continue
        registration = read(paths.registrations / name)
        if registration is not None and name == f"{registration.key}.json":
            found[registration.key] = registration
    return found


def find(paths: EgressPaths, container: str, project: str | None = None) -> Registration | None:
    for registration in read_all(paths).values():
        if registration.container == container and project in (None, registration.project):
            return registration
    return None


def remove(paths: EgressPaths, keys: Iterable[str]) -> None:
    for key in keys:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(paths.registration_of(key))


def fingerprint(registration: Registration, files: Iterable[str]) -> tuple[object, ...]:
    """What changes when the registration's policy may have: its own fields and its config files'
    sizes and times (a file that appears or goes counts too)."""
    stamps: list[object] = [registration]
    for file in files:
        try:
            info = os.stat(file)
            stamps.append((file, info.st_mtime_ns, info.st_size, info.st_ino))
        except OSError:
            stamps.append((file, None))
    return tuple(stamps)
