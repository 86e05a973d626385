"""Instance snapshots: list, get, create, restore, delete (stateless only).

incusd 6.0 answers `GET /1.0/instances/NAME/snapshots` with an empty list for an instance that
does not exist, so callers that must tell "none" from "no such instance" look the instance up
first. A snapshot's `size` is -1 where the storage driver cannot tell (btrfs without quotas,
dir); there is no `/snapshots/SNAP/state` endpoint in 6.0.
"""

from __future__ import annotations

from urllib.parse import quote

import msgspec

from coi_async.errors import UsageError
from coi_async.incus.base import ApiBase
from coi_async.incus.paths import instance_path


class InstanceSnapshot(msgspec.Struct, kw_only=True):
    name: str  # the snapshot's own name, without "instance/"
    created_at: str = ""
    expires_at: str = ""
    last_used_at: str = ""
    description: str = ""
    stateful: bool = False
    # Bytes the snapshot holds on its own; -1 when the storage driver does not know.
    size: int = -1


class InstanceSnapshotsPost(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    stateful: bool = False


class InstanceRestorePut(msgspec.Struct, kw_only=True):
    """`PUT /1.0/instances/NAME` with `restore` set restores that snapshot and changes nothing else."""

    restore: str


def snapshots_path(instance: str) -> str:
    return f"{instance_path(instance)}/snapshots"


def snapshot_path(instance: str, snapshot: str) -> str:
    """The path of one snapshot, its name quoted (and "", ".", ".." refused, as in `paths`)."""
    if snapshot in ("", ".", ".."):
        raise UsageError(f"invalid snapshot name {snapshot!r}")
    return f"{snapshots_path(instance)}/{quote(snapshot, safe='')}"


class SnapshotsApi(ApiBase):
    async def list_instance_snapshots(self, instance: str) -> list[InstanceSnapshot]:
        """The instance's snapshots, oldest first; [] also when the instance does not exist."""
        return await self._get(
            snapshots_path(instance),
            list[InstanceSnapshot],
            params={"recursion": "1"},
            what="snapshot list",
        )

    async def get_instance_snapshot(self, instance: str, snapshot: str) -> InstanceSnapshot:
        """One snapshot; NotFoundError when it does not exist (InstanceNotFoundError when the
        instance does not)."""
        return await self._get(snapshot_path(instance, snapshot), InstanceSnapshot, what="snapshot")

    async def create_instance_snapshot(self, instance: str, snapshot: str) -> None:
        """Take a stateless snapshot (of a running instance too); a taken name is a ConflictError."""
        await self._run("POST", snapshots_path(instance), body=InstanceSnapshotsPost(name=snapshot))

    async def restore_instance_snapshot(self, instance: str, snapshot: str) -> None:
        """Restore the instance's filesystem and configuration to the snapshot's."""
        await self._run("PUT", instance_path(instance), body=InstanceRestorePut(restore=snapshot))

    async def delete_instance_snapshot(self, instance: str, snapshot: str) -> None:
        """Delete a snapshot; NotFoundError when there is no such snapshot."""
        await self._run("DELETE", snapshot_path(instance, snapshot))
