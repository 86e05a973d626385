"""What placement needs to know about a cluster, asked of incusd (the choice itself is
`coi_async.placement`'s).

Only a clustered server (`environment.server_clustered` of GET /1.0) has members to choose
from: one GET /1.0/cluster/members, and, when a policy chooses, one
GET /1.0/cluster/members/NAME/state per online member, all at once through `run_bulk`. A member
whose state cannot be read counts as having no free memory; an offline one is never chosen.
The sessions counted per member come from the launch's own instance listing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import msgspec

from coi_async.errors import UsageError
from coi_async.incus import IncusClient
from coi_async.incus.models import Instance, MemberSysInfo
from coi_async.naming import SessionName
from coi_async.orchestration.runner import ItemContext, run_bulk
from coi_async.placement import MemberLoad, check_member, fixed_member

_POWER = "volatile.last_state.power"
# Reading the members' states: all at once (a cluster has a handful), each within a bound.
_STATE_S = 10.0


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    """A launch's view of the cluster: the members with their loads; none on a standalone server."""

    policy: str
    target: str = ""  # --target
    members: tuple[MemberLoad, ...] = ()

    @property
    def clustered(self) -> bool:
        return bool(self.members)


def _sessions_per_member(instances: Sequence[Instance], prefix: str) -> Counter[str]:
    """coi sessions running, or being made, per member: every one of coi's containers but those
    that ran and stopped (`volatile.last_state.power` STOPPED: a persistent container kept, an
    ephemeral one on its way out). One being made has never run."""
    counts: Counter[str] = Counter()
    for inst in instances:
        if SessionName.parse(inst.name, prefix) is None or not inst.location:
            continue
        if not (inst.status == "Stopped" and inst.config.get(_POWER) == "STOPPED"):
            counts[inst.location] += 1
    return counts


async def check_placement(incus: IncusClient, *, policy: str, target: str) -> None:
    """Before a session is set up: the member it must go to (`--target`, `member:NAME`) exists
    and is online, and `--target` is for a cluster; UsageError otherwise. Asks nothing when
    a policy chooses."""
    if not fixed_member(policy, target):
        return
    clustered = (await incus.server_info(cached=True)).environment.server_clustered
    await survey_cluster(incus, [], clustered=clustered, policy=policy, target=target, prefix="")


async def survey_cluster(
    incus: IncusClient,
    instances: Sequence[Instance],
    *,
    clustered: bool,
    policy: str,
    target: str,
    prefix: str,
) -> Placement:
    """The members and their loads on a cluster; UsageError for `--target` on a standalone
    server or a named member that is unknown or offline (before anything is made)."""
    if not clustered:
        if target:
            raise UsageError(f"--target {target}: the server is not a cluster")
        return Placement(policy=policy)
    members = await incus.cluster_members()
    counts = _sessions_per_member(instances, prefix)
    loads = {
        m.server_name: MemberLoad(name=m.server_name, status=m.status, sessions=counts[m.server_name])
        for m in members
    }
    if fixed := fixed_member(policy, target):
        check_member(fixed, list(loads.values()))
        return Placement(policy=policy, target=target, members=tuple(loads.values()))
    states: dict[str, MemberSysInfo] = {}

    async def ask(ctx: ItemContext) -> None:
        states[ctx.name] = (await incus.cluster_member_state(ctx.name)).sysinfo

    online = [name for name, load in loads.items() if load.online]
    await run_bulk(online, ask, limit=max(len(online), 1), per_item_s=_STATE_S)
    for name, info in states.items():
        loads[name] = msgspec.structs.replace(
            loads[name], free_memory=info.free_ram + info.buffered_ram, total_memory=info.total_ram
        )
    return Placement(policy=policy, target=target, members=tuple(loads.values()))
