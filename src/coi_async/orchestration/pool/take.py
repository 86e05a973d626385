"""A launch's side of the pool: take a made-ahead member instead of creating a container.

The rename is the claim: incusd renames an instance once, so of two launches renaming the same
member one wins and the other gets an error and tries the next member (or creates as before).
The member then gets exactly what a fresh create would have given the slot (the session's
config keys with its launch token, its devices, idmap and ephemeral flag), replacing its own
(PUT), and is started. What cannot be made right is removed, and the launch creates the
container the usual way, which tells the error if there is one to tell. After the launch a
detached `coi pool fill` makes up for what was taken, so the user's command waits for none of it.
"""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Sequence

import anyio

from coi_async.errors import ConflictError, IncusApiError
from coi_async.incus import IncusClient
from coi_async.incus.models import Image, Instance, InstancePut
from coi_async.naming import KEY_LAUNCH
from coi_async.orchestration.containers import ops
from coi_async.orchestration.events import Emit, note
from coi_async.orchestration.pool.fill import spawn_refill
from coi_async.orchestration.pool.members import (
    POOL_KEYS,
    SLOW_DRIVERS,
    list_members,
    ready_of,
    size_for,
    storage_driver,
)
from coi_async.orchestration.sessions.instance_spec import (
    IdmapPlan,
    LaunchSpec,
    idmap_plans,
    instance_config,
    instance_devices,
    refused_plan,
    remember_plan,
)


class WarmPool:
    """The members one launch may take, and the refill it asks for afterwards."""

    def __init__(
        self,
        incus: IncusClient,
        spec: LaunchSpec,
        emit: Emit,
        *,
        size: int,
        ready: Sequence[Instance],
    ) -> None:
        self._incus = incus
        self._spec = spec
        self._emit = emit
        self.size = size
        self.ready = len(ready)
        # Shuffled: launches started together try different members first.
        self._members = random.sample(list(ready), len(ready))
        self.taken = 0

    async def take(self, name: str, slot: int) -> str:
        """Make `name` (slot `slot`) from a member and start it: the idmap plan used, or "" when
        no member could be taken. ConflictError when `name` is taken (by a rival's session)."""
        while self._members:
            member = self._members.pop()
            try:
                # Shielded (a rename is quick): once sent, we must know whether the member became
                # ours, or a cancellation could leave it under the slot's name half made.
                with anyio.CancelScope(shield=True):
                    await self._incus.rename_instance(member.name, name)
            except ConflictError:
                self._members.append(member)  # the slot was taken, not the member
                raise
            except IncusApiError:
                continue  # taken (renamed) or removed by someone else meanwhile
            self.taken += 1
            return await self._prepare(member.name, name, slot)
        return ""

    async def _prepare(self, member: str, name: str, slot: int) -> str:
        token = secrets.token_hex(8)
        try:
            for plan in idmap_plans(self._spec):
                try:
                    await self._incus.replace_instance(name, await self._put(name, slot, plan, token))
                    await self._incus.start_instance(name)
                except IncusApiError as exc:
                    if refused_plan(plan, exc, created=True):
                        note(self._emit, "launch.idmap-fallback", name, plan=plan.kind, error=exc.message)
                        continue
                    note(
                        self._emit,
                        "pool.take-failed",
                        name,
                        member=member,
                        error=exc.message,
                        level="warning",
                    )
                    break
                remember_plan(self._spec, plan.kind)
                note(self._emit, "pool.taken", name, member=member)
                return plan.kind
        except BaseException:
            with anyio.CancelScope(shield=True):
                await ops.remove_quietly(self._incus, name)
            raise
        # Ours under the slot's name: removed, so that the usual create can have the name.
        await ops.remove_quietly(self._incus, name)
        return ""

    async def _put(self, name: str, slot: int, plan: IdmapPlan, token: str) -> InstancePut:
        """The member as a fresh create would have made the slot: its own keys from the image
        (image.*, volatile.*) kept, the pool's and a previous plan's dropped, the session's on top."""
        current = await self._incus.get_instance(name)
        own = {
            k: v
            for k, v in current.config.items()
            if k not in POOL_KEYS and k.startswith(("volatile.", "image."))
        }
        spec = self._spec
        return InstancePut(
            architecture=current.architecture,
            config={**own, **instance_config(spec, slot), **plan.config, KEY_LAUNCH: token},
            devices=instance_devices(spec, shift=plan.shift, name=name),
            ephemeral=spec.ephemeral,
            profiles=current.profiles,
        )

    def refill(self) -> None:
        """Have the pool made up again in the background when it is short (after this take)."""
        if self.ready - self.taken >= self.size:
            return
        try:
            spawn_refill(
                project=self._incus.project,
                image=self._spec.image,
                size=self.size,
                prefix=self._spec.prefix,
                cwd=self._spec.workspace if os.path.isdir(self._spec.workspace) else "/",
            )
        except OSError as exc:
            note(self._emit, "pool.refill-failed", error=str(exc), level="warning")


def _drivers(storage: str) -> set[str]:
    """The drivers in `environment.storage` ("btrfs", or several: "btrfs | dir")."""
    return {d.strip() for d in storage.replace(",", "|").split("|") if d.strip()}


async def open_pool(incus: IncusClient, spec: LaunchSpec, emit: Emit) -> WarmPool | None:
    """The pool a launch may take from; None when there is none to have (`[pool] size` 0, or
    "auto" on copy-on-write storage, a remote, a cluster, an unknown image)."""
    if spec.pool_size == 0 or incus.remote:
        return None
    # The launch's survey asks the same (cached): on a cluster a member sits on one machine,
    # and the slot's may be another, so no pool there; "auto" on a server without slow storage
    # needs no more requests.
    environment = (await incus.server_info(cached=True)).environment
    if environment.server_clustered:
        return None
    if spec.pool_size is None and environment.storage and not _drivers(environment.storage) & SLOW_DRIVERS:
        return None
    size = spec.pool_size if spec.pool_size is not None else size_for(None, await storage_driver(incus))
    if size == 0:
        return None
    images: list[Image | None] = []
    listed: list[Instance] = []

    async def image() -> None:
        images.append(await incus.find_image(spec.image))

    async def members() -> None:
        listed.extend(await list_members(incus, spec.prefix))

    async with anyio.create_task_group() as tg:
        tg.start_soon(image)
        tg.start_soon(members)
    if images[0] is None:
        return None
    return WarmPool(incus, spec, emit, size=size, ready=ready_of(listed, images[0].fingerprint))
