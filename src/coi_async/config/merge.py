"""Layering, later wins: built-in defaults → /etc/coi/config.toml → ~/.config/coi/config.toml →
./.coi.toml → $COI_CONFIG → environment variables → `--profile` → command-line flags. Pure: the
CLI reads the files and passes their text in.

Only the keys a file actually contains are laid over the layers below: a file that says nothing
about `network.block_private_networks` leaves it as it was (the reference copied every boolean
from every file, so `[network] mode = "restricted"` alone switched RFC1918 blocking off).
"""

from __future__ import annotations

import os.path
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import msgspec
from msgspec import UNSET

from coi_async.config.files import display_path
from coi_async.config.model import (
    DEFAULT_ALLOWED_DOMAINS,
    MAX_SLOTS_LIMIT,
    NETWORK_MODES,
    Build,
    Config,
    Defaults,
    IncusSettings,
    Limits,
    Mount,
    Network,
    NetworkLogging,
    Paths,
    Placement,
    Pool,
    Profile,
    ProfileNetwork,
    RemoteSettings,
    ToolSettings,
    UntrustedFile,
)
from coi_async.config.network import HostSyntaxError, parse_entries
from coi_async.config.schema import FileSettings, MountEntry, ProfileNetworkLayer, decode_file
from coi_async.config.trust import restrict_untrusted
from coi_async.errors import ConfigError, UsageError
from coi_async.naming import DEFAULT_PREFIX, PREFIX_ENV, check_prefix
from coi_async.placement import DEFAULT_POLICY, check_policy
from coi_async.tools import DEFAULT_TOOL, get_tool

# --- merging --------------------------------------------------------------------------------------


class _Builder:
    """Mutable accumulation of the layers; turned into a frozen Config at the end."""

    def __init__(self, home: str) -> None:
        self.home = home
        self.values: dict[str, Any] = {}
        self.origin: dict[str, str] = {}
        self.mounts: list[Mount] = []
        self.profiles: dict[str, dict[str, Any]] = {}

    def set(self, key: str, value: Any, source: str) -> None:
        self.values[key] = value
        self.origin[key] = source

    def expand(self, path: str) -> str:
        if path == "~" or path.startswith("~/"):
            path = self.home + path[1:]
        return path

    def mount(self, source: str, key: str, entry: MountEntry) -> Mount:
        if not entry.container.startswith("/"):
            raise ConfigError(f"{source}: config mount container path must be absolute: {entry.container}")
        host = self.expand(entry.host)
        if not os.path.isabs(host):
            raise ConfigError(f"{source}: '{key}': host path must be absolute or start with ~: {entry.host}")
        return Mount(os.path.normpath(host), os.path.normpath(entry.container))

    def apply_file(self, source: str, settings: FileSettings) -> None:
        for key, value in settings.values.items():
            if key == "mounts.default":
                # Mounts accumulate across files, as in the reference.
                for i, entry in enumerate(value):
                    self.mounts.append(self.mount(source, f"mounts.default[{i}]", entry))
            else:
                if key in ("network.mode", "network.allowed_domains"):
                    check_network_value(source, key, value)
                self.set(key, value, source)
        for name, prof in settings.profiles.items():
            merged = self.profiles.setdefault(name, {"environment": {}, "mounts": [], "network": {}})
            if prof.image is not UNSET:
                merged["image"] = prof.image
            if prof.persistent is not UNSET:
                merged["persistent"] = prof.persistent
            if prof.tool is not UNSET:
                _check_tool(f"{source}: profiles.{name}.tool", prof.tool)
                merged["tool"] = prof.tool
            if prof.environment is not UNSET:
                merged["environment"].update(prof.environment)
            if prof.mounts is not UNSET:
                merged["mounts"].extend(
                    self.mount(source, f"profiles.{name}.mounts[{i}]", m) for i, m in enumerate(prof.mounts)
                )
            if isinstance(prof.network, ProfileNetworkLayer):
                merged["network"].update(_profile_network(source, name, prof.network))

    def apply_env(self, env: Mapping[str, str]) -> None:
        for var, key in (
            ("CLAUDE_ON_INCUS_IMAGE", "defaults.image"),
            ("CLAUDE_ON_INCUS_SESSIONS_DIR", "paths.sessions_dir"),
            ("CLAUDE_ON_INCUS_STORAGE_DIR", "paths.storage_dir"),
        ):
            if env.get(var):
                self.set(key, env[var], var)
        if (flag := env.get("CLAUDE_ON_INCUS_PERSISTENT")) is not None and flag != "":
            var = "CLAUDE_ON_INCUS_PERSISTENT"
            self.set("defaults.persistent", parse_bool(flag, source=var), var)

    def get(self, key: str, default: Any) -> Any:
        return self.values.get(key, default)

    def where(self, key: str) -> str:
        return self.origin.get(key, "built-in defaults")


