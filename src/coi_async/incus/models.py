"""msgspec structs that mirror the Incus REST API's JSON.

Response structs never forbid unknown fields: incusd adds fields with every release and we must
keep decoding. Request structs use `omit_defaults` so that unset optional fields are not sent,
which matters where the server's default differs from a zero value (see `StatePut.timeout`).
"""

from __future__ import annotations

from typing import Any

import msgspec

# --- the response envelope -------------------------------------------------------------------


class _Envelope(msgspec.Struct, tag_field="type", kw_only=True):
    # Decoded later, into whatever the caller expects.
    metadata: msgspec.Raw = msgspec.Raw(b"null")


class SyncResponse(_Envelope, tag="sync"):
    status_code: int = 200


class AsyncResponse(_Envelope, tag="async"):
    operation: str


class ErrorResponse(_Envelope, tag="error"):
    error_code: int
    error: str


Envelope = SyncResponse | AsyncResponse | ErrorResponse
ENVELOPE_DECODER: msgspec.json.Decoder[Envelope] = msgspec.json.Decoder(Envelope)


# --- operations ------------------------------------------------------------------------------

STATUS_SUCCESS = 200
STATUS_FAILURE = 400
STATUS_CANCELLED = 401


class Operation(msgspec.Struct, kw_only=True):
    id: str
    class_: str = msgspec.field(default="task", name="class")
    description: str = ""
    status: str = ""
    status_code: int = 0
    resources: dict[str, list[str]] | None = None
    metadata: dict[str, Any] | None = None
    may_cancel: bool = False
    err: str = ""
    location: str = ""

    @property
    def done(self) -> bool:
        return self.status_code >= STATUS_SUCCESS


# --- server ----------------------------------------------------------------------------------


class ServerEnvironment(msgspec.Struct, kw_only=True):
    server_version: str = ""
    project: str = ""
    driver: str = ""
    storage: str = ""
    server_name: str = ""
    server_clustered: bool = False
    server_pid: int = 0


class ServerInfo(msgspec.Struct, kw_only=True):
    api_extensions: list[str] = []
    auth: str = ""
    environment: ServerEnvironment = msgspec.field(default_factory=ServerEnvironment)
    config: dict[str, Any] = {}

    def has_extension(self, name: str) -> bool:
        return name in self.api_extensions


# --- instances -------------------------------------------------------------------------------


class InstanceAddress(msgspec.Struct, kw_only=True):
    family: str = ""  # "inet" or "inet6"
    address: str = ""
    scope: str = ""


class InstanceNetwork(msgspec.Struct, kw_only=True):
    addresses: list[InstanceAddress] = []
    state: str = ""
    type: str = ""


class InstanceCpu(msgspec.Struct, kw_only=True):
    usage: int = 0  # nanoseconds of CPU time since the start


class InstanceMemory(msgspec.Struct, kw_only=True):
    usage: int = 0  # bytes


class InstanceDisk(msgspec.Struct, kw_only=True):
    usage: int = 0  # bytes; 0 where the storage driver does not say


class InstanceState(msgspec.Struct, kw_only=True):
    status: str = ""
    status_code: int = 0
    pid: int = 0
    network: dict[str, InstanceNetwork] | None = None
    cpu: InstanceCpu | None = None
    memory: InstanceMemory | None = None
    disk: dict[str, InstanceDisk] | None = None
    processes: int = 0
    started_at: str = ""

    def ipv4(self, interface: str = "eth0") -> str:
        """The interface's first global IPv4 address, or ""."""
        nic = (self.network or {}).get(interface)
        for addr in nic.addresses if nic else []:
            if addr.family == "inet" and addr.scope != "link":
                return addr.address
        return ""


class Instance(msgspec.Struct, kw_only=True):
    name: str
    status: str = ""
    architecture: str = ""
    status_code: int = 0
    type: str = "container"
    ephemeral: bool = False
    description: str = ""
    project: str = ""
    location: str = ""
    created_at: str = ""
    profiles: list[str] = []
    config: dict[str, str] = {}
    devices: dict[str, dict[str, str]] = {}
    expanded_config: dict[str, str] = {}
    expanded_devices: dict[str, dict[str, str]] = {}
    # Present with recursion=2 only.
    state: InstanceState | None = None

    @property
    def running(self) -> bool:
        return self.status == "Running"

    @property
    def on_offline_member(self) -> bool:
        """Whether it is on a cluster member incusd cannot reach: listed with status Error, a
        location and nothing else (no config)."""
        return self.status == "Error" and self.location not in ("", "none") and not self.config


