"""A `coi build` container's egress: the daemon's, as a session gets it, with the build's
allowlist as its whole policy.

The build container is registered with the egress daemon like a session (kind `build`: no
config behind it, so no tool API hosts and no `[network]` keys; only the hosts the build may
reach). It reaches the daemon the same way a session does, on its own 127.0.0.1:PORT, and every
decision lands in a connection log that is followed while the build runs and read to its end
once the build container is no longer served, so not one decision is missed. The registration,
socket and log go when the build is over, whatever way it ends.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import anyio

from coi_async.config.network import HostSyntaxError, parse_entries
from coi_async.egress.connection import ConnectionRecord
from coi_async.egress.policy import Policy
from coi_async.errors import EgressError
from coi_async.incus import IncusClient
from coi_async.incus.models import InstancePatch
from coi_async.orchestration.background import in_background
from coi_async.orchestration.network import registry
from coi_async.orchestration.network.live import FOLLOW_POLL_S, LogTail
from coi_async.orchestration.network.paths import EgressPaths, session_key
from coi_async.orchestration.network.plan import EGRESS_DEVICE, EgressPlan, egress_device, may_listen_inside
from coi_async.orchestration.network.registry import Registration
from coi_async.orchestration.network.session import detach_egress, reload_daemon


@asynccontextmanager
async def build_egress(
    incus: IncusClient,
    container: str,
    allowlist: Sequence[str],
    *,
    port: int,
    on_record: Callable[[ConnectionRecord], None],
) -> AsyncIterator[str]:
    """Serve `container` its allowlist on its 127.0.0.1:`port` while the context is open; yields
    the proxy's URL. `on_record` is told every connection the build made.

    Not over a remote: the daemon runs beside this coi, and the remote's incusd could not reach
    its socket; such a build needs a network interface from the remote's default profile."""
    if incus.remote:
        raise EgressError(
            f"build container {container} has no network interface, and coi's egress daemon cannot "
            "serve a remote's containers: give the remote's default profile a NIC (the build then "
            "uses it), or build on that server itself"
        )
    inside = may_listen_inside()
    plan = EgressPlan(
        mode="allowlist",
        project=incus.project,
        inside=inside,
        root=str(EgressPaths.for_environment().make().root),
    )
    key = session_key(incus.project, container)
    socket = plan.socket_of(container)
    log = str(plan.paths.root / "b" / f"{key}.jsonl")
    device = egress_device(socket, inside=inside, port=port)
    await incus.update_instance(container, InstancePatch(devices={EGRESS_DEVICE: device}))
    registration = Registration(
        key=key,
        container=container,
        project=incus.project,
        mode="allowlist",
        socket=socket,
        log=log,
        cwd="",
        home="",
        allow=tuple(allowlist),
        inside_port=port if inside else 0,
        kind="build",
    )
    tail = LogTail([log])

    def relay() -> None:
        for record in tail.new_records():
            on_record(record)

    async def follow() -> None:
        while True:
            await anyio.sleep(FOLLOW_POLL_S)
            relay()

    registry.write(plan.paths, registration)
    try:
        await reload_daemon(plan.paths)
        async with in_background(follow):
            yield f"http://127.0.0.1:{port}"
    finally:
        # Once the daemon has let the container go, every decision it made is in the log.
        await detach_egress(plan, container)
        relay()
        for path in (log, f"{log}.1"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def build_policy(allowlist: tuple[str, ...]) -> Policy:
    """A build may reach its allowlist only; EgressError names a malformed entry."""
    try:
        return Policy(mode="allowlist", allow=parse_entries(allowlist))
    except HostSyntaxError as exc:
        raise EgressError(f"bad egress allowlist entry: {exc}") from None
