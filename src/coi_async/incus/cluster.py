"""Clusters: the members of a clustered server and each member's state (free memory)."""

from __future__ import annotations

from coi_async.incus.base import ApiBase
from coi_async.incus.models import ClusterMember, ClusterMemberState
from coi_async.incus.paths import cluster_member_path


class ClusterApi(ApiBase):
    async def cluster_members(self) -> list[ClusterMember]:
        """Every member with its status (`Online`, `Offline`, ...); a standalone server has none."""
        return await self._get(
            "/1.0/cluster/members", list[ClusterMember], params={"recursion": "1"}, what="cluster members"
        )

    async def cluster_member_state(self, name: str) -> ClusterMemberState:
        """The member's own report of its memory and load (incusd asks the member)."""
        return await self._get(
            f"{cluster_member_path(name)}/state", ClusterMemberState, what="cluster member state"
        )
