"""What a config file the agent could have written may set. Pure.

The workspace's own `./.coi.toml` is mounted into the session, so an agent can write it. Until
the user trusts it (`coi trust`, which records its sha256; the CLI checks the record), such a
file may only make a session stricter than the layers below it. Everything else it says is left
out and named, so that the CLI can say which keys were ignored and how to use them.

Stricter means: a stricter network mode (open < restricted < allowlist), an allowlist that is a
subset of the one below, the `block_*` protections turned on, local network access turned off,
logging turned on, lower `limits.*`, ephemeral containers, no host credentials copied in; for a
profile's `network` the same, compared with the same profile below as well. Neutral keys (the
model, slot and parallelism limits) are kept. Every other key widens what the session can reach
or what runs on the host (mounts, profiles' images, environment, mounts and tool, the image, the
tool, `incus.*`, `paths.*`, `build.*`, the log path, the allowlist's refresh) and is ignored.
A mount is never kept, even one inside the workspace: its host path may be a link the agent made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from msgspec import UNSET

from coi_async.config.model import Limits, Network
from coi_async.config.schema import FileSettings, ProfileLayer, ProfileNetworkLayer

Rule = Callable[[Any, Mapping[str, Any]], bool]

# Higher is stricter.
_MODE_STRICTNESS = {"open": 0, "restricted": 1, "allowlist": 2}


def _defaults(section: str, struct: type[msgspec.Struct]) -> dict[str, Any]:
    return {
        f"{section}.{f.name}": f.default
        for f in msgspec.structs.fields(struct)
        if f.default is not msgspec.NODEFAULT
    }


# What a key is when no layer below set it.
_DEFAULTS = {**_defaults("network", Network), **_defaults("limits", Limits)}


def _current(below: Mapping[str, Any], key: str) -> Any:
    return below.get(key, _DEFAULTS[key])


def _stricter_mode(value: Any, below: Mapping[str, Any]) -> bool:
    was = _MODE_STRICTNESS.get(_current(below, "network.mode"), 0)
    return value in _MODE_STRICTNESS and _MODE_STRICTNESS[value] >= was


def _narrower_allowlist(value: Any, below: Mapping[str, Any]) -> bool:
    return set(value) <= set(_current(below, "network.allowed_domains"))


def _on(value: Any, _below: Mapping[str, Any]) -> bool:
    return value is True


def _off(value: Any, _below: Mapping[str, Any]) -> bool:
    return value is False


def _always(_value: Any, _below: Mapping[str, Any]) -> bool:
    return True


def _no_higher(key: str) -> Rule:
    return lambda value, below: bool(value <= _current(below, key))


# key -> whether `value` over the layers `below` keeps the session at least as strict. A key
# that is not here may widen access and is never taken from an untrusted file.
_MAY_SET: dict[str, Rule] = {
    "defaults.model": _always,
    "defaults.max_slots": _always,
    "defaults.parallel": _always,
    "defaults.persistent": _off,
    "defaults.mount_claude_config": _off,
    "network.mode": _stricter_mode,
    "network.allowed_domains": _narrower_allowlist,
    "network.block_private_networks": _on,
    "network.block_metadata_endpoint": _on,
    "network.allow_local_network_access": _off,
    "network.logging.enabled": _on,
    # Smaller caps on what a copy out of the container may hold.
    **{key: _no_higher(key) for key in _defaults("limits", Limits)},
}


def _may_set(key: str, value: Any, below: Mapping[str, Any]) -> bool:
    allowed = _MAY_SET.get(key)
    return allowed is not None and allowed(value, below)


def _profile_network(
    name: str, layer: ProfileNetworkLayer, below: Mapping[str, Any], profile_below: Mapping[str, Any]
) -> tuple[ProfileNetworkLayer, list[str]]:
    """A profile's network settings that are at least as strict as both the network below and
    what the layers below set for the same profile."""
    kept: dict[str, Any] = {}
    ignored: list[str] = []
    for field in layer.__struct_fields__:
        value = getattr(layer, field)
        if value is UNSET:
            continue
        key = f"network.{field}"
        same_profile = {key: profile_below[field]} if field in profile_below else {}
        if _may_set(key, value, below) and (not same_profile or _may_set(key, value, same_profile)):
            kept[field] = value
        else:
            ignored.append(f"profiles.{name}.{key}")
    return ProfileNetworkLayer(**kept), ignored


def _profile(
    name: str, layer: ProfileLayer, below: Mapping[str, Any], profile_below: Mapping[str, Any]
) -> tuple[ProfileLayer, list[str]]:
    """The profile with only what an untrusted file may set: `persistent = false` and a stricter
    network."""
    ignored = [
        f"profiles.{name}.{field}"
        for field in ("image", "environment", "mounts", "tool")
        if getattr(layer, field) is not UNSET
    ]
    persistent = layer.persistent
    if persistent is True:
        ignored.append(f"profiles.{name}.persistent")
        persistent = UNSET
    network = layer.network
    if isinstance(network, ProfileNetworkLayer):
        network, left_out = _profile_network(name, network, below, profile_below)
        ignored.extend(left_out)
    return ProfileLayer(persistent=persistent, network=network), ignored


def restrict_untrusted(
    settings: FileSettings,
    below: Mapping[str, Any],
    profiles_below: Mapping[str, Mapping[str, Any]],
) -> tuple[FileSettings, list[str]]:
    """What an untrusted file may lay over the layers under it, and the keys it set that were
    left out, in the file's order.

    `below` is their flat values (`section.key`); `profiles_below` the network settings each of
    their profiles has (`{name: {"mode": ..., ...}}`).
    """
    ignored: list[str] = []
    values: dict[str, Any] = {}
    for key, value in settings.values.items():
        if _may_set(key, value, below):
            values[key] = value
        else:
            ignored.append(key)
    profiles: dict[str, ProfileLayer] = {}
    for name, layer in settings.profiles.items():
        profiles[name], left_out = _profile(name, layer, below, profiles_below.get(name, {}))
        ignored.extend(left_out)
    return FileSettings(values=values, profiles=profiles), ignored
