"""`coi run -- CMD ARGS...`: one command in a fresh container, output streamed, container removed.

The command runs as the code user in /workspace with only the environment it was given (-e and the
profile), and its exit code is the answer, given as soon as the command is done: the container is
Incus-ephemeral and powers itself off once coi lets go of it (containers/watchdog.py), also when
coi is killed, and incusd deletes it then. A container without the watcher, and every path out
other than the command ending (failure, Ctrl-C, SIGTERM), is removed before coi returns; a
persistent one is stopped and kept instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import msgspec

from coi_async.config import Config, Mount
from coi_async.incus import IncusClient
from coi_async.orchestration.containers import ops
from coi_async.orchestration.containers.watchdog import Watcher, powered_off_on_release
from coi_async.orchestration.events import Emit, note
from coi_async.orchestration.network.plan import EgressPlan
from coi_async.orchestration.network.session import (
    SessionOrigin,
    attach_egress,
    configure_container,
    detach_egress,
    plan_egress,
    start_daemon_early,
)
from coi_async.orchestration.sessions.instance_spec import WORKSPACE_PATH, spec_from_config
from coi_async.orchestration.sessions.launch import Launched, launch
from coi_async.orchestration.sessions.launch_request import session_env

ByteSink = Callable[[bytes], Awaitable[None]]


class RunRequest(msgspec.Struct, frozen=True, kw_only=True):
    workspace: str  # absolute, checked to be a directory by the caller
    argv: tuple[str, ...]
    env: dict[str, str] = msgspec.field(default_factory=dict)  # from -e
    slot: int = 0
    mounts: tuple[Mount, ...] = ()  # config and command line, combined and validated
    host_uid: int = 1000
    host_gid: int = 1000
    target: str = ""  # the cluster member it goes to ("": [placement] policy)


async def run_command(
    incus: IncusClient,
    config: Config,
    request: RunRequest,
    *,
    on_stdout: ByteSink,
    on_stderr: ByteSink,
    emit: Emit,
) -> int:
    """Run the command; return its exit code. The image and persistence come from `config`."""
    persistent = config.defaults.persistent
    egress = await plan_egress(incus, config)
    spec = spec_from_config(
        config,
        workspace=request.workspace,
        slot=request.slot,
        persistent=persistent,
        ephemeral=not persistent,
        host_uid=request.host_uid,
        host_gid=request.host_gid,
        mounts=request.mounts,
        egress=egress,
        target=request.target,
    )
    launched: Launched | None = None
    try:
        # The egress daemon starts while the container is made.
        async with start_daemon_early(egress):
            launched = await launch(incus, spec, emit=emit)
        note(emit, "run.launching", launched.name, image=spec.image)
        if persistent:
            return await _prepare_and_run(
                incus, config, request, launched, egress, on_stdout, on_stderr, emit
            )
        async with powered_off_on_release(incus, launched.name) as watcher:
            code = await _prepare_and_run(
                incus, config, request, launched, egress, on_stdout, on_stderr, emit, watcher=watcher
            )
            watched = await watcher.in_place()
        if watched:
            # Powering itself off, after which incusd deletes it (ephemeral): nothing to wait for.
            note(emit, "run.cleaning-up", launched.name)
            await ops.request_stop(incus, launched.name)
            await detach_egress(egress, launched.name)
            launched = None
        return code
    finally:
        if launched is not None:
            if persistent:
                note(emit, "run.stopping", launched.name)
                await ops.stop_and_keep(incus, launched.name)
            else:
                note(emit, "run.cleaning-up", launched.name)
                await ops.remove(incus, launched.name)
                await detach_egress(egress, launched.name)


async def _prepare_and_run(
    incus: IncusClient,
    config: Config,
    request: RunRequest,
    launched: Launched,
    egress: EgressPlan,
    on_stdout: ByteSink,
    on_stderr: ByteSink,
    emit: Emit,
    *,
    watcher: Watcher | None = None,
) -> int:
    """The session's egress in place, then the command; its exit code."""
    origin = SessionOrigin.here(config.profile)
    # The files inside need no daemon: written while the daemon takes the session on.
    async with anyio.create_task_group() as tg:
        if egress.through_daemon:
            tg.start_soon(configure_container, incus, launched.name)
        await attach_egress(incus, config, egress, launched.name, origin, created=launched.created, emit=emit)
    env = session_env(
        home=launched.home, user=launched.user, profile_env=config.environment, given=request.env
    )
    if watcher is not None:
        await watcher.in_place()  # started with the above; from here on, no way out leaks it
    return await incus.exec_stream(
        launched.name,
        list(request.argv),
        on_stdout=on_stdout,
        on_stderr=on_stderr,
        env=env,
        user=launched.uid,
        group=launched.uid,
        cwd=WORKSPACE_PATH,
    )
