"""A session's launch from what `coi shell` and `coi run` are given: workspace, mounts, env."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import msgspec

from coi_async.config import Config, Mount, combine_mounts, parse_mount
from coi_async.errors import UsageError
from coi_async.incus import IncusClient
from coi_async.naming import SessionName
from coi_async.orchestration.events import Emit, ignore
from coi_async.orchestration.network.plan import EgressPlan
from coi_async.orchestration.sessions.instance_spec import spec_from_config
from coi_async.orchestration.sessions.launch import Launched, launch


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
    egress: EgressPlan | None = None  # the session's network (network.session.plan_egress)
    target: str = ""  # the cluster member it must go to ("": [placement] policy chooses)


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
        egress=request.egress,
        target=request.target,
    )
    return await launch(incus, spec, emit=emit)


def session_env(
    *,
    home: str,
    user: str,
    profile_env: Mapping[str, str],
    given: Mapping[str, str],
) -> dict[str, str]:
    """The environment of every exec in a session: nothing from the host unless given (-e/profile).

    The egress proxy variables are not here: they are the instance's `environment.*` keys
    (network/plan.py), which incusd gives every exec, and a per-exec value (-e) overrides them."""
    return {"HOME": home, "USER": user, "LOGNAME": user, **profile_env, **given}


def check_workspace(path: str) -> None:
    """The workspace must be an existing directory (a usage error otherwise)."""
    if not os.path.exists(path):
        raise UsageError(f"workspace '{path}' does not exist")
    if not os.path.isdir(path):
        raise UsageError(f"workspace '{path}' is not a directory")