def check_network_value(source: str, key: str, value: Any) -> None:
    """A network mode or allowlist as a config layer gives it; ConfigError naming file and key."""
    if key.endswith(".mode"):
        if value not in NETWORK_MODES:
            raise ConfigError(f"{source}: '{key}' must be one of {', '.join(NETWORK_MODES)}, got {value!r}")
        return
    try:
        parse_entries(value)
    except HostSyntaxError as exc:
        raise ConfigError(f"{source}: '{key}': {exc}") from None


def _profile_network(source: str, name: str, layer: ProfileNetworkLayer) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for field in layer.__struct_fields__:
        value = getattr(layer, field)
        if value is UNSET:
            continue
        if field in ("mode", "allowed_domains"):
            check_network_value(source, f"profiles.{name}.network.{field}", value)
        found[field] = tuple(value) if isinstance(value, list) else value
    return found


def parse_bool(value: str, *, source: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{source}: expected true or false, got {value!r}")


def _positive(b: _Builder, key: str, default: int, *, upper: int | None = None) -> int:
    value = int(b.get(key, default))
    if value < 1 or (upper is not None and value > upper):
        bound = f"between 1 and {upper}" if upper is not None else "at least 1"
        raise ConfigError(f"{b.where(key)}: '{key}' must be {bound}, got {value}")
    return value


def _check_tool(source: str, name: str) -> None:
    try:
        get_tool(name)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _build(b: _Builder, env: Mapping[str, str]) -> Config:
    coi_dir = os.path.join(b.home, ".coi")

    def path(key: str, default: str) -> str:
        value = b.expand(str(b.get(key, default)))
        if not os.path.isabs(value):
            raise ConfigError(f"{b.where(key)}: '{key}' must be an absolute path or start with ~: {value}")
        return os.path.normpath(value)

    # Checked as each file was laid on (check_network_value).
    mode = b.get("network.mode", "restricted")
    tool_name = b.get("tool.name", DEFAULT_TOOL)
    _check_tool(b.where("tool.name"), tool_name)
    for name in b.get("build.tools", ()):
        _check_tool(b.where("build.tools"), name)
    code_uid = int(b.get("incus.code_uid", 1000))
    if code_uid < 0:
        raise ConfigError(f"{b.where('incus.code_uid')}: 'incus.code_uid' must not be negative")
    image = str(b.get("defaults.image", "coi"))
    if not image:
        raise ConfigError(f"{b.where('defaults.image')}: 'defaults.image' must not be empty")
    prefix = env.get(PREFIX_ENV) or DEFAULT_PREFIX
    check_prefix(prefix, source=PREFIX_ENV)
    logs_dir = path("paths.logs_dir", os.path.join(coi_dir, "logs"))
    policy = str(b.get("placement.policy", DEFAULT_POLICY))
    try:
        check_policy(policy)
    except ValueError as exc:
        raise ConfigError(f"{b.where('placement.policy')}: 'placement.policy': {exc}") from None

    profiles = {
        name: Profile(
            image=body.get("image"),
            tool=body.get("tool"),
            environment=dict(body["environment"]),
            persistent=body.get("persistent"),
            mounts=tuple(body["mounts"]),
            network=ProfileNetwork(**body["network"]),
        )
        for name, body in b.profiles.items()
    }
    return Config(
        defaults=Defaults(
            image=image,
            persistent=bool(b.get("defaults.persistent", False)),
            model=str(b.get("defaults.model", "claude-sonnet-4-5")),
            max_slots=_positive(b, "defaults.max_slots", 10, upper=MAX_SLOTS_LIMIT),
            parallel=_positive(b, "defaults.parallel", 32, upper=256),
            mount_claude_config=bool(b.get("defaults.mount_claude_config", True)),
        ),
        paths=Paths(
            sessions_dir=path("paths.sessions_dir", os.path.join(coi_dir, "sessions")),
            storage_dir=path("paths.storage_dir", os.path.join(coi_dir, "storage")),
            logs_dir=logs_dir,
        ),
        incus=IncusSettings(
            project=str(b.get("incus.project", "default")),
            group=str(b.get("incus.group", "incus-admin")),
            code_uid=code_uid,
            code_user=str(b.get("incus.code_user", "code")),
            disable_shift=bool(b.get("incus.disable_shift", False)),
            remote=str(b.get("incus.remote", "")),
        ),
        network=Network(
            mode=mode,
            block_private_networks=bool(b.get("network.block_private_networks", True)),
            block_metadata_endpoint=bool(b.get("network.block_metadata_endpoint", True)),
            allow_local_network_access=bool(b.get("network.allow_local_network_access", False)),
            allowed_domains=tuple(b.get("network.allowed_domains", DEFAULT_ALLOWED_DOMAINS)),
            refresh_interval_minutes=_positive(b, "network.refresh_interval_minutes", 30),
            logging=NetworkLogging(
                enabled=bool(b.get("network.logging.enabled", True)),
                path=path("network.logging.path", os.path.join(logs_dir, "network.log")),
            ),
        ),
        tool=ToolSettings(name=tool_name, binary=str(b.get("tool.binary", ""))),
        mounts=tuple(b.mounts),
        profiles=profiles,
        build=Build(
            base=str(b.get("build.base", "")),
            allowed_hosts=tuple(b.get("build.allowed_hosts", ())),
            tools=tuple(b.get("build.tools", (DEFAULT_TOOL,))),
        ),
        container_prefix=prefix,
        limits=Limits(
            max_save_files=_positive(b, "limits.max_save_files", Limits().max_save_files),
            max_save_file_bytes=_positive(b, "limits.max_save_file_bytes", Limits().max_save_file_bytes),
            max_save_bytes=_positive(b, "limits.max_save_bytes", Limits().max_save_bytes),
        ),
        remotes=_remotes(b),
        placement=Placement(policy=policy),
        pool=Pool(size=_pool_size(b)),
    )


# More than this many stopped copies of an image per project is disk spent for nothing.
MAX_POOL_SIZE = 16


def _pool_size(b: _Builder) -> int | None:
    value = b.get("pool.size", "auto")
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_POOL_SIZE:
        raise ConfigError(
            f"{b.where('pool.size')}: 'pool.size' must be \"auto\" or between 0 and {MAX_POOL_SIZE}, "
            f"got {value!r}"
        )
    return value


def _remotes(b: _Builder) -> dict[str, RemoteSettings]:
    remotes: dict[str, RemoteSettings] = {}
    for key, value in b.values.items():
        if key.startswith("remotes.") and key.endswith(".workspace_root"):
            name = key[len("remotes.") : -len(".workspace_root")]
            root = str(value)
            if not root.startswith("/"):
                raise ConfigError(f"{b.where(key)}: '{key}' must be an absolute path on that server: {root}")
            remotes[name] = RemoteSettings(workspace_root=os.path.normpath(root))
    return remotes


# --- the public API ------------------------------------------------------------------------------


def resolve_config(
    files: Sequence[tuple[str, str]],
    env: Mapping[str, str],
    *,
    home: str,
    profile: str | None = None,
    untrusted: Collection[str] = (),
) -> Config:
    """The configuration from (path, text) pairs in precedence order, the environment and a profile.

    Files whose path is in `untrusted` may only make the session stricter; what else they say is
    left out and listed in `Config.untrusted`. Raises ConfigError naming the file (or variable)
    and the key for anything malformed, in untrusted files too.
    """
    builder = _Builder(home)
    sources: list[str] = []
    restricted: list[UntrustedFile] = []
    for path, text in files:
        shown = display_path(path, home)
        settings = decode_file(shown, text)
        if path in untrusted:
            profiles_below = {name: body["network"] for name, body in builder.profiles.items()}
            settings, ignored = restrict_untrusted(settings, builder.values, profiles_below)
            restricted.append(UntrustedFile(path=path, ignored=tuple(ignored)))
        builder.apply_file(shown, settings)
        sources.append(path)
    builder.apply_env(env)
    config = _build(builder, env)
    config = msgspec.structs.replace(config, sources=tuple(sources), untrusted=tuple(restricted))
    if profile:
        config = apply_profile(config, profile)
    return config


def apply_profile(config: Config, name: str) -> Config:
    """Lay `[profiles.<name>]` over the config: image, persistence, environment and mounts."""
    prof = config.profiles.get(name)
    if prof is None:
        raise ConfigError(f"profile '{name}' not found")
    defaults = config.defaults
    if prof.image is not None:
        defaults = msgspec.structs.replace(defaults, image=prof.image)
    # Unlike the reference, a profile that says nothing about persistence leaves it alone.
    if prof.persistent is not None:
        defaults = msgspec.structs.replace(defaults, persistent=prof.persistent)
    if prof.tool is not None:
        config = msgspec.structs.replace(config, tool=_with_tool(config.tool, prof.tool))
    network = config.network
    overrides = {k: v for k, v in msgspec.structs.asdict(prof.network).items() if v is not None}
    if overrides:
        network = msgspec.structs.replace(network, **overrides)
    return msgspec.structs.replace(
        config,
        defaults=defaults,
        profile=name,
        environment={**config.environment, **prof.environment},
        mounts=config.mounts + prof.mounts,
        network=network,
    )


def _with_tool(settings: ToolSettings, name: str) -> ToolSettings:
    """Another tool chosen: `tool.binary` was the configured tool's, so it goes with it."""
    return settings if name == settings.name else ToolSettings(name=name)


def apply_flags(
    config: Config,
    *,
    image: str | None = None,
    persistent: bool | None = None,
    network: str | None = None,
    tool: str | None = None,
) -> Config:
    """The last layer: command-line flags (None means the flag was not given)."""
    if tool:
        get_tool(tool)  # an unknown name is a ConfigError naming it
        config = msgspec.structs.replace(config, tool=_with_tool(config.tool, tool))
    defaults = config.defaults
    if image:
        defaults = msgspec.structs.replace(defaults, image=image)
    if persistent is not None:
        defaults = msgspec.structs.replace(defaults, persistent=persistent)
    net = config.network
    if network is not None:
        if network not in NETWORK_MODES:
            raise UsageError(f"invalid --network '{network}': must be one of {', '.join(NETWORK_MODES)}")
        net = msgspec.structs.replace(net, mode=network)
    return msgspec.structs.replace(config, defaults=defaults, network=net)
