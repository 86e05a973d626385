"""Create (or reuse) a session container in a free slot, race-free, and remove it again.

incusd is the lock: a slot is taken by creating the instance under the slot's name, in one
create-and-start operation. A name conflict means another coi got there first, and we move on to
the next slot; nothing is ever decided from a listing alone.

Instances get everything at creation, so nothing is hot-plugged after boot:
- the workspace at /workspace, owned inside by the code user (uid from config). When the invoking
  host user *is* that uid, an idmapped mount (`shift=true`) suffices; otherwise (or when idmapped
  mounts fail) `raw.idmap` maps the host user onto the code user, so files made in /workspace
  belong to the host user outside. Which one works is found by trying, once per process;
- extra mounts (`mount-0..N`), with the same ownership treatment;
- Docker-in-container support: security.nesting and the mknod/setxattr syscall intercepts;
- `user.coi.*` keys (see naming), so coi recognises its instances by more than their names.
Environment variables are never put in the instance config (anyone with API access could read
them): callers pass them per exec, see `session_env`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence

import anyio
import msgspec

from coi_async.config import Config, Mount, combine_mounts, parse_mount
from coi_async.errors import (
    CoiError,
    ConflictError,
    IdmapUnsupportedError,
    IncusApiError,
    InstanceBusyError,
    NoFreeSlotError,
    SessionError,
    UsageError,
)
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance, InstanceSource, InstancesPost
from coi_async.naming import (
    KEY_IMAGE,
    KEY_LAUNCH,
    KEY_MANAGED,
    KEY_PERSISTENT,
    KEY_SESSION,
    KEY_SLOT,
    KEY_TOOL,
    KEY_UID,
    KEY_USER,
    KEY_WORKSPACE,
    KEY_WORKSPACE_HASH,
    SessionName,
    workspace_hash,
)
from coi_async.orchestration.containers import ops
from coi_async.orchestration.events import Emit, ignore, note
from coi_async.orchestration.sessions.model import home_of, user_of_uid
from coi_async.slots import Candidate, Occupant, candidates, validate_slot

DOCKER_CONFIG = {
    "security.nesting": "true",
    "security.syscalls.intercept.mknod": "true",
    "security.syscalls.intercept.setxattr": "true",
}
WORKSPACE_PATH = "/workspace"
# How often a launch re-lists and tries again when every candidate slot was taken under it.
_ROUNDS = 3


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


class Launched(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    slot: int
    reused: bool  # an existing persistent container was started (or found running)
    idmap: str  # "shift", "raw.idmap", or "" when reused
    uid: int  # the code user's uid (and gid) inside
    user: str
    home: str

    @property
    def created(self) -> bool:
        return not self.reused


class _Plan(msgspec.Struct, frozen=True):
    kind: str  # "shift" or "raw.idmap"
    config: dict[str, str]
    shift: bool


# The plan that worked last in this process, so later launches try it first.
_working_plan: dict[tuple[int, int, int, bool], str] = {}


def raw_idmap(host_uid: int, host_gid: int, code_uid: int) -> str:
    if host_uid == host_gid:
        return f"both {host_uid} {code_uid}"
    return f"uid {host_uid} {code_uid}\ngid {host_gid} {code_uid}"


def _plans(spec: LaunchSpec) -> list[_Plan]:
    shift = _Plan("shift", {}, shift=True)
    raw = _Plan(
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
    known = _working_plan.get((spec.host_uid, spec.host_gid, spec.code_uid, spec.disable_shift))
    order.sort(key=lambda p: p.kind != known)
    return order


def instance_config(spec: LaunchSpec, slot: int) -> dict[str, str]:
    config = {
        **DOCKER_CONFIG,
        KEY_MANAGED: "true",
        KEY_WORKSPACE: spec.workspace,
        KEY_WORKSPACE_HASH: workspace_hash(spec.workspace),
        KEY_SLOT: str(slot),
        KEY_PERSISTENT: "true" if spec.persistent else "false",
        KEY_TOOL: spec.tool,
        KEY_UID: str(spec.code_uid),
        KEY_USER: user_of_uid(spec.code_user, spec.code_uid),
        KEY_IMAGE: spec.image,
    }
    if spec.session_id:
        config[KEY_SESSION] = spec.session_id
    config.update(spec.extra_config)
    return config


def instance_devices(spec: LaunchSpec, *, shift: bool) -> dict[str, dict[str, str]]:
    def disk(source: str, path: str) -> dict[str, str]:
        device = {"type": "disk", "source": source, "path": path}
        if shift:
            device["shift"] = "true"
        return device

    devices = {"workspace": disk(spec.workspace, WORKSPACE_PATH)}
    for i, mount in enumerate(spec.mounts):
        devices[f"mount-{i}"] = disk(mount.host, mount.container)
    return devices


def occupants(instances: Sequence[Instance], *, prefix: str, workspace: str) -> dict[int, Occupant]:
    """The workspace's slots that hold a container, from one instance listing."""
    wanted = workspace_hash(workspace)
    found: dict[int, Occupant] = {}
    for inst in instances:
        name = SessionName.parse(inst.name, prefix)
        if name is None or name.workspace_hash != wanted:
            continue
        persistent = inst.config.get(KEY_PERSISTENT) == "true"
        found[name.slot] = Occupant(slot=name.slot, running=inst.running, persistent=persistent)
    return found


