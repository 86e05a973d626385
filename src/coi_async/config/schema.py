"""What one config file may contain: TOML decoded into structs whose fields default to `UNSET`.

Unknown keys and values of the wrong type are errors naming the file and the key. Pure.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from coi_async.errors import ConfigError


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class _DefaultsFile(_Strict):
    image: str | UnsetType = UNSET
    persistent: bool | UnsetType = UNSET
    model: str | UnsetType = UNSET
    max_slots: int | UnsetType = UNSET
    parallel: int | UnsetType = UNSET
    mount_claude_config: bool | UnsetType = UNSET


class _PathsFile(_Strict):
    sessions_dir: str | UnsetType = UNSET
    storage_dir: str | UnsetType = UNSET
    logs_dir: str | UnsetType = UNSET


class _IncusFile(_Strict):
    project: str | UnsetType = UNSET
    group: str | UnsetType = UNSET
    code_uid: int | UnsetType = UNSET
    claude_uid: int | UnsetType = UNSET  # the old name of code_uid, still in the reference README
    code_user: str | UnsetType = UNSET
    disable_shift: bool | UnsetType = UNSET


class LoggingLayer(_Strict):
    enabled: bool | UnsetType = UNSET
    path: str | UnsetType = UNSET


class _NetworkFile(_Strict):
    mode: str | UnsetType = UNSET
    block_private_networks: bool | UnsetType = UNSET
    block_metadata_endpoint: bool | UnsetType = UNSET
    allow_local_network_access: bool | UnsetType = UNSET
    allowed_domains: list[str] | UnsetType = UNSET
    refresh_interval_minutes: int | UnsetType = UNSET
    logging: LoggingLayer | UnsetType = UNSET


class _ToolFile(_Strict):
    name: str | UnsetType = UNSET
    binary: str | UnsetType = UNSET


class MountEntry(_Strict):
    host: str
    container: str


class _MountsFile(_Strict):
    default: list[MountEntry] | UnsetType = UNSET


class ProfileLayer(_Strict):
    image: str | UnsetType = UNSET
    environment: dict[str, str] | UnsetType = UNSET
    persistent: bool | UnsetType = UNSET
    mounts: list[MountEntry] | UnsetType = UNSET


class _BuildFile(_Strict):
    base: str | UnsetType = UNSET
    allowed_hosts: list[str] | UnsetType = UNSET


class FileLayer(_Strict):
    defaults: _DefaultsFile | UnsetType = UNSET
    paths: _PathsFile | UnsetType = UNSET
    incus: _IncusFile | UnsetType = UNSET
    network: _NetworkFile | UnsetType = UNSET
    tool: _ToolFile | UnsetType = UNSET
    mounts: _MountsFile | UnsetType = UNSET
    # Decoded one profile at a time, so that errors can name the profile.
    profiles: dict[str, dict[str, Any]] | UnsetType = UNSET
    build: _BuildFile | UnsetType = UNSET


# --- decoding -------------------------------------------------------------------------------------

_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]*)`")
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]*)`")


def _key(path: str) -> str:
    return path.lstrip(".")


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p).replace(".[", "[")


def _validation_error(source: str, exc: msgspec.ValidationError, *, under: str = "") -> ConfigError:
    """msgspec's message rewritten as `<file>: <problem> 'section.key'`."""
    match = _AT.match(str(exc))
    what = match["what"] if match else str(exc)
    path = _key(match["path"] or "") if match else ""
    if unknown := _UNKNOWN.fullmatch(what):
        return ConfigError(f"{source}: unknown key '{_join(under, path, unknown['field'])}'")
    if missing := _MISSING.fullmatch(what):
        return ConfigError(f"{source}: missing key '{_join(under, path, missing['field'])}'")
    shown = what.replace("`", "")
    return ConfigError(f"{source}: wrong type for '{_join(under, path)}': {shown[:1].lower()}{shown[1:]}")


def decode_file(source: str, text: str) -> tuple[FileLayer, dict[str, ProfileLayer]]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        layer = msgspec.convert(raw, FileLayer)
    except msgspec.ValidationError as exc:
        raise _validation_error(source, exc) from exc
    profiles: dict[str, ProfileLayer] = {}
    for name, body in (layer.profiles or {}).items():
        try:
            profiles[name] = msgspec.convert(body, ProfileLayer)
        except msgspec.ValidationError as exc:
            raise _validation_error(source, exc, under=f"profiles.{name}") from exc
    return layer, profiles
