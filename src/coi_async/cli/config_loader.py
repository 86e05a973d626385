"""Read the config files (the CLI's job: config.py itself is pure) and resolve the layers."""

from __future__ import annotations

import os
from pathlib import Path

from coi_async.config import Config, apply_flags, config_paths, display_path, resolve_config
from coi_async.errors import ConfigError


def load_config(
    *, profile: str | None = None, image: str | None = None, persistent: bool | None = None
) -> Config:
    """The configuration for this process: files, environment, `--profile`, then the flags."""
    home = str(Path.home())
    files: list[tuple[str, str]] = []
    for path, required in config_paths(os.environ, home=home, cwd=os.getcwd()):
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            if required:
                raise ConfigError(f"config file not found: {display_path(path, home)}") from None
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"failed to load config from {display_path(path, home)}: {exc}") from exc
        files.append((path, text))
    config = resolve_config(files, os.environ, home=home, profile=profile)
    return apply_flags(config, image=image, persistent=persistent)
