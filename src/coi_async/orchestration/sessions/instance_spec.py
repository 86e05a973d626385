"""What a session container is made of: its config keys, devices, and the ways to map its ids.

Instances get everything at creation, so nothing is hot-plugged after boot:
- the workspace at /workspace, owned inside by the code user (uid from config). When the invoking
  host user *is* that uid, an idmapped mount (`shift=true`) suffices; otherwise (or when idmapped
  mounts fail) `raw.idmap` maps the host user onto the code user, so files made in /workspace
  belong to the host user outside. Which one works is found by trying, once per process;
- extra mounts (`mount-0..N`), with the same ownership treatment;
- Docker-in-container support (containers/config.py);
- `user.coi.*` keys (see naming), so coi recognises its instances by more than their names;
- its network (orchestration/network/plan.py): every NIC the profile would give it masked, and
  the proxy device to its egress daemon socket, unless it is `open` with a NIC.
Environment variables are never put in the instance config (anyone with API access could read
them), the proxy's address aside (it is no secret): callers pass them per exec, see `session_env`.
"""

from __future__ import annotations

from typing import TypedDict, Unpack

import msgspec

from coi_async import naming
from coi_async.config import Config, Mount
from coi_async.errors import IdmapUnsupportedError, IncusApiError, OperationFailedError
from coi_async.orchestration.containers.config import DOCKER_CONFIG
from coi_async.orchestration.network.plan import EgressPlan
from coi_async.orchestration.sessions.model import home_of, user_of_uid
from coi_async.placement import DEFAULT_POLICY

WORKSPACE_PATH = "/workspace"
# Where tmux keeps its server sockets in a session, for every exec (instance env key): in the
# session's home, which boot leaves alone, so the tool's tmux session starts before boot is over
# (under systemd, /tmp is emptied at boot, and tmux's default socket with it).
TMUX_TMPDIR_KEY = "environment.TMUX_TMPDIR"


def tmux_dir(home: str) -> str:
    return f"{home}/.local/state/coi-tmux"


class LaunchSpec(msgspec.Struct, frozen=True, kw_only=True):
    workspace: str  # absolute, an existing directory
    image: str
    prefix: str
    max_slots: int = 10
    slot: int = 0  # 0: pick one
    persistent: bool = False
    # Incus-ephemeral: incusd deletes the instance when it stops (what `run` wants; a `shell`
    # never does, so its session data can still be saved after a poweroff inside).
    ephemeral: bool = False
    session_id: str = ""
    tool: str = "claude"
    code_uid: int = 1000
    host_uid: int = 1000
    host_gid: int = 1000
    disable_shift: bool = False
    mounts: tuple[Mount, ...] = ()
    extra_config: dict[str, str] = msgspec.field(default_factory=dict)
    # An explicit slot that is busy: False fails (run), True moves to the next free one (shell).
    next_if_busy: bool = False
    # Auto-allocation starts here when the slot holds this workspace's persistent container
    # (resuming a session reuses its container, running or stopped).
    prefer_slot: int = 0
    code_user: str = "code"
    # The session's network; None: the instance gets nothing for it (low-level callers, tests).
    egress: EgressPlan | None = None
    # On a cluster: the member it must go to (`--target`), else `[placement] policy` chooses.
    target: str = ""
    placement: str = DEFAULT_POLICY
    # `[pool] size`: made-ahead containers of the image to take instead of creating one (0: no
    # pool, None: "auto", decided by the storage driver; orchestration/pool).
    pool_size: int | None = 0


class IdmapPlan(msgspec.Struct, frozen=True):
    kind: str  # "shift" or "raw.idmap"
    config: dict[str, str]
    shift: bool


# The plan that worked last in this process, so later launches try it first.
_working_plan: dict[tuple[int, int, int, bool], str] = {}


def remember_plan(spec: LaunchSpec, kind: str) -> None:
    """`kind` worked for this host user, code uid and shift setting: try it first next time."""
    _working_plan[_plan_key(spec)] = kind


def _plan_key(spec: LaunchSpec) -> tuple[int, int, int, bool]:
    return (spec.host_uid, spec.host_gid, spec.code_uid, spec.disable_shift)