async def _start_again(incus: IncusClient, name: str) -> None:
    """Start our freshly made instance after a rival's create of the same name blocked it."""
    for attempt in range(20):
        try:
            await incus.start_instance(name)
            return
        except InstanceBusyError:
            if attempt == 19:
                raise
        await anyio.sleep(0.1)


async def _create(incus: IncusClient, spec: LaunchSpec, name: str, slot: int, emit: Emit) -> str:
    """Create and start `name`; the idmap plan used. ConflictError when the name is taken.

    The instance carries a random launch token, so after a failure we know whether the
    instance under that name is ours (created, but the start failed) or a rival's.
    """
    last: IncusApiError | None = None
    for plan in _plans(spec):
        token = secrets.token_hex(8)
        request = InstancesPost(
            name=name,
            source=InstanceSource(type="image", alias=spec.image),
            start=True,
            ephemeral=spec.ephemeral,
            config={**instance_config(spec, slot), **plan.config, KEY_LAUNCH: token},
            devices=instance_devices(spec, shift=plan.shift),
        )
        try:
            await incus.create_instance(request)
        except ConflictError:
            raise
        except IncusApiError as exc:
            owner = await ops.launch_token(incus, name)
            if owner is not None and owner != token:
                raise ConflictError(409, exc.message) from exc  # a rival holds the name
            if owner == token and isinstance(exc, InstanceBusyError):
                # Ours, but a rival's concurrent create of this name held its lock as we started.
                try:
                    await _start_again(incus, name)
                except BaseException:
                    await ops.remove_if_ours(incus, name, token)
                    raise
            else:
                # Created but not started, or refused: never leave ours behind.
                await ops.remove_if_ours(incus, name, token)
                if owner is None and isinstance(exc, InstanceBusyError):
                    # A rival's create was in flight (and may yet fail): treat the name as taken.
                    raise ConflictError(409, exc.message) from exc
                if not isinstance(exc, IdmapUnsupportedError):
                    raise
                note(emit, "launch.idmap-fallback", name, plan=plan.kind, error=exc.message)
                last = exc
                continue
        except BaseException:
            await ops.remove_if_ours(incus, name, token)
            raise
        _working_plan[(spec.host_uid, spec.host_gid, spec.code_uid, spec.disable_shift)] = plan.kind
        return plan.kind
    assert last is not None
    raise last


async def _check_image(incus: IncusClient, image: str) -> None:
    if await incus.find_image(image) is None:
        raise CoiError(f"image '{image}' not found - run 'coi build' first")


async def _survey(incus: IncusClient, spec: LaunchSpec) -> dict[int, Occupant]:
    found: list[Instance] = []

    async def listing() -> None:
        found.extend(await incus.list_instances())

    async with anyio.create_task_group() as tg:
        tg.start_soon(_check_image, incus, spec.image)
        tg.start_soon(listing)
    return occupants(found, prefix=spec.prefix, workspace=spec.workspace)


async def launch(incus: IncusClient, spec: LaunchSpec, *, emit: Emit = ignore) -> Launched:
    """Take a slot for the workspace and have its container running; see the module docstring.

    An explicit `spec.slot` must be free, or hold a stopped persistent container that a
    persistent launch reuses; otherwise the lowest free slot is taken (a stopped persistent
    container of this workspace first, when persistent). Raises UsageError for a bad slot,
    SessionError when the slot is busy, NoFreeSlotError when all are taken, CoiError for a
    missing image. Nothing is left behind on failure or cancellation.
    """
    if spec.slot:
        validate_slot(spec.slot, max_slots=spec.max_slots)
    prefix_name = SessionName.for_workspace(spec.workspace, 1, prefix=spec.prefix)
    user = user_of_uid(spec.code_user, spec.code_uid)
    home = home_of(user, spec.code_uid)

    def done(slot: int, *, reused: bool, idmap: str = "") -> Launched:
        name = str(prefix_name.with_slot(slot))
        return Launched(
            name=name, slot=slot, reused=reused, idmap=idmap, uid=spec.code_uid, user=user, home=home
        )

    for _ in range(_ROUNDS):
        taken = await _survey(incus, spec)
        order: list[Candidate]
        preferred = taken.get(spec.prefer_slot) if spec.prefer_slot and not spec.slot else None
        if spec.slot:
            current = taken.get(spec.slot)
            if current is None:
                order = [Candidate(slot=spec.slot)]
            elif spec.persistent and current.persistent and not current.running:
                order = [Candidate(slot=spec.slot, reuse=True)]
            elif spec.next_if_busy:
                order = [
                    c
                    for c in candidates(
                        taken.values(), max_slots=spec.max_slots, persistent=False, start=spec.slot + 1
                    )
                    if c.slot != spec.slot
                ]
                if not order:
                    raise NoFreeSlotError(spec.max_slots)
                note(emit, "launch.slot-occupied", slot=str(spec.slot), instead=str(order[0].slot))
            else:
                state = "running" if current.running else "stopped"
                raise SessionError(
                    f"slot {spec.slot} is in use by {state} container {prefix_name.with_slot(spec.slot)}",
                    hint="pick another --slot, or leave it out to take a free one",
                )
        elif preferred is not None and preferred.persistent and spec.persistent and preferred.running:
            note(emit, "launch.reusing-running", str(prefix_name.with_slot(preferred.slot)))
            return done(preferred.slot, reused=True)
        else:
            order = candidates(taken.values(), max_slots=spec.max_slots, persistent=spec.persistent)
            if preferred is not None and spec.persistent and preferred.persistent:
                order.sort(key=lambda c: c.slot != preferred.slot)
        for choice in order:
            name = str(prefix_name.with_slot(choice.slot))
            if choice.reuse:
                try:
                    await incus.start_instance(name)
                except IncusApiError:
                    # Started (or removed) by someone else since the listing: not ours to take.
                    continue
                note(emit, "launch.restarting", name)
                return done(choice.slot, reused=True)
            try:
                kind = await _create(incus, spec, name, choice.slot, emit)
            except ConflictError:
                continue
            return done(choice.slot, reused=False, idmap=kind)
        if spec.slot and not spec.next_if_busy:
            raise SessionError(f"slot {spec.slot} was taken by another session just now")
    raise NoFreeSlotError(spec.max_slots)


