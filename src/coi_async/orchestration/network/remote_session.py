"""The launching coi's side of egress over a remote (members.py): a session planned for the
members whose daemon serves it, and waited for until that daemon does."""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from coi_async.config import Config
from coi_async.egress.policy import Mode
from coi_async.errors import EgressError, NotFoundError, UsageError
from coi_async.incus import IncusClient
from coi_async.incus.models import InstancePatch
from coi_async.orchestration.network.members import (
    KEY_POLICY,
    KEY_SERVED,
    SERVED_SOCKET,
    changed_policy,
    encode_policy,
    fresh_adverts,
    served_value,
)
from coi_async.orchestration.network.plan import EgressPlan, proxied, session_policy
from coi_async.tools import get_tool

SERVED_WITHIN_S = 15.0
_POLL_S = 0.05


async def plan_remote(incus: IncusClient, config: Config, mode: Mode, nics: Sequence[str]) -> EgressPlan:
    """The plan for a session over a remote. Anything but `open` with a NIC goes through the
    daemon of the member it is placed on, and is refused (EgressError) when no member has one;
    `open` without a daemon anywhere keeps what the remote's default profile gives it."""
    plan = EgressPlan(mode=mode, project=incus.project, nics=tuple(nics), through_daemon=False, remote=True)
    if not proxied(mode, nics):
        return plan
    info = await incus.server_info(cached=True)
    served = fresh_adverts(info.config)
    if not served:
        if mode == "open":
            return plan
        raise EgressError(
            f"network mode '{mode}' needs coi's egress daemon beside the server's incusd, and "
            f"none runs there: start `coi egress serve` on it{' (each member)' if info.environment.server_clustered else ''}, "
            "or use --network open"
        )
    policy = session_policy(config.network, get_tool(config.tool.name), mode)
    plan = EgressPlan(
        mode=mode,
        project=incus.project,
        nics=tuple(nics),
        through_daemon=True,
        remote=True,
        served=tuple(served[name] for name in sorted(served)),
        carried=encode_policy(policy),
    )
    if not info.environment.server_clustered:
        plan = plan.on_member(info.environment.server_name)
    return plan


async def await_served(
    incus: IncusClient, name: str, carried: str, *, inside: bool, within_s: float = SERVED_WITHIN_S
) -> None:
    """Until the member's daemon says it serves the running container `name` with the policy
    `carried` (EgressError after `within_s`): listening inside its current init, or with its
    socket for the proxy device."""
    expected = served_value(SERVED_SOCKET, carried) if not inside else ""
    with anyio.move_on_after(within_s):
        while True:
            served = (await incus.get_instance(name)).config.get(KEY_SERVED, "")
            if served and not expected:
                pid = (await incus.get_instance_state(name)).pid
                expected = served_value(str(pid), carried) if pid else ""
            if served and served == expected:
                return
            await anyio.sleep(_POLL_S)
    raise EgressError(f"the egress daemon beside the server did not take session {name} within {within_s:g}s")


async def change_carried(incus: IncusClient, name: str, entry: str, *, allow: bool) -> None:
    """`coi network allow|deny` for a session over a remote: its carried policy changed, and
    served by its member's daemon before this returns."""
    try:
        instance = await incus.get_instance(name)
    except NotFoundError:
        raise UsageError(f"unknown container '{name}'") from None
    carried = instance.config.get(KEY_POLICY, "")
    if not carried:
        raise UsageError(
            f"container '{name}' has no egress through coi",
            hint="only coi sessions in restricted or allowlist mode (or open without a NIC) have one",
        )
    try:
        changed = changed_policy(carried, entry, allow=allow)
    except ValueError:
        raise EgressError(f"container '{name}' carries a malformed egress policy") from None
    await incus.update_instance(name, InstancePatch(config={KEY_POLICY: changed}))
    inside = not instance.config.get(KEY_SERVED, "").startswith(f"{SERVED_SOCKET}:")
    await await_served(incus, name, changed, inside=inside)