def raw_idmap(host_uid: int, host_gid: int, code_uid: int) -> str:
    if host_uid == host_gid:
        return f"both {host_uid} {code_uid}"
    return f"uid {host_uid} {code_uid}\ngid {host_gid} {code_uid}"


def idmap_plans(spec: LaunchSpec) -> list[IdmapPlan]:
    shift = IdmapPlan("shift", {}, shift=True)
    raw = IdmapPlan(
        "raw.idmap", {"raw.idmap": raw_idmap(spec.host_uid, spec.host_gid, spec.code_uid)}, shift=False
    )
    same = spec.host_uid == spec.code_uid and spec.host_gid == spec.code_uid
    if spec.disable_shift:
        order = [raw]
    elif same:
        order = [shift, raw]
    else:
        # Only raw.idmap makes the host user the owner; shift (files owned by the code uid) is
        # the fallback where incusd may not map the host user.
        order = [raw, shift]
    known = _working_plan.get(_plan_key(spec))
    order.sort(key=lambda p: p.kind != known)
    return order


def refused_plan(plan: IdmapPlan, exc: IncusApiError, *, created: bool) -> bool:
    """Whether the failure is the host refusing this way of mapping ids (so the next may work)."""
    if isinstance(exc, IdmapUnsupportedError):
        return True
    # A raw.idmap the host cannot grant fails the start with a bare "failed to start" that does
    # not mention ids (tests/data/incus_errors.json): our instance exists but never ran.
    return plan.kind == "raw.idmap" and created and isinstance(exc, OperationFailedError)


def instance_config(spec: LaunchSpec, slot: int) -> dict[str, str]:
    config = {
        **DOCKER_CONFIG,
        naming.KEY_MANAGED: "true",
        naming.KEY_WORKSPACE: spec.workspace,
        naming.KEY_WORKSPACE_HASH: naming.workspace_hash(spec.workspace),
        naming.KEY_SLOT: str(slot),
        naming.KEY_PERSISTENT: "true" if spec.persistent else "false",
        naming.KEY_TOOL: spec.tool,
        naming.KEY_UID: str(spec.code_uid),
        naming.KEY_USER: user_of_uid(spec.code_user, spec.code_uid),
        naming.KEY_IMAGE: spec.image,
        TMUX_TMPDIR_KEY: tmux_dir(home_of(user_of_uid(spec.code_user, spec.code_uid), spec.code_uid)),
    }
    if spec.session_id:
        config[naming.KEY_SESSION] = spec.session_id
    if spec.egress is not None:
        config.update(spec.egress.config())
    config.update(spec.extra_config)
    return config


def instance_devices(spec: LaunchSpec, *, shift: bool, name: str = "") -> dict[str, dict[str, str]]:
    """The devices of the instance `name`: its mounts, then what its network needs."""

    def disk(source: str, path: str) -> dict[str, str]:
        device = {"type": "disk", "source": source, "path": path}
        if shift:
            device["shift"] = "true"
        return device

    devices = {"workspace": disk(spec.workspace, WORKSPACE_PATH)}
    for i, mount in enumerate(spec.mounts):
        devices[f"mount-{i}"] = disk(mount.host, mount.container)
    if spec.egress is not None:
        devices.update(spec.egress.devices(name))
    return devices


class LaunchChoices(TypedDict, total=False):
    """What a launch decides for itself; the rest of a LaunchSpec comes from the config."""

    slot: int
    persistent: bool
    ephemeral: bool
    session_id: str
    host_uid: int
    host_gid: int
    mounts: tuple[Mount, ...]
    next_if_busy: bool
    prefer_slot: int
    egress: EgressPlan | None
    target: str


def spec_from_config(config: Config, *, workspace: str, **choices: Unpack[LaunchChoices]) -> LaunchSpec:
    """The LaunchSpec for a workspace, with image, naming, uid and shift settings from `config`."""
    return LaunchSpec(
        workspace=workspace,
        image=config.defaults.image,
        prefix=config.container_prefix,
        max_slots=config.defaults.max_slots,
        tool=config.tool.name,
        code_uid=config.incus.code_uid,
        code_user=config.incus.code_user,
        disable_shift=config.incus.disable_shift,
        placement=config.placement.policy,
        pool_size=config.pool.size,
        **choices,
    )
