"""Read the config files (the CLI's job: config.py itself is pure) and resolve the layers.

The workspace's `./.coi.toml` can be written by the agent, so it is read like anything else that
an agent controls: only a regular file (a FIFO planted there must not hang coi), at most
`CONFIG_MAX_BYTES`, and untrusted unless `coi trust` recorded exactly these bytes. What an
untrusted file was not allowed to set is said once, in one warning line.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

from coi_async.config import (
    Config,
    UntrustedFile,
    apply_flags,
    config_paths,
    display_path,
    resolve_config,
    workspace_config_path,
)
from coi_async.errors import ConfigError

# Far more than any real config file; a bound on what a planted one can make coi read.
CONFIG_MAX_BYTES = 1024 * 1024

# Warnings already shown by this process: a command may resolve its config more than once.
_warned: set[str] = set()


def read_config_file(path: str, *, home: str) -> bytes | None:
    """The bytes of a config file; None when there is none. ConfigError for anything but a
    regular file of at most CONFIG_MAX_BYTES."""
    shown = display_path(path, home)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ConfigError(f"failed to load config from {shown}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ConfigError(f"failed to load config from {shown}: not a regular file")
        try:
            data = fh.read(CONFIG_MAX_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"failed to load config from {shown}: {exc.strerror}") from exc
    if len(data) > CONFIG_MAX_BYTES:
        raise ConfigError(f"failed to load config from {shown}: larger than {CONFIG_MAX_BYTES} bytes")
    return data


def decode_text(path: str, data: bytes, *, home: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"failed to load config from {display_path(path, home)}: {exc}") from exc


def load_config(
    *,
    profile: str | None = None,
    image: str | None = None,
    persistent: bool | None = None,
    cwd: str | None = None,
    home: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """The configuration for this process: files, environment, `--profile`, then the flags.

    `cwd`, `home` and `env` stand in for this process's (the egress daemon reads a session's
    config as the coi that started it did)."""
    from coi_async.cli import trust_store

    home = home or str(Path.home())
    cwd = cwd or os.getcwd()
    environ = os.environ if env is None else env
    workspace_file = workspace_config_path(cwd)
    files: list[tuple[str, str]] = []
    changed: set[str] = set()
    untrusted: list[str] = []
    for path, required in config_paths(environ, home=home, cwd=cwd):
        data = read_config_file(path, home=home)
        if data is None:
            if required:
                raise ConfigError(f"config file not found: {display_path(path, home)}")
            continue
        files.append((path, decode_text(path, data, home=home)))
        if path == workspace_file:
            trust = trust_store.trust_of(trust_store.load(home), path, data)
            if trust is not trust_store.Trust.TRUSTED:
                untrusted.append(path)
            if trust is trust_store.Trust.CHANGED:
                changed.add(path)
    config = resolve_config(files, environ, home=home, profile=profile, untrusted=untrusted)
    for file in config.untrusted:
        if file.ignored:
            _warn(untrusted_warning(file, home=home, changed=file.path in changed))
    return apply_flags(config, image=image, persistent=persistent)


def untrusted_warning(file: UntrustedFile, *, home: str, changed: bool) -> str:
    why = "it changed since 'coi trust'" if changed else "it is not trusted"
    return (
        f"Warning: ignoring {', '.join(file.ignored)} from {display_path(file.path, home)}: {why} "
        "(only settings that make the session stricter are used; run 'coi trust' in that "
        "directory to use all of it)"
    )


def _warn(line: str) -> None:
    if line not in _warned:
        _warned.add(line)
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
