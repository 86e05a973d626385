"""Where the config files are, and how a path is shown to the user. Pure."""

from __future__ import annotations

import os.path
from collections.abc import Mapping

SYSTEM_CONFIG = "/etc/coi/config.toml"
PROJECT_CONFIG = ".coi.toml"
CONFIG_ENV = "COI_CONFIG"


def config_paths(env: Mapping[str, str], *, home: str, cwd: str) -> list[tuple[str, bool]]:
    """The config files to read, in order, each with whether it must exist.

    Only `$COI_CONFIG` must: naming a file that is not there is a mistake worth reporting.
    """
    user = os.path.join(env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"), "coi", "config.toml")
    paths = [(SYSTEM_CONFIG, False), (user, False), (workspace_config_path(cwd), False)]
    if explicit := env.get(CONFIG_ENV):
        explicit = home + explicit[1:] if explicit == "~" or explicit.startswith("~/") else explicit
        paths.append((os.path.join(cwd, explicit), True))
    return paths


def workspace_config_path(cwd: str) -> str:
    """The workspace's own config file: untrusted until `coi trust` (see `config.trust`)."""
    return os.path.join(cwd, PROJECT_CONFIG)


def display_path(path: str, home: str) -> str:
    """A path as error messages show it, with the home directory as `~`."""
    if home and (path == home or path.startswith(home.rstrip("/") + "/")):
        return "~" + path[len(home.rstrip("/")) :]
    return path
