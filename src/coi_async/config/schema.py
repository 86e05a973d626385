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


class MountEntry(_Strict):
    host: str
    container: str


class ProfileNetworkLayer(_Strict):
    mode: str | UnsetType = UNSET
    block_private_networks: bool | UnsetType = UNSET
    block_metadata_endpoint: bool | UnsetType = UNSET
    allow_local_network_access: bool | UnsetType = UNSET
    allowed_domains: list[str] | UnsetType = UNSET


class ProfileLayer(_Strict):
    image: str | UnsetType = UNSET
    environment: dict[str, str] | UnsetType = UNSET
    persistent: bool | UnsetType = UNSET
    mounts: list[MountEntry] | UnsetType = UNSET
    network: ProfileNetworkLayer | UnsetType = UNSET
    tool: str | UnsetType = UNSET


class RemoteLayer(_Strict):
    """`[remotes.NAME]`: where this machine's workspaces are on that remote's server."""

    workspace_root: str | UnsetType = UNSET


class _Logging(_Strict):
    enabled: bool | UnsetType = UNSET
    path: str | UnsetType = UNSET


# Each section's keys and their types; every key is optional in a file. `profiles` is decoded one
# profile at a time, so that errors can name the profile.
_SECTIONS: dict[str, dict[str, Any]] = {
    "defaults": {
        "image": str,
        "persistent": bool,
        "model": str,
        "max_slots": int,
        "parallel": int,
        "mount_claude_config": bool,
    },
    "paths": {"sessions_dir": str, "storage_dir": str, "logs_dir": str},
    "incus": {
        "project": str,
        "group": str,
        "code_uid": int,
        "claude_uid": int,  # the old name of code_uid, still in the reference README
        "code_user": str,
        "disable_shift": bool,
        "remote": str,  # the remote (`coi remote add`) commands use; "local" is the unix socket
    },
    "network": {
        "mode": str,
        "block_private_networks": bool,
        "block_metadata_endpoint": bool,
        "allow_local_network_access": bool,
        "allowed_domains": list[str],
        "refresh_interval_minutes": int,
        "logging": _Logging,
    },
    "tool": {"name": str, "binary": str},
    "mounts": {"default": list[MountEntry]},
    "build": {"base": str, "allowed_hosts": list[str], "tools": list[str]},
    "limits": {"max_save_files": int, "max_save_file_bytes": int, "max_save_bytes": int},
    "placement": {"policy": str},
    "pool": {"size": int | str},  # a number, or "auto"
}
_RENAMED = {"incus.claude_uid": "incus.code_uid"}


def _optional_struct(name: str, keys: dict[str, Any]) -> type[msgspec.Struct]:
    fields = [(key, kind | UnsetType, UNSET) for key, kind in keys.items()]
    return msgspec.defstruct(name, fields, bases=(_Strict,), kw_only=True)


_FileLayer = _optional_struct(
    "FileLayer",
    {
        **{section: _optional_struct(section, keys) for section, keys in _SECTIONS.items()},
        "profiles": dict[str, dict[str, Any]],
        "remotes": dict[str, dict[str, Any]],
    },
)


class FileSettings(msgspec.Struct, kw_only=True):
    """What one file says: only the keys it contains, as `section.key`, and its profiles."""

    values: dict[str, Any]
    profiles: dict[str, ProfileLayer]


def _flatten(prefix: str, body: msgspec.Struct, into: dict[str, Any]) -> None:
    for field in body.__struct_fields__:
        value = getattr(body, field)
        key = _RENAMED.get(f"{prefix}{field}", f"{prefix}{field}")
        if isinstance(value, _Logging):
            _flatten(f"{key}.", value, into)
        elif value is not UNSET:
            into[key] = value


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


def decode_file(source: str, text: str) -> FileSettings:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        layer = msgspec.convert(raw, _FileLayer)
    except msgspec.ValidationError as exc:
        raise _validation_error(source, exc) from exc
    values: dict[str, Any] = {}
    for section in _SECTIONS:
        if (body := getattr(layer, section)) is not UNSET:
            _flatten(f"{section}.", body, values)
    # Decoded one remote at a time, as profiles are, so that errors can name it; kept as flat
    # keys, as the sections' are, so that an untrusted file's are left out and named.
    for name, body in raw.get("remotes", {}).items():
        try:
            remote = msgspec.convert(body, RemoteLayer)
        except msgspec.ValidationError as exc:
            raise _validation_error(source, exc, under=f"remotes.{name}") from exc
        if remote.workspace_root is not UNSET:
            values[f"remotes.{name}.workspace_root"] = remote.workspace_root
    profiles: dict[str, ProfileLayer] = {}
    # Checked above to be a table of tables.
    for name, body in raw.get("profiles", {}).items():
        try:
            profiles[name] = msgspec.convert(body, ProfileLayer)
        except msgspec.ValidationError as exc:
            raise _validation_error(source, exc, under=f"profiles.{name}") from exc
    return FileSettings(values=values, profiles=profiles)
