"""The resolved configuration: the frozen structs the rest of coi reads. Pure."""

from __future__ import annotations

import os.path

import msgspec

from coi_async.naming import DEFAULT_PREFIX
from coi_async.placement import DEFAULT_POLICY
from coi_async.tools import DEFAULT_TOOL, get_tool

NETWORK_MODES = ("restricted", "open", "allowlist")
# The package registries the images use; the tool's own API hosts (tools.Tool.api_hosts) are
# always added to an allowlist, so replacing this list cannot cut the tool off its API.
DEFAULT_ALLOWED_DOMAINS = (
    "deb.debian.org",
    "security.debian.org",
    "registry.npmjs.org",
    "npm.pkg.github.com",
    "pypi.org",
    "files.pythonhosted.org",
)
MAX_SLOTS_LIMIT = 999  # three digits keep every name within Incus's 63 characters


class Mount(msgspec.Struct, frozen=True):
    host: str  # absolute, ~ expanded
    container: str  # absolute


class Defaults(msgspec.Struct, frozen=True, kw_only=True):
    image: str = "coi"
    persistent: bool = False
    model: str = "claude-sonnet-4-5"
    max_slots: int = 10
    parallel: int = 32  # concurrency of bulk commands (the floor does every container at once)
    mount_claude_config: bool = True  # copy host ~/.claude credentials into fresh sessions


class Paths(msgspec.Struct, frozen=True, kw_only=True):
    sessions_dir: str
    storage_dir: str
    logs_dir: str

    def tool_sessions_dir(self, tool: str) -> str:
        """Where a tool's sessions live: `sessions-<tool>` beside `sessions_dir` (~/.coi/sessions-claude)."""
        return os.path.join(os.path.dirname(self.sessions_dir), get_tool(tool).sessions_dir_name)


class IncusSettings(msgspec.Struct, frozen=True, kw_only=True):
    project: str = "default"
    group: str = "incus-admin"
    code_uid: int = 1000
    code_user: str = "code"
    disable_shift: bool = False
    remote: str = ""  # `[incus] remote`: "" leaves it to `coi remote switch` (else local)


class RemoteSettings(msgspec.Struct, frozen=True, kw_only=True):
    """`[remotes.NAME]`: a remote's server holds this machine's home directory's workspaces under
    `workspace_root` (~/src/app is `<workspace_root>/src/app` there)."""

    workspace_root: str = ""


class NetworkLogging(msgspec.Struct, frozen=True, kw_only=True):
    enabled: bool = True
    path: str


class Network(msgspec.Struct, frozen=True, kw_only=True):
    mode: str = "restricted"
    block_private_networks: bool = True
    block_metadata_endpoint: bool = True
    allow_local_network_access: bool = False
    allowed_domains: tuple[str, ...] = DEFAULT_ALLOWED_DOMAINS
    refresh_interval_minutes: int = 30
    logging: NetworkLogging


class ToolSettings(msgspec.Struct, frozen=True, kw_only=True):
    name: str = DEFAULT_TOOL
    binary: str = ""  # "" means the tool's own binary name

    def binary_for(self, tool: str) -> str:
        """`binary` for the configured tool; "" (its own name) for a session of another one."""
        return self.binary if tool == self.name else ""


class ProfileNetwork(msgspec.Struct, frozen=True, kw_only=True):
    """What `[profiles.NAME.network]` says; None: the layers below decide."""

    mode: str | None = None
    block_private_networks: bool | None = None
    block_metadata_endpoint: bool | None = None
    allow_local_network_access: bool | None = None
    allowed_domains: tuple[str, ...] | None = None


class Profile(msgspec.Struct, frozen=True, kw_only=True):
    image: str | None = None
    tool: str | None = None  # `tool.name` for sessions of this profile
    environment: dict[str, str] = msgspec.field(default_factory=dict)
    persistent: bool | None = None
    mounts: tuple[Mount, ...] = ()
    network: ProfileNetwork = msgspec.field(default_factory=ProfileNetwork)


class Build(msgspec.Struct, frozen=True, kw_only=True):
    base: str = ""  # "" means the builder's own default
    allowed_hosts: tuple[str, ...] = ()
    tools: tuple[str, ...] = (DEFAULT_TOOL,)  # the AI tools `coi build` installs


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    """`[placement]`: which member of a cluster new sessions go to (`coi_async.placement`)."""

    policy: str = DEFAULT_POLICY  # spread, pack or member:NAME


class Pool(msgspec.Struct, frozen=True, kw_only=True):
    """`[pool]`: stopped containers made ahead of time per image, taken by new sessions where
    creating one is slow (`orchestration/pool`)."""

    size: int | None = None  # None: "auto", POOL_AUTO_SIZE where the storage driver is slow, else 0


class UntrustedFile(msgspec.Struct, frozen=True, kw_only=True):
    """A config file read without trust (see `config.trust`) and the keys of it left out."""

    path: str
    ignored: tuple[str, ...]


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """The most one copy out of a container (a session save, `coi file pull` of a directory)
    may hold: the container writes it, so it is bounded. The defaults fit a real ~/.claude
    (tens of thousands of files, a few hundred MB) many times over."""

    max_save_files: int = 100_000  # entries of any kind
    max_save_file_bytes: int = 1 << 30  # one file
    max_save_bytes: int = 2 << 30  # all files together


class Config(msgspec.Struct, frozen=True, kw_only=True):
    defaults: Defaults = msgspec.field(default_factory=Defaults)
    paths: Paths
    incus: IncusSettings = msgspec.field(default_factory=IncusSettings)
    network: Network
    tool: ToolSettings = msgspec.field(default_factory=ToolSettings)
    mounts: tuple[Mount, ...] = ()
    profiles: dict[str, Profile] = msgspec.field(default_factory=dict)
    build: Build = msgspec.field(default_factory=Build)
    container_prefix: str = DEFAULT_PREFIX
    # Set by `--profile`: its name and the environment it passes to every command in a session.
    profile: str = ""
    environment: dict[str, str] = msgspec.field(default_factory=dict)
    # The files that were read, in order (for `--debug` and error messages).
    sources: tuple[str, ...] = ()
    # The untrusted files among them and what of each was left out (for the CLI's warning).
    untrusted: tuple[UntrustedFile, ...] = ()
    limits: Limits = msgspec.field(default_factory=Limits)
    remotes: dict[str, RemoteSettings] = msgspec.field(default_factory=dict)
    placement: Placement = msgspec.field(default_factory=Placement)
    pool: Pool = msgspec.field(default_factory=Pool)

    @property
    def sessions_dir(self) -> str:
        """The current tool's session store, e.g. ~/.coi/sessions-claude."""
        return self.paths.tool_sessions_dir(self.tool.name)