class InstanceSource(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str  # "image", "copy", "none", ...: required, omit_defaults would drop a default
    alias: str = ""
    fingerprint: str = ""
    # For copies: the source instance (or "instance/snapshot").
    source: str = ""
    instance_only: bool = False
    # For images from another project or server.
    project: str = ""
    server: str = ""
    protocol: str = ""


class InstancesPost(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    source: InstanceSource
    type: str = "container"
    ephemeral: bool = False
    start: bool = False
    profiles: list[str] | None = None
    config: dict[str, str] = {}
    devices: dict[str, dict[str, str]] = {}
    description: str = ""


class InstancePatch(msgspec.Struct, kw_only=True, omit_defaults=True):
    config: dict[str, str] | None = None
    devices: dict[str, dict[str, str]] | None = None
    ephemeral: bool | None = None
    description: str | None = None


class InstancePut(msgspec.Struct, kw_only=True):
    """The whole writable part of an instance (`PUT /1.0/instances/NAME`): what is not given is
    removed (config keys, devices), unlike a patch."""

    architecture: str
    config: dict[str, str]
    devices: dict[str, dict[str, str]]
    ephemeral: bool
    profiles: list[str]
    description: str = ""


class StatePut(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The body of a state change.

    `timeout` must default to "absent": incusd reads an explicit 0 as "kill now", while a
    missing value means a graceful stop capped at 600 s.
    """

    action: str
    timeout: int = -1
    force: bool = False


class InstancesStatePut(msgspec.Struct, kw_only=True):
    """Body of the bulk state change (`PUT /1.0/instances`)."""

    state: StatePut


class ExecPost(msgspec.Struct, kw_only=True, omit_defaults=True):
    command: list[str]
    environment: dict[str, str] = {}
    interactive: bool = False
    wait_for_websocket: bool = msgspec.field(default=False, name="wait-for-websocket")
    record_output: bool = msgspec.field(default=False, name="record-output")
    width: int = 0
    height: int = 0
    user: int = 0
    group: int = 0
    cwd: str = ""


# --- images ----------------------------------------------------------------------------------


class ImageAlias(msgspec.Struct, kw_only=True):
    name: str
    description: str = ""


class Image(msgspec.Struct, kw_only=True):
    fingerprint: str
    aliases: list[ImageAlias] = []
    properties: dict[str, str] = {}
    type: str = "container"
    size: int = 0
    created_at: str = ""
    uploaded_at: str = ""
    project: str = ""

    @property
    def alias_names(self) -> list[str]:
        return [a.name for a in self.aliases]


class ImageAliasEntry(msgspec.Struct, kw_only=True):
    name: str
    target: str
    description: str = ""
    type: str = ""


class ImageAliasesPost(msgspec.Struct, kw_only=True):
    name: str
    target: str
    description: str = ""


class ImagePublishSource(msgspec.Struct, kw_only=True):
    type: str = "instance"
    name: str


class ImagesPost(msgspec.Struct, kw_only=True, omit_defaults=True):
    source: ImagePublishSource
    aliases: list[ImageAliasesPost] = []
    properties: dict[str, str] = {}
    public: bool = False
    compression_algorithm: str = ""


# --- profiles and projects -------------------------------------------------------------------


class Profile(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    description: str = ""
    config: dict[str, str] = {}
    devices: dict[str, dict[str, str]] = {}
    used_by: list[str] = []


class StoragePool(msgspec.Struct, kw_only=True):
    name: str
    driver: str = ""  # dir, btrfs, zfs, lvm, ceph, ...
    status: str = ""


class Project(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    description: str = ""
    config: dict[str, str] = {}
    used_by: list[str] = []


# --- events ----------------------------------------------------------------------------------


class Event(msgspec.Struct, kw_only=True):
    type: str
    timestamp: str = ""
    location: str = ""
    project: str = ""
    metadata: msgspec.Raw = msgspec.Raw(b"null")


class LifecycleEvent(msgspec.Struct, kw_only=True):
    action: str
    source: str = ""
    name: str = ""
    project: str = ""
    requestor: dict[str, Any] | None = None
    context: dict[str, Any] | None = None


# --- cluster ---------------------------------------------------------------------------------


class ClusterMember(msgspec.Struct, kw_only=True):
    server_name: str
    url: str = ""
    status: str = ""  # Online, Offline, Evacuated, Blocked
    message: str = ""
    roles: list[str] = []


class MemberSysInfo(msgspec.Struct, kw_only=True):
    total_ram: int = 0
    free_ram: int = 0
    buffered_ram: int = 0
    processes: int = 0


class ClusterMemberState(msgspec.Struct, kw_only=True):
    sysinfo: MemberSysInfo = msgspec.field(default_factory=MemberSysInfo)
