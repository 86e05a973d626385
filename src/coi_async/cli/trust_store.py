"""The workspace config files the user trusts: `~/.coi/trusted-configs.json`, one sha256 per file.

`coi trust` records the exact bytes' digest of a workspace's `./.coi.toml`; the config loader
trusts the file only while its bytes still have that digest, so any edit (by the agent too)
makes it untrusted again. The store is 0600 in a 0700 directory: it says which files may mount
host paths, so no other user may read or replace it.
"""

from __future__ import annotations

import hashlib
import os
from enum import Enum
from pathlib import Path

import msgspec

from coi_async.config import display_path
from coi_async.errors import ConfigError

STORE_FILE = "trusted-configs.json"


class TrustedFile(msgspec.Struct, frozen=True, kw_only=True):
    sha256: str
    trusted_at: str  # RFC 3339


class _Store(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    files: dict[str, TrustedFile] = {}


class Trust(Enum):
    TRUSTED = "trusted"
    CHANGED = "changed"  # trusted once; its bytes are different now
    UNTRUSTED = "untrusted"
    MISSING = "missing"  # trusted once; the file is gone
    UNREADABLE = "unreadable"  # trusted once; now not a regular file, or too large


class Listed(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    sha256: str
    trust: Trust


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store_path(home: str) -> Path:
    return Path(home) / ".coi" / STORE_FILE


def load(home: str) -> dict[str, TrustedFile]:
    """The trusted files by absolute path; {} when nothing was ever trusted."""
    path = store_path(home)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {display_path(str(path), home)}: {exc.strerror}") from exc
    try:
        return msgspec.json.decode(data, type=_Store).files
    except msgspec.DecodeError as exc:
        raise ConfigError(
            f"{display_path(str(path), home)} is not a list of trusted files: {exc}",
            hint="remove it and run 'coi trust' again in each workspace you trust",
        ) from exc


def save(home: str, files: dict[str, TrustedFile]) -> None:
    # The session store's own helpers: directories 0700 and the file 0600 from the start.
    from coi_async.hostfs import make_private_dir, write_atomically

    path = store_path(home)
    make_private_dir(path.parent)
    write_atomically(path, msgspec.json.format(msgspec.json.encode(_Store(files=files)), indent=2) + b"\n")


def trust_of(files: dict[str, TrustedFile], path: str, data: bytes) -> Trust:
    entry = files.get(os.path.abspath(path))
    if entry is None:
        return Trust.UNTRUSTED
    return Trust.TRUSTED if entry.sha256 == digest(data) else Trust.CHANGED


def record(home: str, path: str, data: bytes) -> TrustedFile:
    """Trust the file at `path` while its bytes are `data`."""
    from coi_async.orchestration.sessions.store import now_rfc3339

    files = load(home)
    entry = TrustedFile(sha256=digest(data), trusted_at=now_rfc3339())
    files[os.path.abspath(path)] = entry
    save(home, files)
    return entry


def forget(home: str, path: str) -> bool:
    """Stop trusting the file at `path`; False if it was not trusted."""
    files = load(home)
    if files.pop(os.path.abspath(path), None) is None:
        return False
    save(home, files)
    return True


def listing(home: str) -> list[Listed]:
    """Every trusted file by path, with whether its bytes still match."""
    from coi_async.cli.config_loader import read_config_file

    files = load(home)
    found: list[Listed] = []
    for path, entry in sorted(files.items()):
        try:
            data = read_config_file(path, home=home)
        except ConfigError:
            trust = Trust.UNREADABLE
        else:
            trust = Trust.MISSING if data is None else trust_of(files, path, data)
        found.append(Listed(path=path, sha256=entry.sha256, trust=trust))
    return found
