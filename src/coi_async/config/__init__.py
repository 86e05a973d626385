"""Layered configuration. Pure: the CLI reads the files and passes their text in.

- `model`: the resolved, frozen structs the rest of coi reads (`Config`, `Mount`, ...).
- `schema`: what one file may contain; unknown keys and wrong types are errors naming file and key.
- `merge`: the layering (defaults → /etc/coi → ~/.config/coi → ./.coi.toml → $COI_CONFIG →
  environment → `--profile` → flags) and the command-line mounts.
"""

from coi_async.config.merge import (
    CONFIG_ENV,
    PROJECT_CONFIG,
    SYSTEM_CONFIG,
    apply_flags,
    apply_profile,
    combine_mounts,
    config_paths,
    display_path,
    parse_bool,
    parse_mount,
    resolve_config,
)
from coi_async.config.model import (
    DEFAULT_ALLOWED_DOMAINS,
    MAX_SLOTS_LIMIT,
    NETWORK_MODES,
    Build,
    Config,
    Defaults,
    IncusSettings,
    Mount,
    Network,
    NetworkLogging,
    Paths,
    Profile,
    ToolSettings,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_ALLOWED_DOMAINS",
    "MAX_SLOTS_LIMIT",
    "NETWORK_MODES",
    "PROJECT_CONFIG",
    "SYSTEM_CONFIG",
    "Build",
    "Config",
    "Defaults",
    "IncusSettings",
    "Mount",
    "Network",
    "NetworkLogging",
    "Paths",
    "Profile",
    "ToolSettings",
    "apply_flags",
    "apply_profile",
    "combine_mounts",
    "config_paths",
    "display_path",
    "parse_bool",
    "parse_mount",
    "resolve_config",
]
