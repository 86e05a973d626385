"""Instances: list, get, create, state changes, delete."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from coi_async.errors import IncusError, NotFoundError
from coi_async.incus.base import ApiBase
from coi_async.incus.models import (
    Instance,
    InstancePatch,
    InstancePut,
    InstancesPost,
    InstancesStatePut,
    InstanceState,
    Operation,
    StatePut,
)
from coi_async.incus.paths import instance_path


def config_filter(keys: Mapping[str, str]) -> str:
    """An incusd `filter` expression matching instances whose config has all these values."""
    parts = []
    for key, value in keys.items():
        if '"' in value or not value:
            raise ValueError(f"cannot filter on {key}={value!r}")
        # incusd 6.0's parser rejects a quoted last word without spaces ("unterminated quote"),
        # so quote only what needs it.
        shown = f'"{value}"' if any(c.isspace() for c in value) else value
        parts.append(f"config.{key} eq {shown}")
    return " and ".join(parts)


# incusd lists an instance of an offline cluster member with these null (and status Error).
_NULLABLE: dict[str, type[dict[str, Any] | list[Any]]] = {
    "config": dict,
    "devices": dict,
    "expanded_config": dict,
    "expanded_devices": dict,
    "profiles": list,
}


def _filled(item: object) -> object:
    if isinstance(item, dict):
        for key, empty in _NULLABLE.items():
            if key in item and item[key] is None:
                item[key] = empty()
    return item


def decode_instances(raw: msgspec.Raw | bytes) -> list[Instance]:
    """An instance listing; one of an offline member's instances has null fields, read as empty."""
    try:
        return msgspec.json.decode(raw, type=list[Instance])
    except msgspec.DecodeError:
        pass
    try:
        items = msgspec.json.decode(raw)
        if not isinstance(items, list):
            raise msgspec.ValidationError("expected a list")
        return msgspec.convert([_filled(i) for i in items], list[Instance])
    except msgspec.DecodeError as exc:
        raise IncusError(f"unexpected instance list from incusd: {exc}") from exc


class InstancesApi(ApiBase):
    async def list_instances(
        self,
        *,
        recursion: int = 1,
        filter_expr: str | None = None,
        all_projects: bool = False,
    ) -> list[Instance]:
        """Every instance of the project (`recursion=2` adds each one's state)."""
        params = {"recursion": str(max(recursion, 1))}
        if filter_expr:
            params["filter"] = filter_expr
        if all_projects:
            params["all-projects"] = "true"
        envelope = await self._call("GET", "/1.0/instances", params=params)
        return decode_instances(envelope.metadata)

    async def get_instance(self, name: str) -> Instance:
        return await self._get(instance_path(name), Instance, what="instance")

    async def instance_exists(self, name: str) -> bool:
        try:
            await self.get_instance(name)
        except NotFoundError:
            return False
        return True

    async def get_instance_state(self, name: str) -> InstanceState:
        return await self._get(f"{instance_path(name)}/state", InstanceState, what="instance state")

    async def create_instance(self, request: InstancesPost, *, target: str | None = None) -> None:
        """Create (and with `start=True` also start) an instance; a taken name is a ConflictError."""
        params = {"target": target} if target else None
        await self._run("POST", "/1.0/instances", body=request, params=params)

    async def update_instance(self, name: str, patch: InstancePatch) -> None:
        """Change only the given fields (config keys are merged, not replaced)."""
        await self._run("PATCH", instance_path(name), body=patch)

    async def replace_instance(self, name: str, put: InstancePut) -> None:
        """Replace the instance's config, devices, profiles and ephemeral flag as a whole."""
        await self._run("PUT", instance_path(name), body=put)

    async def rename_instance(self, name: str, new_name: str) -> None:
        """Rename a stopped instance; a taken `new_name` is a ConflictError, a gone `name` NotFound."""
        await self._run("POST", instance_path(name), body={"name": new_name})

    async def change_state(self, name: str, state: StatePut) -> Operation | None:
        return await self._run("PUT", f"{instance_path(name)}/state", body=state)

    async def start_instance(self, name: str) -> None:
        await self.change_state(name, StatePut(action="start"))

    async def stop_instance(self, name: str, *, force: bool = False, grace_s: int | None = None) -> None:
        """Stop gracefully (incusd waits `grace_s`, default 600 s, then fails) or force-stop at once."""
        if force:
            await self.change_state(name, StatePut(action="stop", force=True))
        else:
            # grace_s=0 would mean "kill" to incusd; a graceful stop needs at least a second.
            timeout = -1 if grace_s is None else max(1, grace_s)
            await self.change_state(name, StatePut(action="stop", timeout=timeout))

    async def request_forced_stop(self, name: str) -> None:
        """Ask incusd to stop the instance at once, without waiting for the stop: the request is
        in once this returns (an ephemeral instance is then deleted by incusd itself)."""
        await self._call("PUT", f"{instance_path(name)}/state", body=StatePut(action="stop", force=True))

    async def restart_instance(self, name: str, *, force: bool = False) -> None:
        await self.change_state(name, StatePut(action="restart", force=force))

    async def change_all_states(self, state: StatePut) -> Operation | None:
        """The server-side bulk state change: every instance of the project at once."""
        return await self._run("PUT", "/1.0/instances", body=InstancesStatePut(state=state))

    async def delete_instance(self, name: str) -> None:
        """Delete a stopped instance (incusd refuses a running one)."""
        await self._run("DELETE", instance_path(name))