def prepare_mounts(config: Config, given: Sequence[Mount | str]) -> tuple[Mount, ...]:
    """Config mounts plus the given ones, validated; missing host directories are created."""
    cwd, home = os.getcwd(), os.path.expanduser("~")
    parsed = [m if isinstance(m, Mount) else parse_mount(m, home=home, cwd=cwd) for m in given]
    mounts = combine_mounts(config.mounts, parsed)
    for mount in mounts:
        # As the reference does: a missing host directory is created, not an error.
        os.makedirs(mount.host, exist_ok=True)
    return mounts


class LaunchRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What `coi shell` asks for; image, uid, prefix and limits come from the config."""

    workspace: str
    slot: int = 0
    persistent: bool = False
    session_id: str = ""
    # Extra mounts: `HOST:CONTAINER` specs from the command line (or parsed Mounts); the config's
    # mounts are added, nesting is checked and missing host directories are created.
    mounts: tuple[Mount | str, ...] = ()
    # The container of the session being resumed: reused when it is this workspace's persistent one.
    prefer_container: str = ""
    host_uid: int = -1  # -1: this process's
    host_gid: int = -1


def spec_from_config(
    config: Config,
    *,
    workspace: str,
    slot: int,
    persistent: bool,
    ephemeral: bool,
    host_uid: int,
    host_gid: int,
    mounts: tuple[Mount, ...],
    session_id: str = "",
    next_if_busy: bool = False,
    prefer_slot: int = 0,
) -> LaunchSpec:
    """The LaunchSpec for a workspace, with image, naming, uid and shift settings from `config`."""
    return LaunchSpec(
        workspace=workspace,
        image=config.defaults.image,
        prefix=config.container_prefix,
        max_slots=config.defaults.max_slots,
        slot=slot,
        persistent=persistent,
        ephemeral=ephemeral,
        session_id=session_id,
        tool=config.tool.name,
        code_uid=config.incus.code_uid,
        code_user=config.incus.code_user,
        host_uid=host_uid,
        host_gid=host_gid,
        disable_shift=config.incus.disable_shift,
        mounts=mounts,
        next_if_busy=next_if_busy,
        prefer_slot=prefer_slot,
    )


async def launch_session(
    incus: IncusClient,
    config: Config,
    request: LaunchRequest,
    *,
    emit: Emit = ignore,
) -> Launched:
    """`launch` for an interactive session: never Incus-ephemeral, a busy --slot moves on."""
    preferred = SessionName.parse(request.prefer_container, config.container_prefix)
    mounts = prepare_mounts(config, request.mounts)
    spec = spec_from_config(
        config,
        workspace=request.workspace,
        slot=request.slot,
        persistent=request.persistent,
        ephemeral=False,
        session_id=request.session_id,
        host_uid=os.getuid() if request.host_uid < 0 else request.host_uid,
        host_gid=os.getgid() if request.host_gid < 0 else request.host_gid,
        mounts=mounts,
        next_if_busy=True,
        prefer_slot=preferred.slot if preferred and preferred.belongs_to(request.workspace) else 0,
    )
    return await launch(incus, spec, emit=emit)


def session_env(
    *,
    home: str,
    user: str,
    profile_env: Mapping[str, str],
    given: Mapping[str, str],
) -> dict[str, str]:
    """The environment of every exec in a session: nothing from the host unless given (-e/profile)."""
    return {"HOME": home, "USER": user, "LOGNAME": user, **profile_env, **given}


def check_workspace(path: str) -> None:
    """The workspace must be an existing directory (a usage error otherwise)."""
    if not os.path.exists(path):
        raise UsageError(f"workspace '{path}' does not exist")
    if not os.path.isdir(path):
        raise UsageError(f"workspace '{path}' is not a directory")
