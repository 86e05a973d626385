"""Layered configuration. Pure: the CLI reads the files and passes their text in.

- `model`: the resolved, frozen structs the rest of coi reads (`Config`, `Mount`, ...).
- `schema`: what one file may contain; unknown keys and wrong types are errors naming file and key.
- `merge`: the layering (defaults → /etc/coi → ~/.config/coi → ./.coi.toml → $COI_CONFIG →
  environment → `--profile` → flags).
- `files`: where the config files are, and paths as messages show them.
- `mounts`: the command-line mounts over the configured ones.
- `trust`: what an untrusted file (the workspace's `./.coi.toml` before `coi trust`) may set.

The package exports what callers outside it use; the rest is imported from its module.
"""

from coi_async.config.files import config_paths, display_path, workspace_config_path
from coi_async.config.merge import apply_flags, resolve_config
from coi_async.config.model import DEFAULT_ALLOWED_DOMAINS, Config, Mount, UntrustedFile
from coi_async.config.mounts import combine_mounts, parse_mount

__all__ = [
    "DEFAULT_ALLOWED_DOMAINS",
    "Config",
    "Mount",
    "UntrustedFile",
    "apply_flags",
    "combine_mounts",
    "config_paths",
    "display_path",
    "parse_mount",
    "resolve_config",
    "workspace_config_path",
]
